import { WebSocket } from 'ws';
import type { TidemarkApp } from '../../app/app.js';
import { InstanceLock } from '../../app/instance-lock.js';
import type { RequestInput, RequestName, RequestOutput } from '../../../src-shared/api/contract.js';
import { ResponseEnvelopeSchema } from '../../../src-shared/api/wire.js';
import { TidemarkError, isErrorCode } from '../../../src-shared/errors.js';

/** What CLI commands talk to: the app in this process, or the Tidemark that owns the data dir. */
export interface ApiClient {
  request<N extends RequestName>(method: N, params: RequestInput<N>): Promise<RequestOutput<N>>;
  close(): Promise<void>;
}

export class InProcessClient implements ApiClient {
  constructor(private readonly app: TidemarkApp) {}

  async request<N extends RequestName>(method: N, params: RequestInput<N>): Promise<RequestOutput<N>> {
    const res = await this.app.router.handle({ type: 'request', id: 1, method, params });
    if (!res.ok) throw new TidemarkError(res.error.code, res.error.message);
    return res.result as RequestOutput<N>;
  }

  close(): Promise<void> {
    return this.app.close();
  }
}

/**
 * Talks to a running Tidemark over its web console's WebSocket, authenticated with the token it
 * recorded in the data dir's lock file (readable only by its owner), so the catalog and the
 * images are never opened twice.
 */
export class RemoteClient implements ApiClient {
  private nextId = 1;
  private readonly waiting = new Map<number, (msg: unknown) => void>();

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data) => {
      let msg: unknown;
      try {
        msg = JSON.parse(String(data));
      } catch {
        return;
      }
      const parsed = ResponseEnvelopeSchema.safeParse(msg);
      if (parsed.success) this.waiting.get(parsed.data.id)?.(parsed.data);
    });
  }

  static async connect(endpoint: string): Promise<RemoteClient> {
    const url = new URL(endpoint);
    const token = url.searchParams.get('token') ?? '';
    const ws = new WebSocket(`ws://${url.host}/api`, { headers: { cookie: `tidemark_token=${token}`, origin: `http://${url.host}` } });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`the running Tidemark refused the connection (HTTP ${res.statusCode})`)));
    });
    return new RemoteClient(ws);
  }

  request<N extends RequestName>(method: N, params: RequestInput<N>): Promise<RequestOutput<N>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, (msg) => {
        this.waiting.delete(id);
        const res = ResponseEnvelopeSchema.parse(msg);
        if (res.ok) resolve(res.result as RequestOutput<N>);
        else reject(new TidemarkError(isErrorCode(res.error.code) ? res.error.code : 'INTERNAL', res.error.message));
      });
      this.ws.send(JSON.stringify({ type: 'request', id, method, params }));
    });
  }

  async close(): Promise<void> {
    this.ws.close();
  }
}

/** The running instance's console URL, if another live Tidemark owns the data dir. */
export function runningEndpoint(dataDir: string): string | undefined {
  const info = InstanceLock.read(dataDir);
  if (!info || info.pid === process.pid || !info.endpoint) return undefined;
  try {
    process.kill(info.pid, 0);
  } catch {
    return undefined;
  }
  return info.endpoint;
}
