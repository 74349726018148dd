import {
  events,
  isEventName,
  requests,
  type EventName,
  type EventPayload,
  type RequestInput,
  type RequestName,
  type RequestOutput,
} from '../../src-shared/api/contract';
import { ResponseEnvelopeSchema } from '../../src-shared/api/wire';
import { ApiRequestError, errorMessage } from './errors';
import type { ConnectionStatus, Transport } from './transport';

export interface ApiClient {
  /** Calls the main process. Resolves with the validated result; rejects with an ApiRequestError. */
  request<N extends RequestName>(name: N, input: RequestInput<N>): Promise<RequestOutput<N>>;
  /** Subscribes to an event; payloads that fail validation are dropped. Returns the unsubscribe. */
  on<N extends EventName>(name: N, handler: (payload: EventPayload<N>) => void): () => void;
  connection(): ConnectionStatus;
  onConnection(listener: (status: ConnectionStatus) => void): () => void;
  reconnectNow(): void;
}

type AnyHandler = (payload: unknown) => void;

/** Pulls a person-readable message out of an error envelope whose code we do not know. */
function looseErrorMessage(raw: unknown): string | undefined {
  if (typeof raw !== 'object' || raw === null || !('ok' in raw) || raw.ok !== false) return undefined;
  if (!('error' in raw) || typeof raw.error !== 'object' || raw.error === null) return undefined;
  const error = raw.error;
  return 'message' in error && typeof error.message === 'string' && error.message ? error.message : undefined;
}

export function createApiClient(transport: Transport): ApiClient {
  const handlers = new Map<EventName, Set<AnyHandler>>();

  transport.onEvent((event) => {
    if (!isEventName(event.name)) return;
    const set = handlers.get(event.name);
    if (!set?.size) return;
    const parsed = events[event.name].safeParse(event.payload);
    if (!parsed.success) {
      console.warn(`tidemark: dropping a ${event.name} event that does not match the contract`, parsed.error.issues);
      return;
    }
    for (const handler of set) handler(parsed.data);
  });

  async function request<N extends RequestName>(name: N, input: RequestInput<N>): Promise<RequestOutput<N>> {
    let raw: unknown;
    try {
      raw = await transport.request(name, input);
    } catch (cause) {
      if (cause instanceof ApiRequestError) throw cause;
      throw new ApiRequestError({ code: 'IO_ERROR', message: `Could not reach Tidemark: ${errorMessage(cause)}` }, name, {
        cause,
      });
    }
    const envelope = ResponseEnvelopeSchema.safeParse(raw);
    if (!envelope.success) {
      const message = looseErrorMessage(raw);
      throw new ApiRequestError(
        { code: 'INTERNAL', message: message ?? `Tidemark sent a reply to ${name} that this window cannot read.` },
        name,
      );
    }
    if (!envelope.data.ok) throw new ApiRequestError(envelope.data.error, name);
    const output = requests[name].output.safeParse(envelope.data.result);
    if (!output.success) {
      const first = output.error.issues[0];
      const where = first?.path.length ? ` at ${first.path.join('.')}` : '';
      throw new ApiRequestError(
        {
          code: 'INTERNAL',
          message: `Tidemark answered ${name} with data this window does not understand${where}: ${first?.message ?? 'invalid'}.`,
        },
        name,
      );
    }
    return output.data as RequestOutput<N>;
  }

  function on<N extends EventName>(name: N, handler: (payload: EventPayload<N>) => void): () => void {
    let set = handlers.get(name);
    if (!set) {
      set = new Set();
      handlers.set(name, set);
    }
    // the map is keyed by name, so a handler only ever receives its own event's payload
    const h = handler as AnyHandler;
    set.add(h);
    return () => {
      set.delete(h);
    };
  }

  return {
    request,
    on,
    connection: () => transport.status(),
    onConnection: (listener) => transport.onStatus(listener),
    reconnectNow: () => transport.reconnectNow(),
  };
}
