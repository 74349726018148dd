import { computed, onScopeDispose, ref, shallowRef } from 'vue';
import type { Preflight, RestoreTarget } from '../../src-shared/api/domain';
import { errorMessage } from '../api';
import { useRestoreStore } from '../stores/restore';
import { useToastsStore } from '../stores/toasts';

export interface PreflightRequest {
  driveId: string;
  n: number;
  target: RestoreTarget;
}

/** One drive's pre-flight: the engine's checks, or why they could not be run. */
export interface PreflightEntry {
  request: PreflightRequest;
  result: Preflight | null;
  error: string | null;
}

/**
 * Runs `restore.preflight` for each drive the wizard would restore, now (`run`) or after the
 * person stops typing (`schedule`). A reply to an older request never replaces a newer one, and
 * `fresh` says whether the entries answer what the wizard asks now.
 */
export function useRestorePreflight(requests: () => PreflightRequest[] | null) {
  const restore = useRestoreStore();
  const toasts = useToastsStore();

  const entries = shallowRef<readonly PreflightEntry[]>([]);
  const pending = ref(false);
  const answeredKey = ref('');
  const key = computed(() => JSON.stringify(requests()));
  let generation = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  async function run(): Promise<void> {
    clearTimeout(timer);
    const asked = requests();
    const askedKey = key.value;
    const mine = ++generation;
    if (!asked?.length) {
      entries.value = [];
      answeredKey.value = askedKey;
      pending.value = false;
      return;
    }
    pending.value = true;
    const settled = await Promise.all(
      asked.map(async (request): Promise<PreflightEntry & { cause?: unknown }> => {
        try {
          return { request, result: await restore.preflight(request), error: null };
        } catch (cause) {
          return { request, result: null, error: errorMessage(cause), cause };
        }
      }),
    );
    if (mine !== generation) return;
    entries.value = settled.map(({ request, result, error }) => ({ request, result, error }));
    answeredKey.value = askedKey;
    pending.value = false;
    for (const e of settled) if (e.error) toasts.error(e.cause, `Could not run the checks for ${e.request.driveId}`);
  }

  /** Runs after a pause, so typing a path does not send a request per key. */
  function schedule(delayMs = 350): void {
    clearTimeout(timer);
    generation++;
    pending.value = true;
    timer = setTimeout(() => void run(), delayMs);
  }

  onScopeDispose(() => clearTimeout(timer));

  const fresh = computed(() => !pending.value && answeredKey.value === key.value);
  const errored = computed(() => entries.value.some((e) => e.error !== null));
  const ok = computed(() => fresh.value && entries.value.length > 0 && entries.value.every((e) => e.result?.ok));
  /** every drive's chain is sound (the other checks depend on the target, chosen later) */
  const chainOk = computed(
    () => fresh.value && entries.value.length > 0 && entries.value.every((e) => e.result?.checks.find((c) => c.id === 'chain')?.ok),
  );

  return { entries, pending, fresh, errored, ok, chainOk, key, run, schedule };
}
