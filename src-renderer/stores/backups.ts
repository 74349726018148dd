import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef } from 'vue';
import { api } from '../api';
import type { RequestInput, RequestOutput } from '../../src-shared/api/contract';
import type { BackupSettings, ChainSummary, VerifyReport } from '../../src-shared/api/domain';
import { resyncOnConnect } from './app';
import { useDrivesStore } from './drives';

const EMPTY: readonly ChainSummary[] = Object.freeze([]);

function byCreation(a: ChainSummary, b: ChainSummary): number {
  return a.createdAt.localeCompare(b.createdAt) || a.chainId.localeCompare(b.chainId);
}

/**
 * Backup chains and per-drive backup settings as the main process has them. Chains are read with
 * `backups.list` and re-read for one drive whenever `backups.changed` names it (coalesced: a
 * burst of changes costs at most one request in flight plus one after it).
 */
export const useBackupsStore = defineStore('backups', () => {
  const drives = useDrivesStore();

  const chains = shallowRef<ReadonlyMap<string, readonly ChainSummary[]>>(new Map());
  const settings = shallowRef<ReadonlyMap<string, BackupSettings>>(new Map());
  const loaded = ref(false);
  const loading = ref(false);
  const loadError = ref<string | null>(null);
  /** the last verify report of each chain this window ran (the catalog keeps no report) */
  const reports = shallowRef<ReadonlyMap<string, VerifyReport>>(new Map());

  const versions = new Map<string, number>();
  const reloading = new Map<string, Promise<void>>();
  const reloadAgain = new Set<string>();

  function bump(driveId: string): void {
    versions.set(driveId, (versions.get(driveId) ?? 0) + 1);
  }

  function setDrive(driveId: string, list: readonly ChainSummary[]): void {
    bump(driveId);
    const next = new Map(chains.value);
    if (list.length) next.set(driveId, [...list].sort(byCreation));
    else next.delete(driveId);
    chains.value = next;
  }

  function forDrive(driveId: string): readonly ChainSummary[] {
    return chains.value.get(driveId) ?? EMPTY;
  }

  function findChain(chainId: string): ChainSummary | undefined {
    for (const list of chains.value.values()) {
      const c = list.find((x) => x.chainId === chainId);
      if (c) return c;
    }
    return undefined;
  }

  /** drive ids that have chains, tracked or not (imported chains may name drives we do not track) */
  const driveIdsWithChains = computed(() => [...chains.value.keys()].sort());

  async function load(): Promise<void> {
    const before = new Map(versions);
    loading.value = true;
    try {
      const list = await api.request('backups.list', {});
      const grouped = new Map<string, ChainSummary[]>();
      for (const c of list) {
        let bucket = grouped.get(c.driveId);
        if (!bucket) grouped.set(c.driveId, (bucket = []));
        bucket.push(c);
      }
      const next = new Map<string, readonly ChainSummary[]>();
      const ids = new Set([...grouped.keys(), ...chains.value.keys()]);
      for (const id of ids) {
        const fresher = (versions.get(id) ?? 0) !== (before.get(id) ?? 0);
        const list = fresher ? chains.value.get(id) : grouped.get(id)?.sort(byCreation);
        if (!fresher) bump(id);
        if (list?.length) next.set(id, list);
      }
      chains.value = next;
      loaded.value = true;
      loadError.value = null;
    } catch (err) {
      loadError.value = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      loading.value = false;
    }
  }

  /** Re-reads one drive's chains; calls made while one is in flight fold into a single follow-up. */
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
          const started = versions.get(driveId) ?? 0;
          const list = await api.request('backups.list', { driveId });
          if ((versions.get(driveId) ?? 0) === started) setDrive(driveId, list);
        } while (reloadAgain.has(driveId));
      } finally {
        reloading.delete(driveId);
      }
    })();
    reloading.set(driveId, run);
    return run;
  }

  api.on('backups.changed', ({ driveId }) => {
    reloadDrive(driveId).catch((err: unknown) => console.warn(`tidemark: could not re-read the chains of ${driveId}`, err));
  });

  function putSettings(s: BackupSettings): void {
    const next = new Map(settings.value);
    next.set(s.driveId, s);
    settings.value = next;
  }

  async function loadSettings(driveId: string): Promise<BackupSettings> {
    const s = await api.request('backups.getSettings', { driveId });
    putSettings(s);
    return s;
  }

  /** Reads the settings of every tracked drive; a drive that fails is simply left out. */
  async function loadAllSettings(): Promise<void> {
    await Promise.all(drives.drives.map((d) => loadSettings(d.id).catch(() => undefined)));
  }

  async function saveSettings(input: RequestInput<'backups.setSettings'>): Promise<BackupSettings> {
    const s = await api.request('backups.setSettings', input);
    putSettings(s);
    return s;
  }

  async function run(input: RequestInput<'backups.run'>): Promise<RequestOutput<'backups.run'>> {
    const started = await api.request('backups.run', input);
    // a `dest` is remembered as the drive's folder
    if (input.dest) for (const j of started) loadSettings(j.driveId).catch(() => {});
    return started;
  }

  async function verify(chainId: string): Promise<VerifyReport> {
    const report = await api.request('backups.verify', { chainId });
    const next = new Map(reports.value);
    next.set(chainId, report);
    reports.value = next;
    const chain = findChain(chainId);
    if (chain) await reloadDrive(chain.driveId).catch(() => {});
    return report;
  }

  async function deleteChain(chainId: string): Promise<void> {
    const chain = findChain(chainId);
    await api.request('backups.deleteChain', { chainId });
    if (chain) setDrive(chain.driveId, forDrive(chain.driveId).filter((c) => c.chainId !== chainId));
    if (reports.value.has(chainId)) {
      const next = new Map(reports.value);
      next.delete(chainId);
      reports.value = next;
    }
  }

  async function importFolder(input: RequestInput<'backups.import'>): Promise<ChainSummary[]> {
    const imported = await api.request('backups.import', input);
    for (const id of new Set(imported.map((c) => c.driveId))) await reloadDrive(id).catch(() => {});
    return imported;
  }

  resyncOnConnect(() => {
    load().catch(() => {});
    if (settings.value.size) loadAllSettings().catch(() => {});
  });

  return {
    chains: computed(() => chains.value),
    settings: computed(() => settings.value),
    reports: computed(() => reports.value),
    loaded: readonly(loaded),
    loading: readonly(loading),
    loadError: readonly(loadError),
    driveIdsWithChains,
    forDrive,
    findChain,
    load,
    reloadDrive,
    loadSettings,
    loadAllSettings,
    saveSettings,
    run,
    verify,
    deleteChain,
    importFolder,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useBackupsStore, import.meta.hot));
