import { connect, type Socket } from 'node:net';

/** A minimal QMP client: greeting, qmp_capabilities, commands in order, events collected. */
export class Qmp {
  private buf = '';
  private readonly waiting: ((msg: Record<string, unknown>) => void)[] = [];
  private readonly queue: Record<string, unknown>[] = [];
  readonly events: { event: string; data?: Record<string, unknown> }[] = [];
  /** every message in arrival order (replies and events) */
  readonly transcript: Record<string, unknown>[] = [];

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buf += chunk;
      for (let nl = this.buf.indexOf('\n'); nl >= 0; nl = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as Record<string, unknown>;
        this.transcript.push(msg);
        if ('event' in msg) {
          this.events.push({ event: msg.event as string, data: msg.data as Record<string, unknown> | undefined });
          continue;
        }
        const w = this.waiting.shift();
        if (w) w(msg);
        else this.queue.push(msg);
      }
    });
    socket.on('error', () => {});
  }

  static async open(path: string, attempts = 200): Promise<Qmp> {
    for (let i = 0; ; i++) {
      try {
        const s = await new Promise<Socket>((resolve, reject) => {
          const sock = connect(path, () => resolve(sock));
          sock.once('error', reject);
        });
        const q = new Qmp(s);
        await q.next();
        await q.execute('qmp_capabilities');
        return q;
      } catch (err) {
        if (i >= attempts) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  private next(): Promise<Record<string, unknown>> {
    const m = this.queue.shift();
    if (m) return Promise.resolve(m);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Sends a command; resolves with the whole reply ({return} or {error}). */
  async command(execute: string, args?: Record<string, unknown>): Promise<Record<string, unknown>> {
    this.socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    return this.next();
  }

  /** Sends a command and returns its `return`, throwing on an error reply. */
  async execute(execute: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.command(execute, args);
    if ('error' in r) throw new Error(`${execute}: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  /** The `desc` of an error reply (throws if the command succeeded). */
  async error(execute: string, args?: Record<string, unknown>): Promise<string> {
    const r = await this.command(execute, args);
    if (!('error' in r)) throw new Error(`${execute} succeeded: ${JSON.stringify(r)}`);
    return (r.error as { desc: string }).desc;
  }

  close(): void {
    this.socket.destroy();
  }
}
