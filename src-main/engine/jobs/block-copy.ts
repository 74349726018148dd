import type { Drive } from '../drive.js';
import { SharedBits } from '../bitmap/shared-bits.js';
import type { BackupTarget } from './backup-target.js';
import { JobIoError } from './job.js';
import type { Lent } from '../io/file-handle.js';

/** Largest chunk one copy task moves (QEMU's block-copy buffer chunk). */
export const MAX_CHUNK = 1 << 20;

export interface BlockCopyOptions {
  clusterSize: number;
  compress: boolean;
  /** the target reads zeros where nothing was written: zero areas of the source need no write */
  targetStartsZeroed: boolean;
  /** bytes copied (progress), called after every successful task, CBW copies included */
  onCopied: (bytes: number) => void;
}

/**
 * The clusters a backup still has to copy, shared by the background loop and copy-before-write
 * so each cluster is copied exactly once: claiming a run clears its bits and registers it as in
 * flight; a failed copy sets the bits again. A guest write first copies the clusters it covers
 * (or waits for the copy already under way), then proceeds.
 */
export class BlockCopy {
  readonly bits: SharedBits;
  private readonly inflight = new Map<number, Promise<void>>();
  inflightBytes = 0;

  constructor(
    private readonly source: Drive,
    private readonly target: BackupTarget,
    readonly options: BlockCopyOptions,
  ) {
    this.bits = new SharedBits(Math.ceil(source.virtualSize / options.clusterSize));
  }

  get clusterSize(): number {
    return this.options.clusterSize;
  }

  /** bytes still to copy (whole clusters, as QEMU counts them) */
  remainingBytes(): number {
    return this.bits.count() * this.clusterSize;
  }

  /** Claims the next run of up to `maxClusters` clusters at or after `from`; undefined when none is left. */
  claim(from: number, maxClusters: number): { first: number; count: number } | undefined {
    const first = this.bits.nextSet(from);
    if (first < 0) return undefined;
    const clear = this.bits.nextClear(first);
    const end = Math.min(clear < 0 ? this.bits.size : clear, first + maxClusters);
    return { first, count: end - first };
  }

  /** Copies the run [first, first+count) (all its bits must be set: use `claim` to find one). */
  copy(first: number, count: number): Promise<void> {
    return this.take(first, count);
  }

  /** Copy-before-write: every cluster of the range still to be copied is copied now; in-flight ones are awaited. */
  async copyBeforeWrite(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    const firstCluster = Math.floor(offset / this.clusterSize);
    const lastCluster = Math.floor((Math.min(offset + length, this.source.virtualSize) - 1) / this.clusterSize);
    const waits: Promise<void>[] = [];
    for (let c = firstCluster; c <= lastCluster; c++) {
      const busy = this.inflight.get(c);
      if (busy) waits.push(busy);
    }
    for (let c = this.bits.nextSet(firstCluster); c >= 0 && c <= lastCluster; ) {
      const clear = this.bits.nextClear(c);
      const end = Math.min(clear < 0 ? this.bits.size : clear, lastCluster + 1);
      waits.push(this.take(c, end - c));
      c = end <= lastCluster ? this.bits.nextSet(end) : -1;
    }
    // a failed copy fails the guest write (QEMU's on-cbw-error=break-guest-write): the backup stays valid
    await Promise.all(waits);
  }

  /** Clears the bits, registers the run as in flight, and copies it; on failure the bits are set again. */
  private take(first: number, count: number): Promise<void> {
    this.bits.clearRange(first, first + count - 1);
    const bytes = count * this.clusterSize;
    this.inflightBytes += bytes;
    const task = this.transfer(first * this.clusterSize, Math.min(bytes, this.source.virtualSize - first * this.clusterSize))
      .then(
        () => this.options.onCopied(bytes),
        (err: unknown) => {
          this.bits.setRange(first, first + count - 1);
          throw err;
        },
      )
      .finally(() => {
        this.inflightBytes -= bytes;
        for (let c = first; c < first + count; c++) if (this.inflight.get(c) === task) this.inflight.delete(c);
      });
    for (let c = first; c < first + count; c++) this.inflight.set(c, task);
    return task;
  }

  /** Moves guest bytes [offset, offset+length) from source to target, skipping or zeroing zero areas. */
  private async transfer(offset: number, length: number): Promise<void> {
    if (this.options.compress) {
      // compressed clusters are written whole, so read the whole run
      await this.writeCompressed(offset, await this.readSource(offset, length));
      return;
    }
    let extents;
    try {
      extents = await this.source.driver.blockStatus(offset, length);
    } catch (err) {
      throw new JobIoError('read', err);
    }
    // all data extents in one read, into a buffer lent by the I/O layer (no allocation; the
    // target writes straight from it); only the data extents are written
    const data = extents.filter((e) => !e.zero);
    let lent: Lent | undefined;
    if (data.length > 0 && this.source.driver.readLent) {
      try {
        lent = await this.source.driver.readLent(data);
      } catch (err) {
        throw new JobIoError('read', err);
      }
    }
    try {
      for (const e of extents) {
        if (e.zero) {
          if (!this.options.targetStartsZeroed) await this.targetOp(() => this.target.writeZeroes(e.offset, e.length));
          continue;
        }
        const at = e.offset - data[0].offset;
        const bytes = lent ? lent.bytes.subarray(at, at + e.length) : await this.readSource(e.offset, e.length);
        await this.targetOp(() => this.target.write(e.offset, bytes));
      }
    } finally {
      lent?.release();
    }
  }

  private async readSource(offset: number, length: number): Promise<Uint8Array> {
    try {
      return await this.source.driver.read(offset, length);
    } catch (err) {
      throw new JobIoError('read', err);
    }
  }

  /** Compressed targets take whole clusters (the last may be short at the end of the disk); all-zero ones are skipped when possible. */
  private async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.target.clusterSize ?? this.clusterSize;
    for (let at = 0; at < data.length; at += cs) {
      const piece = data.subarray(at, Math.min(data.length, at + cs));
      if (piece.every((b) => b === 0)) {
        if (!this.options.targetStartsZeroed) await this.targetOp(() => this.target.writeZeroes(offset + at, piece.length));
        continue;
      }
      await this.targetOp(() => this.target.writeCompressed(offset + at, piece));
    }
  }

  private async targetOp(op: () => Promise<void>): Promise<void> {
    try {
      await op();
    } catch (err) {
      throw new JobIoError('write', err);
    }
  }
}
