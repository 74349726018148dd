import type { Drive } from '../drive.js';
import type { DirtyBitmap } from '../bitmap/dirty-bitmap.js';
import { DriveTarget, type BackupTarget } from './backup-target.js';
import { BlockCopy, MAX_CHUNK } from './block-copy.js';
import { Job, JobIoError, type ErrorAction, type JobEventSink, type JobOptions } from './job.js';
import { RateLimit } from './rate-limit.js';

export type SyncMode = 'full' | 'top' | 'none' | 'bitmap';
export type BitmapMode = 'on-success' | 'never' | 'always';

export interface BackupJobConfig extends JobOptions {
  source: Drive;
  target: BackupTarget;
  sync: SyncMode;
  bitmap?: DirtyBitmap;
  bitmapMode?: BitmapMode;
  compress: boolean;
  onSourceError: ErrorAction;
  onTargetError: ErrorAction;
  clusterSize: number;
  /** the target reads as zeros where unwritten (a new image without backing) */
  targetStartsZeroed: boolean;
  /** parallel copy tasks */
  maxWorkers?: number;
}

/**
 * A push backup (QEMU's backup job): copies the source's state as of the moment the job starts
 * into the target. From the start, copy-before-write sends the old contents of any cluster a
 * guest write is about to change to the target first; the background loop copies the rest.
 * The named bitmap is frozen at creation (its successor takes new writes) and settled at the end
 * by bitmap-mode: on-success keeps only the new writes if the job succeeded; never always keeps
 * old + new; always drops what was copied even on failure.
 */
export class BackupJob extends Job {
  readonly type = 'backup' as const;
  readonly source: Drive;
  readonly target: BackupTarget;
  private readonly config: BackupJobConfig;
  private readonly copy: BlockCopy;
  private readonly limit = new RateLimit();
  private removeHook: (() => void) | undefined;
  private firstError: JobIoError | undefined;

  constructor(config: BackupJobConfig, emit: JobEventSink, onNull: (job: Job) => void) {
    super(config, emit, onNull);
    this.config = config;
    this.source = config.source;
    this.target = config.target;
    this.copy = new BlockCopy(config.source, config.target, {
      clusterSize: config.clusterSize,
      compress: config.compress,
      targetStartsZeroed: config.targetStartsZeroed,
      onCopied: (bytes) => {
        this.current += bytes;
        this.updateTotal();
      },
    });
    // the set of clusters to copy is fixed now: for incremental, the frozen bitmap's bits
    this.initCopyBits();
    this.updateTotal();
  }

  get bitmap(): DirtyBitmap | undefined {
    return this.config.bitmap;
  }

  override usesDrive(drive: Drive): boolean {
    return drive === this.source || (this.target instanceof DriveTarget && this.target.drive === drive);
  }

  /** Starting is the point in time: copy-before-write is in place before any later write. */
  override start(): void {
    this.removeHook = this.source.addBeforeWrite((offset, length) => this.copy.copyBeforeWrite(offset, length));
    super.start();
  }

  override setSpeed(speed: number): void {
    super.setSpeed(speed);
    this.limit.setSpeed(speed);
  }

  private initCopyBits(): void {
    const bits = this.copy.bits;
    if (this.config.sync === 'bitmap') {
      const b = this.config.bitmap!;
      // rounds outward to the copy granularity: a 4 KiB bit copies its whole 64 KiB cluster
      for (const e of b.dirtyRuns()) {
        bits.setRange(Math.floor(e.offset / this.copy.clusterSize), Math.floor((e.offset + e.length - 1) / this.copy.clusterSize));
      }
      return;
    }
    if (bits.size > 0) bits.setRange(0, bits.size - 1);
  }

  private updateTotal(): void {
    this.total = this.current + this.copy.remainingBytes() + this.copy.inflightBytes;
  }

  protected async run(): Promise<void> {
    this.limit.setSpeed(this.speed);
    if (this.config.sync === 'top') await this.skipUnallocatedInTop();
    if (this.config.sync === 'none') {
      // fleecing: only copy-before-write copies; the job lives until it is cancelled
      while (true) {
        await this.pausePoint();
        await this.sleep(1000);
      }
    }
    while (true) {
      await this.pausePoint();
      const err = await this.copyPass();
      if (err) {
        const policy = err.operation === 'read' ? this.config.onSourceError : this.config.onTargetError;
        // report rethrows; ignore and stop (after resume) retry the remaining clusters
        await this.onIoError(err, policy);
        if (err.operation === 'write') await this.target.recover().catch((e: unknown) => {
          throw new JobIoError('write', e);
        });
        continue;
      }
      if (this.copy.bits.count() === 0 && this.copy.inflightBytes === 0) break;
      // only CBW copies are in flight: wait for them to land
      await this.sleep(5);
    }
    // the target's metadata is written back here (qcow2 writeback): a failure is a target write
    // error like any other — reported by policy; after a stop the flush is simply tried again
    for (let attempt = 1; ; attempt++) {
      try {
        await this.target.flush();
        break;
      } catch (err) {
        const failure = new JobIoError('write', err);
        // 'ignore' retries, but a flush that keeps failing must end the job, not spin forever
        if (attempt >= 10) throw failure;
        await this.onIoError(failure, this.config.onTargetError);
      }
    }
    this.updateTotal();
  }

  /** One pass over the remaining clusters with parallel tasks; stops claiming at the first error, and returns it. */
  private async copyPass(): Promise<JobIoError | undefined> {
    this.firstError = undefined;
    const clustersPerChunk = Math.max(1, this.config.compress ? 1 : Math.floor(Math.max(MAX_CHUNK, this.copy.clusterSize) / this.copy.clusterSize));
    let cursor = 0;
    const worker = async () => {
      while (!this.firstError) {
        await this.pausePoint();
        const wait = this.limit.delay();
        if (wait > 0) {
          await this.sleep(wait);
          continue;
        }
        const run = this.copy.claim(cursor, clustersPerChunk);
        if (!run) return;
        cursor = run.first + run.count;
        this.limit.account(run.count * this.copy.clusterSize);
        try {
          await this.copy.copy(run.first, run.count);
        } catch (err) {
          this.firstError ??= err instanceof JobIoError ? err : new JobIoError('write', err);
          return;
        } finally {
          this.updateTotal();
        }
      }
    };
    const n = this.config.maxWorkers ?? 8;
    await Promise.all(Array.from({ length: n }, worker));
    return this.firstError;
  }

  /** sync=top: clusters the top image does not allocate itself come from its backing: not ours to copy. */
  private async skipUnallocatedInTop(): Promise<void> {
    const cs = this.copy.clusterSize;
    const extents = await this.source.driver.blockStatus(0, this.source.virtualSize).catch((err: unknown) => {
      throw new JobIoError('read', err);
    });
    for (const e of extents) {
      if (e.allocatedHere) continue;
      // only clusters entirely unallocated here may be skipped
      const first = Math.ceil(e.offset / cs);
      const end = e.offset + e.length >= this.source.virtualSize ? this.copy.bits.size : Math.floor((e.offset + e.length) / cs);
      if (end > first) this.copy.bits.clearRange(first, end - 1);
    }
    this.updateTotal();
  }

  protected commit(): void {
    const b = this.config.bitmap;
    if (!b) return;
    if (this.config.bitmapMode === 'never') this.source.bitmaps.reclaim(b);
    else this.source.bitmaps.abdicate(b);
  }

  protected abort(): void {
    const b = this.config.bitmap;
    if (!b || !b.successor) return;
    if (this.config.bitmapMode === 'always') {
      const result = this.source.bitmaps.abdicate(b);
      // the clusters never copied stay dirty
      const cs = this.copy.clusterSize;
      for (const [first, count] of this.copy.bits.runs()) result.mark(first * cs, count * cs);
    } else {
      this.source.bitmaps.reclaim(b);
    }
  }

  protected async clean(): Promise<void> {
    this.removeHook?.();
    this.removeHook = undefined;
    await this.target.release();
  }
}
