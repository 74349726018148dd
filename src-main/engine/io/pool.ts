import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { open as openCb, close as closeCb, fstat as fstatCb, ftruncate as ftruncateCb, constants } from 'node:fs';
import { promisify } from 'node:util';
import type { FileHandle, FileOpener, HostExtent } from './file-handle.js';
import type { IoReply, IoRequest } from './io-protocol.js';
import { FileError, fileErrorToTidemark } from './file-errors.js';
import { ioWorkerPath } from './worker-path.js';

const openAsync = promisify(openCb);
const closeAsync = promisify(closeCb);
const fstatAsync = promisify(fstatCb);
const ftruncateAsync = promisify(ftruncateCb);

type Pending = { resolve: (r: IoReply & { ok: true }) => void; reject: (e: IoReply & { ok: false }) => void };

// Distributes blocking I/O over worker threads
type RequestBody = IoRequest extends infer R ? (R extends IoRequest ? Omit<R, 'id'> : never) : never;

/**
 * A pool of worker threads doing blocking file I/O. Requests go to the least-busy worker, so
 * independent requests run in parallel; ordering between requests is the caller's business
 * (the format drivers lock what must not overlap).
 */
export class IoPool implements FileOpener {
  readonly size: number;
  private readonly workers: Worker[] = [];
  private readonly inFlight: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(size = IoPool.defaultSize()) {
    this.size = size;
    const script = ioWorkerPath();
    for (let i = 0; i < size; i++) {
      const w = new Worker(script);
      w.on('message', (reply: IoReply) => this.settle(i, reply));
      w.on('error', (err) => this.failAll(err));
      // a worker with nothing pending must not keep the process alive
      w.unref();
      this.workers.push(w);
      this.inFlight.push(0);
    }
  }

  /**
   * Measured on the 2-core machines: beyond 4 workers nothing is gained (the disk and the page
   * cache are the bottleneck), below 2 a slow fsync stalls every other request.
   */
  static defaultSize(): number {
    return Math.max(2, Math.min(4, availableParallelism()));
  }

  run(body: RequestBody, transfer: ArrayBuffer[] = []): Promise<IoReply & { ok: true }> {
    if (this.closed) return Promise.reject(new Error('I/O pool is closed'));
    let best = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.inFlight[best] > this.inFlight[i]) best = i;
    const id = this.nextId++;
    const req = { ...body, id } as IoRequest;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.inFlight[best]++ === 0) this.workers[best].ref();
      this.workers[best].postMessage(req, transfer);
    });
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
    return new PoolFile(this, path, options.readOnly, fd);
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
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private settle(worker: number, reply: IoReply): void {
    if (--this.inFlight[worker] === 0) this.workers[worker].unref();
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    if (reply.ok) p.resolve(reply);
    else p.reject(reply);
  }

  private failAll(err: unknown): void {
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject({ id, ok: false, errno: 'EIO', message: String(err) });
    }
  }
}

/** A file whose reads and writes run on the pool. */
class PoolFile implements FileHandle {
  private closed = false;
  constructor(
    private readonly pool: IoPool,
    readonly path: string,
    readonly readOnly: boolean,
    private readonly fd: number,
  ) {}

  async pread(position: number, length: number): Promise<Uint8Array> {
    const r = await this.pool.run({ op: 'pread', fd: this.fd, position, length }).catch(this.fail('read'));
    return new Uint8Array(r.data as ArrayBuffer);
  }

  async pwrite(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new FileError('EBADF', this.path, 'write');
    // copy into a fresh buffer the worker can own (a Node Buffer's slice() shares its pool, which cannot be transferred)
    const copy = new Uint8Array(data.length);
    copy.set(data);
    await this.pool.run({ op: 'pwrite', fd: this.fd, position, data: copy.buffer }, [copy.buffer]).catch(this.fail('write'));
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
    await this.pool.run({ op: 'fsync', fd: this.fd }).catch(this.fail('sync'));
  }

  async sha256(position: number, length: number): Promise<string> {
    const r = await this.pool.run({ op: 'sha256', fd: this.fd, position, length }).catch(this.fail('hash'));
    return r.hex as string;
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
