/// <reference types="vite/client" />
import type { TidemarkBridge } from '../src-shared/api/wire';

declare global {
  interface Window {
    /** Present only inside Electron (the preload exposes it). Read it in `api/` and nowhere else. */
    tidemark?: TidemarkBridge;
  }
}

export {};
