/** Electron IPC channel names (kept free of dependencies: the sandboxed preload imports this). */
export const IPC_REQUEST_CHANNEL = 'tidemark:request';
export const IPC_EVENT_CHANNEL = 'tidemark:event';
