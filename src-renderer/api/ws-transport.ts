import { ServerMessageSchema, type EventEnvelope, type RequestEnvelope, type ResponseEnvelope } from '../../src-shared/api/wire';
import { ApiRequestError } from './errors';
import type { ConnectionStatus, Transport } from './transport';

/** The subset of the DOM WebSocket this transport uses (tests pass a fake). */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((ev: Event) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface WsTransportOptions {
  url: string;
  createSocket?: (url: string) => SocketLike;
  /** first retry delay; doubles per failed attempt up to maxDelayMs (±20% jitter) */
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** how long a request may wait for a connection that is being set up */
  connectWaitMs?: number;
  random?: () => number;
}

const OPEN = 1;

interface Pending {
  method: string;
  resolve: (envelope: ResponseEnvelope) => void;
  reject: (error: Error) => void;
}

interface Waiting {
  envelope: RequestEnvelope;
  pending: Pending;
  timer: ReturnType<typeof setTimeout>;
}

const AUTH_HINT =
  'If this keeps happening, open the console again with the address Tidemark printed when it started: ' +
  'the access token in that address is what lets this page in.';

function transportError(method: string, message: string): ApiRequestError {
  return new ApiRequestError({ code: 'IO_ERROR', message }, method);
}

/**
 * The web console's transport: one WebSocket to `/api` on the page's own origin (the server
 * authenticates it with the HttpOnly cookie it set when the page was opened with `?token=`).
 * Reconnects with exponential backoff. While it is down, requests fail at once with a sentence
 * saying so (nothing is queued to run later behind the user's back); while a connection is being
 * set up, they wait for it briefly.
 */
export function createWsTransport(options: WsTransportOptions): Transport {
  const createSocket = options.createSocket ?? ((url: string) => new WebSocket(url));
  const initialDelayMs = options.initialDelayMs ?? 500;
  const maxDelayMs = options.maxDelayMs ?? 10_000;
  const connectWaitMs = options.connectWaitMs ?? 10_000;
  const random = options.random ?? Math.random;

  let socket: SocketLike | null = null;
  let status: ConnectionStatus = { state: 'connecting', attempts: 0 };
  let retryTimer: ReturnType<typeof setTimeout> | null = null;
  let nextId = 1;
  const pending = new Map<number, Pending>();
  const waiting: Waiting[] = [];
  const eventListeners = new Set<(event: EventEnvelope) => void>();
  const statusListeners = new Set<(status: ConnectionStatus) => void>();

  function setStatus(next: ConnectionStatus): void {
    status = next;
    for (const listener of statusListeners) listener(status);
  }

  function send(envelope: RequestEnvelope, entry: Pending): void {
    pending.set(envelope.id, entry);
    try {
      socket?.send(JSON.stringify(envelope));
    } catch (cause) {
      pending.delete(envelope.id);
      entry.reject(transportError(entry.method, `Could not send the request to Tidemark: ${String(cause)}`));
    }
  }

  function connect(): void {
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    setStatus({ state: 'connecting', attempts: status.attempts, hint: status.hint });
    let ws: SocketLike;
    try {
      ws = createSocket(options.url);
    } catch {
      scheduleRetry();
      return;
    }
    socket = ws;
    ws.onopen = () => {
      if (socket !== ws) return;
      setStatus({ state: 'connected', attempts: 0 });
      for (const w of waiting.splice(0)) {
        clearTimeout(w.timer);
        send(w.envelope, w.pending);
      }
    };
    ws.onmessage = (ev) => {
      if (socket !== ws || typeof ev.data !== 'string') return;
      let raw: unknown;
      try {
        raw = JSON.parse(ev.data);
      } catch {
        console.warn('tidemark: ignoring a message that is not JSON');
        return;
      }
      const parsed = ServerMessageSchema.safeParse(raw);
      if (!parsed.success) {
        // an error response whose shape we cannot read must still settle its request
        settleUnreadable(raw);
        return;
      }
      const message = parsed.data;
      if (message.type === 'event') {
        for (const listener of eventListeners) listener(message);
        return;
      }
      const entry = pending.get(message.id);
      if (!entry) return;
      pending.delete(message.id);
      entry.resolve(message);
    };
    ws.onerror = () => {
      // a close event always follows; that is where we react
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      for (const [id, entry] of pending) {
        pending.delete(id);
        entry.reject(
          transportError(
            entry.method,
            'The connection to Tidemark dropped before it answered, so this may or may not have happened. ' +
              'Check again once the connection is back.',
          ),
        );
      }
      scheduleRetry();
    };
  }

  function settleUnreadable(raw: unknown): void {
    if (typeof raw !== 'object' || raw === null || !('id' in raw) || typeof raw.id !== 'number') return;
    const entry = pending.get(raw.id);
    if (!entry) return;
    pending.delete(raw.id);
    // hand it to the client, which validates envelopes and reports what it could not read
    entry.resolve(raw as ResponseEnvelope);
  }

  function scheduleRetry(): void {
    const attempts = status.attempts + 1;
    const base = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempts - 1, 20));
    const delay = Math.round(base * (0.8 + 0.4 * random()));
    for (const w of waiting.splice(0)) {
      clearTimeout(w.timer);
      w.pending.reject(notConnected(w.pending.method));
    }
    setStatus({
      state: 'disconnected',
      attempts,
      retryAt: Date.now() + delay,
      hint: attempts >= 4 ? AUTH_HINT : undefined,
    });
    retryTimer = setTimeout(connect, delay);
  }

  function notConnected(method: string): ApiRequestError {
    return transportError(
      method,
      'Tidemark is not connected right now, so nothing was done. Try again when the connection is back.',
    );
  }

  if (typeof window !== 'undefined') {
    window.addEventListener('online', () => reconnectNow());
  }

  function reconnectNow(): void {
    if (status.state === 'disconnected') connect();
  }

  connect();

  return {
    request(method, params) {
      return new Promise<ResponseEnvelope>((resolve, reject) => {
        const envelope: RequestEnvelope = { type: 'request', id: nextId++, method, params };
        const entry: Pending = { method, resolve, reject };
        if (status.state === 'connected' && socket?.readyState === OPEN) {
          send(envelope, entry);
        } else if (status.state === 'connecting') {
          const timer = setTimeout(() => {
            const i = waiting.findIndex((w) => w.envelope.id === envelope.id);
            if (i >= 0) waiting.splice(i, 1);
            reject(
              transportError(method, 'Tidemark did not accept the connection in time, so nothing was done. Try again.'),
            );
          }, connectWaitMs);
          waiting.push({ envelope, pending: entry, timer });
        } else {
          reject(notConnected(method));
        }
      });
    },
    onEvent(listener) {
      eventListeners.add(listener);
      return () => eventListeners.delete(listener);
    },
    status: () => status,
    onStatus(listener) {
      statusListeners.add(listener);
      return () => statusListeners.delete(listener);
    },
    reconnectNow,
  };
}
