import { useToastsStore } from '../stores/toasts';

/**
 * Copies text for a person and says so. Without clipboard access (an insecure origin, or the
 * browser said no) the text is shown in a toast to copy by hand.
 */
export function useClipboard(): (text: string, what?: string) => Promise<void> {
  const toasts = useToastsStore();
  return async (text, what) => {
    try {
      await navigator.clipboard.writeText(text);
      toasts.success(what ? `Copied ${what}: ${text}` : `Copied ${text}`);
    } catch {
      toasts.push('info', text, `Copy ${what ?? 'this'} by hand`);
    }
  };
}
