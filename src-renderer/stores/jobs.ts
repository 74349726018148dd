import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef } from 'vue';
import { api } from '../api';
import type { EventPayload } from '../../src-shared/api/contract';
import type { JobHistory, JobSummary } from '../../src-shared/api/domain';
import { formatDuration, formatSize, jobTitle } from '../format';
import { resyncOnConnect } from './app';
import { useNotificationsStore } from './notifications';
import { useToastsStore } from './toasts';

/** One throughput reading: seconds since the job started, bytes per second (null while paused). */
export interface RateSample {
  x: number;
  y: number | null;
}

/** Samples kept per job for its throughput chart. */
export const MAX_SAMPLES = 60;
const HISTORY_LIMIT = 200;
/** finished job ids remembered, so a late progress event or a stale list cannot bring one back */
const FINISHED_MEMORY = 200;

function byStart(a: JobSummary, b: JobSummary): number {
  return a.startedAt.localeCompare(b.startedAt) || a.id.localeCompare(b.id);
}

/**
 * Running jobs (from `jobs.list`, then every `jobs.progress`), their recent throughput, and the
 * job history. Each progress event replaces one job's summary and appends one sample to a
 * fresh, frozen array, so only that job's card and chart see a change.
 */
export const useJobsStore = defineStore('jobs', () => {
  const toasts = useToastsStore();
  const notifications = useNotificationsStore();

  const running = shallowRef<readonly JobSummary[]>([]);
  const samples = shallowRef<ReadonlyMap<string, readonly RateSample[]>>(new Map());
  const history = shallowRef<readonly JobHistory[]>([]);
  const loaded = ref(false);
  const historyLoaded = ref(false);
  const loadError = ref<string | null>(null);
  const historyError = ref<string | null>(null);

  const finished = new Set<string>();
  /** bumps on every event, so a slower jobs.list reply does not roll the list back */
  let version = 0;

  function rememberFinished(id: string): void {
    finished.add(id);
    if (finished.size > FINISHED_MEMORY) finished.delete(finished.values().next().value as string);
  }

  function sampleOf(job: JobSummary): RateSample {
    const started = Date.parse(job.startedAt);
    const x = Number.isNaN(started) ? 0 : Math.max(0, (Date.now() - started) / 1000);
    return { x: Math.round(x * 10) / 10, y: job.paused ? null : job.rate };
  }

  function upsert(job: JobSummary, withSample: boolean): void {
    const list = running.value;
    const i = list.findIndex((j) => j.id === job.id);
    const next = i >= 0 ? list.map((j, k) => (k === i ? job : j)) : [...list, job].sort(byStart);
    running.value = next;
    if (withSample) {
      const prev = samples.value.get(job.id) ?? [];
      const series = Object.freeze([...(prev.length >= MAX_SAMPLES ? prev.slice(prev.length - MAX_SAMPLES + 1) : prev), sampleOf(job)]);
      const map = new Map(samples.value);
      map.set(job.id, series);
      samples.value = map;
    }
  }

  function drop(id: string): void {
    if (running.value.some((j) => j.id === id)) running.value = running.value.filter((j) => j.id !== id);
    if (samples.value.has(id)) {
      const map = new Map(samples.value);
      map.delete(id);
      samples.value = map;
    }
  }

  api.on('jobs.progress', ({ job }) => {
    if (finished.has(job.id)) return;
    version++;
    upsert(job, true);
  });

  api.on('jobs.finished', (payload) => {
    version++;
    rememberFinished(payload.job.id);
    drop(payload.job.id);
    announce(payload);
    reloadHistory();
  });

  function announce({ job, outcome }: EventPayload<'jobs.finished'>): void {
    const title = jobTitle(job);
    const started = Date.parse(job.startedAt);
    const took = Number.isNaN(started) ? '' : ` in ${formatDuration(Date.now() - started)}`;
    if (outcome === 'completed') {
      // a restore's byte count includes verifying it: say what people care about instead
      const body = job.kind === 'restore' ? `Restored and verified${took}.` : `${formatSize(job.bytesDone)} copied${took}.`;
      toasts.push('success', body, `${title} finished`);
      notifications.notify(`${title} finished`, body, job.id);
    } else if (outcome === 'failed') {
      const body = job.error ?? 'Tidemark did not say why.';
      toasts.push('error', body, `${title} failed`);
      notifications.notify(`${title} failed`, body, job.id);
    } else {
      const body = job.kind === 'restore' ? `${title} was cancelled.` : `${title} was cancelled after ${formatSize(job.bytesDone)}.`;
      toasts.push('info', body, 'Job cancelled');
    }
  }

  async function loadRunning(): Promise<void> {
    const started = version;
    try {
      const list = await api.request('jobs.list', {});
      loaded.value = true;
      loadError.value = null;
      // progress events that came in meanwhile are newer than this reply
      if (version !== started) {
        for (const job of list) if (!finished.has(job.id) && !running.value.some((j) => j.id === job.id)) upsert(job, false);
        return;
      }
      const live = list.filter((j) => !finished.has(j.id));
      const ids = new Set(live.map((j) => j.id));
      for (const j of running.value) if (!ids.has(j.id)) drop(j.id);
      running.value = [...live].sort(byStart);
    } catch (err) {
      loadError.value = err instanceof Error ? err.message : String(err);
      throw err;
    }
  }

  let historyInFlight: Promise<void> | null = null;
  let historyAgain = false;

  async function loadHistory(): Promise<void> {
    try {
      history.value = await api.request('jobs.history', { limit: HISTORY_LIMIT });
      historyLoaded.value = true;
      historyError.value = null;
    } catch (err) {
      historyError.value = err instanceof Error ? err.message : String(err);
      throw err;
    }
  }

  /** Re-reads the history; calls while one is in flight fold into one more. */
  function reloadHistory(): Promise<void> {
    if (historyInFlight) {
      historyAgain = true;
      return historyInFlight;
    }
    historyInFlight = (async () => {
      try {
        do {
          historyAgain = false;
          await loadHistory().catch(() => {});
        } while (historyAgain);
      } finally {
        historyInFlight = null;
      }
    })();
    return historyInFlight;
  }

  async function pause(id: string): Promise<void> {
    await api.request('jobs.pause', { id });
    await loadRunning().catch(() => {});
  }

  async function resume(id: string): Promise<void> {
    await api.request('jobs.resume', { id });
    await loadRunning().catch(() => {});
  }

  async function cancel(id: string): Promise<void> {
    await api.request('jobs.cancel', { id });
  }

  /** bytes per second; 0 lifts the limit */
  async function setSpeed(id: string, speed: number): Promise<void> {
    await api.request('jobs.setSpeed', { id, speed });
    await loadRunning().catch(() => {});
  }

  /** After starting jobs: show them before their first progress event arrives. */
  function refresh(): Promise<void> {
    return loadRunning();
  }

  function samplesOf(id: string): readonly RateSample[] {
    return samples.value.get(id) ?? [];
  }

  resyncOnConnect(() => {
    loadRunning().catch(() => {});
    reloadHistory().catch(() => {});
  });

  return {
    running: computed(() => running.value),
    history: computed(() => history.value),
    count: computed(() => running.value.length),
    loaded: readonly(loaded),
    historyLoaded: readonly(historyLoaded),
    loadError: readonly(loadError),
    historyError: readonly(historyError),
    samplesOf,
    refresh,
    loadHistory,
    reloadHistory,
    pause,
    resume,
    cancel,
    setSpeed,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useJobsStore, import.meta.hot));
