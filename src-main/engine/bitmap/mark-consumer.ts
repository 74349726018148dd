import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { DirtyBitmap } from './dirty-bitmap.js';
import { markBitmaps } from './mark-bitmaps.js';
import { C_CLAIMED, C_DONE, C_PRODUCED, RING, type MarkRingBuffers, type SetMessage } from './mark-protocol.js';

/**
 * The I/O worker's side of deferred write marking (write-marker.ts): takes queued entries off the
 * shared ring and sets their bits, when the worker has no I/O to do. Bits are set with Atomics
 * (SharedBits), exactly as the main thread would set them; nothing here ever clears.
 */
export class MarkConsumer {
  private readonly ctrl: Int32Array;
  private readonly ranges: Float64Array;
  private readonly setIds: Int32Array;
  private readonly sets = new Map<number, { node: number; bitmaps: DirtyBitmap[] }>();

  constructor(
    buffers: MarkRingBuffers,
    private readonly port: MessagePort,
  ) {
    this.ctrl = new Int32Array(buffers.ctrl);
    this.ranges = new Float64Array(buffers.ranges);
    this.setIds = new Int32Array(buffers.sets);
  }

  /** Whether entries wait to be taken. */
  pending(): boolean {
    return Atomics.load(this.ctrl, C_PRODUCED) - Atomics.load(this.ctrl, C_CLAIMED) > 0;
  }

  /** Takes and applies one entry, if one is there and no other thread takes it first. */
  applyOne(): void {
    const claimed = Atomics.load(this.ctrl, C_CLAIMED);
    if (Atomics.load(this.ctrl, C_PRODUCED) - claimed <= 0) return;
    if (Atomics.compareExchange(this.ctrl, C_CLAIMED, claimed, (claimed + 1) | 0) !== claimed) return;
    const slot = claimed & (RING - 1);
    const id = this.setIds[slot];
    const set = this.setFor(id);
    if (set) {
      this.retireBefore(id, set.node);
      markBitmaps(set.bitmaps, this.ranges[slot * 2], this.ranges[slot * 2 + 1]);
    }
    Atomics.add(this.ctrl, C_DONE, 1);
  }

  /** The set an entry names; its definition was posted before the entry was pushed. */
  private setFor(id: number): { node: number; bitmaps: DirtyBitmap[] } | undefined {
    let known = this.sets.get(id);
    while (!known) {
      const m = receiveMessageOnPort(this.port)?.message as SetMessage | undefined;
      if (!m) return undefined;
      this.sets.set(m.id, {
        node: m.node,
        bitmaps: m.bitmaps.map((b) => new DirtyBitmap({ size: b.size, granularity: b.granularity, buffer: b.buffer })),
      });
      known = this.sets.get(id);
    }
    return known;
  }

  /** Older sets of the node: every entry that named them has been taken (entries go in order). */
  private retireBefore(id: number, node: number): void {
    for (const [k, s] of this.sets) if (s.node === node && k - id < 0) this.sets.delete(k);
  }
}
