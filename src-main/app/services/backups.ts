import { rm, rmdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { BlockEngine } from '../../engine/engine.js';
import type { Drive } from '../../engine/drive.js';
import { createImage, openImage } from '../../engine/formats/open.js';
import { runTransaction, type TransactionAction } from '../../engine/jobs/transaction.js';
import type { Catalog } from '../catalog/catalog.js';
import type { ChainMode, ChainRow, ChainsRepo, PointKind, PointRow } from '../catalog/chains-repo.js';
import type { GroupsRepo } from '../catalog/groups-repo.js';
import type { EventBus } from '../router/router.js';
import type { BackupPoint, BackupSettings, ChainSummary, VerifyReport } from '../../../src-shared/api/domain.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { formatSize } from '../../../src-shared/size.js';
import type { BitmapsService } from './bitmaps.js';
import type { JobsService } from './jobs.js';
import { chainBitmapName, chainFolder, compactTime, pointFileName } from './chain-naming.js';
import { writeManifest } from './manifest.js';
import { ensureWritableFolder, freeSpace, fsyncFile, syncDir } from '../util/files.js';

/** Space kept free beyond the estimate: metadata, and the rest of the system. */
const SPACE_MARGIN = 64 << 20;

export interface BackupRequest {
  driveId?: string;
  group?: string;
  dest?: string;
  force?: 'full' | 'diff';
  speed?: number;
}

interface Plan {
  drive: Drive;
  kind: PointKind;
  reason: string;
  chain: ChainRow;
  newChain: boolean;
  /** the chain this one replaces (its bitmap is dropped once the new anchor is complete) */
  supersedes?: ChainRow;
  parent?: PointRow;
  file: string;
  seq: number;
  estimate: number;
}

/**
 * "Back up now": Tidemark is the management layer QEMU leaves to the operator. The catalog
 * knows each drive's chain and the bitmap that tracks it, so one click decides: a new chain
 * (full backup, fresh bitmap) when there is none or the bitmap cannot be trusted, otherwise an
 * incremental into a new qcow2 backed by the chain's last image (or a differential against the
 * anchor). A failed attempt costs no dirty bit and leaves the chain as it was.
 */
export class BackupService {
  private readonly pending = new Map<string, { pointId: number; plan: Plan; started: number }>();
  private jobCounter = 0;

  constructor(
    private readonly engine: BlockEngine,
    private readonly catalog: Catalog,
    private readonly chains: ChainsRepo,
    private readonly groups: GroupsRepo,
    private readonly bitmaps: BitmapsService,
    private readonly jobs: JobsService,
    private readonly bus: EventBus,
  ) {
    jobs.onOutcome((jobId, outcome, error) => {
      const p = this.pending.get(jobId);
      if (!p) return;
      this.pending.delete(jobId);
      void (outcome === 'completed' ? this.succeeded(p.pointId, p.plan, p.started) : this.failed(p.pointId, p.plan, error ?? 'The backup was cancelled.')).catch((err: unknown) =>
        this.fail(p.pointId, `Recording the outcome failed: ${String(err)}`),
      );
    });
  }

  // ---------------------------------------------------------------- settings and listing

  settings(driveId: string): BackupSettings {
    const s = this.catalog.driveSettings(driveId);
    if (!s) throw new TidemarkError('NOT_FOUND', `No drive '${driveId}' in the catalog (drives given on the command line cannot be backed up from the app).`);
    return { driveId, backupDir: s.backupDir, backupMode: s.backupMode };
  }

  setSettings(driveId: string, v: { backupDir?: string; backupMode?: ChainMode }): BackupSettings {
    this.settings(driveId);
    this.catalog.transaction(() => this.catalog.setDriveSettings(driveId, { backupDir: v.backupDir === undefined ? undefined : resolve(v.backupDir), backupMode: v.backupMode }));
    return this.settings(driveId);
  }

  list(driveId?: string): ChainSummary[] {
    const numbers = new Map<number, number>();
    const drives = driveId ? [driveId] : [...new Set(this.chains.chains().map((c) => c.driveId))];
    for (const d of drives) {
      let n = 0;
      for (const p of this.chains.drivePoints(d)) if (p.status !== 'failed') numbers.set(p.id, ++n);
    }
    return this.chains.chains(driveId).map((c) => {
      const active = this.chains.activeChain(c.driveId)?.id === c.id;
      return {
        driveId: c.driveId,
        chainId: c.id,
        folder: c.folder,
        mode: c.mode,
        bitmap: c.bitmap,
        createdAt: c.createdAt,
        closedAt: c.closedAt,
        active,
        points: this.chains.points(c.id).map((p) => toApiPoint(p, numbers.get(p.id) ?? null)),
      };
    });
  }

  // ---------------------------------------------------------------- back up now

  async run(req: BackupRequest): Promise<{ jobId: string; driveId: string; kind: PointKind; reason: string }[]> {
    const driveIds = req.group ? this.groupDrives(req.group) : [req.driveId!];
    if (req.dest !== undefined) for (const id of driveIds) this.setSettings(id, { backupDir: req.dest });
    const plans: Plan[] = [];
    for (const id of driveIds) plans.push(await this.plan(id, req.force));
    await this.preflight(plans);

    // 1. every chain's bitmap exists before the backups (a new anchor's bitmap is reset by its full backup, atomically)
    for (const p of plans) await this.ensureBitmap(p);

    // 2. record the attempts, create incremental targets, then one transaction: one point in time for all drives
    const time = new Date().toISOString();
    const started = Date.now();
    const actions: TransactionAction[] = [];
    const records: { jobId: string; pointId: number; plan: Plan }[] = [];
    try {
      for (const p of plans) {
        // unique across runs too: the job history keeps them all
        const jobId = `backup-${p.drive.id}-${compactTime(time)}-${++this.jobCounter}`;
        const pointId = this.record(p, time, jobId);
        records.push({ jobId, pointId, plan: p });
        if (p.kind !== 'full') {
          await createImage(p.file, { format: 'qcow2', virtualSize: p.drive.virtualSize, backingFile: basename(p.parent!.file), backingFormat: 'qcow2', opener: this.engine.opener });
        }
        actions.push({
          type: 'drive-backup',
          params: {
            jobId,
            device: p.drive.id,
            sync: p.kind === 'full' ? 'full' : 'bitmap',
            bitmap: p.chain.bitmap,
            // full + on-success: the bitmap restarts at the anchor's point in time; diff: it keeps everything since the anchor
            bitmapMode: p.kind === 'diff' ? 'never' : 'on-success',
            target: { kind: 'file', path: p.file, format: 'qcow2', mode: p.kind === 'full' ? 'absolute-paths' : 'existing' },
            speed: req.speed,
          },
        });
      }
      const jobs = await runTransaction(this.engine, actions, plans.length > 1 ? 'grouped' : 'individual');
      for (const r of records) {
        const job = jobs.find((j) => j.id === r.jobId)!;
        this.pending.set(r.jobId, { pointId: r.pointId, plan: r.plan, started });
        this.jobs.track(job, { driveId: r.plan.drive.id, label: r.plan.kind, kind: 'backup' });
      }
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      for (const r of records) await this.failed(r.pointId, r.plan, message);
      throw err;
    }
    for (const p of plans) this.bus.emit('backups.changed', { driveId: p.drive.id });
    return records.map((r) => ({ jobId: r.jobId, driveId: r.plan.drive.id, kind: r.plan.kind, reason: r.plan.reason }));
  }

  private groupDrives(name: string): string[] {
    if (!this.groups.exists(name)) throw new TidemarkError('NOT_FOUND', `No machine group '${name}'.`);
    const drives = this.groups.members(name);
    if (drives.length === 0) throw new TidemarkError('INVALID_INPUT', `Machine group '${name}' has no drives.`);
    return drives;
  }

  /** Decides full, incremental or differential for one drive, and says why. */
  private async plan(driveId: string, force: 'full' | 'diff' | undefined): Promise<Plan> {
    const drive = this.engine.get(driveId);
    if (!drive) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' is not online, so it cannot be backed up.`);
    const settings = this.settings(driveId);
    if (!settings.backupDir) throw new TidemarkError('INVALID_INPUT', `Choose a backup folder for drive '${driveId}' first.`);
    const busy = this.engine.jobs.jobUsing(drive);
    if (busy) throw new TidemarkError('BUSY', `Drive '${driveId}' is busy: a ${busy.type} job (${busy.id}) is using it.`);
    const mode: ChainMode = force === 'diff' ? 'differential' : settings.backupMode;
    const current = this.chains.activeChain(driveId);
    const anchor = (reason: string): Plan => this.anchorPlan(drive, settings.backupDir!, mode, reason, current);
    if (force === 'full') return anchor('You asked for a full backup: it starts a new chain.');
    if (!current) return anchor('First backup of this drive: a full backup starts its chain.');
    const last = this.chains.lastComplete(current.id);
    const first = this.chains.points(current.id)[0];
    if (!last || !first || first.status !== 'complete') return anchor('The chain has no complete full backup yet: a full backup starts a new chain.');
    if (current.mode !== mode) return anchor(`The backup mode is now ${mode}: a full backup starts a new chain.`);
    if (current.virtualSize !== drive.virtualSize) return anchor("The drive's size changed: a full backup starts a new chain.");
    if (resolve(dirname(current.folder), '..') !== resolve(settings.backupDir)) return anchor('The backup folder changed: a full backup starts a new chain there.');
    const bitmap = drive.bitmaps.find(current.bitmap);
    if (!bitmap) return anchor(`The bitmap '${current.bitmap}' that tracks this chain is gone, so changes since the last backup are unknown: a full backup starts a new chain.`);
    if (bitmap.inconsistent) {
      return anchor(`The bitmap '${current.bitmap}' was not saved cleanly (Tidemark or QEMU stopped unexpectedly), so some changes may be missing from it: a full backup starts a new chain.`);
    }
    if (bitmap.busy) throw new TidemarkError('BUSY', `Bitmap '${current.bitmap}' of drive '${driveId}' is in use by another operation; try again when it finishes.`);
    const parent = mode === 'differential' ? first : last;
    if (!(await stat(parent.file).then(() => true, () => false))) {
      return anchor(`The chain's file '${parent.file}' is missing: a full backup starts a new chain.`);
    }
    const seq = this.chains.nextSeq(current.id);
    const kind: PointKind = mode === 'differential' ? 'diff' : 'inc';
    const time = new Date().toISOString();
    const reason =
      kind === 'inc' ? `Incremental: ${formatSize(bitmap.count)} changed since the last backup.` : `Differential: ${formatSize(bitmap.count)} changed since the full backup.`;
    return { drive, kind, reason, chain: current, newChain: false, parent, file: join(current.folder, pointFileName(seq, kind, time)), seq, estimate: bitmap.count };
  }

  private anchorPlan(drive: Drive, dest: string, mode: ChainMode, reason: string, supersedes: ChainRow | undefined): Plan {
    const createdAt = new Date().toISOString();
    // two chains started within one second (a retry) get a suffix: ids and folders never collide
    let id = `${drive.id}-${compactTime(createdAt)}`;
    let folder = chainFolder(dest, drive.id, createdAt);
    for (let n = 2; this.chains.chain(id) || this.chains.chains(drive.id).some((c) => c.folder === folder); n++) {
      id = `${drive.id}-${compactTime(createdAt)}-${n}`;
      folder = `${chainFolder(dest, drive.id, createdAt)}-${n}`;
    }
    const chain: ChainRow = { id, driveId: drive.id, folder, bitmap: chainBitmapName(id), mode, virtualSize: drive.virtualSize, createdAt, closedAt: null };
    return { drive, kind: 'full', reason, chain, newChain: true, supersedes, file: join(folder, pointFileName(1, 'full', createdAt)), seq: 1, estimate: drive.virtualSize };
  }

  /** Writable folder, enough free space for what will be copied, drive not busy. */
  private async preflight(plans: Plan[]): Promise<void> {
    const need = new Map<string, number>();
    for (const p of plans) {
      const folder = p.newChain ? p.chain.folder : dirname(p.file);
      await ensureWritableFolder(folder);
      const estimate = p.kind === 'full' ? await this.allocatedBytes(p.drive) : p.estimate;
      need.set(folder, (need.get(folder) ?? 0) + estimate);
    }
    for (const [folder, bytes] of need) {
      const free = await freeSpace(folder);
      if (free < bytes * 1.05 + SPACE_MARGIN) {
        throw new TidemarkError(
          'NO_SPACE',
          `Not enough free space in '${folder}': the backup needs about ${formatSize(bytes)} plus ${formatSize(SPACE_MARGIN)} of margin, and ${formatSize(free)} is free.`,
        );
      }
    }
  }

  /** Bytes of data a full backup copies: the drive's allocated, non-zero extents. */
  private async allocatedBytes(drive: Drive): Promise<number> {
    let n = 0;
    for (const e of await drive.blockStatus(0, drive.virtualSize)) if (!e.zero) n += e.length;
    return n;
  }

  private async ensureBitmap(p: Plan): Promise<void> {
    const existing = p.drive.bitmaps.find(p.chain.bitmap);
    if (existing && !existing.inconsistent) return;
    if (existing) await this.engine.bitmapCommands.remove(p.drive.id, p.chain.bitmap);
    const qcow2 = p.drive.driver.format === 'qcow2';
    await this.bitmaps.add({ driveId: p.drive.id, name: p.chain.bitmap, persistent: qcow2 || undefined, sidecar: qcow2 ? undefined : true });
  }

  private record(p: Plan, time: string, jobId: string): number {
    return this.catalog.transaction(() => {
      if (p.newChain) this.chains.insertChain({ ...p.chain, createdAt: p.chain.createdAt });
      return this.chains.insertPoint({
        chainId: p.chain.id,
        seq: p.seq,
        kind: p.kind,
        parentId: p.parent?.id ?? null,
        pointInTime: time,
        file: p.file,
        virtualSize: p.drive.virtualSize,
        status: 'running',
        jobId,
      });
    });
  }

  /** The job completed and closed its target: make it durable, checksum it, and only then call it complete. */
  private async succeeded(pointId: number, plan: Plan, started: number): Promise<void> {
    await fsyncFile(plan.file);
    await syncDir(dirname(plan.file));
    const sha256 = await this.engine.pool.hashFile(plan.file);
    const fileSize = (await stat(plan.file)).size;
    this.catalog.transaction(() => {
      this.chains.completePoint(pointId, { fileSize, bytesCopied: fileSize, durationMs: Date.now() - started, sha256 });
      if (plan.newChain && plan.supersedes) this.chains.closeChain(plan.supersedes.id, new Date().toISOString());
    });
    await writeManifest(plan.chain, this.chains.points(plan.chain.id));
    if (plan.newChain && plan.supersedes) {
      // the old chain is complete history now: stop paying for its bitmap
      const old = plan.drive.bitmaps.find(plan.supersedes.bitmap);
      if (old && !old.busy) await this.bitmaps.remove({ driveId: plan.drive.id, name: plan.supersedes.bitmap }).catch(() => {});
      await writeManifest({ ...plan.supersedes, closedAt: new Date().toISOString() }, this.chains.points(plan.supersedes.id)).catch(() => {});
    }
    this.bus.emit('backups.changed', { driveId: plan.drive.id });
  }

  /** The attempt failed: its file goes, the chain stays as it was (the bitmap kept its bits). */
  private async failed(pointId: number, plan: Plan, error: string): Promise<void> {
    await unlink(plan.file).catch(() => {});
    this.fail(pointId, error);
    if (plan.newChain) {
      this.catalog.transaction(() => this.chains.closeChain(plan.chain.id, new Date().toISOString()));
      // nothing references the fresh bitmap: don't leave it recording
      const b = plan.drive.bitmaps.find(plan.chain.bitmap);
      if (b && !b.busy && this.engine.get(plan.drive.id)) await this.bitmaps.remove({ driveId: plan.drive.id, name: plan.chain.bitmap }).catch(() => {});
    }
    await writeManifest(this.chains.chain(plan.chain.id) ?? plan.chain, this.chains.points(plan.chain.id)).catch(() => {});
    this.bus.emit('backups.changed', { driveId: plan.drive.id });
  }

  private fail(pointId: number, error: string): void {
    this.catalog.transaction(() => this.chains.setPointStatus(pointId, 'failed', error));
  }

  // ---------------------------------------------------------------- health

  /** Every file present, checksums match, qcow2 metadata sound, backing links and sizes as recorded. */
  async verify(chainId: string): Promise<VerifyReport> {
    const chain = this.chains.chain(chainId);
    if (!chain) throw new TidemarkError('NOT_FOUND', `No chain '${chainId}'.`);
    const numbers = new Map(this.list(chain.driveId).flatMap((c) => c.points.map((p) => [p.id, p.n] as const)));
    const problems: VerifyReport['problems'] = [];
    const points = this.chains.points(chainId).filter((p) => p.status !== 'failed' && p.status !== 'running');
    const byId = new Map(points.map((p) => [p.id, p]));
    for (const p of points) {
      const problem = await this.checkPoint(p, p.parentId === null ? undefined : byId.get(p.parentId));
      const status = problem === undefined ? 'complete' : problem.missing ? 'missing' : 'corrupt';
      if (problem) problems.push({ n: numbers.get(p.id) ?? p.seq, file: p.file, problem: problem.text });
      if (status !== p.status) this.catalog.transaction(() => this.chains.setPointStatus(p.id, status, problem?.text ?? null));
    }
    await writeManifest(chain, this.chains.points(chainId)).catch(() => {});
    this.bus.emit('backups.changed', { driveId: chain.driveId });
    return { chainId, ok: problems.length === 0, checked: points.length, problems };
  }

  async checkPoint(p: PointRow, parent: PointRow | undefined): Promise<{ text: string; missing?: boolean } | undefined> {
    const st = await stat(p.file).catch(() => undefined);
    if (!st) return { text: `The file '${p.file}' is missing.`, missing: true };
    if (p.sha256) {
      const sum = await this.engine.pool.hashFile(p.file);
      if (sum !== p.sha256) return { text: `The file '${basename(p.file)}' changed after the backup (its checksum no longer matches).` };
    }
    let driver;
    try {
      driver = await openImage(p.file, { readOnly: true, format: 'qcow2', opener: this.engine.opener });
    } catch (err) {
      return { text: `'${basename(p.file)}' is not a sound qcow2 image: ${err instanceof Error ? err.message : String(err)}` };
    }
    try {
      const info = await driver.info();
      if (info.virtualSize !== p.virtualSize) return { text: `'${basename(p.file)}' has size ${info.virtualSize}, the catalog recorded ${p.virtualSize}.` };
      const expected = parent ? resolve(parent.file) : undefined;
      const actual = info.backingFilename ? resolve(info.backingFilename) : undefined;
      if (expected !== actual) return { text: `'${basename(p.file)}' is backed by '${actual ?? 'nothing'}', the catalog recorded '${expected ?? 'nothing'}'.` };
    } finally {
      await driver.close();
    }
    return undefined;
  }

  /** Deletes a whole chain: its files, its manifest, its catalog rows, and its bitmap if it was the active one. */
  async deleteChain(chainId: string): Promise<void> {
    const chain = this.chains.chain(chainId);
    if (!chain) throw new TidemarkError('NOT_FOUND', `No chain '${chainId}'.`);
    const points = this.chains.points(chainId);
    if (points.some((p) => p.status === 'running')) throw new TidemarkError('BUSY', 'A backup into this chain is running; cancel it first.');
    const drive = this.engine.get(chain.driveId);
    const bitmap = drive?.bitmaps.find(chain.bitmap);
    if (bitmap?.busy) throw new TidemarkError('BUSY', `The chain's bitmap '${chain.bitmap}' is in use; try again when the job finishes.`);
    this.catalog.transaction(() => this.chains.deleteChain(chainId));
    for (const p of points) await unlink(p.file).catch(() => {});
    await rm(join(chain.folder, 'chain.json'), { force: true });
    await rmdir(chain.folder).catch(() => {});
    if (drive && bitmap) await this.bitmaps.remove({ driveId: drive.id, name: chain.bitmap }).catch(() => {});
    this.bus.emit('backups.changed', { driveId: chain.driveId });
  }

  /** Start-up recovery: attempts a dead process left running have failed; their files go. */
  async recover(): Promise<number> {
    const running = this.chains.running();
    for (const p of running) {
      await unlink(p.file).catch(() => {});
      this.catalog.transaction(() => this.chains.setPointStatus(p.id, 'failed', 'Tidemark stopped while this backup was running.'));
      const chain = this.chains.chain(p.chainId);
      if (chain && p.kind === 'full') this.catalog.transaction(() => this.chains.closeChain(chain.id, new Date().toISOString()));
    }
    return running.length;
  }

  get chainsRepo(): ChainsRepo {
    return this.chains;
  }
}


export function toApiPoint(p: PointRow, n: number | null): BackupPoint {
  return {
    id: p.id,
    n,
    seq: p.seq,
    kind: p.kind,
    file: p.file,
    time: p.pointInTime,
    status: p.status,
    virtualSize: p.virtualSize,
    fileSize: p.fileSize,
    bytesCopied: p.bytesCopied,
    durationMs: p.durationMs,
    sha256: p.sha256,
    error: p.error,
  };
}
