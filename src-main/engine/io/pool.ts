import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { open as openCb, close as closeCb, fstat as fstatCb, ftruncate as ftruncateCb, constants } from 'node:fs';
import { promisify } from 'node:util';
import type { FileHandle, FileOpener, HostExtent, Lent, ReadSegment } from './file-handle.js';
import type { DataRange } from './host-extents.js';
import {
  CTRL_BYTES,
  CTRL_COMPLETED,
  CTRL_SLEEPING,
  CTRL_SUBMITTED,
  cpuPause,
  F_LENGTH,
  F_POSITION,
  OP_FSYNC,
  OP_PREAD_PORT,
  OP_PREAD_SLAB,
  OP_PREADV,
  OP_PREADV_ARENA,
  OP_PWRITE_ARENA,
  OP_PWRITE_PORT,
  OP_PWRITE_SLAB,
  OP_SHA256,
  OP_DIGEST_ARENA,
  OP_DIGEST_FILE,
  S_ARENA,
  S_AUX_LEN,
  S_DATA,
  S_FD,
  S_OP,
  S_RESULT,
  S_STATUS,
  SLOT_BYTES,
  SLOTS,
  getAux,
  type PortMessage,
  type WorkerInit,
} from './io-protocol.js';
import { FileError, fileErrorToTidemark } from './file-errors.js';
import { ArenaAllocator } from './arena.js';
import { contentDigest, type DigestPart } from './content-digest.js';
import { ioWorkerPath } from './worker-path.js';
import type { MarkHost } from '../bitmap/write-marker.js';

const openAsync = promisify(openCb);
const closeAsync = promisify(closeCb);
const fstatAsync = promisify(fstatCb);
const ftruncateAsync = promisify(ftruncateCb);

/** Bytes of each worker's data ring (shared memory, resident once touched). */
const SLAB_BYTES = 8 << 20;
/** Writes up to this size are copied into the slab; larger ones travel as a transferred copy. */
const WRITE_SLAB_MAX = 2 << 20;
/**
 * Reads up to this size land in the slab and are copied out into a fresh buffer on the main
 * thread; larger ones come back as a buffer the worker allocated (its page faults are then
 * paid on the worker, and the main thread copies nothing).
 */
const READ_SLAB_MAX = 16 << 10;
/** How long the main thread keeps looking for a request's completion before it waits to be woken (ms). */
const POLL_MS = 0.05;
/** Checks a poll turn makes for a lone request's completion (Channel.spinFor): ~6.6 µs here (33 ns each). */
const POLL_SPIN_CHECKS = 200;
/** How often the pool looks for completions whose wake-up was lost (Channel.rescue), in ms. */
const WATCHDOG_MS = 250;
/** Requests up to this size are polled for (see Channel.poll). */
const POLL_MAX_BYTES = 64 << 10;

/** What the main thread does in its spare time (see IoPool.onSpareTime). */
interface SpareTimeHooks {
  spare?: () => void;
}

/**
 * Lent buffers (FileHandle.preadLent) come from one arena all workers share. 64 MiB holds what
 * the busiest clients keep in flight (nbdcopy: 4 connections × 64 requests × 256 KiB; a backup:
 * a few 1 MiB runs); a lend is at most LENT_MAX bytes so that one request cannot take it all.
 * Only the pages ever lent become resident.
 */
const ARENA_BYTES = 64 << 20;
const ARENA_MIN_BLOCK = 4 << 10;
const LENT_MAX = 4 << 20;

/**
 * A request as the pool takes it (the `op` names are what diagnostics count). Writes and syncs
 * go to the file's `home` worker: buffered writes to one file serialize on its inode lock in the
 * kernel anyway, and two workers writing the same file at once only spin on that lock (measured:
 * 7% of a backup's CPU). Reads go to whichever worker has the least to do.
 */
export type IoRequestBody =
  | { op: 'pread'; fd: number; position: number; length: number; passing?: boolean }
  | { op: 'preadv'; fd: number; segments: readonly ReadSegment[]; length: number; into?: number }
  | { op: 'pwrite'; fd: number; position: number; data: Uint8Array; home?: number }
  | { op: 'fsync'; fd: number; home?: number }
  | { op: 'sha256'; fd: number; position: number; length: number }
  | { op: 'digest-arena'; offset: number; pieces: readonly ReadSegment[] }
  | { op: 'digest-file'; fd: number; position: number; length: number; segments: readonly ReadSegment[] };

export interface IoResult {
  data?: Uint8Array;
  hex?: string;
}

/** How a request fails: the errno name (e.g. ENOSPC), as the worker saw it. */
export interface IoFailure {
  errno: string;
  message: string;
}

type WaitAsync = (view: Int32Array, index: number, value: number) => { async: boolean; value: Promise<unknown> | string };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

/** A private copy in a buffer of its own (Buffer#slice would return a view, hence not `slice`). */
function ownCopy(data: Uint8Array): Uint8Array {
  const copy = freshBuffer(data.length);
  copy.set(data);
  return copy;
}

/** A fresh buffer of `n` bytes whose contents the caller overwrites (no zero-fill for large ones). */
function freshBuffer(n: number): Uint8Array {
  return n > 64 << 10 ? new Uint8Array(Buffer.allocUnsafeSlow(n).buffer, 0, n) : new Uint8Array(n);
}

/**
 * A buffer of its own for a small read's bytes (at most READ_SLAB_MAX), carved out of a shared
 * chunk as Node's Buffer pool does, contents to be overwritten by the caller. Each 4 KiB read
 * had an ArrayBuffer of its own before, and the garbage collector's bookkeeping of so many small
 * ArrayBuffers cost the main thread more than the rest of the read: measured, 4 KiB reads at qd16
 * through drive.readLent 3.4 → 2.6 µs of main-thread CPU per read. A chunk lives while any of its
 * views does, so only reads whose bytes are passed on get one (FileHandle.preadPassing): a cached
 * 4 KiB L2 table holding a chunk would keep 16 times its size.
 */
const CARVE_CHUNK = 64 << 10;
let carveChunk = new ArrayBuffer(0);
let carveAt = 0;
function carvedBuffer(n: number): Uint8Array {
  if (carveAt + n > carveChunk.byteLength) {
    carveChunk = Buffer.allocUnsafeSlow(CARVE_CHUNK).buffer as ArrayBuffer;
    carveAt = 0;
  }
  const view = new Uint8Array(carveChunk, carveAt, n);
  // 8-aligned, so views can be read as wider types
  carveAt += (n + 7) & ~7;
  return view;
}

interface Request {
  op: number;
  fd: number;
  position: number;
  length: number;
  /** pwrite: the caller's bytes, or (`owned`) a private copy made while the request waited */
  data?: Uint8Array;
  owned: boolean;
  /** preadv: the segments (copied into the slab when the request starts) */
  segments?: readonly ReadSegment[];
  /** arena requests: the byte offset in the arena */
  arenaAt: number;
  /** pread: the bytes are passed on, not kept (a carved buffer will do; FileHandle.preadPassing) */
  passing?: boolean;
  resolve: (r: IoResult) => void;
  reject: (e: IoFailure) => void;
  /** slab region: where, and how much of the ring it used (including a skipped tail) */
  slabAt: number;
  slabUsed: number;
}

/** The main thread's end of one worker (see io-protocol.ts for the layout). */
class Channel {
  readonly worker: Worker;
  private readonly ctrl: Int32Array;
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;
  private readonly slotBytes: Uint8Array;
  private readonly slab: Uint8Array;
  private readonly slabF64: Float64Array;
  private readonly port: MessagePort;
  private submitted = 0;
  private completed = 0;
  private readonly inflight: (Request | undefined)[] = new Array<Request | undefined>(SLOTS);
  /** requests waiting for a slot or slab space, in order */
  private queue: Request[] = [];
  private slabHead = 0;
  private slabTail = 0;
  private armed = false;
  private polling = false;
  private pollUntil = 0;
  private dead: IoFailure | undefined;

  constructor(
    script: string,
    arena: SharedArrayBuffer,
    private readonly hooks: SpareTimeHooks,
    onFatal: (err: unknown) => void,
  ) {
    const ctrl = new SharedArrayBuffer(CTRL_BYTES);
    const slots = new SharedArrayBuffer(SLOTS * SLOT_BYTES);
    const slab = new SharedArrayBuffer(SLAB_BYTES);
    this.ctrl = new Int32Array(ctrl);
    this.i32 = new Int32Array(slots);
    this.f64 = new Float64Array(slots);
    this.slotBytes = new Uint8Array(slots);
    this.slab = new Uint8Array(slab);
    this.slabF64 = new Float64Array(slab);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.port.unref();
    const init: WorkerInit = { ctrl, slots, slab, arena, port: port2 };
    this.worker = new Worker(script, { workerData: init, transferList: [port2] });
    this.worker.on('error', (err) => onFatal(err));
    this.worker.on('exit', (code) => onFatal(new Error(`I/O worker exited (${code})`)));
    // a worker with nothing pending must not keep the process alive
    this.worker.unref();
  }

  /** requests in flight or waiting here */
  get load(): number {
    return ((this.submitted - this.completed) | 0) + this.queue.length;
  }

  /**
   * How much a new request would wait here: the requests ahead of it, plus the wake-up when the
   * worker sleeps. Waking a worker costs the main thread a futex call (~10 µs in a VM, the
   * biggest single cost of a small request) and the worker its scheduling delay; one request
   * ahead in an awake worker usually finishes sooner. Weighed at 1.5 requests, so an idle
   * sleeper still wins over two requests queued.
   */
  get cost(): number {
    return this.load + (Atomics.load(this.ctrl, CTRL_SLEEPING) === 1 ? 1.5 : 0);
  }

  /** Starts a request now if there is room, else queues it (a write's bytes are copied first). */
  add(req: Request): void {
    if (this.dead) {
      req.reject(this.dead);
      return;
    }
    // completions the worker has published but whose wake-up has not reached us yet: taking them
    // now frees their slots and settles their promises sooner (under load the wake-up, a task on
    // the event loop, lags behind by 100 µs and more)
    if (Atomics.load(this.ctrl, CTRL_COMPLETED) !== this.completed) this.harvest();
    if (this.queue.length === 0 && this.tryStart(req)) return;
    // the caller may reuse its buffer once pwrite() returns: keep a private copy while waiting
    // (not of lent bytes: they stay put until the write has settled)
    if (req.data && req.op !== OP_PWRITE_ARENA) {
      req.data = ownCopy(req.data);
      req.owned = true;
    }
    this.queue.push(req);
  }

  private tryStart(req: Request): boolean {
    if (((this.submitted - this.completed) | 0) >= SLOTS) return false;
    const bytes =
      req.op === OP_PREAD_SLAB || req.op === OP_PWRITE_SLAB ? req.length : req.segments ? req.segments.length * 24 : 0;
    // regions start 8-aligned (segment lists are read as float64)
    const need = (bytes + 7) & ~7;
    if (need > 0) {
      if (this.slabHead === this.slabTail) this.slabHead = this.slabTail = 0;
      const at = this.slabHead % SLAB_BYTES;
      const skip = at + need > SLAB_BYTES ? SLAB_BYTES - at : 0;
      if (this.slabHead - this.slabTail + skip + need > SLAB_BYTES) return false;
      req.slabAt = skip ? 0 : at;
      req.slabUsed = skip + need;
      this.slabHead += skip + need;
    }
    const slot = this.submitted & (SLOTS - 1);
    const ib = slot * 32;
    const fb = slot * 16;
    this.i32[ib + S_OP] = req.op;
    this.i32[ib + S_FD] = req.fd;
    this.i32[ib + S_DATA] = req.slabAt;
    this.i32[ib + S_ARENA] = req.arenaAt;
    this.f64[fb + F_POSITION] = req.position;
    this.f64[fb + F_LENGTH] = req.length;
    if (req.op === OP_PWRITE_SLAB) {
      this.slab.set(req.data!, req.slabAt);
      req.data = undefined;
    } else if (req.op === OP_PWRITE_ARENA) {
      req.data = undefined;
    } else if (req.segments) {
      const segs = req.segments!;
      const base = req.slabAt / 8;
      for (let k = 0; k < segs.length; k++) {
        this.slabF64[base + k * 3] = segs[k].position;
        this.slabF64[base + k * 3 + 1] = segs[k].length;
        this.slabF64[base + k * 3 + 2] = segs[k].at;
      }
      this.i32[ib + S_RESULT] = segs.length;
      req.segments = undefined;
    } else if (req.op === OP_PWRITE_PORT) {
      // the caller keeps its buffer (and a view of a pooled Buffer cannot be transferred): send a copy
      const copy = req.owned ? req.data! : ownCopy(req.data!);
      const buffer = copy.buffer as ArrayBuffer;
      this.port.postMessage({ data: buffer } satisfies PortMessage, [buffer]);
      req.data = undefined;
    }
    this.inflight[slot] = req;
    if (this.submitted === this.completed) this.worker.ref();
    this.submitted = (this.submitted + 1) | 0;
    Atomics.store(this.ctrl, CTRL_SUBMITTED, this.submitted);
    // wake the worker if it sleeps; taking the flag down ourselves spares the requests that
    // follow in this burst a second (costly) notify while it is still waking up
    if (Atomics.compareExchange(this.ctrl, CTRL_SLEEPING, 1, 0) === 1) Atomics.notify(this.ctrl, CTRL_SUBMITTED);
    this.arm();
    this.hooks.spare?.();
    if (req.length <= POLL_MAX_BYTES && req.op !== OP_FSYNC) {
      this.pollUntil = performance.now() + POLL_MS;
      if (!this.polling) {
        this.polling = true;
        setImmediate(this.poll);
      }
    }
    return true;
  }

  /**
   * Looks for completions on each turn of the event loop for a short while after a request
   * starts, instead of only waiting to be woken: the wake-up (Atomics.waitAsync's task, and
   * the main thread's own sleep and wake in the kernel) costs more than a small request itself
   * — measured on the 2-core VM, a 4 KiB write at qd1 took 10 µs that way and 4.2 µs polled.
   * Each turn still serves sockets and timers (a zero-timeout poll), so nothing waits on it.
   * Only small requests are polled for: beside a 1 MiB read the spinning main thread cost a
   * third of the throughput (0.62 instead of 0.9-1.0 of qemu-img bench), and there the wake-up
   * is small beside the copy anyway.
   */
  private readonly poll = (): void => {
    this.polling = false;
    if (this.dead) return;
    let completed = Atomics.load(this.ctrl, CTRL_COMPLETED) !== this.completed;
    if (!completed) {
      this.hooks.spare?.();
      completed = ((this.submitted - this.completed) | 0) === 1 && this.spinFor();
    }
    if (completed) this.harvestAll();
    if (this.submitted !== this.completed && performance.now() < this.pollUntil) {
      this.polling = true;
      setImmediate(this.poll);
    }
  };

  /**
   * Looks for the completion of a lone request in flight for a few microseconds, before giving
   * the turn back to the event loop. A turn (a zero-timeout epoll and the loop's phases) takes
   * ~1 µs here, and a completion that lands during one waits for the next check; a caller with
   * one request in flight usually has nothing else to do meanwhile. With several in flight (an
   * NBD client's queue) the loop goes back to its sockets at once. Measured on the 2-core VM
   * (`npm run bench`): a 4 KiB pread at qd1 round trip 4.0-5.6 µs → 3.2-3.6 µs; 4 KiB
   * allocating writes at qd1 350 → 388-429 MiB/s; NBD at qd16 unchanged within the noise.
   */
  private spinFor(): boolean {
    const ctrl = this.ctrl;
    const done = this.completed;
    for (let i = 0; i < POLL_SPIN_CHECKS; i++) {
      if (Atomics.load(ctrl, CTRL_COMPLETED) !== done) return true;
      cpuPause();
    }
    return Atomics.load(ctrl, CTRL_COMPLETED) !== done;
  }

  private arm(): void {
    if (this.armed) return;
    this.armed = true;
    const r = waitAsync(this.ctrl, CTRL_COMPLETED, this.completed);
    if (r.async) void (r.value as Promise<unknown>).then(this.wake);
    else queueMicrotask(this.wake);
  }

  private readonly wake = (): void => {
    this.armed = false;
    if (this.dead) return;
    this.harvest();
    if (this.submitted !== this.completed) this.arm();
    else this.worker.unref();
  };

  /** Settles every request the worker has completed, then starts what waited for room. */
  private harvest(): void {
    const done = Atomics.load(this.ctrl, CTRL_COMPLETED);
    while (this.completed !== done) {
      const slot = this.completed & (SLOTS - 1);
      const req = this.inflight[slot]!;
      this.inflight[slot] = undefined;
      this.completed = (this.completed + 1) | 0;
      this.finish(slot, req);
    }
    while (this.queue.length > 0 && this.tryStart(this.queue[0])) this.queue.shift();
  }

  private finish(slot: number, req: Request): void {
    const ib = slot * 32;
    this.slabTail += req.slabUsed;
    if (this.i32[ib + S_STATUS] !== 0) {
      const errno = getAux(this.slotBytes, slot, this.i32[ib + S_AUX_LEN]);
      req.reject({ errno, message: errno });
      return;
    }
    switch (req.op) {
      case OP_PREAD_SLAB: {
        const n = this.i32[ib + S_RESULT];
        const out = req.passing ? carvedBuffer(req.length) : freshBuffer(req.length);
        out.set(this.slab.subarray(req.slabAt, req.slabAt + n));
        if (n < req.length) out.fill(0, n);
        req.resolve({ data: out });
        return;
      }
      case OP_PREAD_PORT:
      case OP_PREADV: {
        const m = receiveMessageOnPort(this.port)?.message as PortMessage | undefined;
        if (!m) req.reject({ errno: 'EIO', message: 'read data missing' });
        else req.resolve({ data: new Uint8Array(m.data) });
        return;
      }
      case OP_SHA256:
      case OP_DIGEST_ARENA:
      case OP_DIGEST_FILE:
        req.resolve({ hex: getAux(this.slotBytes, slot, this.i32[ib + S_AUX_LEN]) });
        return;
      default:
        req.resolve({});
    }
  }

  /**
   * Takes completions whose wake-up never came (the watchdog's round, see IoPool). The worker's
   * notify should always reach the armed waiter; if one is ever lost, as one worker-side notify
   * was (io-worker.ts, NAP_MS), this turns a hang into a late completion.
   */
  rescue(): void {
    if (!this.dead && Atomics.load(this.ctrl, CTRL_COMPLETED) !== this.completed) this.harvestAll();
  }

  /** harvest(), then lets the process exit if nothing is left in flight or waiting here. */
  private harvestAll(): void {
    this.harvest();
    if (this.submitted === this.completed && this.queue.length === 0) this.worker.unref();
  }

  /** Fails everything pending here, and every later request. */
  fail(failure: IoFailure): void {
    if (this.dead) return;
    this.dead = failure;
    for (let i = 0; i < SLOTS; i++) {
      const req = this.inflight[i];
      this.inflight[i] = undefined;
      req?.reject(failure);
    }
    for (const req of this.queue.splice(0)) req.reject(failure);
    this.worker.unref();
  }

  close(): Promise<number> {
    this.fail({ errno: 'EIO', message: 'I/O pool is closed' });
    this.port.close();
    return this.worker.terminate();
  }
}

/**
 * A pool of worker threads doing blocking file I/O. Requests go to the least-busy worker, so
 * independent requests run in parallel; ordering between requests is the caller's business
 * (the format drivers lock what must not overlap).
 *
 * Requests and completions travel through shared memory (io-protocol.ts), not messages: a
 * request costs the main thread a few stores (plus a wake-up when its worker sleeps), a small
 * write one copy into the worker's data ring, a small read one copy out of it.
 */
export class IoPool implements FileOpener, MarkHost {
  readonly size: number;
  private readonly channels: Channel[] = [];
  private closed = false;
  private nextHome = 0;
  /** what the main thread does in its spare time */
  private readonly hooks: SpareTimeHooks = {};

  /** shared memory for lent buffers (FileHandle.preadLent), and which of it is free */
  readonly arena = new SharedArrayBuffer(ARENA_BYTES);
  private readonly lendable = new ArenaAllocator(ARENA_BYTES, ARENA_MIN_BLOCK);

  /** looks for completions nobody was woken for (Channel.rescue), a few times a second */
  private readonly watchdog: NodeJS.Timeout;

  constructor(size = IoPool.defaultSize()) {
    this.size = size;
    const script = ioWorkerPath();
    for (let i = 0; i < size; i++) {
      const ch: Channel = new Channel(script, this.arena, this.hooks, (err) => {
        if (!this.closed) ch.fail({ errno: 'EIO', message: String(err) });
      });
      this.channels.push(ch);
    }
    this.watchdog = setInterval(() => {
      for (const ch of this.channels) ch.rescue();
    }, WATCHDOG_MS);
    this.watchdog.unref();
  }

  /**
   * One worker per core, 2 to 4. Measured on the 2-core VM (best of 3, engine-side replicas of
   * the formats cases on a 1 GiB image, and a 2 GiB full backup in-process):
   *
   *   workers  rand write 4K qd1  rand read 4K qd16  seq read 1M qd8  backup
   *   1        494-519 ms         80-90 ms           192-213 ms       1.32-1.63 s
   *   2        509-592 ms         106-151 ms         148-152 ms       1.38-1.84 s
   *   4        499-521 ms         109-122 ms         190-208 ms       1.45-2.09 s
   *
   * Small requests and backups do not care (one file's writes all go to one worker anyway, see
   * IoRequestBody); large reads gain from a second worker (its page faults and copy run beside
   * the first's). One worker is no option: a slow fsync would stall every read behind it. More
   * workers than cores only add contention; beyond 4 nothing is gained (the page cache and the
   * disk are the bottleneck).
   */
  static defaultSize(): number {
    return Math.max(2, Math.min(4, availableParallelism()));
  }

  run(body: IoRequestBody): Promise<IoResult> {
    if (this.closed) return Promise.reject<IoResult>({ errno: 'EIO', message: 'I/O pool is closed' } satisfies IoFailure);
    let best = this.channels[0];
    if ((body.op === 'pwrite' || body.op === 'fsync') && body.home !== undefined) best = this.channels[body.home % this.channels.length];
    else {
      let bestCost = best.cost;
      for (let i = 1; i < this.channels.length; i++) {
        const c = this.channels[i].cost;
        if (c < bestCost) {
          best = this.channels[i];
          bestCost = c;
        }
      }
    }
    return new Promise<IoResult>((resolve, reject) => {
      const req: Request = { op: 0, fd: 'fd' in body ? body.fd : -1, position: 0, length: 0, owned: false, resolve, reject, slabAt: 0, slabUsed: 0, arenaAt: 0 };
      switch (body.op) {
        case 'pread':
          req.op = body.length <= READ_SLAB_MAX ? OP_PREAD_SLAB : OP_PREAD_PORT;
          req.position = body.position;
          req.length = body.length;
          req.passing = body.passing;
          break;
        case 'pwrite':
          if (body.data.buffer === this.arena) {
            // lent bytes: written where they are
            req.op = OP_PWRITE_ARENA;
            req.arenaAt = body.data.byteOffset;
          } else {
            req.op = body.data.length <= WRITE_SLAB_MAX ? OP_PWRITE_SLAB : OP_PWRITE_PORT;
          }
          req.position = body.position;
          req.length = body.data.length;
          req.data = body.data;
          break;
        case 'preadv':
          req.op = body.into === undefined ? OP_PREADV : OP_PREADV_ARENA;
          req.arenaAt = body.into ?? 0;
          req.length = body.length;
          req.segments = body.segments;
          break;
        case 'fsync':
          req.op = OP_FSYNC;
          break;
        case 'sha256':
          req.op = OP_SHA256;
          req.position = body.position;
          req.length = body.length;
          break;
        case 'digest-file':
          req.op = OP_DIGEST_FILE;
          req.position = body.position;
          req.length = body.length;
          req.segments = body.segments;
          break;
        case 'digest-arena':
          req.op = OP_DIGEST_ARENA;
          req.position = body.offset;
          req.segments = body.pieces;
          break;
      }
      best.add(req);
    });
  }

  /**
   * Runs `fn` in the main thread's spare time: right after a request has been handed to its
   * worker, and on each turn that polls for a completion and finds none (one hook; undefined
   * removes it). Work done then overlaps the requests in flight (bitmap/write-marker.ts).
   */
  onSpareTime(fn: (() => void) | undefined): void {
    this.hooks.spare = fn;
  }

  /** A lent buffer of `length` bytes (at most LENT_MAX), or undefined when none is free. */
  lend(length: number): Lent | undefined {
    if (length > LENT_MAX || this.closed) return undefined;
    const block = this.lendable.alloc(length);
    if (!block) return undefined;
    let released = false;
    return {
      bytes: new Uint8Array(this.arena, block.at, length),
      release: () => {
        if (released) return;
        released = true;
        this.lendable.release(block.at, block.order);
      },
    };
  }

  /**
   * The content digest (content-digest.ts) of the window at guest `offset` made of `parts`, on a
   * worker: bytes lent by this pool are hashed where they are. Parts in other memory are hashed
   * here on the calling thread instead (a worker cannot see them).
   */
  async contentDigest(offset: number, parts: readonly DigestPart[]): Promise<string> {
    if (this.closed || parts.some((p) => p.bytes && p.bytes.buffer !== this.arena)) return contentDigest(offset, parts);
    const pieces = parts.map((p) => (p.bytes ? { position: p.bytes.byteOffset, length: p.length, at: 0 } : { position: -1, length: p.length, at: 0 }));
    const r = await this.run({ op: 'digest-arena', offset, pieces }).catch((f: IoFailure) => {
      throw new FileError(f.errno, '(memory)', 'hash');
    });
    return r.hex!;
  }

  /** Bytes of the arena not lent right now (diagnostics, tests). */
  get arenaFree(): number {
    return this.lendable.freeBytes();
  }

  async open(path: string, options: { readOnly: boolean; create?: boolean; exclusive?: boolean }): Promise<FileHandle> {
    let flags = options.readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (options.create) flags |= constants.O_CREAT;
    if (options.exclusive) flags |= constants.O_EXCL;
    let fd: number;
    try {
      fd = await openAsync(path, flags, 0o644);
    } catch (err) {
      throw fileErrorToTidemark(err, path, 'open');
    }
    return new PoolFile(this, path, options.readOnly, fd, this.nextHome++ % this.size);
  }

  /** sha256 of a whole file, hashed on a worker (the main thread never reads it). */
  async hashFile(path: string): Promise<string> {
    const file = (await this.open(path, { readOnly: true })) as PoolFile;
    try {
      return await file.sha256(0, await file.size());
    } finally {
      await file.close();
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.watchdog);
    await Promise.all(this.channels.map((c) => c.close()));
  }
}

/** The bytes of a read's result. */
function resultData(r: IoResult): Uint8Array {
  return r.data!;
}

/** A file whose reads and writes run on the pool. */
class PoolFile implements FileHandle {
  private closed = false;
  constructor(
    private readonly pool: IoPool,
    readonly path: string,
    readonly readOnly: boolean,
    private readonly fd: number,
    /** the worker that does this file's writes and syncs */
    private readonly home: number,
  ) {}

  pread(position: number, length: number): Promise<Uint8Array> {
    return this.readOnPool(position, length, false);
  }

  preadPassing(position: number, length: number): Promise<Uint8Array> {
    return this.readOnPool(position, length, true);
  }

  /** Not async, and with its failure handler made once: small reads are the hot path. */
  private readOnPool(position: number, length: number, passing: boolean): Promise<Uint8Array> {
    if (length === 0) return Promise.resolve(new Uint8Array(0));
    return this.pool.run({ op: 'pread', fd: this.fd, position, length, passing }).then(resultData, this.readFailed);
  }

  private readonly readFailed = this.fail('read');

  /**
   * Several ranges in one request (one preadv syscall per run of ranges that follow each other
   * in the file); the worker allocates the result, so the main thread copies nothing.
   */
  async preadv(segments: readonly ReadSegment[], length: number): Promise<Uint8Array> {
    if (length === 0) return new Uint8Array(0);
    const sorted = segments.every((s, k) => k === 0 || s.at >= segments[k - 1].at + segments[k - 1].length);
    const segs = (sorted ? segments : [...segments].sort((a, b) => a.at - b.at)).filter((s) => s.length > 0);
    for (const s of segs) {
      if (s.at < 0 || s.at + s.length > length) throw new RangeError(`preadv segment [${s.at}, +${s.length}) outside ${length} bytes`);
    }
    const r = await this.pool.run({ op: 'preadv', fd: this.fd, segments: segs, length }).catch(this.fail('read'));
    return r.data!;
  }

  /** Like preadv, into a lent buffer of the pool (zero-copy); undefined when none is free. */
  async preadLent(segments: readonly ReadSegment[], length: number): Promise<Lent | undefined> {
    const lent = this.pool.lend(length);
    if (!lent) return undefined;
    const segs = segments.filter((s) => s.length > 0);
    for (let k = 0; k < segs.length; k++) {
      const s = segs[k];
      if (s.at < 0 || s.at + s.length > length || (k > 0 && s.at < segs[k - 1].at + segs[k - 1].length)) {
        lent.release();
        throw new RangeError(`preadLent segment [${s.at}, +${s.length}) out of order or outside ${length} bytes`);
      }
    }
    try {
      await this.pool.run({ op: 'preadv', fd: this.fd, segments: segs, length, into: lent.bytes.byteOffset });
    } catch (err) {
      lent.release();
      return this.fail('read')(err);
    }
    return lent;
  }

  /**
   * The bytes are taken (copied) before this returns, so the caller may reuse `data` at once —
   * except lent bytes (preadLent), which are written in place.
   */
  pwrite(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) return Promise.reject(new FileError('EBADF', this.path, 'write'));
    if (data.length === 0) return Promise.resolve();
    return this.pool.run({ op: 'pwrite', fd: this.fd, position, data, home: this.home }).then(() => undefined, this.fail('write'));
  }

  async size(): Promise<number> {
    try {
      return (await fstatAsync(this.fd)).size;
    } catch (err) {
      throw fileErrorToTidemark(err, this.path, 'stat');
    }
  }

  async truncate(length: number): Promise<void> {
    try {
      await ftruncateAsync(this.fd, length);
    } catch (err) {
      throw fileErrorToTidemark(err, this.path, 'truncate');
    }
  }

  async sync(): Promise<void> {
    await this.pool.run({ op: 'fsync', fd: this.fd, home: this.home }).catch(this.fail('sync'));
  }

  async sha256(position: number, length: number): Promise<string> {
    const r = await this.pool.run({ op: 'sha256', fd: this.fd, position, length }).catch(this.fail('hash'));
    return r.hex!;
  }

  /**
   * The content digest (content-digest.ts) of a file range of at most 4 MiB, read and hashed on
   * a worker; with `data`, only those parts of it are read and the rest counts as zeros.
   */
  async contentDigest(position: number, length: number, data?: readonly DataRange[]): Promise<string> {
    const segments = (data ?? [{ offset: position, length }]).map((r) => ({ position: r.offset, length: r.length, at: r.offset - position }));
    for (const s of segments) {
      if (s.at < 0 || s.at + s.length > length) throw new RangeError(`data range [${s.position}, +${s.length}) outside the digested range`);
    }
    const r = await this.pool.run({ op: 'digest-file', fd: this.fd, position, length, segments }).catch(this.fail('hash'));
    return r.hex!;
  }

  async allocation(position: number, length: number): Promise<HostExtent[]> {
    // Node exposes no SEEK_DATA/SEEK_HOLE: report the range as data (always correct, never sparse-aware)
    return length > 0 ? [{ offset: position, length, data: true }] : [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await closeAsync(this.fd);
  }

  private fail(op: string) {
    return (reply: unknown): never => {
      const r = reply as { errno?: string };
      throw r && typeof r.errno === 'string' ? new FileError(r.errno, this.path, op) : fileErrorToTidemark(reply, this.path, op);
    };
  }
}
