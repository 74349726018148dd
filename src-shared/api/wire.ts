import { z } from 'zod';
import { ERROR_CODES } from '../errors.js';

/**
 * Envelopes on the wire. The same shapes go over Electron IPC and the web console's WebSocket,
 * so the renderer's client has one code path.
 */
export const ApiErrorSchema = z.object({ code: z.enum(ERROR_CODES), message: z.string() });

export const RequestEnvelopeSchema = z
  .object({
    type: z.literal('request'),
    id: z.number().int().nonnegative(),
    method: z.string().max(100),
    params: z.unknown(),
  })
  .strict();
export type RequestEnvelope = z.infer<typeof RequestEnvelopeSchema>;

export const ResponseEnvelopeSchema = z.discriminatedUnion('ok', [
  z.object({ type: z.literal('response'), id: z.number(), ok: z.literal(true), result: z.unknown() }),
  z.object({ type: z.literal('response'), id: z.number(), ok: z.literal(false), error: ApiErrorSchema }),
]);
export type ResponseEnvelope = z.infer<typeof ResponseEnvelopeSchema>;

export const EventEnvelopeSchema = z.object({ type: z.literal('event'), name: z.string(), payload: z.unknown() });
export type EventEnvelope = z.infer<typeof EventEnvelopeSchema>;

export const ServerMessageSchema = z.union([ResponseEnvelopeSchema, EventEnvelopeSchema]);
export type ServerMessage = z.infer<typeof ServerMessageSchema>;

export { IPC_REQUEST_CHANNEL, IPC_EVENT_CHANNEL } from './channels.js';

/** The bridge the Electron preload exposes as `window.tidemark`. */
export interface TidemarkBridge {
  request(method: string, params: unknown): Promise<ResponseEnvelope>;
  onEvent(listener: (event: EventEnvelope) => void): () => void;
}
