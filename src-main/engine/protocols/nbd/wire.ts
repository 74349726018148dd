import {
  CHUNK_HEADER_SIZE,
  NBD_CMD_WRITE,
  NBD_MAX_BUFFER_SIZE,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  REQUEST_SIZE,
  SIMPLE_REPLY_SIZE,
} from './constants.js';

/**
 * Framing of the NBD byte streams: an incremental parser for the transmission phase (requests
 * and write payloads), an awaitable byte queue for the handshake, and the reply encoders.
 * Nothing here knows about exports or the engine, so the parser can be fuzzed on its own.
 */

/** One transmission-phase request as it came off the wire. */
export interface NbdRequest {
  flags: number;
  type: number;
  /** the client's opaque 8-byte handle (cookie), echoed in every reply */
  handle: Buffer;
  /**
   * The u64 offset as a double: exact up to 2^53, and any larger value still compares as larger
   * than every export size, which is all the server does with such offsets.
   */
  offset: number;
  length: number;
}

export type ParserEvent =
  /** a complete request; a WRITE carries its payload, unless the payload was too big and is being dropped */
  | { kind: 'request'; request: NbdRequest; payload?: Buffer; payloadDropped?: boolean }
  /** not a request header: the stream cannot be resynchronised, the connection must end */
  | { kind: 'bad-magic'; magic: number };

/**
 * Splits the client's transmission-phase stream into requests. Bytes may arrive in any slicing;
 * a WRITE is reported once its whole payload is in. A WRITE longer than `maxPayload` is reported
 * at once with `payloadDropped` and its payload is then skipped without being stored, so the
 * connection stays usable and a hostile length costs no memory. A header with a bad magic
 * poisons the parser: everything after it is ignored.
 */
export class RequestParser {
  private chunks: Buffer[] = [];
  /** read position in chunks[0] */
  private head = 0;
  private buffered = 0;
  /** payload bytes of an oversized write still to drop */
  private dropping = 0;
  private pendingWrite: NbdRequest | undefined;
  private dead = false;

  constructor(readonly maxPayload = NBD_MAX_BUFFER_SIZE) {}

  /** bytes received but not yet consumed (a partial header or payload) */
  get pendingBytes(): number {
    return this.buffered;
  }

  get poisoned(): boolean {
    return this.dead;
  }

  push(chunk: Uint8Array): ParserEvent[] {
    const out: ParserEvent[] = [];
    if (this.dead || chunk.length === 0) return out;
    this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.buffered += chunk.length;
    for (;;) {
      if (this.dropping > 0) {
        const n = Math.min(this.dropping, this.buffered);
        this.drop(n);
        this.dropping -= n;
        if (this.dropping > 0) break;
        continue;
      }
      if (this.pendingWrite) {
        const request = this.pendingWrite;
        if (this.buffered < request.length) break;
        this.pendingWrite = undefined;
        out.push({ kind: 'request', request, payload: this.take(request.length) });
        continue;
      }
      if (this.buffered < REQUEST_SIZE) break;
      const h = this.take(REQUEST_SIZE);
      const magic = h.readUInt32BE(0);
      if (magic !== NBD_REQUEST_MAGIC) {
        this.dead = true;
        this.chunks = [];
        this.buffered = 0;
        this.head = 0;
        out.push({ kind: 'bad-magic', magic });
        break;
      }
      const request: NbdRequest = {
        flags: h.readUInt16BE(4),
        type: h.readUInt16BE(6),
        handle: Buffer.from(h.subarray(8, 16)),
        offset: h.readUInt32BE(16) * 2 ** 32 + h.readUInt32BE(20),
        length: h.readUInt32BE(24),
      };
      if (request.type === NBD_CMD_WRITE && request.length > 0) {
        if (request.length > this.maxPayload) {
          this.dropping = request.length;
          out.push({ kind: 'request', request, payloadDropped: true });
        } else {
          this.pendingWrite = request;
        }
        continue;
      }
      out.push({ kind: 'request', request });
    }
    return out;
  }

  /** Hands back whatever is buffered (nothing is kept). */
  private drop(n: number): void {
    this.buffered -= n;
    while (n > 0) {
      const first = this.chunks[0];
      const avail = first.length - this.head;
      if (n < avail) {
        this.head += n;
        return;
      }
      n -= avail;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** The next n buffered bytes; a view when they sit in one chunk, else a copy. */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length - this.head >= n) {
      const out = first.subarray(this.head, this.head + n);
      this.drop(n);
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const m = Math.min(n - filled, c.length - this.head);
      c.copy(out, filled, this.head, this.head + m);
      filled += m;
      this.drop(m);
    }
    return out;
  }
}

/** The peer closed (or the server ended the session) before the bytes a handshake step needed. */
export class StreamClosed extends Error {
  constructor() {
    super('connection closed');
  }
}

/**
 * The handshake's input: awaitable exact reads over a socket's chunks. One read at a time (the
 * handshake is a dialogue). `drain()` hands the unread rest to the transmission parser.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { need: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private closed = false;

  /** `starving` runs whenever a read has to wait for more bytes (the owner resumes its socket then). */
  constructor(private readonly starving: () => void = () => {}) {}

  get length(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (this.closed) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.wake();
  }

  close(): void {
    this.closed = true;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(new StreamClosed());
  }

  async read(n: number): Promise<Buffer> {
    await this.want(n);
    return this.take(n);
  }

  /** Drops n bytes as they arrive, never holding more than what one socket read delivered. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      await this.want(1);
      const m = Math.min(n, this.buffered);
      this.take(m);
      n -= m;
    }
  }

  /** Everything unread, in order; the queue is empty afterwards. */
  drain(): Buffer[] {
    const out = this.chunks;
    this.chunks = [];
    this.buffered = 0;
    return out;
  }

  private want(n: number): Promise<void> {
    if (this.buffered >= n) return Promise.resolve();
    if (this.closed) return Promise.reject(new StreamClosed());
    return new Promise((resolve, reject) => {
      this.waiter = { need: n, resolve, reject };
      this.starving();
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.buffered >= w.need) {
      this.waiter = undefined;
      w.resolve();
    }
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
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
}

// ------------------------------------------------------------------ encoders

export function optionReply(option: number, type: number, data?: Uint8Array): Buffer {
  const len = data?.length ?? 0;
  const out = Buffer.allocUnsafe(20 + len);
  out.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(type >>> 0, 12);
  out.writeUInt32BE(len, 16);
  if (data) out.set(data, 20);
  return out;
}

export function simpleReplyHeader(handle: Buffer, error: number): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  out.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  out.writeUInt32BE(error, 4);
  handle.copy(out, 8, 0, 8);
  return out;
}

/** A structured chunk header; `extra` more bytes of the header area are reserved after it (zeroed by the caller's writes). */
export function chunkHeader(flags: number, type: number, handle: Buffer, payloadLength: number, extra = 0): Buffer {
  const out = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + extra);
  out.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  handle.copy(out, 8, 0, 8);
  out.writeUInt32BE(payloadLength, 16);
  return out;
}

/** A u64 offset (as a safe integer) into `buf` at `at`. */
export function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

/** Encodes a string for the wire, cut to at most `max` bytes without splitting a UTF-8 sequence. */
export function utf8Limited(text: string, max: number): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // step back over continuation bytes so the cut lands on a character boundary
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}
