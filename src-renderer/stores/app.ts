import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref, shallowRef, watch } from 'vue';
import { api, type ConnectionStatus } from '../api';
import type { AppInfo } from '../../src-shared/api/domain';

/** What the main process says about itself, and whether we can currently reach it. */
export const useAppStore = defineStore('app', () => {
  const info = shallowRef<AppInfo | null>(null);
  const connection = ref<ConnectionStatus>(api.connection());
  /** bumps on every (re)connection, so other stores can resync what they may have missed */
  const connectedGeneration = ref(api.connection().state === 'connected' ? 1 : 0);

  const connected = computed(() => connection.value.state === 'connected');
  /** shown as a banner: from the first failed attempt until a connection is back (retries included) */
  const disconnected = computed(() => connection.value.state !== 'connected' && connection.value.attempts > 0);

  api.onConnection((status) => {
    const was = connection.value.state;
    connection.value = { ...status };
    if (status.state === 'connected' && was !== 'connected') {
      connectedGeneration.value++;
      void loadInfo();
    }
  });

  if (api.connection().state === 'connected') void loadInfo();

  async function loadInfo(): Promise<void> {
    try {
      info.value = await api.request('app.info', {});
    } catch (err) {
      // the sidebar simply shows no version; the connection banner covers the usual cause
      console.warn('tidemark: app.info failed', err);
    }
  }

  function reconnectNow(): void {
    api.reconnectNow();
  }

  return {
    info: readonly(info),
    connection: readonly(connection),
    connectedGeneration: readonly(connectedGeneration),
    connected,
    disconnected,
    loadInfo,
    reconnectNow,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useAppStore, import.meta.hot));

/**
 * Runs `resync` now when connected, and again after every reconnection: anything a store holds
 * may have changed while the connection was down.
 */
export function resyncOnConnect(resync: () => void): void {
  const app = useAppStore();
  watch(
    () => app.connectedGeneration,
    (generation) => {
      if (generation > 0) resync();
    },
    { immediate: true },
  );
}
