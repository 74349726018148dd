import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef, watch } from 'vue';
import { api } from '../api';
import type { RequestInput } from '../../src-shared/api/contract';
import type { BitmapSummary } from '../../src-shared/api/domain';
import { resyncOnConnect } from './app';
import { useDrivesStore } from './drives';

type ByDrive = ReadonlyMap<string, readonly BitmapSummary[]>;

const EMPTY: readonly BitmapSummary[] = Object.freeze([]);

function sorted(list: readonly BitmapSummary[]): BitmapSummary[] {
  return [...list].sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Every drive's dirty bitmaps as the main process has them: read with `bitmaps.list`, replaced
 * drive by drive by `bitmaps.changed` (a few a second while a drive is written), reloaded after
 * a reconnect. Summaries are replaced whole, never mutated, so a shallowRef is enough and a
 * burst of events costs one map copy each.
 */
export const useBitmapsStore = defineStore('bitmaps', () => {
  const drives = useDrivesStore();
  const byDrive = shallowRef<ByDrive>(new Map());
  const loaded = ref(false);
  const loading = ref(false);
  const loadError = ref<string | null>(null);
  /** per drive: bumps when fresher data arrives, so a slower list reply cannot overwrite it */
  const versions = new Map<string, number>();

  function bump(driveId: string): void {
    versions.set(driveId, (versions.get(driveId) ?? 0) + 1);
  }

  function setDrive(driveId: string, list: readonly BitmapSummary[]): void {
    bump(driveId);
    const next = new Map(byDrive.value);
    next.set(driveId, sorted(list));
    byDrive.value = next;
  }

  api.on('bitmaps.changed', ({ driveId, bitmaps }) => setDrive(driveId, bitmaps));

  function forDrive(driveId: string): readonly BitmapSummary[] {
    return byDrive.value.get(driveId) ?? EMPTY;
  }

  /** Reads the bitmaps of every drive, or of one. */
  async function load(driveId?: string): Promise<void> {
    const before = new Map(versions);
    loading.value = true;
    try {
      const list = await api.request('bitmaps.list', driveId ? { driveId } : {});
      const grouped = new Map<string, BitmapSummary[]>();
      // drives without bitmaps are known to have none (rather than not loaded yet)
      if (driveId) grouped.set(driveId, []);
      else for (const d of drives.drives) if (d.state === 'online') grouped.set(d.id, []);
      for (const b of list) {
        let bucket = grouped.get(b.driveId);
        if (!bucket) grouped.set(b.driveId, (bucket = []));
        bucket.push(b);
      }
      const next = new Map(driveId ? byDrive.value : []);
      for (const [id, bitmaps] of grouped) {
        // an event for this drive came in while we waited: it is newer than this reply
        if ((versions.get(id) ?? 0) !== (before.get(id) ?? 0)) {
          const current = byDrive.value.get(id);
          if (current) next.set(id, current as BitmapSummary[]);
          continue;
        }
        bump(id);
        next.set(id, sorted(bitmaps));
      }
      if (!driveId) {
        // keep drives that changed meanwhile but had no bitmaps in the reply
        for (const [id, list] of byDrive.value) {
          if (!next.has(id) && (versions.get(id) ?? 0) !== (before.get(id) ?? 0)) next.set(id, list);
        }
        loaded.value = true;
        loadError.value = null;
      }
      byDrive.value = next;
    } catch (err) {
      if (!driveId) loadError.value = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      loading.value = false;
    }
  }

  const reloading = new Map<string, Promise<void>>();
  const reloadAgain = new Set<string>();

  /** Re-reads one drive's bitmaps; calls made while one is in flight fold into a single follow-up. */
  function reloadDrive(driveId: string): Promise<void> {
    const inFlight = reloading.get(driveId);
    if (inFlight) {
      reloadAgain.add(driveId);
      return inFlight;
    }
    const run = (async () => {
      try {
        do {
          reloadAgain.delete(driveId);
          await load(driveId);
        } while (reloadAgain.has(driveId));
      } finally {
        reloading.delete(driveId);
      }
    })();
    reloading.set(driveId, run);
    return run;
  }

  // A backup freezes its chain's bitmap while it runs (busy) and settles it at the end, and may
  // add or drop a chain's bitmap; no bitmaps.changed says so, but backups.changed comes at both ends.
  const followJobs = (driveId: string) => {
    if (drives.byId.get(driveId)?.state === 'online') reloadDrive(driveId).catch(() => {});
  };
  api.on('backups.changed', ({ driveId }) => followJobs(driveId));
  api.on('jobs.finished', ({ job }) => followJobs(job.driveId));

  /** Mirrors one bitmap the main process just confirmed (its event may come before or after). */
  function upsert(b: BitmapSummary): void {
    const list = forDrive(b.driveId).filter((x) => x.name !== b.name);
    setDrive(b.driveId, [...list, b]);
  }

  async function add(input: RequestInput<'bitmaps.add'>): Promise<BitmapSummary> {
    const b = await api.request('bitmaps.add', input);
    upsert(b);
    return b;
  }

  async function remove(driveId: string, name: string): Promise<void> {
    await api.request('bitmaps.remove', { driveId, name });
    setDrive(
      driveId,
      forDrive(driveId).filter((b) => b.name !== name),
    );
  }

  async function clear(driveId: string, name: string): Promise<BitmapSummary> {
    const b = await api.request('bitmaps.clear', { driveId, name });
    upsert(b);
    return b;
  }

  async function enable(driveId: string, name: string): Promise<BitmapSummary> {
    const b = await api.request('bitmaps.enable', { driveId, name });
    upsert(b);
    return b;
  }

  async function disable(driveId: string, name: string): Promise<BitmapSummary> {
    const b = await api.request('bitmaps.disable', { driveId, name });
    upsert(b);
    return b;
  }

  async function merge(driveId: string, target: string, sources: string[]): Promise<BitmapSummary> {
    const b = await api.request('bitmaps.merge', { driveId, target, sources });
    upsert(b);
    return b;
  }

  resyncOnConnect(() => void load().catch(() => {}));

  // a drive that comes or goes takes its bitmaps with it
  watch(
    () => drives.drives.map((d) => `${d.id}:${d.state}`).join('\n'),
    () => {
      if (!loaded.value) return;
      const ids = new Set(drives.drives.map((d) => d.id));
      let next: Map<string, readonly BitmapSummary[]> | null = null;
      for (const id of byDrive.value.keys()) {
        if (!ids.has(id)) {
          next ??= new Map(byDrive.value);
          next.delete(id);
          versions.delete(id);
        }
      }
      if (next) byDrive.value = next;
      for (const d of drives.drives) {
        if (d.state === 'online' && !byDrive.value.has(d.id)) load(d.id).catch(() => {});
      }
    },
  );

  return {
    /** drive id → its bitmaps, sorted by name (read-only: replaced whole on every change) */
    byDrive: computed(() => byDrive.value),
    loaded: readonly(loaded),
    loading: readonly(loading),
    loadError: readonly(loadError),
    forDrive,
    load,
    reloadDrive,
    add,
    remove,
    clear,
    enable,
    disable,
    merge,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useBitmapsStore, import.meta.hot));
