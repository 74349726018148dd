import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, watch } from 'vue';
import { api, errorMessage, isApiRequestError } from '../api';
import type { RequestInput } from '../../src-shared/api/contract';
import type { Preflight, RestoreReport, RestoreTarget } from '../../src-shared/api/domain';
import type { RestorePhase } from '../restore-plan';
import { useAppStore } from './app';
import { useJobsStore } from './jobs';
import { useToastsStore } from './toasts';

/** What the person chose to restore: one drive, or every drive of a machine group. */
export type RestoreSubject = { kind: 'drive'; driveId: string } | { kind: 'group'; name: string };

/** One drive's restore within a run. */
export interface RestoreItem {
  driveId: string;
  n: number;
  target: RestoreTarget;
  /** in place: the drive id, as the person confirmed it */
  confirm?: string;
  /** bytes per second; 0 = no limit */
  speed?: number;
  state: 'waiting' | 'running' | 'completed' | 'failed' | 'cancelled' | 'skipped';
  jobId: string | null;
  /** from restore.start, then the final one from restore.finished */
  report: RestoreReport | null;
  /** why it could not start, in the engine's words */
  error: string | null;
  /** the phase it was in when the person cancelled it */
  cancelledIn?: RestorePhase;
}

/**
 * A restore the wizard started: one drive, or each drive of a group one after another (the
 * engine restores drives one at a time; a group's drives share the point in time).
 */
export interface RestoreRun {
  subject: RestoreSubject;
  /** the point in time restored (ISO) */
  pointTime: string;
  items: RestoreItem[];
  /** the person asked to stop: the running restore is cancelled and the ones after it skipped */
  stopping: boolean;
  done: boolean;
  startedAt: number;
}

export type RestoreSpec = Pick<RestoreItem, 'driveId' | 'n' | 'target' | 'confirm' | 'speed'>;

/** reports of restores that ended before their start reply came in, kept briefly */
const EARLY_MEMORY = 20;

function startInput(spec: RestoreSpec): RequestInput<'restore.start'> {
  return {
    driveId: spec.driveId,
    n: spec.n,
    target: spec.target,
    ...(spec.confirm !== undefined ? { confirm: spec.confirm } : {}),
    ...(spec.speed ? { speed: spec.speed } : {}),
  };
}

/**
 * The wizard's restore run, kept here rather than in the screen so it survives leaving the
 * Restore screen: the run goes on, and coming back shows its progress or its result. Progress
 * itself is the jobs store's (`jobs.progress`); the end is `restore.finished`, which carries the
 * verification.
 */
export const useRestoreStore = defineStore('restore', () => {
  const app = useAppStore();
  const jobs = useJobsStore();
  const toasts = useToastsStore();

  const run = ref<RestoreRun | null>(null);
  const early = new Map<string, RestoreReport>();

  const running = computed(() => !!run.value && !run.value.done);
  const current = computed(() => run.value?.items.find((i) => i.state === 'running'));

  api.on('restore.finished', ({ report }) => settle(report));

  function settle(report: RestoreReport): void {
    const item = run.value?.items.find((i) => i.jobId === report.jobId);
    if (!item) {
      early.set(report.jobId, report);
      if (early.size > EARLY_MEMORY) early.delete(early.keys().next().value as string);
      return;
    }
    if (item.state !== 'running' || report.outcome === 'running') return;
    item.report = report;
    item.state = report.outcome;
    void next();
  }

  /** The next drive of the run, unless one failed or the person asked to stop. */
  async function next(): Promise<void> {
    const r = run.value;
    if (!r || r.done || r.items.some((i) => i.state === 'running')) return;
    const waiting = r.items.filter((i) => i.state === 'waiting');
    const stop = r.stopping || r.items.some((i) => i.state === 'failed' || i.state === 'cancelled');
    if (waiting.length === 0 || stop) {
      for (const i of waiting) i.state = 'skipped';
      r.done = true;
      return;
    }
    const item = waiting[0];
    try {
      const report = await api.request('restore.start', startInput(item));
      item.jobId = report.jobId;
      item.report = report;
      item.state = 'running';
      jobs.refresh().catch(() => {});
      takeEarly(report.jobId);
    } catch (err) {
      item.state = 'failed';
      item.error = errorMessage(err);
      toasts.error(err, `Could not start the restore of ${item.driveId}`);
      void next();
    }
  }

  function takeEarly(jobId: string): void {
    const report = early.get(jobId);
    if (!report) return;
    early.delete(jobId);
    settle(report);
  }

  function preflight(input: RequestInput<'restore.preflight'>): Promise<Preflight> {
    return api.request('restore.preflight', input);
  }

  /**
   * Starts a run. The first restore must start: when the engine refuses it, this rejects with its
   * sentence and no run is kept (the wizard stays where it was). The rest follow one by one.
   */
  async function start(subject: RestoreSubject, pointTime: string, specs: readonly RestoreSpec[]): Promise<void> {
    if (running.value) throw new Error('A restore is already running in this window; wait for it or cancel it.');
    if (specs.length === 0) throw new Error('Nothing to restore.');
    const first = await api.request('restore.start', startInput(specs[0]));
    run.value = {
      subject,
      pointTime,
      items: specs.map((s, i) => ({
        driveId: s.driveId,
        n: s.n,
        target: s.target,
        ...(s.confirm !== undefined ? { confirm: s.confirm } : {}),
        state: i === 0 ? 'running' : 'waiting',
        jobId: i === 0 ? first.jobId : null,
        report: i === 0 ? first : null,
        error: null,
      })),
      stopping: false,
      done: false,
      startedAt: Date.now(),
    };
    jobs.refresh().catch(() => {});
    takeEarly(first.jobId);
  }

  /** Cancels the running restore (in `phase`, as the screen saw it); the drives after it are not started. */
  async function cancel(phase?: RestorePhase): Promise<void> {
    const r = run.value;
    if (!r || r.done) return;
    r.stopping = true;
    const item = current.value;
    if (!item?.jobId) {
      void next();
      return;
    }
    if (phase) item.cancelledIn = phase;
    await jobs.cancel(item.jobId);
  }

  /** Forgets a finished run (the wizard starts over). */
  function clear(): void {
    if (run.value?.done) run.value = null;
  }

  // after a reconnect the end of a restore may have been missed: ask for its report
  watch(
    () => app.connectedGeneration,
    () => {
      const item = current.value;
      if (!item?.jobId) return;
      const jobId = item.jobId;
      api.request('restore.report', { jobId }).then(settle, (err: unknown) => {
        if (!isApiRequestError(err) || err.code !== 'NOT_FOUND' || item.state !== 'running') return;
        // Tidemark was restarted meanwhile: the restore did not finish
        item.state = 'failed';
        item.error = `Tidemark was restarted while this restore ran, so it did not finish (${err.message})`;
        void next();
      });
    },
  );

  return {
    run: readonly(run),
    running,
    current,
    preflight,
    start,
    cancel,
    clear,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useRestoreStore, import.meta.hot));
