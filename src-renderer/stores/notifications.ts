import { acceptHMRUpdate, defineStore } from 'pinia';
import { computed, readonly, ref } from 'vue';

const STORAGE_KEY = 'tidemark.desktopNotifications';

export type NotifyPermission = 'default' | 'granted' | 'denied' | 'unsupported';

function currentPermission(): NotifyPermission {
  return typeof Notification === 'undefined' ? 'unsupported' : Notification.permission;
}

function readWanted(): boolean {
  try {
    return localStorage.getItem(STORAGE_KEY) === 'on';
  } catch {
    return false;
  }
}

function writeWanted(on: boolean): void {
  try {
    localStorage.setItem(STORAGE_KEY, on ? 'on' : 'off');
  } catch {
    // storage may be off (private mode); the choice then lasts until the window closes
  }
}

/**
 * Desktop notifications through the web `Notification` API, which the browser and Electron both
 * provide. Off until the person turns them on; the permission prompt only ever follows a click.
 */
export const useNotificationsStore = defineStore('notifications', () => {
  const permission = ref<NotifyPermission>(currentPermission());
  const wanted = ref(readWanted());

  const supported = computed(() => permission.value !== 'unsupported');
  const enabled = computed(() => wanted.value && permission.value === 'granted');

  /** Call from a click: asks for permission when the browser has not been asked yet. */
  async function enable(): Promise<NotifyPermission> {
    if (typeof Notification === 'undefined') {
      permission.value = 'unsupported';
      return 'unsupported';
    }
    let result: NotifyPermission = Notification.permission;
    if (result === 'default') result = await Notification.requestPermission();
    permission.value = result;
    wanted.value = result === 'granted';
    writeWanted(wanted.value);
    return result;
  }

  function disable(): void {
    wanted.value = false;
    writeWanted(false);
  }

  /** Shows a desktop notification when they are on; returns whether one was shown. */
  function notify(title: string, body: string, tag?: string): boolean {
    // the person may have revoked the permission in the browser's settings meanwhile
    permission.value = currentPermission();
    if (!enabled.value) return false;
    try {
      const n = new Notification(title, { body, tag, icon: './favicon.svg' });
      n.onclick = () => {
        window.focus();
        n.close();
      };
      return true;
    } catch (err) {
      // some platforms only allow notifications from a service worker
      console.warn('tidemark: could not show a desktop notification', err);
      return false;
    }
  }

  return {
    permission: readonly(permission),
    wanted: readonly(wanted),
    supported,
    enabled,
    enable,
    disable,
    notify,
  };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useNotificationsStore, import.meta.hot));
