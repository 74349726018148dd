import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

/**
 * A deliberately small NBD client for tests, written from the protocol document independently of
 * the server's code: it sends exactly the bytes a test asks for (including malformed ones) and
 * decodes replies. Used against Tidemark and, as an oracle, against qemu-nbd.
 */

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10, EXTENDED_HEADERS: 11 };
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007, ERR_TLS_REQD: 0x80000005, ERR_TOO_BIG: 0x80000009 };
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const CMDF = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 };
export const TF = { HAS_FLAGS: 1, READ_ONLY: 2, FLUSH: 4, FUA: 8, TRIM: 32, WRITE_ZEROES: 64, DF: 128, MULTI_CONN: 256, CACHE: 1024, FAST_ZERO: 2048 };
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 };
export const RT = { NONE: 0, OFFSET_DATA: 1, OFFSET_HOLE: 2, BLOCK_STATUS: 5, ERROR: 32769, ERROR_OFFSET: 32770 };

const OPTS_MAGIC = Buffer.from('IHAVEOPT');

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Chunk {
  flags: number;
  type: number;
  payload: Buffer;
}

export interface Reply {
  /** simple reply error, or the error of the first error chunk; 0 on success */
  error: number;
  simple: boolean;
  chunks: Chunk[];
  /** READ data reassembled (simple data or OFFSET_DATA/OFFSET_HOLE chunks) */
  data?: Buffer;
  /** error chunk message */
  message?: string;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  chunks: Chunk[];
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

export class RawNbd {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private demuxing = false;
  structured = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.buffered += c.length;
      this.wake();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.wake();
        for (const p of this.pending.values()) p.reject(new Error('connection closed'));
        this.pending.clear();
        resolve();
      });
    });
    socket.on('error', () => {});
  }

  static connect(path: string): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => {
        s.off('error', reject);
        resolve(new RawNbd(s));
      });
      s.once('error', reject);
    });
  }

  static connectTcp(port: number, host = '127.0.0.1'): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = connect(port, host, () => {
        s.off('error', reject);
        resolve(new RawNbd(s));
      });
      s.once('error', reject);
    });
  }

  /**
   * Sends NBD_OPT_STARTTLS and, on ACK, runs a TLS-PSK client handshake over the connection;
   * resolves with a client speaking through TLS (this one must not be used after). Rejects with the
   * option's error reply, or the TLS failure.
   */
  async startTls(identity: string, key: Buffer, maxVersion: 'TLSv1.2' | 'TLSv1.3' = 'TLSv1.3', ciphers = 'TLS_AES_128_GCM_SHA256:PSK-AES128-GCM-SHA256:ECDHE-PSK-AES128-CBC-SHA256'): Promise<RawNbd> {
    const [r] = await this.option(OPT.STARTTLS);
    if (r.type !== REP.ACK) throw new Error(`STARTTLS refused: 0x${r.type.toString(16)} ${r.data.toString()}`);
    this.socket.removeAllListeners('data');
    const t = tlsConnect({
      socket: this.socket,
      maxVersion,
      ciphers,
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ psk: key, identity }),
    });
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', () => {
        t.off('error', reject);
        resolve();
      });
      t.once('error', reject);
    });
    return new RawNbd(t);
  }

  get isClosed(): boolean {
    return this.ended;
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended) throw new Error(`connection closed (wanted ${n} bytes, have ${this.buffered})`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
    }
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const m = Math.min(n - filled, c.length);
      c.copy(out, filled, 0, m);
      filled += m;
      if (m === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(m);
    }
    this.buffered -= n;
    return out;
  }

  /** Resolves true when the server closes the connection within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs))]);
  }

  write(data: Uint8Array): void {
    this.socket.write(data);
  }

  close(): void {
    this.socket.destroy();
  }

  // ---------------------------------------------------------------- handshake

  /** Reads the greeting; returns the handshake flags. */
  async greeting(): Promise<number> {
    const g = await this.read(18);
    if (g.toString('latin1', 0, 8) !== 'NBDMAGIC' || !g.subarray(8, 16).equals(OPTS_MAGIC)) throw new Error('not a newstyle NBD server');
    return g.readUInt16BE(16);
  }

  clientFlags(flags = 3): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags);
    this.write(b);
  }

  /** Greeting + client flags (fixed newstyle, no zeroes). */
  async hello(flags = 3): Promise<number> {
    const hf = await this.greeting();
    this.clientFlags(flags);
    return hf;
  }

  sendOption(option: number, data: Uint8Array = Buffer.alloc(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    OPTS_MAGIC.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Uint8Array): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
  }

  async negotiateStructured(): Promise<void> {
    const [r] = await this.option(OPT.STRUCTURED_REPLY);
    if (r.type !== REP.ACK) throw new Error(`structured replies refused: ${r.type}`);
    this.structured = true;
  }

  /** SET_META_CONTEXT; returns context names by id. */
  async setMeta(exportName: string, queries: string[]): Promise<Map<number, string>> {
    const replies = await this.option(OPT.SET_META, metaPayload(exportName, queries));
    const last = replies.at(-1)!;
    if (last.type !== REP.ACK) throw new Error(`SET_META_CONTEXT failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    return new Map(replies.filter((r) => r.type === REP.META_CONTEXT).map((r) => [r.data.readUInt32BE(0), r.data.toString('utf8', 4)]));
  }

  /** NBD_OPT_GO; returns size and transmission flags, and starts the transmission phase. */
  async go(name: string, infos: number[] = [3]): Promise<{ size: number; flags: number; infos: Map<number, Buffer> }> {
    const replies = await this.option(OPT.GO, goPayload(name, infos));
    const last = replies.at(-1)!;
    if (last.type !== REP.ACK) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const infoMap = new Map(replies.filter((r) => r.type === REP.INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
    const ex = infoMap.get(0)!;
    this.startDemux();
    return { size: Number(ex.readBigUInt64BE(0)), flags: ex.readUInt16BE(8), infos: infoMap };
  }

  /** Connects, negotiates and enters transmission on `name`. */
  static async open(path: string, name: string, o: { structured?: boolean; meta?: string[] } = {}): Promise<{ c: RawNbd; size: number; flags: number; contexts: Map<number, string> }> {
    const c = await RawNbd.connect(path);
    await c.hello();
    if (o.structured ?? true) await c.negotiateStructured();
    const contexts = o.meta ? await c.setMeta(name, o.meta) : new Map<number, string>();
    const { size, flags } = await c.go(name);
    return { c, size, flags, contexts };
  }

  // ---------------------------------------------------------------- transmission

  /** Begins decoding replies in the background (after GO / EXPORT_NAME). */
  startDemux(): void {
    if (this.demuxing) return;
    this.demuxing = true;
    void this.demux().catch((err: unknown) => {
      for (const p of this.pending.values()) p.reject(err instanceof Error ? err : new Error(String(err)));
      this.pending.clear();
    });
  }

  private async demux(): Promise<void> {
    for (;;) {
      const magicBuf = await this.read(4, 1e9);
      const magic = magicBuf.readUInt32BE(0);
      if (magic === 0x67446698) {
        const rest = await this.read(12, 1e9);
        const error = rest.readUInt32BE(0);
        const handle = rest.readBigUInt64BE(4);
        const p = this.pending.get(handle);
        if (!p) throw new Error(`simple reply for unknown handle ${handle}`);
        this.pending.delete(handle);
        let data: Buffer | undefined;
        if (p.type === CMD.READ && error === 0 && !this.structured) data = Buffer.from(await this.read(p.length, 1e9));
        p.resolve({ error, simple: true, chunks: [], data });
      } else if (magic === 0x668e33ef) {
        const rest = await this.read(16, 1e9);
        const flags = rest.readUInt16BE(0);
        const type = rest.readUInt16BE(2);
        const handle = rest.readBigUInt64BE(4);
        const len = rest.readUInt32BE(12);
        const payload = len ? Buffer.from(await this.read(len, 1e9)) : Buffer.alloc(0);
        const p = this.pending.get(handle);
        if (!p) throw new Error(`chunk for unknown handle ${handle}`);
        p.chunks.push({ flags, type, payload });
        if (flags & 1) {
          this.pending.delete(handle);
          p.resolve(assemble(p));
        }
      } else {
        throw new Error(`bad reply magic 0x${magic.toString(16)}`);
      }
    }
  }

  /** Sends a request header (and payload); returns its handle. */
  send(type: number, offset: number, length: number, flags = 0, payload?: Uint8Array, magic = 0x25609513): bigint {
    const handle = this.nextHandle++;
    this.write(requestHeader(type, offset, length, flags, handle, magic));
    if (payload) this.write(payload);
    return handle;
  }

  /** The reply to `handle`. */
  reply(handle: bigint, type: number, offset: number, length: number): Promise<Reply> {
    return new Promise((resolve, reject) => this.pending.set(handle, { type, offset, length, chunks: [], resolve, reject }));
  }

  async cmd(type: number, offset: number, length: number, flags = 0, payload?: Uint8Array): Promise<Reply> {
    const handle = this.nextHandle;
    const p = this.reply(handle, type, offset, length);
    this.send(type, offset, length, flags, payload);
    return p;
  }

  pread(offset: number, length: number, flags = 0): Promise<Reply> {
    return this.cmd(CMD.READ, offset, length, flags);
  }

  pwrite(offset: number, data: Uint8Array, flags = 0): Promise<Reply> {
    return this.cmd(CMD.WRITE, offset, data.length, flags, data);
  }

  disconnect(): void {
    this.send(CMD.DISC, 0, 0);
  }
}

export function requestHeader(type: number, offset: number, length: number, flags: number, handle: bigint, magic = 0x25609513): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(handle, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

export function metaPayload(exportName: string, queries: string[]): Buffer {
  const name = Buffer.from(exportName);
  const parts = [u32(name.length), name, u32(queries.length)];
  for (const q of queries) {
    const b = Buffer.from(q);
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

export function goPayload(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const list = Buffer.alloc(2 + 2 * infos.length);
  list.writeUInt16BE(infos.length, 0);
  infos.forEach((v, i) => list.writeUInt16BE(v, 2 + 2 * i));
  return Buffer.concat([u32(n.length), n, list]);
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

/** Block-status chunks of a reply: context id → [length, flags][] */
export function extentsOf(r: Reply): Map<number, [number, number][]> {
  const out = new Map<number, [number, number][]>();
  for (const c of r.chunks) {
    if (c.type !== RT.BLOCK_STATUS) continue;
    const id = c.payload.readUInt32BE(0);
    const list: [number, number][] = [];
    for (let at = 4; at < c.payload.length; at += 8) list.push([c.payload.readUInt32BE(at), c.payload.readUInt32BE(at + 4)]);
    out.set(id, list);
  }
  return out;
}

function assemble(p: Pending): Reply {
  let error = 0;
  let message: string | undefined;
  let data: Buffer | undefined;
  if (p.type === CMD.READ) data = Buffer.alloc(p.length);
  let coveredBytes = 0;
  for (const c of p.chunks) {
    if (c.type & 0x8000) {
      if (!error) {
        error = c.payload.readUInt32BE(0);
        const ml = c.payload.readUInt16BE(4);
        message = c.payload.toString('utf8', 6, 6 + ml);
      }
    } else if (c.type === RT.OFFSET_DATA) {
      const off = Number(c.payload.readBigUInt64BE(0));
      const body = c.payload.subarray(8);
      if (off < p.offset || off + body.length > p.offset + p.length) throw new Error(`data chunk outside the request: ${off}+${body.length}`);
      body.copy(data!, off - p.offset);
      coveredBytes += body.length;
    } else if (c.type === RT.OFFSET_HOLE) {
      const off = Number(c.payload.readBigUInt64BE(0));
      const len = c.payload.readUInt32BE(8);
      if (off < p.offset || off + len > p.offset + p.length) throw new Error(`hole chunk outside the request: ${off}+${len}`);
      coveredBytes += len;
    }
  }
  if (p.type === CMD.READ && !error && coveredBytes !== p.length) throw new Error(`read reply covers ${coveredBytes} of ${p.length} bytes`);
  return { error, simple: false, chunks: p.chunks, data: p.type === CMD.READ && !error ? data : undefined, message };
}
