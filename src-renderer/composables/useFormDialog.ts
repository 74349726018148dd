import { nextTick, ref, useId } from 'vue';

/**
 * What every form dialog keeps: its form's id (the footer's submit button points at it) and
 * element, whether a submit was tried (errors show from then on), whether one is running; and
 * a way to put the focus on a field once the DOM has caught up.
 */
export function useFormDialog() {
  const formId = useId();
  const form = ref<HTMLElement | null>(null);
  const submitted = ref(false);
  const busy = ref(false);

  /** Focuses the first element in the form matching `selector`: by default the first invalid field. */
  async function focusIn(selector = '[aria-invalid="true"]'): Promise<void> {
    await nextTick();
    form.value?.querySelector<HTMLElement>(selector)?.focus();
  }

  return { formId, form, submitted, busy, focusIn };
}
