import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef } from 'vue';
import { api } from '../api';
import type { Group } from '../../src-shared/api/domain';
import { resyncOnConnect } from './app';

/**
 * Machine groups (the drives of one VM, backed up together at one point in time). There is no
 * `groups.changed` event, so the list is re-read after each change made here and after a
 * reconnect.
 */
export const useGroupsStore = defineStore('groups', () => {
  const groups = shallowRef<readonly Group[]>([]);
  const loaded = ref(false);
  const loading = ref(false);
  const loadError = ref<string | null>(null);
  let version = 0;

  function replace(list: readonly Group[]): void {
    version++;
    groups.value = [...list].sort((a, b) => a.name.localeCompare(b.name));
    loaded.value = true;
    loadError.value = null;
  }

  async function load(): Promise<void> {
    const started = version;
    loading.value = true;
    try {
      const list = await api.request('groups.list', {});
      if (version === started) replace(list);
    } catch (err) {
      loadError.value = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      loading.value = false;
    }
  }

  /** Creates a group or redefines its drives. */
  async function set(name: string, drives: string[]): Promise<Group> {
    const group = await api.request('groups.set', { name, drives });
    replace([...groups.value.filter((g) => g.name !== group.name), group]);
    return group;
  }

  async function remove(name: string): Promise<void> {
    await api.request('groups.remove', { name });
    replace(groups.value.filter((g) => g.name !== name));
  }

  resyncOnConnect(() => void load().catch(() => {}));

  return {
    groups: computed(() => groups.value),
    loaded: readonly(loaded),
    loading: readonly(loading),
    loadError: readonly(loadError),
    load,
    set,
    remove,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useGroupsStore, import.meta.hot));
