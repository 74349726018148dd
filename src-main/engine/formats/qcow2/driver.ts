import { TidemarkError } from '../../../../src-shared/errors.js';
import type { FileHandle } from '../../io/file-handle.js';
import { actualSize } from '../actual-size.js';
import { Mutex, RangeLock } from '../async-lock.js';
import { checkRequest, closedImage, corruptImage, readOnlyImage } from '../image-errors.js';
import { MetadataCache } from '../metadata-cache.js';
import type { BlockDriver, BlockExtent, ImageInfo } from '../types.js';
import { compressCluster, decodeCompressed, decompressCluster, encodeCompressed } from './compressed.js';
import { AUTOCLEAR_KEPT, HI_COPIED, INCOMPAT_DIRTY } from './constants.js';
import { serializeHeader, type HeaderExtension, type Qcow2Header } from './header.js';
import { decodeL2, encodeL2, encodeRaw, UNALLOCATED, type ClusterMapping } from './l2-entry.js';
import { MetadataMap } from './metadata-map.js';
import { readQcow2State, type Qcow2OpenOptions, type Qcow2State } from './open-qcow2.js';
import { Refcounts } from './refcounts.js';

const DEFAULT_L2_CACHE = 32 * 1024 * 1024;
const DEFAULT_REFCOUNT_CACHE = 8 * 1024 * 1024;
/** literal zero writes (v2 images, partial clusters) go out in pieces of this size */
const ZERO_CHUNK = 1024 * 1024;

type WriteClass = 'inplace' | 'reuse' | 'alloc';

/** How a write treats a cluster: overwrite in place, reuse a preallocated zero cluster, or allocate. */
function writeClass(m: ClusterMapping): WriteClass {
  if (m.kind === 'normal' && m.copied) return 'inplace';
  if (m.kind === 'zero-alloc' && m.copied) return 'reuse';
  return 'alloc';
}

/** New L2 entry for a cluster (raw halves), or null to leave it; `free` drops its host cluster(s). */
type EntryDecision = { hi: number; lo: number; free: boolean } | null;

const ZERO_FLAG_ENTRY = { hi: 0, lo: 1 };

/**
 * qcow2 (v2 and v3) over a FileHandle, with its backing chain.
 *
 * Concurrency: guest requests lock the guest clusters they touch (reads shared, writes
 * exclusive), so overlapping requests are ordered while others run in parallel. All metadata
 * changes (allocation, L1/L2/refcount updates) run under one mutex and are written through,
 * in the order refcounts → data → L2 → L1 for allocation and L2 → refcounts for freeing, so a
 * crash leaves the image consistent or leaking clusters, never pointing at free ones.
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
  private extensions: HeaderExtension[];
  private readonly backingFile: string | undefined;
  private readonly backingFormat: string | undefined;
  private readonly clusterBits: number;
  private readonly l2Entries: number;
  private readonly l1: Uint8Array;
  private readonly l1View: DataView;
  private readonly l2Cache: MetadataCache;
  private readonly refcounts: Refcounts | undefined;
  private readonly metadata: MetadataMap;
  private readonly metaLock = new Mutex();
  private readonly rangeLock = new RangeLock();
  /** host clusters present at open: bounds for runtime checks on read-only opens */
  private readonly fileEndClusters: number;
  /** byte offset where the next compressed cluster may be packed (0: start a new host cluster) */
  private compressedTail = 0;
  /** last decompressed cluster, keyed by its L2 entry: sequential small reads hit it */
  private lastCompressed: { hi: number; lo: number; data: Uint8Array } | undefined;
  private closing: Promise<void> | undefined;
  /** guest requests in flight; close() waits for them */
  private active = 0;
  private idle: (() => void)[] = [];
  /** a metadata write failed: the in-memory tables may no longer match the file */
  private broken: TidemarkError | undefined;

  static async open(file: FileHandle, options: Qcow2OpenOptions): Promise<Qcow2Driver> {
    const state = await readQcow2State(file, options);
    const driver = new Qcow2Driver(file, options, state);
    if (!options.readOnly && state.parsed.header.version === 3) {
      const h = driver.header;
      if (h.autoclearFeatures & ~AUTOCLEAR_KEPT) {
        // bits we do not understand describe data we will not keep consistent: clear them
        h.autoclearFeatures &= AUTOCLEAR_KEPT;
        try {
          await driver.writeHeaderLocked();
        } catch (err) {
          await state.backing?.close().catch(() => undefined);
          throw err;
        }
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
    this.l2Entries = this.clusterSize / 8;
    this.l1 = state.l1;
    this.l1View = new DataView(state.l1.buffer, state.l1.byteOffset, state.l1.byteLength);
    this.l2Cache = new MetadataCache(Math.max(16, Math.floor((options.l2CacheBytes ?? DEFAULT_L2_CACHE) / this.clusterSize)));
    this.fileEndClusters = Math.ceil(state.fileSize / this.clusterSize);
    this.metadata = new MetadataMap(this.clusterSize);
    this.metadata.setFixed('the header', 0, this.clusterSize);
    this.metadata.setFixed('the L1 table', state.regions.l1.offset, state.regions.l1.length);
    this.metadata.setFixed('the refcount table', state.regions.refcountTable.offset, state.regions.refcountTable.length);
    for (let i = 0; i < h.l1Size; i++) {
      const off = this.l1Offset(i);
      if (off) this.metadata.addL2(off);
    }
    if (state.refcountTable) {
      this.refcounts = new Refcounts({
        file,
        path: this.path,
        clusterBits: h.clusterBits,
        refcountOrder: h.refcountOrder,
        tableOffset: h.refcountTableOffset,
        tableClusters: h.refcountTableClusters,
        table: state.refcountTable,
        hostEndClusters: this.fileEndClusters,
        metadata: this.metadata,
        cacheBytes: options.refcountCacheBytes ?? DEFAULT_REFCOUNT_CACHE,
        commitTable: (offset, clusters) => this.commitRefcountTable(offset, clusters),
      });
    }
  }

  // ---------------------------------------------------------------- public: BlockDriver

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.track(async () => {
      this.checkOpen();
      checkRequest(this.path, 'read', offset, length, this.virtualSize);
      if (length === 0) return new Uint8Array(0);
      const [c0, c1] = this.clusterSpan(offset, length);
      const release = await this.rangeLock.acquire(c0, c1, false);
      try {
        return await this.readUnlocked(offset, length);
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
      const [c0, c1] = this.clusterSpan(offset, data.length);
      const release = await this.rangeLock.acquire(c0, c1, true);
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
      const [c0, c1] = this.clusterSpan(offset, length);
      const release = await this.rangeLock.acquire(c0, c1, true);
      try {
        const { full, partial } = this.splitFull(offset, length);
        for (const p of partial) await this.zeroPartial(p.offset, p.length);
        if (full) {
          if (this.header.version >= 3) {
            await this.rewriteEntries(full.first, full.count, (m, l2Exists) => this.zeroDecisionV3(m, l2Exists, mayUnmap));
          } else {
            await this.zeroFullV2(full.first, full.count, mayUnmap);
          }
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
      const { full } = this.splitFull(offset, length);
      if (!full) return; // partial clusters: the hint is ignored, as QEMU does
      const release = await this.rangeLock.acquire(full.first, full.first + full.count, true);
      try {
        const v3 = this.header.version >= 3;
        await this.rewriteEntries(full.first, full.count, (m) => {
          if (m.kind === 'normal' || m.kind === 'zero-alloc' || m.kind === 'compressed') {
            return v3 ? { ...ZERO_FLAG_ENTRY, free: true } : { hi: 0, lo: 0, free: true };
          }
          // without a backing file an unallocated cluster already reads as zeros; with one,
          // QEMU masks the backing data with the zero flag
          if (m.kind === 'unallocated' && v3 && this.backing) return { ...ZERO_FLAG_ENTRY, free: false };
          return null;
        });
      } finally {
        release();
      }
    });
  }

  flush(): Promise<void> {
    return this.track(async () => {
      this.checkOpen();
      // metadata is written through: a sync makes everything written so far durable
      if (!this.readOnly) await this.file.sync();
    });
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    return this.track(async () => {
      this.checkOpen();
      checkRequest(this.path, 'block status', offset, length, this.virtualSize);
      const out: BlockExtent[] = [];
      const push = (e: BlockExtent) => {
        const last = out.at(-1);
        if (
          last &&
          last.offset + last.length === e.offset &&
          last.zero === e.zero &&
          last.data === e.data &&
          last.allocatedHere === e.allocatedHere &&
          last.depth === e.depth
        ) {
          last.length += e.length;
        } else {
          out.push(e);
        }
      };
      const cs = this.clusterSize;
      const end = offset + length;
      let pos = offset;
      while (pos < end) {
        const cluster = Math.floor(pos / cs);
        const l1Index = Math.floor(cluster / this.l2Entries);
        const tableEnd = Math.min(end, (l1Index + 1) * this.l2Entries * cs);
        const table = await this.l2ForRead(l1Index);
        if (!table) {
          await this.statusUnallocated(pos, tableEnd - pos, push);
          pos = tableEnd;
          continue;
        }
        while (pos < tableEnd) {
          const c = Math.floor(pos / cs);
          const m = decodeL2(table, c % this.l2Entries, this.header.version, this.path);
          const runEnd = Math.min(tableEnd, (c + 1) * cs);
          if (m.kind === 'unallocated') await this.statusUnallocated(pos, runEnd - pos, push);
          else {
            const zero = m.kind === 'zero' || m.kind === 'zero-alloc';
            push({ offset: pos, length: runEnd - pos, zero, data: !zero, allocatedHere: true, depth: 0 });
          }
          pos = runEnd;
        }
      }
      return out;
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
    try {
      if (!this.readOnly) await this.file.sync();
    } catch (err) {
      failure = err;
    }
    await this.file.close().catch((err: unknown) => (failure ??= err));
    if (this.backing) await this.backing.close().catch((err: unknown) => (failure ??= err));
    if (failure) throw failure;
  }

  // ---------------------------------------------------------------- public: qcow2 extras

  /** The header as currently on disk (a copy). */
  get headerFields(): Readonly<Qcow2Header> {
    return { ...this.header };
  }

  /** Data of the first header extension with this magic, or undefined. */
  readHeaderExtension(magic: number): Uint8Array | undefined {
    return this.extensions.find((e) => e.magic === magic)?.data.slice();
  }

  /**
   * Replaces (or with `undefined` removes) a header extension in memory; `writeHeader` persists
   * it. Extensions QEMU regenerates (backing format, feature table) cannot be set this way.
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

  /** Rewrites cluster 0 (header, extensions, backing name). */
  async writeHeader(): Promise<void> {
    this.checkWritable();
    await this.metaLock.run(() => this.writeHeaderLocked());
  }

  /** Allocates `count` contiguous host clusters (refcount 1); returns the host byte offset. */
  async allocateClusters(count: number): Promise<number> {
    this.checkWritable();
    if (!Number.isSafeInteger(count) || count < 1) throw new TidemarkError('INVALID_INPUT', `invalid cluster count ${count}`);
    return this.metaLock.run(async () => (await this.requireRefcounts().allocate(count)) * this.clusterSize);
  }

  /** Drops one reference from `count` host clusters starting at byte `offset` (cluster-aligned). */
  async freeClusters(offset: number, count: number): Promise<void> {
    this.checkWritable();
    if (offset % this.clusterSize !== 0 || offset < this.clusterSize || !Number.isSafeInteger(count) || count < 1) {
      throw new TidemarkError('INVALID_INPUT', `Image '${this.path}': cannot free ${count} clusters at ${offset}`);
    }
    await this.metaLock.run(() => this.freeHostClusters(offset / this.clusterSize, count));
  }

  /**
   * Writes one guest cluster compressed (deflate or zstd, per the image's compression type).
   * `offset` must be cluster-aligned and `data` one cluster long (shorter only for the last,
   * partial cluster of the disk). Data that does not shrink is written uncompressed.
   */
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    return this.track(async () => {
      this.checkWritable();
      const cs = this.clusterSize;
      const expected = Math.min(cs, this.virtualSize - offset);
      if (offset % cs !== 0 || offset < 0 || offset >= this.virtualSize || data.length !== expected) {
        throw new TidemarkError(
          'INVALID_INPUT',
          `Image '${this.path}': compressed writes need one whole cluster at a cluster-aligned offset (got ${data.length} bytes at ${offset})`,
        );
      }
      let full = data;
      if (data.length < cs) {
        full = new Uint8Array(cs);
        full.set(data);
      }
      const compressed = await compressCluster(full, cs, this.header.compressionType);
      if (!compressed) {
        await this.write(offset, data);
        return;
      }
      const cluster = offset / cs;
      const release = await this.rangeLock.acquire(cluster, cluster + 1, true);
      try {
        const [old] = await this.mapRange(cluster, 1);
        const hostOffset = await this.metaLock.run(async () => {
          this.checkBroken();
          await this.ensureL2(Math.floor(cluster / this.l2Entries));
          return this.allocateBytes(compressed.length);
        });
        try {
          await this.file.pwrite(hostOffset, compressed);
        } catch (err) {
          await this.metaLock.run(() => this.freeCompressedRange(hostOffset, compressed.length)).catch(() => undefined);
          throw err;
        }
        const entry = encodeCompressed(hostOffset, compressed.length, this.clusterBits);
        await this.metaLock.run(async () => {
          await this.setEntries(cluster, 1, () => ({ ...entry, free: false }));
          await this.freeMappings([old]);
        });
      } finally {
        release();
      }
    });
  }

  // ---------------------------------------------------------------- reading

  private clusterSpan(offset: number, length: number): [number, number] {
    const cs = this.clusterSize;
    return [Math.floor(offset / cs), Math.floor((offset + Math.max(length, 1) - 1) / cs) + 1];
  }

  private l1Offset(index: number): number {
    const hi = this.l1View.getUint32(index * 8) & 0x00ffffff;
    const lo = this.l1View.getUint32(index * 8 + 4) & 0xfffffe00;
    return hi * 2 ** 32 + (lo >>> 0);
  }

  private get hostEnd(): number {
    return this.refcounts ? this.refcounts.hostEnd : this.fileEndClusters;
  }

  private async readL2(offset: number): Promise<Uint8Array> {
    if (offset % this.clusterSize !== 0 || offset < this.clusterSize || offset >= this.hostEnd * this.clusterSize) {
      throw corruptImage(this.path, `L2 table offset 0x${offset.toString(16)} is invalid`);
    }
    return this.file.pread(offset, this.clusterSize);
  }

  private async l2ForRead(l1Index: number): Promise<DataView | null> {
    if (l1Index >= this.header.l1Size) return null;
    const off = this.l1Offset(l1Index);
    if (!off) return null;
    const table = await this.l2Cache.get(off, () => this.readL2(off));
    return new DataView(table.buffer, table.byteOffset, table.byteLength);
  }

  /** Mappings of guest clusters [first, first+count). */
  private async mapRange(first: number, count: number): Promise<ClusterMapping[]> {
    const out: ClusterMapping[] = new Array<ClusterMapping>(count);
    let i = 0;
    while (i < count) {
      const c = first + i;
      const l1Index = Math.floor(c / this.l2Entries);
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      const table = await this.l2ForRead(l1Index);
      for (let k = 0; k < inTable; k++) {
        out[i + k] = table ? decodeL2(table, (c + k) % this.l2Entries, this.header.version, this.path) : UNALLOCATED;
      }
      i += inTable;
    }
    return out;
  }

  /** Host offset of a data cluster, validated against the file and the header. */
  private checkHost(host: number, clusters: number, guestCluster: number): void {
    const first = host / this.clusterSize;
    if (first < 1 || first + clusters > this.hostEnd) {
      throw corruptImage(this.path, `data for guest cluster ${guestCluster} points to 0x${host.toString(16)}, outside the image file`);
    }
  }

  private async readUnlocked(offset: number, length: number): Promise<Uint8Array> {
    const cs = this.clusterSize;
    const c0 = Math.floor(offset / cs);
    const n = Math.floor((offset + length - 1) / cs) - c0 + 1;
    const maps = await this.mapRange(c0, n);
    const end = offset + length;
    const out = new Uint8Array(length);
    const tasks: Promise<void>[] = [];
    try {
    let i = 0;
    while (i < n) {
      const m = maps[i];
      let j = i + 1;
      if (m.kind === 'normal') {
        while (j < n && maps[j].kind === 'normal' && maps[j].host === maps[j - 1].host + cs) j++;
      } else if (m.kind !== 'compressed') {
        const zeroish = m.kind === 'zero' || m.kind === 'zero-alloc';
        while (j < n && (zeroish ? maps[j].kind === 'zero' || maps[j].kind === 'zero-alloc' : maps[j].kind === m.kind)) j++;
      }
      const start = Math.max(offset, (c0 + i) * cs);
      const stop = Math.min(end, (c0 + j) * cs);
      const at = start - offset;
      if (m.kind === 'normal') {
        this.checkHost(m.host, j - i, c0 + i);
        const hostStart = m.host + (start - (c0 + i) * cs);
        if (i === 0 && j === n) return this.file.pread(hostStart, stop - start);
        tasks.push(this.file.pread(hostStart, stop - start).then((d) => out.set(d, at)));
      } else if (m.kind === 'unallocated') {
        tasks.push(this.readBacking(start, stop - start).then((d) => d && out.set(d, at)));
      } else if (m.kind === 'compressed') {
        const inCluster = start - (c0 + i) * cs;
        tasks.push(this.readCompressed(m, c0 + i).then((d) => out.set(d.subarray(inCluster, inCluster + stop - start), at)));
      }
      i = j;
    }
    } finally {
      // a run that fails synchronously must not leave the others' rejections unobserved
      await Promise.allSettled(tasks);
    }
    await settleAll(tasks);
    return out;
  }

  /** Backing data for a guest range; undefined when it reads as zeros. */
  private async readBacking(offset: number, length: number): Promise<Uint8Array | undefined> {
    const b = this.backing;
    if (!b || offset >= b.virtualSize) return undefined;
    const n = Math.min(length, b.virtualSize - offset);
    const data = await b.read(offset, n);
    if (n === length) return data;
    const padded = new Uint8Array(length);
    padded.set(data);
    return padded;
  }

  private async readCompressed(m: ClusterMapping, guestCluster: number): Promise<Uint8Array> {
    const cached = this.lastCompressed;
    if (cached && cached.hi === m.hi && cached.lo === m.lo) return cached.data;
    const d = decodeCompressed(m.hi, m.lo, this.clusterBits);
    // the last sector may run past EOF (QEMU does not pad the file); the start may not
    if (d.offset < this.clusterSize || d.offset >= this.hostEnd * this.clusterSize) {
      throw corruptImage(this.path, `compressed data for guest cluster ${guestCluster} points outside the image file`);
    }
    const raw = await this.file.pread(d.offset, d.length);
    const data = await decompressCluster(raw, this.clusterSize, this.header.compressionType, this.path, guestCluster * this.clusterSize);
    this.lastCompressed = { hi: m.hi, lo: m.lo, data };
    return data;
  }

  /** The full current contents of one guest cluster (for read-modify-write of partial writes). */
  private async clusterContents(m: ClusterMapping, cluster: number): Promise<Uint8Array> {
    const cs = this.clusterSize;
    switch (m.kind) {
      case 'normal':
        this.checkHost(m.host, 1, cluster);
        return this.file.pread(m.host, cs);
      case 'compressed':
        return (await this.readCompressed(m, cluster)).slice();
      case 'unallocated':
        return (await this.readBacking(cluster * cs, cs)) ?? new Uint8Array(cs);
      default:
        return new Uint8Array(cs);
    }
  }

  private async statusUnallocated(offset: number, length: number, push: (e: BlockExtent) => void): Promise<void> {
    const b = this.backing;
    const inBacking = b ? Math.max(0, Math.min(length, b.virtualSize - offset)) : 0;
    if (b && inBacking > 0) {
      for (const e of await b.blockStatus(offset, inBacking)) {
        push({ ...e, allocatedHere: false, depth: e.depth === undefined ? undefined : e.depth + 1 });
      }
    }
    if (inBacking < length) {
      push({ offset: offset + inBacking, length: length - inBacking, zero: true, data: false, allocatedHere: false, depth: undefined });
    }
  }

  // ---------------------------------------------------------------- writing

  private async writeLocked(offset: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const c0 = Math.floor(offset / cs);
    const end = offset + data.length;
    const n = Math.floor((end - 1) / cs) - c0 + 1;
    const maps = await this.mapRange(c0, n);
    const inplace: Promise<void>[] = [];
    try {
      let i = 0;
      while (i < n) {
        const cls = writeClass(maps[i]);
        let j = i + 1;
        while (j < n && writeClass(maps[j]) === cls && (cls === 'alloc' || maps[j].host === maps[j - 1].host + cs)) j++;
        const start = Math.max(offset, (c0 + i) * cs);
        const stop = Math.min(end, (c0 + j) * cs);
        if (cls === 'inplace') {
          this.checkDataTarget(maps[i].host, j - i, c0 + i);
          inplace.push(this.file.pwrite(maps[i].host + (start - (c0 + i) * cs), data.subarray(start - offset, stop - offset)));
        } else if (cls === 'reuse') {
          await this.writeReuse(c0 + i, maps.slice(i, j), start, data.subarray(start - offset, stop - offset));
        } else {
          await this.writeAlloc(c0 + i, maps.slice(i, j), start, data.subarray(start - offset, stop - offset));
        }
        i = j;
      }
    } finally {
      // never leave a write running (or an unobserved rejection) behind a failure
      await Promise.allSettled(inplace);
    }
    await settleAll(inplace);
  }

  /** In-place and reuse targets must be inside the file and must not be metadata. */
  private checkDataTarget(host: number, clusters: number, guestCluster: number): void {
    this.checkHost(host, clusters, guestCluster);
    const meta = this.metadata.find(host / this.clusterSize, clusters);
    if (meta !== undefined) {
      throw corruptImage(this.path, `data for guest cluster ${guestCluster} points to host 0x${host.toString(16)}, which holds ${meta}`);
    }
  }

  /**
   * Builds the host image of clusters [first, first+maps.length) for a write of `data` at guest
   * `start`: the written bytes, plus the current contents around them (`fill`) where partial.
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
    const lastCluster = first + count - 1;
    const lastVirtualEnd = Math.min((lastCluster + 1) * cs, this.virtualSize);
    const headPartial = start > segStart;
    const tailPartial = start + data.length < lastVirtualEnd;
    if (!headPartial && !tailPartial && data.length === count * cs) return data;
    const buf = new Uint8Array(count * cs);
    if (headPartial) buf.set(await fill(maps[0], first), 0);
    if (tailPartial && (count > 1 || !headPartial)) buf.set(await fill(maps[count - 1], lastCluster), (count - 1) * cs);
    buf.set(data, start - segStart);
    return buf;
  }

  /** Preallocated zero clusters (COPIED): write in place with zeros around the data, then clear the flag. */
  private async writeReuse(first: number, maps: ClusterMapping[], start: number, data: Uint8Array): Promise<void> {
    const host = maps[0].host;
    this.checkDataTarget(host, maps.length, first);
    const buf = await this.assemble(first, maps, start, data, async () => new Uint8Array(this.clusterSize));
    await this.file.pwrite(host, buf);
    await this.metaLock.run(async () => {
      this.checkBroken();
      await this.setEntries(first, maps.length, (k) => {
        const view = new DataView(new ArrayBuffer(8));
        encodeL2(view, 0, host + k * this.clusterSize, { copied: true, zero: false });
        return { hi: view.getUint32(0), lo: view.getUint32(4), free: false };
      });
    });
  }

  /** Clusters that need new host clusters: one contiguous allocation and one data write. */
  private async writeAlloc(first: number, maps: ClusterMapping[], start: number, data: Uint8Array): Promise<void> {
    const cs = this.clusterSize;
    const count = maps.length;
    const buf = await this.assemble(first, maps, start, data, (m, c) => this.clusterContents(m, c));
    const host = await this.metaLock.run(async () => {
      this.checkBroken();
      const refcounts = this.requireRefcounts();
      // L2 tables first, then data: the layout QEMU produces
      const l1First = Math.floor(first / this.l2Entries);
      const l1Last = Math.floor((first + count - 1) / this.l2Entries);
      for (let l1 = l1First; l1 <= l1Last; l1++) await this.ensureL2(l1);
      return (await this.guardMeta(refcounts.allocate(count))) * cs;
    });
    try {
      await this.file.pwrite(host, buf);
    } catch (err) {
      // give the clusters back; if even that fails they merely leak
      await this.metaLock.run(() => this.freeHostClusters(host / cs, count)).catch(() => undefined);
      throw err;
    }
    await this.metaLock.run(async () => {
      this.checkBroken();
      const view = new DataView(new ArrayBuffer(8));
      await this.setEntries(first, count, (k) => {
        encodeL2(view, 0, host + k * cs, { copied: true, zero: false });
        return { hi: view.getUint32(0), lo: view.getUint32(4), free: false };
      });
      await this.freeMappings(maps);
    });
  }

  // ---------------------------------------------------------------- zeroes and discard

  /** Splits a request into whole clusters (the partial last cluster of the disk counts as whole) and partial pieces. */
  private splitFull(offset: number, length: number): {
    full: { first: number; count: number } | undefined;
    partial: { offset: number; length: number }[];
  } {
    const cs = this.clusterSize;
    const end = offset + length;
    const a = Math.ceil(offset / cs);
    const b = end === this.virtualSize ? Math.ceil(end / cs) : Math.floor(end / cs);
    if (a >= b) return { full: undefined, partial: length > 0 ? this.perCluster(offset, end) : [] };
    const partial: { offset: number; length: number }[] = [];
    if (offset < a * cs) partial.push({ offset, length: a * cs - offset });
    if (b * cs < end) partial.push({ offset: b * cs, length: end - b * cs });
    return { full: { first: a, count: b - a }, partial };
  }

  private perCluster(offset: number, end: number): { offset: number; length: number }[] {
    const cs = this.clusterSize;
    const out: { offset: number; length: number }[] = [];
    for (let pos = offset; pos < end; ) {
      const stop = Math.min(end, (Math.floor(pos / cs) + 1) * cs);
      out.push({ offset: pos, length: stop - pos });
      pos = stop;
    }
    return out;
  }

  /** Whether a cluster already reads as zeros without looking at data. */
  private readsAsZero(m: ClusterMapping, cluster: number): boolean {
    if (m.kind === 'zero' || m.kind === 'zero-alloc') return true;
    if (m.kind !== 'unallocated') return false;
    return !this.backing || cluster * this.clusterSize >= this.backing.virtualSize;
  }

  /** A partial cluster: nothing to do if it is zero already, else write literal zeros (read-modify-write). */
  private async zeroPartial(offset: number, length: number): Promise<void> {
    const cluster = Math.floor(offset / this.clusterSize);
    const [m] = await this.mapRange(cluster, 1);
    if (this.readsAsZero(m, cluster)) return;
    await this.writeLocked(offset, new Uint8Array(length));
  }

  /** v3 write-zeroes of a whole cluster, matching what QEMU leaves in the L2 entry. */
  private zeroDecisionV3(m: ClusterMapping, l2Exists: boolean, mayUnmap: boolean): EntryDecision {
    switch (m.kind) {
      case 'unallocated':
        // QEMU marks the cluster zero whenever it has an L2 table for it (and must, over a backing file)
        return l2Exists || this.backing ? { ...ZERO_FLAG_ENTRY, free: false } : null;
      case 'zero':
        return null;
      case 'zero-alloc':
        return mayUnmap || !m.copied ? { ...ZERO_FLAG_ENTRY, free: true } : null;
      case 'normal':
        // without unmap QEMU keeps the allocation: offset | zero | COPIED
        return mayUnmap || !m.copied ? { ...ZERO_FLAG_ENTRY, free: true } : { hi: m.hi, lo: m.lo | 1, free: false };
      case 'compressed':
        return { ...ZERO_FLAG_ENTRY, free: true };
    }
  }

  /** v2 has no zero flag: unmap where that reads as zeros, otherwise write literal zeros. */
  private async zeroFullV2(first: number, count: number, mayUnmap: boolean): Promise<void> {
    const cs = this.clusterSize;
    const maps = await this.mapRange(first, count);
    const zeroBelow = (c: number) => !this.backing || c * cs >= this.backing.virtualSize;
    await this.rewriteEntries(first, count, (m, _l2, c) => {
      if (m.kind !== 'unallocated' && m.kind !== 'zero' && mayUnmap && zeroBelow(c)) return { hi: 0, lo: 0, free: true };
      return null;
    });
    // what is left: clusters that do not read as zeros yet
    let i = 0;
    while (i < count) {
      const c = first + i;
      const m = maps[i];
      const unmapped = m.kind !== 'unallocated' && m.kind !== 'zero' && mayUnmap && zeroBelow(c);
      if (unmapped || this.readsAsZero(m, c)) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < count && j - i < ZERO_CHUNK / cs) {
        const mj = maps[j];
        const cj = first + j;
        if ((mj.kind !== 'unallocated' && mj.kind !== 'zero' && mayUnmap && zeroBelow(cj)) || this.readsAsZero(mj, cj)) break;
        j++;
      }
      const start = c * cs;
      const stop = Math.min((first + j) * cs, this.virtualSize);
      await this.writeLocked(start, new Uint8Array(stop - start));
      i = j;
    }
  }

  /**
   * Rewrites L2 entries of guest clusters [first, first+count), one L2 table at a time (the
   * metadata lock is released between tables so a huge request does not stall other I/O).
   * The new entries are written before the old host clusters are freed.
   */
  private async rewriteEntries(
    first: number,
    count: number,
    decide: (m: ClusterMapping, l2Exists: boolean, cluster: number) => EntryDecision,
  ): Promise<void> {
    let i = 0;
    while (i < count) {
      const c = first + i;
      const l1Index = Math.floor(c / this.l2Entries);
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      await this.metaLock.run(async () => {
        this.checkBroken();
        let l2Exists = l1Index < this.header.l1Size && this.l1Offset(l1Index) !== 0;
        if (!l2Exists) {
          if (decide(UNALLOCATED, false, c) === null) return;
          await this.ensureL2(l1Index);
          l2Exists = true;
        }
        const freed: ClusterMapping[] = [];
        await this.setEntries(c, inTable, (k, old) => {
          const d = decide(old, true, c + k);
          if (d?.free) freed.push(old);
          return d;
        });
        await this.freeMappings(freed);
      });
      i += inTable;
    }
  }

  // ---------------------------------------------------------------- metadata (metaLock held)

  private requireRefcounts(): Refcounts {
    if (!this.refcounts) throw readOnlyImage(this.path);
    return this.refcounts;
  }

  /** The L2 table for an L1 index, allocating an empty one (refcount → zeroed table → L1) when missing. */
  private async ensureL2(l1Index: number): Promise<number> {
    if (l1Index >= this.header.l1Size) throw corruptImage(this.path, `guest offset beyond the L1 table (index ${l1Index})`);
    const existing = this.l1Offset(l1Index);
    if (existing) {
      if (!(this.l1View.getUint32(l1Index * 8) & HI_COPIED)) {
        throw corruptImage(this.path, `L2 table ${l1Index} is shared (COPIED clear); images with snapshots are read-only here`);
      }
      return existing;
    }
    const cs = this.clusterSize;
    const offset = (await this.guardMeta(this.requireRefcounts().allocate(1))) * cs;
    const table = new Uint8Array(cs);
    await this.guardMeta(this.file.pwrite(offset, table));
    this.l2Cache.set(offset, table);
    this.metadata.addL2(offset);
    encodeL2(this.l1View, l1Index, offset, { copied: true, zero: false });
    await this.guardMeta(this.file.pwrite(this.header.l1TableOffset + l1Index * 8, this.l1.slice(l1Index * 8, l1Index * 8 + 8)));
    return offset;
  }

  /**
   * Sets entries of guest clusters [first, first+count) (all in tables that exist); `entry`
   * returns the new raw entry or null to keep the old one. One write per L2 table.
   */
  private async setEntries(
    first: number,
    count: number,
    entry: (k: number, old: ClusterMapping) => EntryDecision,
  ): Promise<void> {
    let i = 0;
    while (i < count) {
      const c = first + i;
      const l1Index = Math.floor(c / this.l2Entries);
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      const off = this.l1Offset(l1Index);
      if (!off) throw new Error(`L2 table ${l1Index} missing during update`);
      const table = await this.l2Cache.getPinned(off, () => this.readL2(off));
      try {
        const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
        const base = c % this.l2Entries;
        let lo = -1;
        let hi = -1;
        for (let k = 0; k < inTable; k++) {
          const old = decodeL2(view, base + k, this.header.version, this.path);
          const d = entry(i + k, old);
          if (!d) continue;
          encodeRaw(view, base + k, d.hi, d.lo);
          if (lo < 0) lo = k;
          hi = k;
        }
        if (lo >= 0) {
          const from = (base + lo) * 8;
          const to = (base + hi + 1) * 8;
          await this.guardMeta(this.file.pwrite(off + from, table.slice(from, to)));
        }
      } finally {
        this.l2Cache.unpin(off);
      }
      i += inTable;
    }
  }

  /** Drops the host clusters that old mappings held (after the entries no longer point at them). */
  private async freeMappings(maps: ClusterMapping[]): Promise<void> {
    const cs = this.clusterSize;
    const decrements = new Map<number, number>();
    const add = (cluster: number) => decrements.set(cluster, (decrements.get(cluster) ?? 0) + 1);
    for (const m of maps) {
      if (m.kind === 'normal' || m.kind === 'zero-alloc') add(m.host / cs);
      else if (m.kind === 'compressed') {
        const d = decodeCompressed(m.hi, m.lo, this.clusterBits);
        const firstC = Math.floor(d.sectorStart / cs);
        const lastC = Math.floor((d.sectorStart + d.sectors * 512 - 1) / cs);
        for (let c = firstC; c <= lastC; c++) add(c);
      }
    }
    if (decrements.size === 0) return;
    const clusters = [...decrements.keys()].sort((a, b) => a - b);
    let runStart = clusters[0];
    let runLen = 1;
    const flush = async () => {
      const n = decrements.get(runStart) ?? 1;
      for (let k = 0; k < n; k++) await this.freeHostClusters(runStart, runLen);
    };
    for (let i = 1; i < clusters.length; i++) {
      const c = clusters[i];
      if (c === runStart + runLen && decrements.get(c) === decrements.get(runStart)) {
        runLen++;
        continue;
      }
      await flush();
      runStart = c;
      runLen = 1;
    }
    await flush();
  }

  private async freeHostClusters(first: number, count: number): Promise<void> {
    const tail = Math.floor(this.compressedTail / this.clusterSize);
    if (this.compressedTail && tail >= first && tail < first + count) this.compressedTail = 0;
    await this.guardMeta(this.requireRefcounts().free(first, count));
  }

  private async freeCompressedRange(offset: number, length: number): Promise<void> {
    const cs = this.clusterSize;
    const firstC = Math.floor(offset / cs);
    const lastC = Math.floor((offset + length - 1) / cs);
    await this.freeHostClusters(firstC, lastC - firstC + 1);
  }

  /**
   * Host bytes for compressed data, packed after the previous compressed cluster while it fits
   * in that host cluster (each compressed cluster adds one reference to the host clusters its
   * sectors touch, as qemu-img check counts them).
   */
  private async allocateBytes(length: number): Promise<number> {
    const cs = this.clusterSize;
    const refcounts = this.requireRefcounts();
    const tail = this.compressedTail;
    let offset: number;
    if (tail && (tail % cs) + length <= cs) {
      await this.guardMeta(refcounts.update(Math.floor(tail / cs), 1, 1));
      offset = tail;
    } else {
      offset = (await this.guardMeta(refcounts.allocate(1))) * cs;
    }
    // a tail on a cluster boundary would point into a cluster we do not own
    const next = offset + length;
    this.compressedTail = next % cs === 0 ? 0 : next;
    return offset;
  }

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
    await this.guardMeta(this.file.pwrite(0, serialized.bytes));
    this.header = serialized.header;
  }

  /** A failed metadata write leaves memory and file possibly out of step: stop writing. */
  private async guardMeta<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      const cause = err instanceof TidemarkError ? err : undefined;
      this.broken ??= new TidemarkError(
        cause?.code ?? 'IO_ERROR',
        `Image '${this.path}': a metadata update failed, further writes are refused (${err instanceof Error ? err.message : String(err)})`,
      );
      throw err;
    }
  }

  private checkBroken(): void {
    if (this.broken) throw this.broken;
  }

  private checkOpen(): void {
    if (this.closing) throw closedImage(this.path);
  }

  /** Runs a guest request, counted so close() can wait for it. */
  private async track<T>(fn: () => Promise<T>): Promise<T> {
    this.active++;
    try {
      return await fn();
    } finally {
      if (--this.active === 0) for (const resolve of this.idle.splice(0)) resolve();
    }
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw readOnlyImage(this.path);
    this.checkBroken();
  }
}

/** Awaits every task, then rethrows the first failure (no rejection goes unobserved). */
async function settleAll(tasks: Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(tasks);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
