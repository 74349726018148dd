import type { TidemarkBridge } from '../../src-shared/api/wire';
import type { ConnectionStatus, Transport } from './transport';

/** Inside Electron: the preload's `window.tidemark`. IPC does not drop, so it is always connected. */
export function createBridgeTransport(bridge: TidemarkBridge): Transport {
  const status: ConnectionStatus = { state: 'connected', attempts: 0 };
  return {
    request: (method, params) => bridge.request(method, params),
    onEvent: (listener) => bridge.onEvent(listener),
    status: () => status,
    onStatus: () => () => {},
    reconnectNow: () => {},
  };
}
