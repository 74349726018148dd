import { TidemarkError } from '../../../../src-shared/errors.js';
import type { FileHandle, Lent } from '../../io/file-handle.js';
import { actualSize } from '../actual-size.js';
import { Mutex, RangeLock } from '../async-lock.js';
import { checkRequest, closedImage, readOnlyImage, requestFits } from '../image-errors.js';
import type { BlockDriver, BlockExtent, ImageInfo } from '../types.js';
import { qcow2BlockStatus } from './block-status.js';
import { ClusterMap, type EntryDecision } from './cluster-map.js';
import { compressCluster, encodeCompressed } from './compressed.js';
import { AUTOCLEAR_KEPT, HI_COPIED, INCOMPAT_DIRTY } from './constants.js';
import { serializeHeader, type HeaderExtension, type Qcow2Header } from './header.js';
import { HostAllocator } from './host-allocator.js';
import type { ClusterMapping } from './l2-entry.js';
import { MetaGuard } from './meta-guard.js';
import { MetadataMap } from './metadata-map.js';
import { readQcow2State, type Qcow2OpenOptions, type Qcow2State } from './open-qcow2.js';
import { ReadPath } from './read-path.js';
import { Refcounts } from './refcounts.js';
import { discardDecision, splitClusters, unmapsToZeroV2, zeroDecisionV3 } from './zero-rules.js';

const DEFAULT_L2_CACHE = 32 * 1024 * 1024;
const DEFAULT_REFCOUNT_CACHE = 8 * 1024 * 1024;
/** released host clusters worth more than this are written back (and so become reusable) early */
const RELEASED_LIMIT_BYTES = 64 * 1024 * 1024;
/** literal zero writes (v2 images, partial clusters) go out in pieces of at most this size */
const ZERO_CHUNK = 1024 * 1024;

type WriteClass = 'inplace' | 'reuse' | 'alloc';

/** How a write treats a cluster: overwrite in place, reuse a preallocated zero cluster, or allocate. */
function writeClass(m: ClusterMapping): WriteClass {
  if (m.kind === 'normal' && m.copied) return 'inplace';
  if (m.kind === 'zero-alloc' && m.copied) return 'reuse';
  return 'alloc';
}

/** Raw L2 entry of a data cluster we own (what encodeL2 writes with COPIED set, without a DataView per entry). */
function dataEntry(host: number): EntryDecision {
  return { hi: (HI_COPIED | Math.floor(host / 2 ** 32)) >>> 0, lo: host % 2 ** 32, free: false };
}

/**
 * qcow2 (v2 and v3) over a FileHandle, with its backing chain.
 *
 * Concurrency: guest requests lock the guest clusters they touch (reads shared, writes
 * exclusive), so overlapping requests are ordered while others run in parallel; writes to
 * clusters already allocated go straight to the file. All metadata changes run under one mutex.
 *
 * Metadata is written back, like QEMU's qcow2 caches with cache=writeback: a guest write into a
 * new cluster costs one data write; the refcount and L2 changes stay in memory until `flush()`,
 * `close()`, cache pressure, or too many released clusters. Writeback goes in groups, each made
 * durable before the next one is written, so a crash at any point leaves the image consistent or
 * merely leaking:
 *   1. refcount blocks (in-memory refcounts never count less than the file references),
 *   2. fsync, refcount table entries pointing at new blocks (a block counted by another new
 *      block only after that one's entry, an fsync between),
 *   3. fsync (data first, and new L2 tables, which are written zeroed when allocated), the
 *      changed L2 entries and the L1 entries pointing at new tables — any subset of them on disk
 *      is consistent (an L1 entry must wait for another fsync only if its table's zeroing failed),
 *   4. fsync, then the host clusters that the written L2 changes unlinked are freed — only now
 *      can they be reused, so the file never points two ways at one cluster,
 *   5. (flush/close) the refcount blocks again, and a final fsync.
 * A flush after allocating writes costs two fsyncs; with freed clusters, three.
 * The contract: a write acknowledged before a crash may be lost unless a flush completed after
 * it (as with QEMU's cache=writeback); the image is never corrupt; `flush()` makes every write
 * acknowledged before it durable.
 */
export class Qcow2Driver implements BlockDriver {
  readonly format = 'qcow2' as const;
  readonly path: string;
  readonly readOnly: boolean;
  readonly virtualSize: number;
  readonly clusterSize: number;
  readonly file: FileHandle;
  /** the image below this one, or null */
  readonly backing: BlockDriver | null;

  private header: Qcow2Header;
  private readonly extensions: HeaderExtension[];
  private readonly backingFile: string | undefined;
  private readonly backingFormat: string | undefined;
  private readonly clusterBits: number;
  private readonly map: ClusterMap;
  private readonly reader: ReadPath;
  /** which host clusters hold metadata (in-place writes must never land there) */
  private readonly metadata: MetadataMap;
  /** undefined on read-only opens */
  private readonly allocator: HostAllocator | undefined;
  /** undefined on read-only opens */
  private readonly refcounts: Refcounts | undefined;
  private readonly guard: MetaGuard;
  private readonly metaLock = new Mutex();
  private readonly rangeLock = new RangeLock();
  private closing: Promise<void> | undefined;
  /** guest requests in flight; close() waits for them */
  private active = 0;
  private idle: (() => void)[] = [];

  static async open(file: FileHandle, options: Qcow2OpenOptions): Promise<Qcow2Driver> {
    const state = await readQcow2State(file, options);
    const driver = new Qcow2Driver(file, options, state);
    if (!options.readOnly && driver.header.version === 3 && driver.header.autoclearFeatures & ~AUTOCLEAR_KEPT) {
      // autoclear bits we do not know describe data we will not keep consistent: clear them
      driver.header.autoclearFeatures &= AUTOCLEAR_KEPT;
      try {
        await driver.writeHeaderLocked();
      } catch (err) {
        await state.backing?.close().catch(() => undefined);
        throw err;
      }
    }
    return driver;
  }

  private constructor(file: FileHandle, options: Qcow2OpenOptions, state: Qcow2State) {
    const h = state.parsed.header;
    this.file = file;
    this.path = file.path;
    this.readOnly = options.readOnly;
    this.header = { ...h };
    this.extensions = state.parsed.extensions;
    this.backingFile = state.parsed.backingFile;
    this.backingFormat = state.parsed.backingFormat;
    this.backing = state.backing;
    this.virtualSize = h.size;
    this.clusterBits = h.clusterBits;
    this.clusterSize = 2 ** h.clusterBits;
    this.guard = new MetaGuard(this.path);

    const metadata = new MetadataMap(this.clusterSize);
    metadata.setFixed('the header', 0, this.clusterSize);
    metadata.setFixed('the L1 table', state.regions.l1.offset, state.regions.l1.length);
    metadata.setFixed('the refcount table', state.regions.refcountTable.offset, state.regions.refcountTable.length);
    const fileEnd = Math.ceil(state.fileSize / this.clusterSize);
    let refcounts: Refcounts | undefined;
    if (state.refcountTable) {
      refcounts = new Refcounts({
        file,
        path: this.path,
        clusterBits: h.clusterBits,
        refcountOrder: h.refcountOrder,
        tableOffset: h.refcountTableOffset,
        tableClusters: h.refcountTableClusters,
        table: state.refcountTable,
        hostEndClusters: fileEnd,
        metadata,
        cacheBytes: options.refcountCacheBytes ?? DEFAULT_REFCOUNT_CACHE,
        commitTable: (offset, clusters) => this.commitRefcountTable(offset, clusters),
      });
      this.allocator = new HostAllocator(refcounts, this.clusterSize, this.clusterBits, this.guard);
    }
    this.refcounts = refcounts;
    const hostEnd = () => this.allocator?.hostEnd ?? fileEnd;
    this.map = new ClusterMap({
      file,
      path: this.path,
      clusterBits: h.clusterBits,
      version: h.version,
      l1: state.l1,
      l1Size: h.l1Size,
      l1TableOffset: h.l1TableOffset,
      cacheBytes: options.l2CacheBytes ?? DEFAULT_L2_CACHE,
      metadata,
      hostEnd,
    });
    this.metadata = metadata;
    this.reader = new ReadPath({
      file,
      path: this.path,
      clusterBits: h.clusterBits,
      compressionType: h.compressionType,
      map: this.map,
      backing: this.backing,
      hostEnd,
    });
  }

  // ---------------------------------------------------------------- BlockDriver

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.readFast(offset, length) ?? this.track(async () => {
      checkRequest(this.path, 'read', offset, length, this.virtualSize);
      if (length === 0) return new Uint8Array(0);
      const release = await this.lockRange(offset, length, false);
      try {
        return await this.reader.read(offset, length);
      } finally {
        release();
      }
    });
  }

  /**
   * The common small read with nothing to wait for before its I/O — clusters not locked, their L2
   * tables cached, one run of data in the file — started without a single await; undefined when
   * any of that does not hold (read() then takes the general path, which also reports errors).
   * Each await costs a microtask turn and a promise; at 4 KiB and 16 in flight they were a
   * third of the main thread's work per read.
   */
  private readFast(offset: number, length: number): Promise<Uint8Array> | undefined {
    if (this.closing || length === 0 || !requestFits(offset, length, this.virtualSize)) return undefined;
    const cs = this.clusterSize;
    const c0 = Math.floor(offset / cs);
    const c1 = Math.floor((offset + length - 1) / cs) + 1;
    const release = this.rangeLock.tryAcquire(c0, c1, false);
    if (!release) return undefined;
    let read: Promise<Uint8Array> | undefined;
    try {
      const maps = this.map.mapRangeCached(c0, c1 - c0);
      read = maps && this.reader.readSingleRun(offset, length, maps);
    } catch {
      // a damaged L2 entry: the general path meets it again and reports it (as a rejection)
      read = undefined;
    }
    if (!read) {
      release();
      return undefined;
    }
    this.active++;
    return read.finally(() => {
      release();
      this.settled();
    });
  }

  readLent(ranges: readonly { offset: number; length: number }[]): Promise<Lent | undefined> {
    return this.track(async () => {
      if (ranges.length === 0) return undefined;
      for (const r of ranges) checkRequest(this.path, 'read', r.offset, r.length, this.virtualSize);
      const first = ranges[0].offset;
      const last = ranges[ranges.length - 1];
      if (last.offset + last.length <= first) return undefined;
      const release = await this.lockRange(first, last.offset + last.length - first, false);
      try {
        return await this.reader.readLent(ranges);
      } finally {
        release();
      }
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      checkRequest(this.path, 'write', offset, data.length, this.virtualSize);
      if (data.length === 0) return;
      const release = await this.lockRange(offset, data.length, true);
      try {
        await this.writeLocked(offset, data);
      } finally {
        release();
      }
    });
  }

  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      checkRequest(this.path, 'write zeroes', offset, length, this.virtualSize);
      if (length === 0) return;
      const mayUnmap = options?.mayUnmap ?? false;
      const release = await this.lockRange(offset, length, true);
      try {
        const { full, partial } = splitClusters(offset, length, this.clusterSize, this.virtualSize);
        for (const p of partial) await this.zeroPartial(p.offset, p.length);
        if (!full) return;
        if (this.header.version >= 3) {
          const hasBacking = this.backing !== null;
          await this.rewriteEntries(full.first, full.count, (m, l2Exists) => zeroDecisionV3(m, l2Exists, mayUnmap, hasBacking));
        } else {
          await this.zeroFullV2(full.first, full.count, mayUnmap);
        }
      } finally {
        release();
      }
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      checkRequest(this.path, 'discard', offset, length, this.virtualSize);
      const { full } = splitClusters(offset, length, this.clusterSize, this.virtualSize);
      if (!full) return; // partial clusters: the hint is ignored, as QEMU does
      const release = await this.rangeLock.acquire(full.first, full.first + full.count, true);
      try {
        const v3 = this.header.version >= 3;
        const hasBacking = this.backing !== null;
        await this.rewriteEntries(full.first, full.count, (m) => discardDecision(m, v3, hasBacking));
      } finally {
        release();
      }
    });
  }

  flush(): Promise<void> {
    return this.track(async () => {
      if (this.readOnly) return;
      await this.metaLock.run(() => this.writeback(true));
    });
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    return this.track(async () => {
      checkRequest(this.path, 'block status', offset, length, this.virtualSize);
      return qcow2BlockStatus(this.map, this.backing, this.clusterSize, offset, length);
    });
  }

  async info(): Promise<ImageInfo> {
    const backingChain: ImageInfo['backingChain'] = [];
    if (this.backing) {
      backingChain.push({ path: this.backing.path, format: this.backing.format, virtualSize: this.backing.virtualSize });
      backingChain.push(...(await this.backing.info()).backingChain);
    }
    return {
      format: 'qcow2',
      path: this.path,
      virtualSize: this.virtualSize,
      actualSize: await actualSize(this.path),
      clusterSize: this.clusterSize,
      backingFile: this.backingFile,
      backingFilename: this.backing?.path,
      backingFormat: this.backing?.format,
      backingChain,
      dirtyFlag: (this.header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      readOnly: this.readOnly,
    };
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    // new requests are refused from now on; let the ones in flight finish
    if (this.active > 0) await new Promise<void>((resolve) => this.idle.push(resolve));
    let failure: unknown;
    if (!this.readOnly) {
      // after a failed metadata write nothing more is written: the file keeps its last consistent state
      const done = this.guard.failed ? this.file.sync() : this.metaLock.run(() => this.writeback(true));
      await done.catch((err: unknown) => (failure = err));
    }
    await this.file.close().catch((err: unknown) => (failure ??= err));
    if (this.backing) await this.backing.close().catch((err: unknown) => (failure ??= err));
    if (failure) throw failure;
  }

  // ---------------------------------------------------------------- qcow2 extras

  /** The header fields as last written (a copy). */
  get headerFields(): Readonly<Qcow2Header> {
    return { ...this.header };
  }

  /** Data of the header extension with this magic, or undefined. */
  readHeaderExtension(magic: number): Uint8Array | undefined {
    return this.extensions.find((e) => e.magic === magic)?.data.slice();
  }

  /**
   * Replaces (or, with `undefined`, removes) a header extension in memory; `writeHeader`
   * persists it. The backing-format and feature-table extensions are regenerated on every write.
   */
  setHeaderExtension(magic: number, data: Uint8Array | undefined): void {
    const at = this.extensions.findIndex((e) => e.magic === magic);
    if (data === undefined) {
      if (at >= 0) this.extensions.splice(at, 1);
    } else if (at >= 0) {
      this.extensions[at] = { magic, data: data.slice() };
    } else {
      this.extensions.push({ magic, data: data.slice() });
    }
  }

  /** Sets the autoclear feature bits in memory; `writeHeader` persists them. */
  setAutoclearFeatures(bits: bigint): void {
    this.header.autoclearFeatures = bits;
  }

  /** Rewrites cluster 0: header, extensions (unknown ones preserved), backing file name. */
  async writeHeader(): Promise<void> {
    this.checkWritable();
    await this.metaLock.run(() => this.writeHeaderLocked());
  }

  /**
   * Allocates `count` contiguous host clusters (refcount 1); returns the host byte offset. The
   * refcounts are written before this returns, so once the caller's data is synced a structure
   * pointing at the clusters (a header extension) may be written.
   */
  async allocateClusters(count: number): Promise<number> {
    const allocator = this.writableAllocator();
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new TidemarkError('INVALID_INPUT', `Image '${this.path}': invalid cluster count ${count}`);
    }
    return this.metaLock.run(async () => {
      const first = await allocator.allocate(count);
      await this.writeRefcounts();
      return first * this.clusterSize;
    });
  }

  /**
   * Drops one reference from `count` host clusters starting at byte `offset` (cluster-aligned).
   * Whatever pointed at them must already be unlinked durably: they may be reused at once.
   */
  async freeClusters(offset: number, count: number): Promise<void> {
    const allocator = this.writableAllocator();
    if (offset % this.clusterSize !== 0 || offset < this.clusterSize || !Number.isSafeInteger(count) || count < 1) {
      throw new TidemarkError('INVALID_INPUT', `Image '${this.path}': cannot free ${count} clusters at ${offset}`);
    }
    await this.metaLock.run(() => allocator.free(offset / this.clusterSize, count));
  }

  /**
   * Writes one guest cluster compressed (deflate or zstd, per the image's compression type).
   * `offset` must be cluster-aligned and `data` one cluster long (shorter only for the last,
   * partial cluster of the disk). Data that does not shrink is written uncompressed.
   */
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    return this.track(async () => {
      const allocator = this.writableAllocator();
      const cs = this.clusterSize;
      const expected = Math.min(cs, this.virtualSize - offset);
      if (!Number.isSafeInteger(offset) || offset % cs !== 0 || offset < 0 || offset >= this.virtualSize || data.length !== expected) {
        throw new TidemarkError(
          'INVALID_INPUT',
          `Image '${this.path}': a compressed write needs one whole cluster at a cluster-aligned offset (got ${data.length} bytes at ${offset})`,
        );
      }
      let full = data;
      if (data.length < cs) {
        full = new Uint8Array(cs);
        full.set(data);
      }
      const compressed = await compressCluster(full, cs, this.header.compressionType);
      const cluster = offset / cs;
      const release = await this.rangeLock.acquire(cluster, cluster + 1, true);
      try {
        if (!compressed) {
          await this.writeLocked(offset, data);
          return;
        }
        const [old] = await this.map.mapRange(cluster, 1);
        const host = await this.metaLock.run(async () => {
          this.guard.check();
          await this.map.ensureL2(Math.floor(cluster / this.map.l2Entries), allocator);
          return allocator.allocateBytes(compressed.length);
        });
        try {
          await this.file.pwrite(host, compressed);
        } catch (err) {
          await this.metaLock.run(() => allocator.freeBytes(host, compressed.length)).catch(() => undefined);
          throw err;
        }
        const entry = encodeCompressed(host, compressed.length, this.clusterBits);
        await this.metaLock.run(async () => {
          this.guard.check();
          await this.map.setEntries(cluster, 1, () => ({ ...entry, free: false }));
          allocator.release([old]);
          await this.writebackIfDue();
        });
      } finally {
        release();
      }
    });
  }

  // ---------------------------------------------------------------- writing

  private lockRange(offset: number, length: number, exclusive: boolean): Promise<() => void> {
    const cs = this.clusterSize;
    return this.rangeLock.acquire(Math.floor(offset / cs), Math.floor((offset + length - 1) / cs) + 1, exclusive);
  }

  /** A write with its clusters locked: in-place runs go out in parallel, the rest is (re)allocated. */
  private async writeLocked(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const c0 = Math.floor(offset / cs);
    const end = offset + data.length;
    const n = Math.floor((end - 1) / cs) - c0 + 1;
    const maps = await this.map.mapRange(c0, n);
    const inplace: Promise<void>[] = [];
    try {
      let i = 0;
      while (i < n) {
        const cls = writeClass(maps[i]);
        let j = i + 1;
        while (j < n && writeClass(maps[j]) === cls && (cls === 'alloc' || maps[j].host === maps[j - 1].host + cs)) j++;
        const start = Math.max(offset, (c0 + i) * cs);
        const piece = data.subarray(start - offset, Math.min(end, (c0 + j) * cs) - offset);
        if (cls === 'inplace') {
          this.checkDataTarget(maps[i].host, j - i, c0 + i);
          inplace.push(this.file.pwrite(maps[i].host + (start - (c0 + i) * cs), piece));
        } else if (cls === 'reuse') {
          await this.writeReuse(c0 + i, maps.slice(i, j), start, piece);
        } else {
          await this.writeAlloc(c0 + i, maps.slice(i, j), start, piece);
        }
        i = j;
      }
    } finally {
      // never leave a write running (or an unobserved rejection) behind a failure
      await Promise.allSettled(inplace);
    }
    for (const r of await Promise.allSettled(inplace)) if (r.status === 'rejected') throw r.reason;
  }

  /** Targets of in-place writes must be inside the file and must not be metadata. */
  private checkDataTarget(host: number, clusters: number, guestCluster: number): void {
    this.reader.checkHost(host, clusters, guestCluster);
    const meta = this.metadata.find(host / this.clusterSize, clusters);
    if (meta !== undefined) {
      throw new TidemarkError(
        'CORRUPT_IMAGE',
        `Corrupt image '${this.path}': data for guest cluster ${guestCluster} points to host 0x${host.toString(16)}, which holds ${meta}`,
      );
    }
  }

  /**
   * The host contents of clusters [first, first+maps.length) for a write of `data` at guest
   * `start`: the data, plus the clusters' current contents (`fill`) around it where partial.
   */
  private async assemble(
    first: number,
    maps: ClusterMapping[],
    start: number,
    data: Uint8Array,
    fill: (m: ClusterMapping, cluster: number) => Promise<Uint8Array>,
  ): Promise<Uint8Array> {
    const cs = this.clusterSize;
    const count = maps.length;
    const segStart = first * cs;
    const last = first + count - 1;
    const headPartial = start > segStart;
    const tailPartial = start + data.length < Math.min((last + 1) * cs, this.virtualSize);
    if (!headPartial && !tailPartial && data.length === count * cs) return data;
    const buf = new Uint8Array(count * cs);
    if (headPartial) buf.set(await fill(maps[0], first), 0);
    if (tailPartial && (count > 1 || !headPartial)) buf.set(await fill(maps[count - 1], last), (count - 1) * cs);
    buf.set(data, start - segStart);
    return buf;
  }

  /** Preallocated zero clusters we own: write in place with zeros around the data, then clear the flag. */
  private async writeReuse(first: number, maps: ClusterMapping[], start: number, data: Uint8Array): Promise<void> {
    const host = maps[0].host;
    this.checkDataTarget(host, maps.length, first);
    const buf = await this.assemble(first, maps, start, data, async () => new Uint8Array(this.clusterSize));
    await this.file.pwrite(host, buf);
    await this.metaLock.run(async () => {
      this.guard.check();
      await this.map.setEntries(first, maps.length, (k) => dataEntry(host + k * this.clusterSize));
      await this.writebackIfDue();
    });
  }

  /**
   * Clusters needing new host space: one contiguous allocation, one data write, then the L2
   * entries (in memory). When the new clusters lie past everything the file ever held and the
   * rest of them would read as zeros anyway, only the guest bytes are written: a file region
   * never written reads as zeros (a reused cluster may hold old bytes: it is written whole).
   */
  private async writeAlloc(first: number, maps: ClusterMapping[], start: number, data: Uint8Array): Promise<void> {
    const allocator = this.writableAllocator();
    const cs = this.clusterSize;
    const count = maps.length;
    const { host, fresh } = await this.metaLock.run(async () => {
      this.guard.check();
      // L2 tables before data: the layout QEMU produces
      const l1Last = Math.floor((first + count - 1) / this.map.l2Entries);
      for (let l1 = Math.floor(first / this.map.l2Entries); l1 <= l1Last; l1++) await this.map.ensureL2(l1, allocator);
      const untouched = allocator.hostEnd;
      const c = await allocator.allocate(count);
      return { host: c * cs, fresh: c >= untouched };
    });
    try {
      const segStart = first * cs;
      const last = first + count - 1;
      const headPartial = start > segStart;
      const tailPartial = start + data.length < Math.min((last + 1) * cs, this.virtualSize);
      const zerosAround = (!headPartial || this.reader.readsAsZero(maps[0], first)) && (!tailPartial || this.reader.readsAsZero(maps[count - 1], last));
      if (fresh && zerosAround) {
        await this.file.pwrite(host + (start - segStart), data);
      } else {
        await this.file.pwrite(host, await this.assemble(first, maps, start, data, (m, c) => this.reader.clusterContents(m, c)));
      }
    } catch (err) {
      // nothing points at the clusters yet: give them back; if even that fails they merely leak
      await this.metaLock.run(() => allocator.free(host / cs, count)).catch(() => undefined);
      throw err;
    }
    await this.metaLock.run(async () => {
      this.guard.check();
      await this.map.setEntries(first, count, (k) => dataEntry(host + k * cs));
      allocator.release(maps);
      await this.writebackIfDue();
    });
  }

  // ---------------------------------------------------------------- zeroes and discard

  /** A partial cluster: nothing to do if it reads as zeros already, else literal zeros (read-modify-write). */
  private async zeroPartial(offset: number, length: number): Promise<void> {
    const cluster = Math.floor(offset / this.clusterSize);
    const [m] = await this.map.mapRange(cluster, 1);
    if (this.reader.readsAsZero(m, cluster)) return;
    await this.writeLocked(offset, new Uint8Array(length));
  }

  /** v2 has no zero flag: unmap where nothing shows through, otherwise write literal zeros. */
  private async zeroFullV2(first: number, count: number, mayUnmap: boolean): Promise<void> {
    const cs = this.clusterSize;
    const maps = await this.map.mapRange(first, count);
    const zeroBelow = (c: number) => !this.backing || c * cs >= this.backing.virtualSize;
    const unmaps = (m: ClusterMapping, c: number) => unmapsToZeroV2(m, mayUnmap, zeroBelow(c));
    await this.rewriteEntries(first, count, (m, _l2, c) => (unmaps(m, c) ? { hi: 0, lo: 0, free: true } : null));
    const needsZeros = (k: number) => !unmaps(maps[k], first + k) && !this.reader.readsAsZero(maps[k], first + k);
    let i = 0;
    while (i < count) {
      if (!needsZeros(i)) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < count && j - i < ZERO_CHUNK / cs && needsZeros(j)) j++;
      const start = (first + i) * cs;
      const stop = Math.min((first + j) * cs, this.virtualSize);
      await this.writeLocked(start, new Uint8Array(stop - start));
      i = j;
    }
  }

  /**
   * Rewrites the L2 entries of guest clusters [first, first+count) one L2 table at a time (the
   * metadata lock is released between tables so a huge request does not stall other I/O). The
   * old host clusters are released: freed once the new entries are on disk.
   */
  private async rewriteEntries(
    first: number,
    count: number,
    decide: (m: ClusterMapping, l2Exists: boolean, cluster: number) => EntryDecision,
  ): Promise<void> {
    const allocator = this.writableAllocator();
    const perTable = this.map.l2Entries;
    let i = 0;
    while (i < count) {
      const c = first + i;
      const l1Index = Math.floor(c / perTable);
      const inTable = Math.min(count - i, perTable - (c % perTable));
      await this.metaLock.run(async () => {
        this.guard.check();
        if (!this.map.l1Offset(l1Index)) {
          // no L2 table: every cluster in it is unallocated; only allocate one if it changes something
          const unallocated: ClusterMapping = { kind: 'unallocated', host: 0, copied: false, hi: 0, lo: 0 };
          if (decide(unallocated, false, c) === null) return;
          await this.map.ensureL2(l1Index, allocator);
        }
        const freed: ClusterMapping[] = [];
        await this.map.setEntries(c, inTable, (k, old) => {
          const d = decide(old, true, c + k);
          if (d?.free) freed.push(old);
          return d;
        });
        allocator.release(freed);
        await this.writebackIfDue();
      });
      i += inTable;
    }
  }

  // ---------------------------------------------------------------- writeback

  /** Writes metadata back when the caches fill with changes or too much space waits to be freed. Under the metadata lock. */
  private async writebackIfDue(): Promise<void> {
    const refcounts = this.refcounts;
    const allocator = this.allocator;
    if (!refcounts || !allocator) return;
    if (
      this.map.dirtyTables > this.map.cacheEntries / 2 ||
      refcounts.dirtyBlocks > refcounts.cacheEntries / 2 ||
      allocator.releasedCount * this.clusterSize > RELEASED_LIMIT_BYTES
    ) {
      await this.writeback(false);
    }
  }

  /**
   * Writes every metadata change back in the crash-safe order of the class comment; `durable`
   * ends with an fsync (flush, close). Under the metadata lock.
   *
   * A failed write leaves its change dirty and the file in a consistent (older) state, since
   * every group only points at what earlier, synced groups wrote: the error goes to the caller
   * and a later flush simply tries again. Only a refcount that would drop below zero (a damaged
   * image) stops further writes.
   */
  private async writeback(durable: boolean): Promise<void> {
    this.guard.check();
    const refcounts = this.refcounts;
    const allocator = this.allocator;
    const sync = () => this.file.sync();
    if (refcounts && allocator) {
      await refcounts.writeBlocks();
      if (refcounts.hasDirtyTable) {
        await sync();
        await refcounts.writeTable();
      }
      if (this.map.dirtyTables > 0 || this.map.hasDirtyL1) {
        // data, refcounts, and new L2 tables (zeroed when allocated) first
        await sync();
        const l1Waits = this.map.l1WaitsForTables;
        await this.map.writeTables();
        if (l1Waits) await sync();
        await this.map.writeL1();
      }
      if (allocator.releasedCount > 0) {
        await sync();
        await this.guard.run(allocator.applyReleased());
        if (durable) await refcounts.writeBlocks();
      }
    }
    if (durable) await sync();
  }

  /** Writes the refcount changes (blocks, then after an fsync new table entries). Under the metadata lock. */
  private async writeRefcounts(): Promise<void> {
    const refcounts = this.refcounts;
    if (!refcounts) return;
    await refcounts.writeBlocks();
    if (refcounts.hasDirtyTable) {
      await this.file.sync();
      await refcounts.writeTable();
    }
  }

  // ---------------------------------------------------------------- header

  private async commitRefcountTable(offset: number, clusters: number): Promise<void> {
    const buf = new Uint8Array(12);
    const view = new DataView(buf.buffer);
    view.setBigUint64(0, BigInt(offset));
    view.setUint32(8, clusters);
    await this.file.pwrite(48, buf);
    this.header.refcountTableOffset = offset;
    this.header.refcountTableClusters = clusters;
  }

  private async writeHeaderLocked(): Promise<void> {
    let serialized;
    try {
      serialized = serializeHeader({
        header: this.header,
        preserved: this.extensions,
        backingFile: this.backingFile,
        backingFormat: this.backingFormat,
      });
    } catch (err) {
      throw new TidemarkError('INVALID_INPUT', `Image '${this.path}': ${err instanceof Error ? err.message : String(err)}`);
    }
    await this.guard.run(this.file.pwrite(0, serialized.bytes));
    this.header = serialized.header;
  }

  // ---------------------------------------------------------------- state checks

  /** Runs a guest request, counted so close() can wait for it. */
  private async track<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closing) throw closedImage(this.path);
    this.active++;
    try {
      return await fn();
    } finally {
      this.settled();
    }
  }

  /** One counted request is over (track, readFast): close() may go on once none is left. */
  private settled(): void {
    if (--this.active === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  private checkWritable(): void {
    if (this.closing) throw closedImage(this.path);
    if (this.readOnly) throw readOnlyImage(this.path);
    this.guard.check();
  }

  private writableAllocator(): HostAllocator {
    this.checkWritable();
    if (!this.allocator) throw readOnlyImage(this.path);
    return this.allocator;
  }
}
