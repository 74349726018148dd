import { computed, onScopeDispose, ref } from 'vue';

const openCount = ref(0);

/** True while any modal dialog is open; App.vue makes the rest of the page inert meanwhile. */
export const anyModalOpen = computed(() => openCount.value > 0);

/** Registers the calling component as an open modal for as long as it is mounted. */
export function useModalRegistration(): void {
  openCount.value++;
  onScopeDispose(() => {
    openCount.value--;
  });
}
