import type { DirtyBitmap } from './dirty-bitmap.js';
import { markBitmaps } from './mark-bitmaps.js';
import { addSettler } from './pending-marks.js';
import { C_CLAIMED, C_DONE, C_PRODUCED, RING, type SetMessage } from './mark-protocol.js';

/** How long a settle waits for an I/O worker to finish the entry it is applying. */
const SETTLE_WAIT_MS = 100;

/** What the marker needs of the I/O pool: the ring, the workers' ears, whether one is free. */
export interface MarkHost {
  readonly markRing: { ctrl: SharedArrayBuffer; ranges: SharedArrayBuffer; sets: SharedArrayBuffer };
  postMarkSet(message: SetMessage): void;
  anyWorkerIdle(): boolean;
}

let nextNode = 1;

/** A node's handle on the marker: the set of bitmaps its queued entries name. */
export interface MarkerNode {
  readonly key: number;
  set: { id: number; bitmaps: readonly DirtyBitmap[] } | undefined;
}

/**
 * Deferred write marking. A guest write that completes queues (offset, length, bitmap set) in a
 * shared ring; the I/O workers set the bits in the time they would otherwise spin waiting for
 * the next request, while the main thread goes on — marking is a cache miss or two per bitmap,
 * anywhere in up to 64 MiB of bits, as much as a small write costs. Nothing can observe the
 * difference: every read or clear of bits first settles the queue (pending-marks.ts), taking
 * what the workers have not taken yet and waiting for what one is in the middle of. The set an
 * entry names is the node's recording bitmaps when the write completed, as QEMU marks them then.
 *
 * When no worker is awake and idle the write is marked inline instead (waking one would cost
 * the main thread more than the marking; queueing behind a busy one would delay its requests).
 */
export class WriteMarker {
  private readonly ctrl: Int32Array;
  private readonly ranges: Float64Array;
  private readonly setIds: Int32Array;
  private produced = 0;
  private nextSet = 1;
  /** every set entries may still name: its node and its bitmaps (main-thread objects) */
  private readonly sets = new Map<number, { node: number; bitmaps: readonly DirtyBitmap[] }>();
  private closed = false;
  private readonly removeSettler: () => void;

  constructor(private readonly host: MarkHost) {
    this.ctrl = new Int32Array(host.markRing.ctrl);
    this.ranges = new Float64Array(host.markRing.ranges);
    this.setIds = new Int32Array(host.markRing.sets);
    this.removeSettler = addSettler(this.settle);
  }

  node(): MarkerNode {
    return { key: nextNode++, set: undefined };
  }

  /** writes marked through the ring and inline so far (diagnostics, tests) */
  readonly stats = { queued: 0, inline: 0 };

  /** Marks [offset, +length) in `bitmaps` (a node's recording bitmaps) — now, or queued. */
  mark(node: MarkerNode, bitmaps: readonly DirtyBitmap[], offset: number, length: number): void {
    if (this.closed || bitmaps.length === 0 || !this.host.anyWorkerIdle()) {
      this.stats.inline++;
      return markBitmaps(bitmaps, offset, length);
    }
    this.stats.queued++;
    if (this.produced - Atomics.load(this.ctrl, C_DONE) >= RING) this.settle();
    const slot = this.produced & (RING - 1);
    this.ranges[slot * 2] = offset;
    this.ranges[slot * 2 + 1] = length;
    this.setIds[slot] = this.setId(node, bitmaps);
    this.produced = (this.produced + 1) | 0;
    Atomics.store(this.ctrl, C_PRODUCED, this.produced);
  }

  /**
   * Applies every queued mark before returning: takes what the workers have not, and waits for
   * the one a worker is applying (microseconds). With nothing queued, one comparison.
   */
  readonly settle = (): void => {
    if (this.closed || Atomics.load(this.ctrl, C_DONE) === this.produced) return;
    for (;;) {
      const claimed = Atomics.load(this.ctrl, C_CLAIMED);
      if (this.produced - claimed <= 0) break;
      if (Atomics.compareExchange(this.ctrl, C_CLAIMED, claimed, (claimed + 1) | 0) !== claimed) continue;
      this.applySlot(claimed & (RING - 1));
      Atomics.add(this.ctrl, C_DONE, 1);
    }
    // a worker may be in the middle of one: wait for it, so that nothing it sets can land after
    // what the caller does next (a clear). It takes microseconds; a worker that does not finish
    // within the bound (stopped by the system, or dead) gets its entries applied here too —
    // setting bits twice is harmless and keeps counts exact — and is not relied on again:
    // marking goes inline from then on
    const until = performance.now() + SETTLE_WAIT_MS;
    while (Atomics.load(this.ctrl, C_DONE) !== this.produced) {
      if (performance.now() > until) {
        for (let k = Atomics.load(this.ctrl, C_DONE); this.produced - k > 0; k = (k + 1) | 0) this.applySlot(k & (RING - 1));
        this.closed = true;
        break;
      }
    }
    this.pruneSets();
  };

  /** Applies what is queued and marks inline from now on (before the I/O pool goes). */
  close(): void {
    this.settle();
    this.closed = true;
    this.removeSettler();
  }

  /** The id of the set `bitmaps` of `node`, defining a new one (for both sides) when it changed. */
  private setId(node: MarkerNode, bitmaps: readonly DirtyBitmap[]): number {
    const cur = node.set;
    if (cur && cur.bitmaps.length === bitmaps.length && cur.bitmaps.every((b, k) => b === bitmaps[k])) return cur.id;
    const id = this.nextSet++;
    const copy = [...bitmaps];
    node.set = { id, bitmaps: copy };
    this.sets.set(id, { node: node.key, bitmaps: copy });
    const message: SetMessage = {
      id,
      node: node.key,
      bitmaps: copy.map((b) => ({ buffer: b.bits.buffer, bits: b.bits.size, granularity: b.granularity, size: b.size })),
    };
    this.host.postMarkSet(message);
    return id;
  }

  /** After a settle only each node's newest set can still be named. */
  private pruneSets(): void {
    const newest = new Map<number, number>();
    for (const [id, { node }] of this.sets) if ((newest.get(node) ?? 0) < id) newest.set(node, id);
    for (const [id, { node }] of this.sets) if (newest.get(node) !== id) this.sets.delete(id);
  }

  private applySlot(slot: number): void {
    markBitmaps(this.sets.get(this.setIds[slot])?.bitmaps ?? [], this.ranges[slot * 2], this.ranges[slot * 2 + 1]);
  }
}
