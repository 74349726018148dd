import type { EventEnvelope, ResponseEnvelope } from '../../src-shared/api/wire';

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

export interface ConnectionStatus {
  state: ConnectionState;
  /** failed attempts since the last good connection */
  attempts: number;
  /** when the next attempt starts (ms since epoch), while disconnected */
  retryAt?: number;
  /** a transport-specific hint for a person, shown while disconnected */
  hint?: string;
}

/**
 * One way to reach the main process. The client above it does naming, validation and errors;
 * a transport only moves envelopes. Rejections from `request` are ApiRequestErrors.
 */
export interface Transport {
  request(method: string, params: unknown): Promise<ResponseEnvelope>;
  onEvent(listener: (event: EventEnvelope) => void): () => void;
  status(): ConnectionStatus;
  onStatus(listener: (status: ConnectionStatus) => void): () => void;
  /** skip the backoff wait and try to connect now (no-op when connected) */
  reconnectNow(): void;
}
