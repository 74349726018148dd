import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Lent } from '../../io/file-handle.js';
import {
  CHUNK_HEADER_SIZE,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_INIT_MAGIC,
  NBD_MAX_BLOCK_STATUS_EXTENTS,
  NBD_MAX_BUFFER_SIZE,
  NBD_MAX_STRING_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  MAX_OPTION_DATA,
  commandName,
  optionName,
  unexpectedLengthText,
  META_ID_ALLOCATION_DEPTH,
  META_ID_BASE_ALLOCATION,
  META_ID_DIRTY_BITMAP,
} from './constants.js';
import { ByteQueue, RequestParser, StreamClosed, chunkHeader, optionReply, simpleReplyHeader, utf8Limited, writeU64, type NbdRequest, type ParserEvent } from './wire.js';
import type { ExportUser, NbdExport } from './export.js';
import { ExtentArray, allocationFlags, bitmapExtents, depthValue, parseMetaRequest, selectContexts, selectedContexts, selectionCount, statusExtents, type MetaSelection } from './meta.js';
import { NbdCommandError, errorText, nbdErrno } from './errors.js';
import type { PskKeys, PskServerCredentials } from './tls-psk.js';

/** What a connection needs from its server. */
export interface ClientHost {
  findExport(name: string): NbdExport | undefined;
  listExports(): NbdExport[];
  /** the server is closing: options get NBD_REP_ERR_SHUTDOWN */
  readonly shuttingDown: boolean;
  log(message: string): void;
}

export interface ClientLimits {
  /** the whole handshake must be over within this time (0: no limit) */
  handshakeTimeoutMs: number;
  /** requests being served at once per connection before the server stops reading */
  maxInflight: number;
  /** payload and read-buffer bytes held per connection before the server stops reading */
  maxInflightBytes: number;
  /**
   * unsent reply bytes queued on the socket before the server stops reading. Kept small: every
   * queued read reply holds a lent buffer until it is sent, so a long queue only spreads reads
   * over more memory, ahead of a socket that cannot take them sooner. Measured with nbdcopy (1
   * connection, 1 GiB sequential read, in-process A/B against qemu-nbd on the 2-core VM):
   * 32 MiB — ~21 MiB lent on average, 0.73-0.77 of qemu-nbd's throughput; 4 MiB — ~12 MiB lent,
   * reading paused 80-90% of the time, 0.86-0.98. 2 and 8 MiB measured about the same as 4;
   * capping requests in flight at 16 instead (qemu-nbd's own limit) was slower (0.82-0.89).
   */
  maxQueuedOutput: number;
}

export const DEFAULT_LIMITS: ClientLimits = {
  handshakeTimeoutMs: 10_000,
  maxInflight: 256,
  maxInflightBytes: 64 * 1024 * 1024,
  maxQueuedOutput: 4 * 1024 * 1024,
};

export interface ClientStats {
  exportName: string | undefined;
  phase: 'handshake' | 'transmission' | 'closed';
  /** requests being served */
  inflight: number;
  /** their payload and read-buffer bytes */
  inflightBytes: number;
  /** reply bytes not yet taken by the socket */
  queuedOutput: number;
  /** the server stopped reading this client's requests until it catches up */
  readingPaused: boolean;
}

/** The session ends (protocol violation, or the client aborted); not a failure of the server. */
class SessionEnd extends Error {
  /** end after flushing what was sent (NBD_OPT_ABORT's reply), rather than dropping the connection */
  constructor(readonly graceful = false) {
    super('session ended');
  }
}

const ZEROES_124 = Buffer.alloc(124);
/** the options this server implements (a too-long one of these is NBD_REP_ERR_TOO_BIG, any other NBD_REP_ERR_UNSUP) */
const KNOWN_OPTIONS = new Set([
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_LIST,
  NBD_OPT_STARTTLS,
  NBD_OPT_INFO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
]);
/** unread handshake bytes held before the server stops reading from the client */
const HANDSHAKE_BUFFER = 4 * 1024 * 1024;

/**
 * One client connection: the fixed-newstyle handshake (option haggling), then the transmission
 * phase with many requests served at once and replies sent as each completes (so out of order).
 * Reading pauses while too much is in flight, so a client cannot make the server buffer without
 * bound. A WRITE is only executed once its whole payload has arrived.
 */
export class NbdClient implements ExportUser {
  private readonly input: ByteQueue;
  private parser: RequestParser | undefined;
  private fixed = false;
  private noZeroes = false;
  private structured = false;
  /** the last SET_META_CONTEXT: for which export and what it selected */
  private meta: { exp: NbdExport; sel: MetaSelection } | undefined;
  private exp: NbdExport | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  private readingPaused = false;
  /** the socket corked until the end of this turn, if any */
  private corked: Socket | undefined;
  /** no more requests are taken (DISC, shutdown, bad input) */
  private stopped = false;
  private idleWaiters: (() => void)[] = [];
  private handshakeTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  private current!: Socket;
  private detach: () => void = () => {};
  private resolveClosed: () => void = () => {};
  /** STARTTLS has succeeded: the connection is encrypted */
  private tlsActive = false;
  /** resolves when the connection is closed */
  readonly closed: Promise<void>;

  constructor(
    socket: Socket,
    private readonly host: ClientHost,
    private readonly limits: ClientLimits = DEFAULT_LIMITS,
    /** when set, TLS is required: every option but NBD_OPT_STARTTLS is refused until it is on */
    private readonly tls?: PskServerCredentials,
  ) {
    this.current = socket;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    this.input = new ByteQueue(() => this.socket.resume());
    socket.setNoDelay?.(true);
    this.attach(socket);
  }

  /** The connection as it is now: the accepted socket, or the TLS socket over it after STARTTLS. */
  get socket(): Socket {
    return this.current;
  }

  /** Listens to a socket's events: the accepted one, and after STARTTLS the TLS socket instead. */
  private attach(socket: Socket): void {
    const onData = (chunk: Buffer) => this.onData(chunk);
    const onError = () => socket.destroy();
    const onClose = () => this.onClosed();
    const onDrain = () => this.updateReading();
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.on('drain', onDrain);
    this.detach = () => {
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('drain', onDrain);
      // the error listener stays: an unheard 'error' would take the whole process down
    };
  }

  /** The connection has closed (idempotent). */
  private onClosed(): void {
    this.stopped = true;
    this.input.close();
    clearTimeout(this.handshakeTimer);
    this.exp?.users.delete(this);
    this.resolveClosed();
  }

  get exportName(): string | undefined {
    return this.exp?.name;
  }

  /** For diagnostics: where this connection stands. */
  stats(): ClientStats {
    return {
      exportName: this.exp?.name,
      phase: this.socket.destroyed ? 'closed' : this.exp ? 'transmission' : 'handshake',
      inflight: this.inflight,
      inflightBytes: this.inflightBytes,
      queuedOutput: this.socket.writableLength,
      readingPaused: this.readingPaused,
    };
  }

  /** Sends the greeting and runs the handshake; transmission continues from the socket's events. */
  start(): void {
    if (this.limits.handshakeTimeoutMs > 0) {
      this.handshakeTimer = setTimeout(() => {
        this.host.log('nbd: handshake not finished in time; disconnecting');
        this.socket.destroy();
      }, this.limits.handshakeTimeoutMs);
      this.handshakeTimer.unref();
    }
    this.negotiate().catch((err: unknown) => {
      if (err instanceof SessionEnd && err.graceful) {
        this.stopped = true;
        this.endSocket();
        return;
      }
      if (!(err instanceof SessionEnd) && !(err instanceof StreamClosed)) this.host.log(`nbd: handshake failed: ${errorText(err)}`);
      this.socket.destroy();
    });
  }

  /** Stops taking requests, lets those in flight be answered, then closes the connection. */
  shutdown(): Promise<void> {
    this.closing ??= (async () => {
      this.stopped = true;
      if (!this.exp) {
        // still negotiating: nothing in flight
        this.socket.destroy();
        return;
      }
      this.socket.pause();
      await this.idle();
      this.endSocket();
      await this.closed;
    })();
    return this.closing;
  }

  /** Drops the connection at once (requests in flight still finish; their replies are discarded). */
  destroy(): void {
    this.stopped = true;
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (!this.parser) {
      this.input.push(chunk);
      // a client racing ahead of the handshake is not buffered without bound
      if (this.input.length > HANDSHAKE_BUFFER) this.socket.pause();
      return;
    }
    if (this.stopped) return;
    this.handleEvents(this.parser.push(chunk));
  }

  // ------------------------------------------------------------------ handshake

  /**
   * Queues one message (written whole: nothing else can come between its parts). Messages queued
   * in one turn of the event loop leave together in one writev, so many small replies do not
   * cost a system call each.
   */
  private send(...parts: Uint8Array[]): void {
    const s = this.socket;
    if (s.destroyed || !s.writable) return;
    this.corkForTurn(s);
    for (const p of parts) s.write(p);
    if (s.writableLength > this.limits.maxQueuedOutput) this.updateReading();
  }

  /**
   * Like send(header, data) for bytes lent by the I/O layer: released once the socket is done
   * with them (written, or dropped because the socket closed — Node calls back either way).
   */
  private sendLent(header: Uint8Array, data: Lent): void {
    const s = this.socket;
    if (s.destroyed || !s.writable) {
      data.release();
      return;
    }
    this.corkForTurn(s);
    s.write(header);
    s.write(data.bytes, () => data.release());
    if (s.writableLength > this.limits.maxQueuedOutput) this.updateReading();
  }

  private corkForTurn(s: Socket): void {
    if (this.corked === s) return;
    this.corked = s;
    s.cork();
    setImmediate(() => {
      if (this.corked === s) this.corked = undefined;
      s.uncork();
    });
  }

  private async negotiate(): Promise<void> {
    const greeting = Buffer.allocUnsafe(18);
    greeting.writeBigUInt64BE(NBD_INIT_MAGIC, 0);
    greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.send(greeting);

    const clientFlags = (await this.input.read(4)).readUInt32BE(0);
    if (clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
      this.host.log(`nbd: unknown client flags 0x${clientFlags.toString(16)}; disconnecting`);
      throw new SessionEnd();
    }
    this.fixed = (clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

    for (;;) {
      // a client that sends options without reading the replies is not answered into memory without bound
      if (this.socket.writableLength > HANDSHAKE_BUFFER) await this.drained();
      const head = await this.input.read(16);
      if (head.readBigUInt64BE(0) !== NBD_OPTS_MAGIC) {
        this.host.log('nbd: bad option magic; disconnecting');
        throw new SessionEnd();
      }
      const opt = head.readUInt32BE(8);
      const len = head.readUInt32BE(12);
      if (!this.fixed && opt !== NBD_OPT_EXPORT_NAME) {
        // plain newstyle knows no other option, and no way to refuse one
        throw new SessionEnd();
      }
      if (this.tls && !this.tlsActive) {
        await this.beforeTls(opt, len);
        continue;
      }
      if (len > MAX_OPTION_DATA) {
        if (opt === NBD_OPT_EXPORT_NAME) throw new SessionEnd();
        await this.input.skip(len);
        this.optError(opt, KNOWN_OPTIONS.has(opt) ? NBD_REP_ERR_TOO_BIG : NBD_REP_ERR_UNSUP, `option ${optionName(opt)} is too long (${len} bytes)`);
        continue;
      }
      const data = len > 0 ? await this.input.read(len) : Buffer.alloc(0);
      if (this.host.shuttingDown && opt !== NBD_OPT_ABORT) {
        if (opt === NBD_OPT_EXPORT_NAME) throw new SessionEnd();
        this.optError(opt, NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
        continue;
      }
      if (await this.handleOption(opt, data)) return;
    }
  }

  /** While TLS is required and not yet on, only NBD_OPT_STARTTLS is served (QEMU's rules). */
  private async beforeTls(opt: number, len: number): Promise<void> {
    if (opt === NBD_OPT_EXPORT_NAME) {
      // this option has no error reply: the session ends
      this.host.log('nbd: NBD_OPT_EXPORT_NAME before TLS; disconnecting');
      throw new SessionEnd();
    }
    await this.input.skip(len);
    if (opt !== NBD_OPT_STARTTLS) {
      this.optError(opt, NBD_REP_ERR_TLS_REQD, `Option 0x${opt.toString(16)} not permitted before TLS`);
      if (opt === NBD_OPT_ABORT) throw new SessionEnd(true);
      return;
    }
    if (len > 0) {
      // a client that cannot start TLS correctly is not talked to further
      this.optError(opt, NBD_REP_ERR_INVALID, unexpectedLengthText(opt));
      throw new SessionEnd(true);
    }
    await this.startTls(this.tls!);
  }

  /**
   * Answers STARTTLS and runs the TLS handshake over the connection; the handshake phase then goes
   * on, encrypted. A failed handshake ends the connection.
   */
  private async startTls(creds: PskServerCredentials): Promise<void> {
    let keys: PskKeys;
    try {
      keys = await creds.load();
    } catch (err) {
      // the client still may not proceed without TLS; it hears why it cannot have it
      this.host.log(`nbd: STARTTLS refused: ${errorText(err)}`);
      this.optError(NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, 'TLS credentials are unavailable on the server');
      return;
    }
    // the client must wait for the ACK before its first TLS record: bytes already here break the protocol
    if (this.input.length > 0) {
      this.host.log('nbd: client sent data after NBD_OPT_STARTTLS before the reply; disconnecting');
      throw new SessionEnd();
    }
    const raw = this.socket;
    // from here on what the client sends is TLS: it stays in the socket, for the TLS socket to take over
    this.detach();
    raw.pause();
    if (this.corked === raw) {
      this.corked = undefined;
      raw.uncork();
    }
    let tls: TLSSocket;
    try {
      await new Promise<void>((resolve, reject) => raw.write(optionReply(NBD_OPT_STARTTLS, NBD_REP_ACK), (err) => (err ? reject(err) : resolve())));
      tls = await creds.handshake(raw, keys);
    } catch (err) {
      this.host.log(`nbd: TLS handshake failed: ${errorText(err)}`);
      raw.destroy();
      this.onClosed();
      throw new SessionEnd();
    }
    this.current = tls;
    this.tlsActive = true;
    this.attach(tls);
    if (tls.destroyed) {
      this.onClosed();
      throw new SessionEnd();
    }
  }

  /** Resolves when the socket's output has drained (or the socket closed: then the next read fails). */
  private drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  private optError(opt: number, type: number, message: string): void {
    this.send(optionReply(opt, type, utf8Limited(message, NBD_MAX_STRING_SIZE)));
  }

  /** Handles one option; true once the transmission phase has begun. */
  private async handleOption(opt: number, data: Buffer): Promise<boolean> {
    switch (opt) {
      case NBD_OPT_EXPORT_NAME: {
        if (data.length > NBD_MAX_STRING_SIZE) throw new SessionEnd();
        const exp = this.host.findExport(data.toString('utf8'));
        // this option cannot be refused: an unknown export ends the session
        if (!exp) throw new SessionEnd();
        const info = Buffer.allocUnsafe(10);
        writeU64(info, exp.size, 0);
        info.writeUInt16BE(exp.transmissionFlags(this.structured), 8);
        if (this.noZeroes) this.send(info);
        else this.send(info, ZEROES_124);
        this.beginTransmission(exp);
        return true;
      }
      case NBD_OPT_ABORT:
        this.send(optionReply(opt, NBD_REP_ACK));
        throw new SessionEnd(true);
      case NBD_OPT_LIST: {
        if (data.length) {
          this.optError(opt, NBD_REP_ERR_INVALID, unexpectedLengthText(opt));
          return false;
        }
        for (const exp of this.host.listExports()) {
          const name = Buffer.from(exp.name, 'utf8');
          const desc = exp.description ? utf8Limited(exp.description, NBD_MAX_STRING_SIZE) : Buffer.alloc(0);
          const payload = Buffer.allocUnsafe(4 + name.length + desc.length);
          payload.writeUInt32BE(name.length, 0);
          name.copy(payload, 4);
          desc.copy(payload, 4 + name.length);
          this.send(optionReply(opt, NBD_REP_SERVER, payload));
        }
        this.send(optionReply(opt, NBD_REP_ACK));
        return false;
      }
      case NBD_OPT_STARTTLS:
        if (data.length) this.optError(opt, NBD_REP_ERR_INVALID, unexpectedLengthText(opt));
        else if (this.tlsActive) this.optError(opt, NBD_REP_ERR_INVALID, 'TLS already enabled');
        else this.optError(opt, NBD_REP_ERR_POLICY, 'TLS not configured');
        return false;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.handleInfo(opt, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length) this.optError(opt, NBD_REP_ERR_INVALID, unexpectedLengthText(opt));
        else if (this.structured) this.optError(opt, NBD_REP_ERR_INVALID, 'structured reply already negotiated');
        else {
          this.structured = true;
          this.send(optionReply(opt, NBD_REP_ACK));
        }
        return false;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.handleMeta(opt, data);
        return false;
      default:
        this.optError(opt, NBD_REP_ERR_UNSUP, `Unsupported option ${opt} (${optionName(opt)})`);
        return false;
    }
  }

  private handleInfo(opt: number, data: Buffer): boolean {
    if (data.length < 6) {
      this.optError(opt, NBD_REP_ERR_INVALID, `${optionName(opt)} is too short`);
      return false;
    }
    const nameLen = data.readUInt32BE(0);
    if (nameLen > NBD_MAX_STRING_SIZE) {
      this.optError(opt, NBD_REP_ERR_INVALID, 'export name too long');
      return false;
    }
    if (4 + nameLen + 2 > data.length) {
      this.optError(opt, NBD_REP_ERR_INVALID, `inconsistent lengths in option ${optionName(opt)}`);
      return false;
    }
    const name = data.toString('utf8', 4, 4 + nameLen);
    const count = data.readUInt16BE(4 + nameLen);
    if (4 + nameLen + 2 + 2 * count !== data.length) {
      this.optError(opt, NBD_REP_ERR_INVALID, `inconsistent lengths in option ${optionName(opt)}`);
      return false;
    }
    const wanted = new Set<number>();
    for (let i = 0; i < count; i++) wanted.add(data.readUInt16BE(4 + nameLen + 2 + 2 * i));
    const exp = this.host.findExport(name);
    if (!exp) {
      this.optError(opt, NBD_REP_ERR_UNKNOWN, `export '${name}' not present`);
      return false;
    }
    const info = (type: number, payload: Buffer) => {
      const b = Buffer.allocUnsafe(2 + payload.length);
      b.writeUInt16BE(type, 0);
      payload.copy(b, 2);
      this.send(optionReply(opt, NBD_REP_INFO, b));
    };
    if (wanted.has(NBD_INFO_NAME)) info(NBD_INFO_NAME, Buffer.from(exp.name, 'utf8'));
    if (wanted.has(NBD_INFO_DESCRIPTION) && exp.description) info(NBD_INFO_DESCRIPTION, utf8Limited(exp.description, NBD_MAX_STRING_SIZE));
    // sent whether asked or not (as QEMU does): a minimum of 1 asks nothing of the client
    const sizes = Buffer.allocUnsafe(12);
    const [min, preferred, max] = exp.blockSizes();
    sizes.writeUInt32BE(min, 0);
    sizes.writeUInt32BE(preferred, 4);
    sizes.writeUInt32BE(max, 8);
    info(NBD_INFO_BLOCK_SIZE, sizes);
    const ex = Buffer.allocUnsafe(10);
    writeU64(ex, exp.size, 0);
    ex.writeUInt16BE(exp.transmissionFlags(this.structured), 8);
    info(NBD_INFO_EXPORT, ex);
    this.send(optionReply(opt, NBD_REP_ACK));
    if (opt === NBD_OPT_GO) {
      this.beginTransmission(exp);
      return true;
    }
    return false;
  }

  private handleMeta(opt: number, data: Buffer): void {
    const list = opt === NBD_OPT_LIST_META_CONTEXT;
    if (!list) {
      // a SET replaces the selection even when it fails
      this.meta = undefined;
      if (!this.structured) {
        this.optError(opt, NBD_REP_ERR_INVALID, `request option '${optionName(opt)}' when structured reply is not negotiated`);
        return;
      }
    }
    const req = parseMetaRequest(data);
    if (typeof req === 'string') {
      this.optError(opt, NBD_REP_ERR_INVALID, `${req} (${optionName(opt)})`);
      return;
    }
    const exp = this.host.findExport(req.exportName);
    if (!exp) {
      this.optError(opt, NBD_REP_ERR_UNKNOWN, `export '${req.exportName}' not present`);
      return;
    }
    const sel = selectContexts(exp, req, list);
    for (const c of selectedContexts(exp, sel)) {
      const name = Buffer.from(c.name, 'utf8');
      const payload = Buffer.allocUnsafe(4 + name.length);
      // LIST's ids are reserved: QEMU sends 0
      payload.writeUInt32BE(list ? 0 : c.id, 0);
      name.copy(payload, 4);
      this.send(optionReply(opt, NBD_REP_META_CONTEXT, payload));
    }
    this.send(optionReply(opt, NBD_REP_ACK));
    if (!list) this.meta = { exp, sel };
  }

  private beginTransmission(exp: NbdExport): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    // BLOCK_STATUS needs a selection made for this very export
    if (this.meta && this.meta.exp !== exp) this.meta = undefined;
    if (!exp.live) {
      this.socket.destroy();
      return;
    }
    this.exp = exp;
    exp.users.add(this);
    this.parser = new RequestParser(NBD_MAX_BUFFER_SIZE);
    for (const chunk of this.input.drain()) {
      if (this.stopped) break;
      this.handleEvents(this.parser.push(chunk));
    }
    // the handshake may have paused reading; from now on only the transmission limits apply
    if (!this.stopped && !this.readingPaused) this.socket.resume();
  }

  // ------------------------------------------------------------------ transmission

  private handleEvents(events: ParserEvent[]): void {
    for (const ev of events) {
      if (this.stopped) return;
      if (ev.kind === 'bad-magic') {
        this.host.log(`nbd: invalid request magic 0x${ev.magic.toString(16)} from a client; disconnecting`);
        this.stopAndClose();
        return;
      }
      const req = ev.request;
      if (req.type === NBD_CMD_DISC) {
        // soft disconnect: answer what is in flight, then close
        this.stopAndClose();
        return;
      }
      const bytes = (ev.payload?.length ?? 0) + (req.type === NBD_CMD_READ ? Math.min(req.length, NBD_MAX_BUFFER_SIZE) : 0);
      this.inflight++;
      this.inflightBytes += bytes;
      this.serve(req, ev.payload, ev.payloadDropped === true)
        .catch((err: unknown) => this.host.log(`nbd: ${commandName(req.type)} failed unexpectedly: ${errorText(err)}`))
        .finally(() => {
          this.inflight--;
          this.inflightBytes -= bytes;
          if (this.inflight === 0) {
            const w = this.idleWaiters;
            this.idleWaiters = [];
            for (const f of w) f();
          }
          this.updateReading();
        });
    }
    this.updateReading();
  }

  /** Pauses the socket while too much is in flight or queued for sending; resumes below the limits. */
  private updateReading(): void {
    if (this.stopped || !this.parser) return;
    const busy =
      this.inflight >= this.limits.maxInflight || this.inflightBytes >= this.limits.maxInflightBytes || this.socket.writableLength > this.limits.maxQueuedOutput;
    if (busy && !this.readingPaused) {
      this.readingPaused = true;
      this.socket.pause();
    } else if (!busy && this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  private idle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private stopAndClose(): void {
    this.stopped = true;
    this.socket.pause();
    void this.idle().then(() => this.endSocket());
  }

  /** Ends our side after what was sent, then keeps reading (and ignoring) so the peer's close is seen. */
  private endSocket(): void {
    // once all replies are flushed the peer has 2 s to hang up; one that does not even read them goes after 10 s
    this.socket.end(() => setTimeout(() => this.socket.destroy(), 2000).unref());
    setTimeout(() => this.socket.destroy(), 10_000).unref();
    this.socket.resume();
  }



  private async serve(req: NbdRequest, payload: Buffer | undefined, payloadDropped: boolean): Promise<void> {
    const exp = this.exp!;
    try {
      this.check(req, exp, payloadDropped);
      await this.execute(req, exp, payload);
    } catch (err) {
      this.replyError(req, nbdErrno(err), errorText(err));
    }
  }

  /** QEMU's order of checks: length limit, read-only, range, flags. */
  private check(req: NbdRequest, exp: NbdExport, payloadDropped: boolean): void {
    const t = req.type;
    if ((t === NBD_CMD_READ || t === NBD_CMD_WRITE || t === NBD_CMD_CACHE) && (req.length > NBD_MAX_BUFFER_SIZE || payloadDropped)) {
      throw new NbdCommandError(NBD_EINVAL, `len (${req.length}) is larger than max len (${NBD_MAX_BUFFER_SIZE})`);
    }
    const writes = t === NBD_CMD_WRITE || t === NBD_CMD_WRITE_ZEROES || t === NBD_CMD_TRIM;
    if (writes && exp.readOnly) throw new NbdCommandError(NBD_EPERM, 'Export is read-only');
    const ranged = t === NBD_CMD_READ || writes || t === NBD_CMD_CACHE || t === NBD_CMD_BLOCK_STATUS;
    if (ranged && (req.offset > exp.size || req.length > exp.size - req.offset)) {
      throw new NbdCommandError(
        t === NBD_CMD_WRITE || t === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL,
        `operation past EOF; From: ${req.offset}, Len: ${req.length}, Size: ${exp.size}`,
      );
    }
    let valid = NBD_CMD_FLAG_FUA;
    if (t === NBD_CMD_READ && this.structured) valid |= NBD_CMD_FLAG_DF;
    else if (t === NBD_CMD_WRITE_ZEROES) valid |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    else if (t === NBD_CMD_BLOCK_STATUS) valid |= NBD_CMD_FLAG_REQ_ONE;
    if (req.flags & ~valid) {
      throw new NbdCommandError(NBD_EINVAL, `unsupported flags for command ${commandName(t)} (got 0x${req.flags.toString(16)})`);
    }
  }

  private async execute(req: NbdRequest, exp: NbdExport, payload: Buffer | undefined): Promise<void> {
    const b = exp.backend;
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0 || exp.writethrough;
    switch (req.type) {
      case NBD_CMD_READ:
        await this.read(req, exp);
        return;
      case NBD_CMD_WRITE:
        if (req.length > 0) await b.write(req.offset, payload!);
        if (fua) await b.flush();
        this.replyOk(req);
        return;
      case NBD_CMD_FLUSH:
        await b.flush();
        this.replyOk(req);
        return;
      case NBD_CMD_TRIM:
        if (req.length > 0) await b.discard(req.offset, req.length);
        if (fua) await b.flush();
        this.replyOk(req);
        return;
      case NBD_CMD_CACHE:
        // a prefetch: read the range so the host's caches hold it; the data is not sent
        if (req.length > 0) (await b.readLent(req.offset, req.length)).release();
        this.replyOk(req);
        return;
      case NBD_CMD_WRITE_ZEROES:
        if (req.flags & NBD_CMD_FLAG_FAST_ZERO && !(await b.canZeroFast(req.offset, req.length))) {
          throw new NbdCommandError(NBD_ENOTSUP, 'fast zeroing is not possible for this range');
        }
        if (req.length > 0) await b.writeZeroes(req.offset, req.length, (req.flags & NBD_CMD_FLAG_NO_HOLE) === 0);
        if (fua) await b.flush();
        this.replyOk(req);
        return;
      case NBD_CMD_BLOCK_STATUS:
        await this.blockStatus(req, exp);
        return;
      default:
        throw new NbdCommandError(NBD_EINVAL, `invalid request type (${req.type}) received`);
    }
  }

  private async read(req: NbdRequest, exp: NbdExport): Promise<void> {
    const b = exp.backend;
    if (req.length === 0) {
      if (this.structured) this.send(chunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, req.handle, 0));
      else this.send(simpleReplyHeader(req.handle, 0));
      return;
    }
    if (!this.structured) {
      this.sendLent(simpleReplyHeader(req.handle, 0), await b.readLent(req.offset, req.length));
      return;
    }
    if (req.flags & NBD_CMD_FLAG_DF) {
      this.sendData(req, req.offset, await b.readLent(req.offset, req.length), true);
      return;
    }
    // sparse: zero areas go as holes, the rest as data chunks; the last chunk carries DONE
    let extents;
    try {
      extents = await b.blockStatus(req.offset, req.length);
    } catch (err) {
      throw new NbdCommandError(nbdErrno(err), `unable to check for holes: ${errorText(err)}`);
    }
    let segments: { offset: number; length: number; hole: boolean }[] = [];
    for (const e of extents) {
      const last = segments.at(-1);
      if (last && last.hole === e.zero) last.length += e.length;
      else segments.push({ offset: e.offset, length: e.length, hole: e.zero });
    }
    // a status that does not tile the request exactly is not trusted: read it all
    let at = req.offset;
    for (const s of segments) {
      if (s.offset !== at || s.length <= 0) break;
      at += s.length;
    }
    if (at !== req.offset + req.length) segments = [{ offset: req.offset, length: req.length, hole: false }];
    for (let i = 0; i < segments.length; i++) {
      const s = segments[i];
      const final = i === segments.length - 1;
      if (s.hole) {
        const h = chunkHeader(final ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_HOLE, req.handle, 12, 12);
        writeU64(h, s.offset, CHUNK_HEADER_SIZE);
        h.writeUInt32BE(s.length, CHUNK_HEADER_SIZE + 8);
        this.send(h);
        continue;
      }
      let data;
      try {
        data = await b.readLent(s.offset, s.length);
      } catch (err) {
        // earlier chunks are valid: say where the failure is
        this.replyErrorOffset(req, nbdErrno(err), `reading from file failed: ${errorText(err)}`, s.offset);
        return;
      }
      this.sendData(req, s.offset, data, final);
    }
  }

  private sendData(req: NbdRequest, offset: number, data: Lent, final: boolean): void {
    const h = chunkHeader(final ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, req.handle, 8 + data.bytes.length, 8);
    writeU64(h, offset, CHUNK_HEADER_SIZE);
    this.sendLent(h, data);
  }

  private async blockStatus(req: NbdRequest, exp: NbdExport): Promise<void> {
    if (req.length === 0) throw new NbdCommandError(NBD_EINVAL, 'need non-zero length');
    const meta = this.meta;
    if (!meta || meta.exp !== exp || selectionCount(meta.sel) === 0) throw new NbdCommandError(NBD_EINVAL, 'CMD_BLOCK_STATUS not negotiated');
    const max = req.flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_BLOCK_STATUS_EXTENTS;
    const status = (o: number, l: number) => exp.backend.blockStatus(o, l);
    // compute every chunk first, so an error can still be the whole answer
    const chunks: Buffer[] = [];
    try {
      for (const c of selectedContexts(exp, meta.sel)) {
        const arr = new ExtentArray(max);
        if (c.id === META_ID_BASE_ALLOCATION) await statusExtents(status, req.offset, req.length, arr, allocationFlags);
        else if (c.id === META_ID_ALLOCATION_DEPTH) await statusExtents(status, req.offset, req.length, arr, depthValue);
        else bitmapExtents(exp.exportedBitmaps[c.id - META_ID_DIRTY_BITMAP], req.offset, req.length, arr);
        chunks.push(arr.encode(c.id));
      }
    } catch (err) {
      throw new NbdCommandError(nbdErrno(err), `can't get block status: ${errorText(err)}`);
    }
    chunks.forEach((payload, i) => {
      const final = i === chunks.length - 1;
      this.send(chunkHeader(final ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, req.handle, payload.length), payload);
    });
  }

  private replyOk(req: NbdRequest): void {
    // QEMU answers successful non-read commands with a simple reply even when structured replies are on
    this.send(simpleReplyHeader(req.handle, 0));
  }

  private replyError(req: NbdRequest, errno: number, message: string): void {
    if (!this.structured) {
      // a simple reply carries no message; a failed READ sends no data
      this.send(simpleReplyHeader(req.handle, errno));
      return;
    }
    const msg = utf8Limited(message, NBD_MAX_STRING_SIZE);
    const h = chunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, req.handle, 6 + msg.length, 6);
    h.writeUInt32BE(errno, CHUNK_HEADER_SIZE);
    h.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
    this.send(h, msg);
  }

  private replyErrorOffset(req: NbdRequest, errno: number, message: string, offset: number): void {
    const msg = utf8Limited(message, NBD_MAX_STRING_SIZE);
    const h = chunkHeader(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_OFFSET, req.handle, 14 + msg.length, 6);
    h.writeUInt32BE(errno, CHUNK_HEADER_SIZE);
    h.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
    const off = Buffer.allocUnsafe(8);
    writeU64(off, offset, 0);
    this.send(h, msg, off);
  }
}
