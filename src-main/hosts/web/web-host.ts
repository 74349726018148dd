import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import type { Router, EventBus } from '../../app/router/router.js';
import type { ServerMessage } from '../../../src-shared/api/wire.js';
import { CSP, TOKEN_COOKIE, cookieValue, hostAllowed, newToken, originAllowed, sameToken } from './security.js';
import { loadStatic } from './static-files.js';

export interface WebHostOptions {
  router: Router;
  bus: EventBus;
  /** folder of the built renderer */
  staticDir: string;
  /** 0 picks a free port */
  port: number;
  /** only loopback addresses are accepted */
  host?: string;
  log?: (message: string) => void;
}

const MAX_MESSAGE = 1 << 20;

/**
 * The local web console: the same renderer and the same router as the Electron window, over
 * HTTP + WebSocket on 127.0.0.1. A random per-run token, handed over once in the URL and then
 * kept in an HttpOnly cookie, is required for everything.
 */
export class WebHost {
  readonly token = newToken();
  private server: Server | undefined;
  private wss: WebSocketServer | undefined;
  private port = 0;

  constructor(private readonly options: WebHostOptions) {
    const host = options.host ?? '127.0.0.1';
    if (host !== '127.0.0.1' && host !== 'localhost') {
      throw new Error(`The web console only listens on 127.0.0.1 (asked for ${host}).`);
    }
  }

  /** Starts listening; resolves with the URL to open (it carries the token). */
  async start(): Promise<string> {
    const server = createServer((req, res) => {
      this.serve(req, res).catch((err: unknown) => {
        this.options.log?.(`web console: ${String(err)}`);
        if (!res.headersSent) res.writeHead(500).end('Internal error');
      });
    });
    const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE });
    server.on('upgrade', (req, socket, head) => {
      if (!this.authorised(req, true) || new URL(req.url ?? '/', 'http://x').pathname !== '/api') {
        socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n');
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => this.connect(ws));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, '127.0.0.1', () => resolve());
    });
    this.server = server;
    this.wss = wss;
    this.port = (server.address() as AddressInfo).port;
    return `http://127.0.0.1:${this.port}/?token=${this.token}`;
  }

  async stop(): Promise<void> {
    for (const ws of this.wss?.clients ?? []) ws.terminate();
    this.wss?.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
  }

  private authorised(req: IncomingMessage, websocket: boolean): boolean {
    return hostAllowed(req, this.port) && originAllowed(req, this.port, websocket) && sameToken(cookieValue(req, TOKEN_COOKIE), this.token);
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const baseHeaders = {
      'Content-Security-Policy': CSP,
      'X-Content-Type-Options': 'nosniff',
      'Referrer-Policy': 'no-referrer',
      'X-Frame-Options': 'DENY',
      'Cache-Control': 'no-store',
    };
    if (!hostAllowed(req, this.port) || !originAllowed(req, this.port, false)) {
      res.writeHead(403, { ...baseHeaders, 'Content-Type': 'text/plain; charset=utf-8' }).end('Forbidden: this console answers only on 127.0.0.1.\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { ...baseHeaders, Allow: 'GET, HEAD' }).end();
      return;
    }
    const offered = url.searchParams.get('token');
    if (offered !== null) {
      if (!sameToken(offered, this.token)) {
        res.writeHead(401, { ...baseHeaders, 'Content-Type': 'text/plain; charset=utf-8' }).end('This link is not valid for this Tidemark run.\n');
        return;
      }
      // trade the token in the URL for a cookie, and drop it from the address bar and history
      url.searchParams.delete('token');
      res
        .writeHead(303, {
          ...baseHeaders,
          'Set-Cookie': `${TOKEN_COOKIE}=${this.token}; HttpOnly; SameSite=Strict; Path=/`,
          Location: url.pathname + (url.search || ''),
        })
        .end();
      return;
    }
    if (!sameToken(cookieValue(req, TOKEN_COOKIE), this.token)) {
      res
        .writeHead(401, { ...baseHeaders, 'Content-Type': 'text/plain; charset=utf-8' })
        .end('Tidemark needs its access token: open the URL it printed when it started.\n');
      return;
    }
    const file = await loadStatic(this.options.staticDir, url.pathname);
    if (!file) {
      res.writeHead(404, { ...baseHeaders, 'Content-Type': 'text/plain; charset=utf-8' }).end('Not found\n');
      return;
    }
    res.writeHead(200, { ...baseHeaders, 'Content-Type': file.type, 'Content-Length': file.body.length });
    res.end(req.method === 'HEAD' ? undefined : file.body);
  }

  private connect(ws: WebSocket): void {
    const send = (msg: ServerMessage) => {
      if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(msg));
    };
    const unsubscribe = this.options.bus.subscribe(send);
    ws.on('close', unsubscribe);
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        ws.close(1003, 'text frames only');
        return;
      }
      let parsed: unknown;
      try {
        parsed = JSON.parse(String(data));
      } catch {
        send({ type: 'response', id: 0, ok: false, error: { code: 'INVALID_INPUT', message: 'Malformed request: not JSON.' } });
        return;
      }
      void this.options.router.handle(parsed).then(send);
    });
  }
}
