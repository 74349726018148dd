import { z } from 'zod';
import {
  requests,
  events,
  isRequestName,
  type EventName,
  type EventPayload,
  type RequestName,
  type RequestOutput,
  type RequestParams,
} from '../../../src-shared/api/contract.js';
import { RequestEnvelopeSchema, type EventEnvelope, type ResponseEnvelope } from '../../../src-shared/api/wire.js';
import { TidemarkError, type ApiError } from '../../../src-shared/errors.js';

export type Handlers = { [N in RequestName]: (params: RequestParams<N>) => Promise<RequestOutput<N>> };

/** Turns any thrown value into the `{code, message}` that crosses the boundary. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof TidemarkError) return err.toApi();
  if (err instanceof z.ZodError) return { code: 'INVALID_INPUT', message: describeZodError(err) };
  // an unexplained failure: say so plainly, keep the detail for the log
  const message = err instanceof Error ? err.message : String(err);
  return { code: 'INTERNAL', message: `Internal error: ${message}` };
}

function describeZodError(err: z.ZodError): string {
  return err.issues
    .map((i) => {
      const where = i.path.length ? `${i.path.join('.')}: ` : '';
      return `${where}${i.message}`;
    })
    .join('; ');
}

/**
 * The one router every host calls. It validates the envelope and the params against the
 * contract (the caller is untrusted), runs the handler, and checks the result against the
 * output schema so a host never sends something the contract does not promise.
 */
export class Router {
  constructor(
    private readonly handlers: Handlers,
    private readonly log: (message: string) => void = () => {},
  ) {}

  async handle(raw: unknown): Promise<ResponseEnvelope> {
    const env = RequestEnvelopeSchema.safeParse(raw);
    if (!env.success) {
      const id = typeof raw === 'object' && raw !== null && typeof (raw as { id?: unknown }).id === 'number' ? (raw as { id: number }).id : 0;
      return { type: 'response', id, ok: false, error: { code: 'INVALID_INPUT', message: `Malformed request: ${describeZodError(env.error)}` } };
    }
    const { id, method, params } = env.data;
    try {
      const result = await this.call(method, params);
      return { type: 'response', id, ok: true, result };
    } catch (err) {
      const error = toApiError(err);
      if (error.code === 'INTERNAL') this.log(`request ${method} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      return { type: 'response', id, ok: false, error };
    }
  }

  async call(method: string, params: unknown): Promise<unknown> {
    if (!isRequestName(method)) throw new TidemarkError('UNKNOWN_METHOD', `Unknown request '${method}'.`);
    const spec = requests[method];
    const parsed = spec.input.safeParse(params ?? {});
    if (!parsed.success) throw new TidemarkError('INVALID_INPUT', `Invalid input for ${method}: ${describeZodError(parsed.error)}`);
    const handler = this.handlers[method] as (p: unknown) => Promise<unknown>;
    const result = await handler(parsed.data);
    return spec.output.parse(result);
  }
}

type Listener = (event: EventEnvelope) => void;

/** Events from the app to every connected renderer, validated against the contract on the way out. */
export class EventBus {
  private readonly listeners = new Set<Listener>();

  emit<N extends EventName>(name: N, payload: EventPayload<N>): void {
    const checked = events[name].parse(payload);
    const envelope: EventEnvelope = { type: 'event', name, payload: checked };
    for (const l of this.listeners) l(envelope);
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}
