import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlockEngine } from '../../engine.js';
import type { Drive } from '../../drive.js';
import type { BlockDriver, BlockExtent } from '../../formats/types.js';
import type { Lent } from '../../io/file-handle.js';
import { readLent } from '../../formats/lend.js';
import { DirtyBitmap } from '../../bitmap/dirty-bitmap.js';
import { CHECK_ALLOW_RO, CHECK_DEFAULT, checkBitmap } from '../../bitmap/node-bitmaps.js';
import { runTransaction } from '../../jobs/transaction.js';
import { ImageTarget } from '../../jobs/backup-target.js';
import type { BackupJob } from '../../jobs/backup-job.js';
import { TidemarkError } from '../../../../src-shared/errors.js';
import type { ExportBackend, NbdExport } from './export.js';
import type { NbdServer } from './server.js';

/**
 * Pull-mode backup: "export a point in time" (qemu-spec §7.4).
 *
 * One atomic step (guest writes to the drive are held for its duration, like a QMP transaction):
 *   - a `drive-backup sync=none` job starts into a new temporary qcow2 (mode absolute-paths, so
 *     its backing file is the drive's image): from now on copy-before-write puts the old contents
 *     of every cluster the guest overwrites into that image, which therefore reads as the drive
 *     did at this instant (QEMU's fleecing);
 *   - the bitmap B is copied into a frozen, disabled bitmap F with B's name and granularity
 *     (the merge-into-a-disabled-bitmap of §7.4, kept beside the fleecing image the way QEMU
 *     would add it to the fleecing node);
 *   - an anonymous bitmap N starts recording the writes made after this instant.
 * The fleecing image is exported read-only with `qemu:dirty-bitmap:<B's name>` reporting F, and
 * `base:allocation`. A client copies the dirty extents while the drive keeps being written.
 *
 * B is reserved (busy) for the whole time and keeps recording every write. `finish()` ends it:
 * the export is removed (clients are answered what is in flight, then disconnected), the job is
 * cancelled (the normal end of fleecing), the temporary image is deleted, F goes away, and B's
 * fate is decided:
 *   - success with `clearBitmapOnSuccess` (the default): B := N — only the writes made since the
 *     point in time stay dirty, ready for the next incremental;
 *   - failure, or `clearBitmapOnSuccess: false`: B is left as it is: the old bits plus every
 *     write since, so nothing is lost and the next backup covers the failed one too.
 * N is released in both cases. If the export disappears any other way (removed over QMP, the
 * server closing, the drive detaching) or the fleecing job dies, the point in time is finished
 * as a failure.
 */
export interface PointInTimeOptions {
  /** drive id or node name */
  drive: string;
  /** the bitmap whose dirty areas the client should copy; omit for a plain (full) pull */
  bitmap?: string;
  /** export name; default `<drive id>@pit` */
  name?: string;
  description?: string;
  /** folder for the temporary fleecing image (default: the system temp folder) */
  scratchDir?: string;
  /** the fleecing job's id (default `pit-<drive>`, made unique) */
  jobId?: string;
  /** on success, leave only the writes made after the point in time in the bitmap (default true) */
  clearBitmapOnSuccess?: boolean;
  /** offer qemu:allocation-depth too */
  allocationDepth?: boolean;
}

export type BitmapOutcome =
  /** the bitmap now holds only the writes made after the point in time */
  | 'reset-to-new-writes'
  /** the bitmap was left as it was (old bits and every write since) */
  | 'kept'
  /** no bitmap was involved */
  | 'none'
  /** the bitmap was removed meanwhile (its drive detached) */
  | 'gone';

export interface PointInTimeResult {
  success: boolean;
  bitmap: BitmapOutcome;
  /** why a requested success was turned into a failure */
  reason?: string;
}

/** Reads the fleecing image and holds guest writes until overlapping reads of it are done. */
class FleeceBackend implements ExportBackend {
  private readonly ops = new Set<{ start: number; end: number; done: Promise<void> }>();

  constructor(
    private readonly image: BlockDriver,
    readonly drive: Drive,
  ) {}

  get size(): number {
    return this.image.virtualSize;
  }

  get preferredBlockSize(): number {
    return Math.max(4096, this.image.clusterSize ?? 4096);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.tracked(offset, length, () => this.image.read(offset, length));
  }

  readLent(offset: number, length: number): Promise<Lent> {
    return this.tracked(offset, length, () => readLent(this.image, offset, length));
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    return this.tracked(offset, length, () => this.image.blockStatus(offset, length));
  }

  write(): Promise<void> {
    return Promise.reject(readOnly());
  }

  writeZeroes(): Promise<void> {
    return Promise.reject(readOnly());
  }

  discard(): Promise<void> {
    return Promise.reject(readOnly());
  }

  async flush(): Promise<void> {
    // a read-only view: nothing of the client's to make durable
  }

  async canZeroFast(): Promise<boolean> {
    return false;
  }

  /**
   * Runs (as a before-write hook of the drive) after the fleecing job's copy-before-write: a read
   * or block-status of the fleecing image that started before the old data was copied may still
   * be looking through to the drive's image, so the guest write waits for it.
   */
  async beforeGuestWrite(offset: number, length: number): Promise<void> {
    const end = offset + length;
    const waits: Promise<void>[] = [];
    for (const op of this.ops) if (op.start < end && offset < op.end) waits.push(op.done);
    if (waits.length) await Promise.all(waits);
  }

  private async tracked<T>(offset: number, length: number, fn: () => Promise<T>): Promise<T> {
    let finish!: () => void;
    const op = { start: offset, end: offset + length, done: new Promise<void>((r) => (finish = r)) };
    this.ops.add(op);
    try {
      return await fn();
    } finally {
      this.ops.delete(op);
      finish();
    }
  }
}

function readOnly(): TidemarkError {
  return new TidemarkError('PERMISSION_DENIED', 'A point-in-time export is read-only');
}

const JOB_ID_CHARS = /[^A-Za-z0-9._-]/g;

function defaultJobId(engine: BlockEngine, drive: Drive): string {
  const base = `pit-${drive.id.replace(JOB_ID_CHARS, '_')}`;
  const taken = new Set(engine.jobs.list().map((j) => j.id));
  if (!taken.has(base)) return base;
  for (let i = 2; ; i++) if (!taken.has(`${base}-${i}`)) return `${base}-${i}`;
}

/** A live point-in-time export; `finish` ends it. */
export class PointInTimeExport {
  private finishing: Promise<PointInTimeResult> | undefined;
  private intended = false;
  private failure: string | undefined;
  private readonly removeHook: () => void;
  readonly createdAt = new Date();

  /** @internal use exportPointInTime */
  constructor(
    private readonly engine: BlockEngine,
    private readonly server: NbdServer,
    readonly drive: Drive,
    readonly job: BackupJob,
    readonly scratchDir: string,
    readonly scratchPath: string,
    readonly nbdExport: NbdExport,
    backend: FleeceBackend,
    private readonly live: DirtyBitmap | undefined,
    private readonly frozen: DirtyBitmap | undefined,
    private readonly newWrites: DirtyBitmap | undefined,
    private readonly clearOnSuccess: boolean,
  ) {
    this.removeHook = drive.addBeforeWrite((o, l) => backend.beforeGuestWrite(o, l));
    // the export going away by any other route ends the point in time as a failure
    // (awaited, so a server closing waits for the cleanup; when finish() removed the export, the
    // teardown already under way awaits this removal and must not be awaited back)
    nbdExport.onRemoved(async () => {
      if (this.finishing) return;
      await this.end(false, 'the export was removed before the backup finished');
    });
    void job.gone.then(() => {
      if (!this.finishing) {
        this.failure = `the fleecing job '${job.id}' ended${job.error ? `: ${job.error}` : ''}`;
        void this.end(false, this.failure);
      }
    });
  }

  get name(): string {
    return this.nbdExport.name;
  }

  get bitmapName(): string | undefined {
    return this.live?.name;
  }

  /** the frozen copy clients see as qemu:dirty-bitmap:NAME (read-only use please) */
  get frozenBitmap(): DirtyBitmap | undefined {
    return this.frozen;
  }

  get finished(): boolean {
    return this.finishing !== undefined;
  }

  /**
   * Ends the export. `success: true` says the client has stored everything it copied; unless the
   * fleecing failed meanwhile, the bitmap is then reset to the writes made since the point in time
   * (with clearBitmapOnSuccess). Idempotent: later calls get the first call's result.
   */
  finish(outcome: { success: boolean }): Promise<PointInTimeResult> {
    return this.end(outcome.success);
  }

  /** The first call decides the outcome (later ones, e.g. from the teardown's own export removal, change nothing). */
  private end(success: boolean, reason?: string): Promise<PointInTimeResult> {
    if (this.finishing) return this.finishing;
    this.intended = success;
    if (reason && !success) this.failure ??= reason;
    this.finishing = this.teardown();
    return this.finishing;
  }

  private async teardown(): Promise<PointInTimeResult> {
    const errors: unknown[] = [];
    // (when the export's removal is what brought us here, its clients are gone already and the
    // removal completes once this teardown has)
    if (this.nbdExport.live) {
      try {
        await this.server.removeExport(this.nbdExport.name).catch(() => this.nbdExport.remove());
      } catch (err) {
        errors.push(err);
      }
    }
    this.removeHook();
    if (this.job.status !== 'null' && this.job.status !== 'concluded') {
      await this.job.cancel().catch((err: unknown) => errors.push(err));
    }
    await this.job.gone;
    await rm(this.scratchDir, { recursive: true, force: true }).catch((err: unknown) => errors.push(err));

    const success = this.intended && this.failure === undefined;
    let bitmap: BitmapOutcome = 'none';
    if (this.live) {
      const present = this.drive.bitmaps.all().includes(this.live) && this.engine.get(this.drive.id) === this.drive;
      this.live.busy = false;
      if (!present) bitmap = 'gone';
      else if (success && this.clearOnSuccess) {
        // synchronous, so no write lands between the two: B := writes since the point in time
        this.live.clear();
        this.live.mergeFrom(this.newWrites!);
        bitmap = 'reset-to-new-writes';
      } else bitmap = 'kept';
    }
    if (this.newWrites) this.drive.bitmaps.release(this.newWrites);
    if (this.frozen) this.frozen.busy = false;
    const result: PointInTimeResult = { success, bitmap };
    if (!success && this.failure) result.reason = this.failure;
    if (errors.length) result.reason = [result.reason, ...errors.map((e) => (e instanceof Error ? e.message : String(e)))].filter(Boolean).join('; ');
    return result;
  }
}

/** The image a drive-backup job opened for itself (the fleecing image). */
function jobImage(job: BackupJob): BlockDriver {
  const target = job.target;
  if (!(target instanceof ImageTarget)) throw new Error('a drive-backup job without an image target');
  const t = target as unknown as { image?: BlockDriver; driver?: BlockDriver };
  const image = t.image ?? t.driver;
  if (!image) throw new Error('the fleecing image of the backup job is not reachable');
  return image;
}

/**
 * Starts a pull-mode backup of `drive` at this instant and exports it read-only on `server`
 * (see PointInTimeOptions). Nothing is left behind when it fails.
 */
export async function exportPointInTime(engine: BlockEngine, server: NbdServer, o: PointInTimeOptions): Promise<PointInTimeExport> {
  const drive = engine.lookup(o.drive);
  if (!drive) throw new TidemarkError('NOT_FOUND', `Cannot find device='${o.drive}' nor node-name='${o.drive}'`);
  const clearOnSuccess = o.clearBitmapOnSuccess ?? true;
  let live: DirtyBitmap | undefined;
  if (o.bitmap !== undefined) {
    live = drive.bitmaps.find(o.bitmap);
    if (!live) throw new TidemarkError('NOT_FOUND', `Dirty bitmap '${o.bitmap}' not found`);
    // it will be modified at the end when a successful backup resets it
    checkBitmap(live, clearOnSuccess ? CHECK_DEFAULT : CHECK_ALLOW_RO);
  }
  const name = o.name ?? `${drive.id}@pit`;
  if (server.findExport(name)) throw new TidemarkError('ALREADY_EXISTS', `NBD server already has export named '${name}'`);
  const jobId = o.jobId ?? defaultJobId(engine, drive);

  const scratchDir = await mkdtemp(join(o.scratchDir ?? tmpdir(), 'tidemark-pit-'));
  const scratchPath = join(scratchDir, 'fleece.qcow2');
  let frozen: DirtyBitmap | undefined;
  let newWrites: DirtyBitmap | undefined;
  let job: BackupJob | undefined;
  let exp: NbdExport | undefined;
  let pit: PointInTimeExport | undefined;
  const release = await drive.quiesce();
  try {
    // the point in time: no guest write lands until `release`
    if (live) {
      checkBitmap(live, clearOnSuccess ? CHECK_DEFAULT : CHECK_ALLOW_RO);
      frozen = new DirtyBitmap({ name: live.name, size: live.size, granularity: live.granularity, disabled: true });
      frozen.bits.copyFrom(live.bits);
      newWrites = live.cloneEmpty();
      drive.bitmaps.insert(newWrites);
      live.busy = true;
    }
    [job] = await runTransaction(engine, [
      {
        type: 'drive-backup',
        params: {
          jobId,
          device: drive.id,
          target: { kind: 'file', path: scratchPath, format: 'qcow2', mode: 'absolute-paths' },
          sync: 'none',
          autoFinalize: true,
          autoDismiss: true,
        },
      },
    ]);
    const backend = new FleeceBackend(jobImage(job), drive);
    exp = server.addBackendExport({
      name,
      description: o.description ?? `${drive.id} as of ${new Date().toISOString()}`,
      backend,
      readOnly: true,
      bitmaps: frozen ? [frozen] : [],
      allocationDepth: o.allocationDepth ?? false,
      writethrough: false,
    });
    pit = new PointInTimeExport(engine, server, drive, job, scratchDir, scratchPath, exp, backend, live, frozen, newWrites, clearOnSuccess);
    return pit;
  } catch (err) {
    if (!pit) {
      if (exp) await server.removeExport(exp.name).catch(() => {});
      if (job) {
        await job.cancel().catch(() => {});
        await job.gone;
      }
      if (newWrites) drive.bitmaps.release(newWrites);
      if (live) live.busy = false;
      await rm(scratchDir, { recursive: true, force: true }).catch(() => {});
    }
    throw err;
  } finally {
    release();
  }
}
