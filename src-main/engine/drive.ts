import type { BlockDriver, BlockExtent } from './formats/types.js';
import type { Lent } from './io/file-handle.js';
import { readLent } from './formats/lend.js';
import { TidemarkError } from '../../src-shared/errors.js';
import { ERRNO_TEXT } from './io/file-errors.js';
import { NodeBitmaps } from './bitmap/node-bitmaps.js';
import type { BitmapStore } from './bitmap/bitmap-store.js';

export type WriteKind = 'write' | 'zero' | 'discard';
/** Runs before a guest write reaches the image (copy-before-write); a rejection fails the write. */
export type BeforeWriteHook = (offset: number, length: number) => Promise<void>;
export type WriteListener = (drive: Drive, offset: number, length: number, kind: WriteKind) => void;

/**
 * A drive: QEMU's BlockBackend — an id the user and QMP address, over the root node of a format
 * driver (which holds the backing chain). Every guest write passes through here, so this is the
 * one place that tells write trackers (dirty bitmaps, live maps) about it.
 */
export class Drive {
  private readonly writeListeners = new Set<WriteListener>();
  private readonly beforeWriteHooks = new Set<BeforeWriteHook>();
  private inflight = 0;
  private drainWaiters: (() => void)[] = [];
  private quiesceCount = 0;
  private gate: Promise<void> | undefined;
  private openGate: (() => void) | undefined;
  /** the dirty bitmaps of the drive's root node */
  readonly bitmaps = new NodeBitmaps(() => this.virtualSize);
  /** where this drive's persistent bitmaps are kept (qcow2 extension or sidecar); none for plain raw */
  bitmapStore: BitmapStore | undefined;

  constructor(
    readonly id: string,
    readonly nodeName: string,
    readonly driver: BlockDriver,
    /**
     * QEMU's -drive discard=: 'ignore' (its default) drops discard requests before they reach
     * the image — and so they dirty no bitmap; 'unmap' passes them on.
     */
    readonly discardMode: 'ignore' | 'unmap' = 'ignore',
  ) {}

  get virtualSize(): number {
    return this.driver.virtualSize;
  }

  onWrite(listener: WriteListener): () => void {
    this.writeListeners.add(listener);
    return () => this.writeListeners.delete(listener);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    this.checkRange(offset, length);
    return this.driver.read(offset, length);
  }

  /**
   * Like read, into memory lent by the I/O layer where it can (see formats/lend.ts): for
   * callers that only pass the bytes on (NBD replies, copies) and can say when they are done.
   */
  readLent(offset: number, length: number): Promise<Lent> {
    this.checkRange(offset, length);
    return readLent(this.driver, offset, length);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    this.checkWritable(offset, data.length);
    return this.guestWrite(offset, data.length, 'write', () => this.driver.write(offset, data));
  }

  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void> {
    this.checkWritable(offset, length);
    return this.guestWrite(offset, length, 'zero', () => this.driver.writeZeroes(offset, length, options));
  }

  discard(offset: number, length: number): Promise<void> {
    this.checkWritable(offset, length);
    if (this.discardMode === 'ignore') return Promise.resolve();
    return this.guestWrite(offset, length, 'discard', () => this.driver.discard(offset, length));
  }

  /** Copy-before-write and other interceptors: run before every guest write, in order. */
  addBeforeWrite(hook: BeforeWriteHook): () => void {
    this.beforeWriteHooks.add(hook);
    return () => this.beforeWriteHooks.delete(hook);
  }

  /**
   * Holds new guest writes and waits for those in flight (QEMU's drained section), so a
   * transaction can start its jobs at one point in time. Call the returned function to let
   * writes flow again.
   */
  async quiesce(): Promise<() => void> {
    if (this.quiesceCount++ === 0) this.gate = new Promise((r) => (this.openGate = r));
    if (this.inflight > 0) await new Promise<void>((r) => this.drainWaiters.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.quiesceCount === 0) {
        this.gate = undefined;
        this.openGate?.();
      }
    };
  }

  private async guestWrite(offset: number, length: number, kind: WriteKind, op: () => Promise<void>): Promise<void> {
    while (this.gate) await this.gate;
    this.inflight++;
    try {
      for (const hook of this.beforeWriteHooks) await hook(offset, length);
      // QEMU marks bitmaps when the write completes, even when it fails: the guest may have
      // changed some of it
      try {
        await op();
      } finally {
        this.notify(offset, length, kind);
      }
    } finally {
      if (--this.inflight === 0) {
        const waiters = this.drainWaiters;
        this.drainWaiters = [];
        for (const w of waiters) w();
      }
    }
  }

  flush(): Promise<void> {
    return this.driver.flush();
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    this.checkRange(offset, length);
    return this.driver.blockStatus(offset, length);
  }

  private notify(offset: number, length: number, kind: WriteKind): void {
    if (length === 0) return;
    this.bitmaps.markWrite(offset, length);
    for (const l of this.writeListeners) l(this, offset, length, kind);
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new TidemarkError('INVALID_INPUT', `Invalid request on drive '${this.id}': offset ${offset}, length ${length}.`);
    }
    if (offset + length > this.virtualSize) {
      throw new TidemarkError(
        'INVALID_INPUT',
        `Request on drive '${this.id}' reaches past the end of the disk (offset ${offset} + length ${length} > size ${this.virtualSize}).`,
      );
    }
  }

  private checkWritable(offset: number, length: number): void {
    this.checkRange(offset, length);
    if (this.driver.readOnly) throw new TidemarkError('PERMISSION_DENIED', `Drive '${this.id}' is read-only.`);
    // QEMU: a node with bitmaps loaded from a read-only image refuses writes (EPERM)
    if (this.bitmaps.hasReadonly()) throw new TidemarkError('PERMISSION_DENIED', `Drive '${this.id}' has read-only bitmaps: ${ERRNO_TEXT.EPERM}`);
  }
}
