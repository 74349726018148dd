import type { BlockEngine } from '../../engine/engine.js';
import type { Job } from '../../engine/jobs/job.js';
import type { EventBus } from '../router/router.js';
import type { JobsRepo } from '../catalog/jobs-repo.js';
import type { JobSummary } from '../../../src-shared/api/domain.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { unlink } from 'node:fs/promises';
import { PARTIAL_SUFFIX } from '../../engine/jobs/restore-job.js';

/** Progress events per job per second, at most (the UI asks for ≤ 10; 4 is smooth enough). */
const PROGRESS_HZ = 4;
/** The rate is measured over this window. */
const RATE_WINDOW_MS = 3000;

interface Tracked {
  job: Job;
  driveId: string;
  label: string;
  kind: 'backup' | 'restore';
  startedAt: string;
  historyId: number;
  samples: { t: number; bytes: number }[];
  lastSent?: string;
}

export type JobOutcomeListener = (jobId: string, outcome: 'completed' | 'failed' | 'cancelled', error: string | null, job: Job) => void;

/**
 * The app's view of engine jobs: who they are for, live progress with rate and ETA (as events,
 * throttled), history in the catalog, and the pause/resume/cancel/speed verbs.
 */
export class JobsService {
  private readonly tracked = new Map<string, Tracked>();
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<JobOutcomeListener>();

  constructor(
    private readonly engine: BlockEngine,
    private readonly repo: JobsRepo,
    private readonly bus: EventBus,
    private readonly log?: (message: string) => void,
  ) {
    engine.jobs.on('event', (name, data) => {
      if (name === 'BLOCK_JOB_COMPLETED') this.finished(String(data.device), data.error === undefined ? 'completed' : 'failed', (data.error as string | undefined) ?? null);
      else if (name === 'BLOCK_JOB_CANCELLED') this.finished(String(data.device), 'cancelled', null);
    });
  }

  /**
   * Start-up recovery: jobs a dead process left running failed, and their scratch files (a
   * restore's partial image) go. Only files named as scratch files are ever removed.
   */
  async recover(): Promise<number> {
    for (const file of this.repo.runningScratchFiles()) {
      if (!file.endsWith(PARTIAL_SUFFIX)) continue;
      await unlink(file).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') this.log?.(`Could not remove ${file} left by an interrupted job: ${err.message}`);
      });
    }
    return this.repo.failRunning(new Date().toISOString(), 'Tidemark stopped while this job was running.');
  }

  onOutcome(listener: JobOutcomeListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Starts following an engine job the app created. */
  track(job: Job, meta: { driveId: string; label: string; kind: 'backup' | 'restore'; scratchFile?: string }): void {
    const startedAt = new Date().toISOString();
    const historyId = this.repo.start({ jobId: job.id, kind: meta.kind, label: meta.label, driveId: meta.driveId, startedAt, scratchFile: meta.scratchFile });
    this.tracked.set(job.id, { job, driveId: meta.driveId, label: meta.label, kind: meta.kind, startedAt, historyId, samples: [{ t: Date.now(), bytes: job.current }] });
    this.timer ??= setInterval(() => this.tick(), 1000 / PROGRESS_HZ);
    this.timer.unref();
  }

  list(): JobSummary[] {
    return [...this.tracked.values()].map((t) => this.summary(t));
  }

  history(limit?: number) {
    return this.repo.recent(limit);
  }

  pause(id: string): void {
    this.engine.jobs.pause(this.get(id).job.id);
    this.push(this.get(id), true);
  }

  resume(id: string): void {
    this.engine.jobs.resume(this.get(id).job.id);
    this.push(this.get(id), true);
  }

  async cancel(id: string): Promise<void> {
    const t = this.get(id);
    const cancelling = this.engine.jobs.cancel(t.job.id, { force: true });
    // answer at once; the outcome comes as jobs.finished
    cancelling.catch(() => {});
  }

  setSpeed(id: string, speed: number): void {
    this.engine.jobs.setSpeed(this.get(id).job.id, speed);
  }

  private get(id: string): Tracked {
    const t = this.tracked.get(id);
    if (!t) throw new TidemarkError('NOT_FOUND', `No running job '${id}'.`);
    return t;
  }

  private summary(t: Tracked): JobSummary {
    const now = Date.now();
    const window = t.samples.filter((s) => now - s.t <= RATE_WINDOW_MS);
    const first = window[0] ?? t.samples.at(-1)!;
    const elapsed = (now - first.t) / 1000;
    const rate = elapsed > 0 ? Math.max(0, (t.job.current - first.bytes) / elapsed) : 0;
    const left = Math.max(0, t.job.total - t.job.current);
    return {
      id: t.job.id,
      kind: t.kind,
      driveId: t.driveId,
      label: t.label,
      status: t.job.status,
      bytesDone: t.job.current,
      bytesTotal: t.job.total,
      rate,
      etaSeconds: left === 0 ? 0 : rate > 0 ? left / rate : null,
      speedLimit: t.job.speed,
      paused: t.job.paused,
      startedAt: t.startedAt,
      error: t.job.error ?? null,
    };
  }

  private tick(): void {
    const now = Date.now();
    for (const t of this.tracked.values()) {
      t.samples.push({ t: now, bytes: t.job.current });
      while (t.samples.length > 2 && now - t.samples[0].t > RATE_WINDOW_MS) t.samples.shift();
      this.push(t, false);
    }
    if (this.tracked.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** Sends progress when something changed (or always, after a verb). */
  private push(t: Tracked, force: boolean): void {
    const job = this.summary(t);
    const key = `${job.status}:${job.bytesDone}:${job.bytesTotal}:${job.paused}:${job.speedLimit}`;
    if (!force && key === t.lastSent) return;
    t.lastSent = key;
    this.bus.emit('jobs.progress', { job });
  }

  private finished(jobId: string, outcome: 'completed' | 'failed' | 'cancelled', error: string | null): void {
    const t = this.tracked.get(jobId);
    if (!t) return;
    this.tracked.delete(jobId);
    const job = { ...this.summary(t), error };
    this.repo.finish(t.historyId, { endedAt: new Date().toISOString(), outcome, bytes: t.job.current, error: error ?? undefined });
    this.bus.emit('jobs.finished', { job, outcome });
    for (const l of this.listeners) l(jobId, outcome, error, t.job);
  }
}
