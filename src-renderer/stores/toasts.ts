import { acceptHMRUpdate, defineStore } from 'pinia';
import { readonly, ref } from 'vue';
import { errorMessage } from '../api';

export type ToastKind = 'error' | 'success' | 'info';

export interface Toast {
  id: number;
  kind: ToastKind;
  /** short context, e.g. "Could not add the image" */
  title?: string;
  /** the sentence itself; for errors, the engine's message verbatim */
  message: string;
}

/** Success and info toasts leave on their own; errors stay until dismissed (people need time to read them). */
const AUTO_DISMISS_MS = 5000;
const MAX_TOASTS = 5;

export const useToastsStore = defineStore('toasts', () => {
  const toasts = ref<Toast[]>([]);
  let nextId = 1;

  function push(kind: ToastKind, message: string, title?: string): number {
    const id = nextId++;
    toasts.value.push({ id, kind, message, title });
    if (toasts.value.length > MAX_TOASTS) toasts.value.splice(0, toasts.value.length - MAX_TOASTS);
    if (kind !== 'error') setTimeout(() => dismiss(id), AUTO_DISMISS_MS);
    return id;
  }

  function dismiss(id: number): void {
    const i = toasts.value.findIndex((t) => t.id === id);
    if (i >= 0) toasts.value.splice(i, 1);
  }

  /** Shows what went wrong, using the engine's own sentence when there is one. */
  function error(err: unknown, title?: string): number {
    return push('error', errorMessage(err), title);
  }

  function success(message: string): number {
    return push('success', message);
  }

  return { toasts: readonly(toasts), push, dismiss, error, success };
});

if (import.meta.hot) import.meta.hot.accept(acceptHMRUpdate(useToastsStore, import.meta.hot));
