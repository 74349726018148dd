import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef } from 'vue';
import { api } from '../api';
import type { RequestInput } from '../../src-shared/api/contract';
import type { DriveInfo } from '../../src-shared/api/domain';
import { resyncOnConnect } from './app';

/**
 * The drive list as the main process has it: loaded with `drives.list`, replaced by every
 * `drives.changed` event, reloaded after a reconnect. Actions call the API and let the main
 * process's answer (or its event) update the list; nothing here is a second source of truth.
 */
export const useDrivesStore = defineStore('drives', () => {
  const drives = shallowRef<DriveInfo[]>([]);
  /** true once the list has been read at least once */
  const loaded = ref(false);
  const loading = ref(false);
  /** why the last load failed, if it did */
  const loadError = ref<string | null>(null);
  /** bumps whenever a fresher list arrives, so a slower `drives.list` reply cannot overwrite it */
  let version = 0;

  const count = computed(() => drives.value.length);
  const byId = computed(() => new Map(drives.value.map((d) => [d.id, d])));

  function replace(list: DriveInfo[]): void {
    version++;
    drives.value = [...list].sort((a, b) => a.id.localeCompare(b.id));
    loaded.value = true;
    loadError.value = null;
  }

  api.on('drives.changed', ({ drives: list }) => replace(list));

  async function load(): Promise<void> {
    const started = version;
    loading.value = true;
    try {
      const list = await api.request('drives.list', {});
      if (version === started) replace(list);
    } catch (err) {
      loadError.value = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      loading.value = false;
    }
  }

  /** Mirror one drive the main process just confirmed (its event may come before or after). */
  function upsert(drive: DriveInfo): void {
    replace([...drives.value.filter((d) => d.id !== drive.id), drive]);
  }

  async function create(input: RequestInput<'drives.create'>): Promise<DriveInfo> {
    const drive = await api.request('drives.create', input);
    upsert(drive);
    return drive;
  }

  async function add(input: RequestInput<'drives.add'>): Promise<DriveInfo> {
    const drive = await api.request('drives.add', input);
    upsert(drive);
    return drive;
  }

  async function remove(id: string): Promise<void> {
    await api.request('drives.remove', { id });
    replace(drives.value.filter((d) => d.id !== id));
  }

  resyncOnConnect(() => void load().catch(() => {}));

  return {
    drives: readonly(drives),
    loaded: readonly(loaded),
    loading: readonly(loading),
    loadError: readonly(loadError),
    count,
    byId,
    load,
    create,
    add,
    remove,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useDrivesStore, import.meta.hot));
