import { resolve } from 'node:path';
import type { FileHandle, FileOpener, HostExtent, Lent, ReadSegment } from './file-handle.js';
import { FileError } from './file-errors.js';

/**
 * Fault injection in the spirit of QEMU's blkdebug: rules that make chosen I/O on chosen files
 * fail with a chosen errno, so tests can fail any request on purpose. A rule matches a file
 * path, an operation (read, write, sync or any), optionally a byte range; it fires after
 * `after` matching requests have passed, once or always.
 */
export interface FaultRule {
  path: string;
  errno: string;
  op: 'read' | 'write' | 'sync' | 'any';
  offset?: number;
  length?: number;
  /** matching requests to let through before failing (default 0) */
  after?: number;
  once?: boolean;
}

interface LiveRule extends FaultRule {
  seen: number;
  fired: number;
}

export class FaultInjector implements FileOpener {
  private rules: LiveRule[] = [];
  /** requests per path and op, for tests that count I/O before choosing the Nth */
  readonly counts = new Map<string, { read: number; write: number; sync: number }>();

  constructor(private readonly inner: FileOpener) {}

  add(rule: FaultRule): void {
    this.rules.push({ ...rule, path: resolve(rule.path), seen: 0, fired: 0 });
  }

  clear(): void {
    this.rules = [];
  }

  /** Hits of the rule set so far (fired faults). */
  fired(): number {
    return this.rules.reduce((n, r) => n + r.fired, 0);
  }

  async open(path: string, options: { readOnly: boolean; create?: boolean; exclusive?: boolean }): Promise<FileHandle> {
    const file = await this.inner.open(path, options);
    return new FaultyFile(file, this, resolve(path));
  }

  /** Throws the injected error if a rule fires for this request. */
  check(path: string, op: 'read' | 'write' | 'sync', offset: number, length: number): void {
    const c = this.counts.get(path) ?? { read: 0, write: 0, sync: 0 };
    c[op]++;
    this.counts.set(path, c);
    for (const r of this.rules) {
      if (r.path !== path || (r.op !== 'any' && r.op !== op)) continue;
      if (r.offset !== undefined && (offset + length <= r.offset || offset >= r.offset + (r.length ?? Infinity))) continue;
      if (r.seen++ < (r.after ?? 0)) continue;
      if (r.once && r.fired > 0) continue;
      r.fired++;
      throw new FileError(r.errno, path, op);
    }
  }
}

class FaultyFile implements FileHandle {
  /** offered when the wrapped file offers it (a digest reads the range: it counts as a read) */
  readonly contentDigest?: (position: number, length: number, data?: readonly { offset: number; length: number }[]) => Promise<string>;

  constructor(
    private readonly inner: FileHandle,
    private readonly injector: FaultInjector,
    readonly path: string,
  ) {
    const digest = inner.contentDigest?.bind(inner);
    if (digest) {
      this.contentDigest = (position, length, data) => {
        this.injector.check(this.path, 'read', position, length);
        return digest(position, length, data);
      };
    }
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  pread(position: number, length: number): Promise<Uint8Array> {
    this.injector.check(this.path, 'read', position, length);
    return this.inner.pread(position, length);
  }
  async preadv(segments: readonly ReadSegment[], length: number): Promise<Uint8Array> {
    // each range counts (and may fail) as the read it replaces
    for (const s of segments) this.injector.check(this.path, 'read', s.position, s.length);
    if (this.inner.preadv) return this.inner.preadv(segments, length);
    const out = new Uint8Array(length);
    for (const s of segments) out.set(await this.inner.pread(s.position, s.length), s.at);
    return out;
  }
  async preadLent(segments: readonly ReadSegment[], length: number): Promise<Lent | undefined> {
    if (!this.inner.preadLent) return undefined;
    for (const s of segments) if (s.position >= 0) this.injector.check(this.path, 'read', s.position, s.length);
    return this.inner.preadLent(segments, length);
  }
  pwrite(position: number, data: Uint8Array): Promise<void> {
    this.injector.check(this.path, 'write', position, data.length);
    return this.inner.pwrite(position, data);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  truncate(length: number): Promise<void> {
    return this.inner.truncate(length);
  }
  sync(): Promise<void> {
    this.injector.check(this.path, 'sync', 0, 0);
    return this.inner.sync();
  }
  allocation(position: number, length: number): Promise<HostExtent[]> {
    return this.inner.allocation(position, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
