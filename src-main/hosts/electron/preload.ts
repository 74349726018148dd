// Sandboxed preload: exposes exactly one typed bridge, `window.tidemark`. No Node, no ipcRenderer
// in the page; every payload is checked again in the main process.
import { contextBridge, ipcRenderer, type IpcRendererEvent } from 'electron';
import { IPC_EVENT_CHANNEL, IPC_REQUEST_CHANNEL } from '../../../src-shared/api/channels.js';
import type { EventEnvelope, ResponseEnvelope, TidemarkBridge } from '../../../src-shared/api/wire.js';

let nextId = 1;

const bridge: TidemarkBridge = {
  request(method: string, params: unknown): Promise<ResponseEnvelope> {
    return ipcRenderer.invoke(IPC_REQUEST_CHANNEL, { type: 'request', id: nextId++, method, params }) as Promise<ResponseEnvelope>;
  },
  onEvent(listener: (event: EventEnvelope) => void): () => void {
    const wrapped = (_e: IpcRendererEvent, event: EventEnvelope) => listener(event);
    ipcRenderer.on(IPC_EVENT_CHANNEL, wrapped);
    return () => ipcRenderer.removeListener(IPC_EVENT_CHANNEL, wrapped);
  },
};

contextBridge.exposeInMainWorld('tidemark', bridge);
