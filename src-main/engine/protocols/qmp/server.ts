import { createServer, type Server, type Socket } from 'node:net';
import { chmod, unlink } from 'node:fs/promises';
import type { BlockEngine } from '../../engine.js';
import { JsonStreamSplitter, normalizeQuotes } from './json-stream.js';
import { checkArgs, findCommand } from './commands.js';
import { QmpError, generic } from './errors.js';
import { APP_VERSION_FOR_QMP } from './version.js';
import './register-all.js';
import { TidemarkError } from '../../../../src-shared/errors.js';

export interface QmpServerOptions {
  path: string;
  log?: (message: string) => void;
  onQuit?: () => void;
}

type Reply = Record<string, unknown>;

function timestamp(): { seconds: number; microseconds: number } {
  const us = BigInt(Date.now()) * 1000n + (process.hrtime.bigint() / 1000n) % 1000n;
  return { seconds: Number(us / 1_000_000n), microseconds: Number(us % 1_000_000n) };
}

/**
 * QEMU's monitor protocol on a unix socket: greeting, capabilities negotiation, commands with
 * `id` echoed, errors as `{"error": {"class", "desc"}}`, events with timestamps. Commands run
 * one at a time per connection, in order, as QEMU runs in-band commands.
 */
export class QmpServer {
  private server: Server | undefined;
  private readonly sessions = new Set<QmpSession>();
  private quitResolve!: () => void;
  /** resolves when a client sent `quit` */
  readonly quitRequested = new Promise<void>((r) => (this.quitResolve = r));

  constructor(
    readonly engine: BlockEngine,
    private readonly options: QmpServerOptions,
  ) {}

  async listen(): Promise<void> {
    await unlink(this.options.path).catch(() => {});
    const server = createServer((socket) => {
      const session = new QmpSession(socket, this);
      this.sessions.add(session);
      socket.on('close', () => this.sessions.delete(session));
    });
    // the socket must never exist with looser permissions, not even for a moment
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(this.options.path, () => resolve());
      });
    } finally {
      process.umask(old);
    }
    await chmod(this.options.path, 0o600);
    this.server = server;
    this.engine.jobs.on('event', this.onJobEvent);
  }

  /** Sends an event to every client that finished negotiation. */
  broadcast(event: string, data?: Record<string, unknown>): void {
    const msg: Reply = { event, ...(data !== undefined ? { data } : {}), timestamp: timestamp() };
    for (const s of this.sessions) s.sendEvent(msg);
  }

  /** After the reply to `quit` has gone out: announce SHUTDOWN like QEMU, then let the host close everything. */
  quit(): void {
    setImmediate(() => {
      this.broadcast('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
      this.quitResolve();
      this.options.onQuit?.();
    });
  }

  log(message: string): void {
    this.options.log?.(message);
  }

  private readonly onJobEvent = (event: string, data: Record<string, unknown>): void => this.broadcast(event, data);

  async close(): Promise<void> {
    this.engine.jobs.off('event', this.onJobEvent);
    for (const s of this.sessions) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await unlink(this.options.path).catch(() => {});
  }
}

class QmpSession {
  private negotiated = false;
  private readonly splitter = new JsonStreamSplitter();
  private queue: Promise<void> = Promise.resolve();

  constructor(
    private readonly socket: Socket,
    private readonly server: QmpServer,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      for (const item of this.splitter.push(chunk)) {
        this.queue = this.queue.then(() => this.handleItem(item));
      }
    });
    socket.on('error', () => socket.destroy());
    this.send({ QMP: { version: { qemu: APP_VERSION_FOR_QMP, package: 'tidemark' }, capabilities: ['oob'] } });
  }

  sendEvent(msg: Reply): void {
    if (this.negotiated) this.send(msg);
  }

  /** Closes after pending replies are flushed. */
  destroy(): void {
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  private send(msg: Reply): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(`${JSON.stringify(msg)}\r\n`);
  }

  private async handleItem(item: { ok: true; text: string } | { ok: false; error: string }): Promise<void> {
    if (!item.ok) {
      this.send({ error: { class: 'GenericError', desc: item.error } });
      return;
    }
    let msg: unknown;
    try {
      msg = JSON.parse(normalizeQuotes(item.text));
    } catch (err) {
      this.send({ error: { class: 'GenericError', desc: `JSON parse error, ${err instanceof Error ? err.message : String(err)}` } });
      return;
    }
    this.send(await this.dispatch(msg));
  }

  private async dispatch(msg: unknown): Promise<Reply> {
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      return { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } };
    }
    const m = msg as Record<string, unknown>;
    const withId = (r: Reply): Reply => ('id' in m ? { ...r, id: m.id } : r);
    for (const key of Object.keys(m)) {
      if (!['execute', 'exec-oob', 'arguments', 'id', 'control'].includes(key)) {
        return withId({ error: { class: 'GenericError', desc: `QMP input member '${key}' is unexpected` } });
      }
    }
    const name = m.execute ?? m['exec-oob'];
    if (typeof name !== 'string') {
      return withId({ error: { class: 'GenericError', desc: "QMP input lacks member 'execute'" } });
    }
    if (m.arguments !== undefined && (typeof m.arguments !== 'object' || m.arguments === null || Array.isArray(m.arguments))) {
      return withId({ error: { class: 'GenericError', desc: "QMP input member 'arguments' must be an object" } });
    }
    try {
      if (name === 'qmp_capabilities') return withId(this.capabilities(m.arguments));
      if (!this.negotiated) {
        throw new QmpError('CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      }
      const command = findCommand(name);
      if (!command) throw new QmpError('CommandNotFound', `The command ${name} has not been found`);
      const args = checkArgs(command.args, m.arguments);
      const result = await command.run(args, { engine: this.server.engine, quit: () => this.server.quit(), log: (m) => this.server.log(m) });
      return withId({ return: result ?? {} });
    } catch (err) {
      if (err instanceof QmpError) return withId({ error: { class: err.errorClass, desc: err.message } });
      const desc = err instanceof Error ? err.message : String(err);
      // refusals are answers, not incidents: only unexpected failures go to the log
      if (!(err instanceof TidemarkError)) this.server.log(`qmp: ${name} failed: ${err instanceof Error ? (err.stack ?? desc) : desc}`);
      return withId({ error: { class: 'GenericError', desc } });
    }
  }

  private capabilities(args: unknown): Reply {
    if (this.negotiated) throw new QmpError('CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
    const a = checkArgs({ enable: { type: 'array', optional: true } }, args);
    for (const cap of (a.enable as unknown[] | undefined) ?? []) {
      if (cap !== 'oob') throw generic(`Parameter 'enable' does not accept value '${String(cap)}'`);
    }
    this.negotiated = true;
    return { return: {} };
  }
}
