import { access, constants, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { BlockEngine } from '../../engine/engine.js';
import { openImage } from '../../engine/formats/open.js';
import { PARTIAL_SUFFIX, RestoreJob } from '../../engine/jobs/restore-job.js';
import type { ChainsRepo, PointRow } from '../catalog/chains-repo.js';
import type { EventBus } from '../router/router.js';
import type { Preflight, RestoreReport, RestoreTarget } from '../../../src-shared/api/domain.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { formatSize } from '../../../src-shared/size.js';
import type { BackupService } from './backups.js';
import type { DrivesService } from './drives.js';
import type { JobsService } from './jobs.js';
import { compactTime } from './chain-naming.js';
import { freeSpace } from '../util/files.js';

const SPACE_MARGIN = 16 << 20;

interface Located {
  point: PointRow;
  n: number;
  /** the files a restore of this point reads: anchor first, the point last */
  links: PointRow[];
}

/**
 * Restores a point in time: pre-flight checks a person can read, then a restore job that
 * flattens the chain into a new image (or applies it to the drive in place), verifies it, and
 * reports. Nothing of the original changes unless the restore completed and verified.
 */
export class RestoreService {
  private readonly reports = new Map<string, RestoreReport>();

  constructor(
    private readonly engine: BlockEngine,
    private readonly chains: ChainsRepo,
    private readonly backups: BackupService,
    private readonly drives: DrivesService,
    private readonly jobs: JobsService,
    private readonly bus: EventBus,
  ) {
    jobs.onOutcome((jobId, outcome, error, job) => void this.finished(jobId, outcome, error, job instanceof RestoreJob ? job.report : undefined));
  }

  /** The drive's restorable history, numbered as `chains --json` numbers it (failed attempts have no number). */
  numbered(driveId: string): { point: PointRow; n: number }[] {
    let n = 0;
    return this.chains
      .drivePoints(driveId)
      .filter((p) => p.status !== 'failed')
      .map((point) => ({ point, n: ++n }));
  }

  /** N-th point, or (for a time) the latest point at or before it. */
  locate(driveId: string, which: number | string): Located {
    const all = this.numbered(driveId);
    if (all.length === 0) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' has no backups to restore.`);
    let found: { point: PointRow; n: number } | undefined;
    if (typeof which === 'number') {
      found = all.find((x) => x.n === which);
      if (!found) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' has points 1 to ${all.length}; there is no point ${which}.`);
    } else {
      const t = Date.parse(which);
      if (Number.isNaN(t)) throw new TidemarkError('INVALID_INPUT', `'${which}' is neither a point number nor an ISO-8601 time.`);
      found = all.filter((x) => Date.parse(x.point.pointInTime) <= t).at(-1);
      if (!found) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' has no point at or before ${new Date(t).toISOString()}; the first is ${all[0].point.pointInTime}.`);
    }
    if (found.point.status === 'running') throw new TidemarkError('BUSY', `Point ${found.n} is still being backed up.`);
    return { ...found, links: this.links(found.point) };
  }

  private links(point: PointRow): PointRow[] {
    const out = [point];
    for (let p = point; p.parentId !== null; ) {
      const parent = this.chains.point(p.parentId);
      if (!parent) break;
      out.unshift(parent);
      p = parent;
    }
    return out;
  }

  async preflight(driveId: string, n: number, target: RestoreTarget): Promise<Preflight> {
    const at = this.locate(driveId, n);
    const checks: Preflight['checks'] = [];

    let chainProblem: string | undefined;
    for (let i = 0; i < at.links.length && !chainProblem; i++) {
      const problem = await this.backups.checkPoint(at.links[i], i > 0 ? at.links[i - 1] : undefined);
      if (problem) chainProblem = `Link ${i + 1} of ${at.links.length} (${at.links[i].file}): ${problem.text}`;
    }
    checks.push({
      id: 'chain',
      label: 'Backup chain verified',
      ok: !chainProblem,
      detail: chainProblem ?? `${at.links.length} file(s) present, checksums match, qcow2 metadata sound, links as recorded.`,
    });

    const dataBytes = chainProblem ? 0 : await this.dataBytes(at.point.file);
    const folder = target.kind === 'file' ? dirname(resolve(target.path)) : dirname(this.driveOrThrow(driveId).driver.path);
    const free = await freeSpace(folder).catch(() => 0);
    const spaceOk = !chainProblem && free >= dataBytes * 1.05 + SPACE_MARGIN;
    checks.push({
      id: 'space',
      label: 'Free space at the target',
      ok: spaceOk,
      detail: chainProblem
        ? `${formatSize(free)} free in '${folder}'; how much the restore needs can't be told until the chain is sound.`
        : `${formatSize(free)} free in '${folder}'; the restore needs about ${formatSize(dataBytes)}${spaceOk ? '.' : ` plus a margin of ${formatSize(SPACE_MARGIN)}.`}`,
    });

    checks.push(await this.targetCheck(driveId, n, target, folder));

    if (target.kind === 'in-place') {
      const drive = this.engine.get(driveId);
      const job = drive && this.engine.jobs.jobUsing(drive);
      checks.push({
        id: 'idle',
        label: 'Drive idle',
        ok: !!drive && !job,
        detail: !drive ? `Drive '${driveId}' is not online.` : job ? `A ${job.type} job (${job.id}) is using the drive; wait for it or cancel it.` : 'No job is using the drive.',
      });
    } else {
      checks.push({ id: 'idle', label: 'Drive idle', ok: true, detail: 'A restore to a new file does not touch the drive.' });
    }

    return { ok: checks.every((c) => c.ok), checks, dataBytes, restorable: await this.restorable(driveId) };
  }

  private async targetCheck(driveId: string, n: number, target: RestoreTarget, folder: string): Promise<Preflight['checks'][number]> {
    const label = 'Target writable';
    if (target.kind === 'in-place') {
      const drive = this.engine.get(driveId);
      if (!drive) return { id: 'target', label, ok: false, detail: `Drive '${driveId}' is not online, so it cannot be restored in place.` };
      if (drive.driver.readOnly) return { id: 'target', label, ok: false, detail: 'The drive is read-only.' };
      const point = this.locate(driveId, n);
      if (point.point.virtualSize !== drive.virtualSize) {
        return { id: 'target', label, ok: false, detail: `The drive is ${drive.virtualSize} bytes and the backup ${point.point.virtualSize}: an in-place restore needs the same size; restore to a new file instead.` };
      }
      return { id: 'target', label, ok: true, detail: `'${drive.driver.path}' will be overwritten with the restored contents.` };
    }
    const path = resolve(target.path);
    const dirOk = await stat(folder).then((s) => s.isDirectory(), () => false);
    if (!dirOk) return { id: 'target', label, ok: false, detail: `The folder '${folder}' does not exist.` };
    const writable = await access(folder, constants.W_OK).then(() => true, () => false);
    if (!writable) return { id: 'target', label, ok: false, detail: `Tidemark cannot write to '${folder}' (read-only or no permission).` };
    const exists = await stat(path).then(() => true, () => false);
    if (exists && !target.force) return { id: 'target', label, ok: false, detail: `'${path}' already exists; choose another name, or allow overwriting it.` };
    if (this.engine.list().some((d) => resolve(d.driver.path) === path)) return { id: 'target', label, ok: false, detail: `'${path}' is an attached drive; restore in place instead.` };
    if (target.attachAs && (this.engine.get(target.attachAs) || (await this.drives.list()).some((d) => d.id === target.attachAs))) {
      return { id: 'target', label, ok: false, detail: `A drive with id '${target.attachAs}' already exists; choose another id to attach the restored image as.` };
    }
    return { id: 'target', label, ok: true, detail: exists ? `'${path}' will be replaced (you allowed it).` : `A new ${target.format} file '${path}'.` };
  }

  /** Points whose every link is present and not known to be damaged (a quick check: no hashing). */
  private async restorable(driveId: string): Promise<number[]> {
    const out: number[] = [];
    for (const { point, n } of this.numbered(driveId)) {
      if (point.status === 'running') continue;
      const links = this.links(point);
      let ok = true;
      for (const l of links) {
        if (l.status === 'corrupt' || l.status === 'missing' || !(await stat(l.file).then(() => true, () => false))) {
          ok = false;
          break;
        }
      }
      if (ok) out.push(n);
    }
    return out;
  }

  private async dataBytes(file: string): Promise<number> {
    const d = await openImage(file, { readOnly: true, format: 'qcow2', opener: this.engine.opener });
    try {
      return (await d.blockStatus(0, d.virtualSize)).filter((e) => !e.zero).reduce((n, e) => n + e.length, 0);
    } finally {
      await d.close();
    }
  }

  private driveOrThrow(driveId: string) {
    const d = this.engine.get(driveId);
    if (!d) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' is not online.`);
    return d;
  }

  async start(driveId: string, n: number, target: RestoreTarget, confirm?: string, speed = 0): Promise<RestoreReport> {
    if (target.kind === 'in-place' && confirm !== driveId) {
      throw new TidemarkError('INVALID_INPUT', `Restoring in place overwrites drive '${driveId}'. Confirm by giving its id.`);
    }
    const pre = await this.preflight(driveId, n, target);
    if (!pre.ok) {
      const failed = pre.checks.filter((c) => !c.ok);
      const still = pre.restorable.length ? ` Points still restorable: ${pre.restorable.join(', ')}.` : '';
      throw new TidemarkError(failed.some((c) => c.id === 'space') ? 'NO_SPACE' : 'INVALID_INPUT', `The restore cannot start: ${failed.map((c) => `${c.label}: ${c.detail}`).join(' ')}${still}`);
    }
    const at = this.locate(driveId, n);
    const drive = target.kind === 'in-place' ? this.driveOrThrow(driveId) : undefined;
    const targetPath = target.kind === 'file' ? resolve(target.path) : `${drive!.driver.path}.restore`;
    const id = `restore-${driveId}-${compactTime(new Date().toISOString())}-${Math.floor(Math.random() * 1e6)}`;
    this.engine.jobs.checkId(id);
    const job = new RestoreJob(
      {
        id,
        pointFile: at.point.file,
        targetPath,
        format: target.kind === 'file' ? target.format : drive!.driver.format,
        compress: target.kind === 'file' && !!target.compress,
        inPlace: drive,
        speed,
        opener: this.engine.opener,
        digest: (offset, parts) => this.engine.pool.contentDigest(offset, parts),
      },
      this.engine.jobs.sink,
      this.engine.jobs.onNull,
    );
    this.engine.jobs.add(job);
    const report: RestoreReport = {
      jobId: id,
      driveId,
      n,
      pointTime: at.point.pointInTime,
      outcome: 'running',
      target: drive ? drive.driver.path : targetPath,
      format: target.kind === 'file' ? target.format : drive!.driver.format,
      verified: false,
      sourceHash: null,
      restoredHash: null,
      dataBytes: pre.dataBytes,
      changedBytes: null,
      durationMs: null,
      attachedAs: target.kind === 'file' ? (target.attachAs ?? null) : null,
      error: null,
    };
    this.reports.set(id, { ...report, durationMs: Date.now() });
    job.start();
    this.jobs.track(job, { driveId, label: 'restore', kind: 'restore', scratchFile: `${targetPath}${PARTIAL_SUFFIX}` });
    return report;
  }

  report(jobId: string): RestoreReport {
    const r = this.reports.get(jobId);
    if (!r) throw new TidemarkError('NOT_FOUND', `No restore '${jobId}'.`);
    return r.outcome === 'running' ? { ...r, durationMs: null } : r;
  }

  private async finished(jobId: string, outcome: 'completed' | 'failed' | 'cancelled', error: string | null, result: RestoreJob['report']): Promise<void> {
    const r = this.reports.get(jobId);
    if (!r) return;
    const started = r.durationMs ?? Date.now();
    const done: RestoreReport = { ...r, outcome, error, durationMs: Date.now() - started };
    if (outcome === 'completed' && result) {
      done.verified = result.verified;
      done.sourceHash = result.sourceHash;
      done.restoredHash = result.restoredHash;
      done.changedBytes = result.changedBytes ?? null;
      if (r.attachedAs) {
        try {
          await this.drives.add({ path: r.target, id: r.attachedAs });
        } catch (err) {
          done.error = `Restored and verified, but attaching it as drive '${r.attachedAs}' failed: ${err instanceof Error ? err.message : String(err)}`;
          done.attachedAs = null;
        }
      }
    } else {
      done.attachedAs = null;
    }
    this.reports.set(jobId, done);
    this.bus.emit('restore.finished', { report: done });
  }
}

