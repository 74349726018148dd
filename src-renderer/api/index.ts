import { createApiClient, type ApiClient } from './client';
import { createBridgeTransport } from './bridge-transport';
import { createWsTransport } from './ws-transport';
import type { Transport } from './transport';

export { ApiRequestError, errorMessage, isApiRequestError } from './errors';
export type { ApiClient } from './client';
export type { ConnectionState, ConnectionStatus } from './transport';

/**
 * The only place that knows which host the renderer runs in: Electron's preload bridge when it
 * exists, otherwise the web console's WebSocket on this page's origin.
 */
function pickTransport(): Transport {
  if (window.tidemark) return createBridgeTransport(window.tidemark);

  // The server has already traded `?token=` for an HttpOnly cookie; keep the token out of the
  // address bar, history and bookmarks.
  const url = new URL(window.location.href);
  if (url.searchParams.has('token')) {
    url.searchParams.delete('token');
    window.history.replaceState(window.history.state, '', url.pathname + url.search + url.hash);
  }
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  return createWsTransport({ url: `${scheme}://${window.location.host}/api` });
}

export const api: ApiClient = createApiClient(pickTransport());
