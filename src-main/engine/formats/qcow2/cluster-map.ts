import type { FileHandle } from '../../io/file-handle.js';
import { corruptImage } from '../image-errors.js';
import { MetadataCache, writeDirty } from '../metadata-cache.js';
import { HI_COPIED } from './constants.js';
import type { HostAllocator } from './host-allocator.js';
import { decodeL2, encodeL2, encodeRaw, UNALLOCATED, type ClusterMapping } from './l2-entry.js';
import type { MetadataMap } from './metadata-map.js';

/** New raw L2 entry for a cluster, or null to keep it; `free` tells the caller to drop its old host cluster(s). */
export type EntryDecision = { hi: number; lo: number; free: boolean } | null;

export interface ClusterMapOptions {
  file: FileHandle;
  path: string;
  clusterBits: number;
  version: number;
  l1: Uint8Array;
  l1Size: number;
  l1TableOffset: number;
  cacheBytes: number;
  metadata: MetadataMap;
  /** one past the last host cluster that may hold data (bounds for pointers read at runtime) */
  hostEnd: () => number;
}

/**
 * Guest cluster → host mapping: the L1 table (kept in memory) and a bounded cache of L2 tables.
 * Lookups need no lock; `ensureL2`, `setEntries` and the writeback methods must run under the
 * metadata lock. Updates change memory only (writeback): `writeTables` writes the changed L2
 * tables, `writeL1` the changed L1 entries; the driver calls them in its crash-safe order. A new
 * L2 table is written zeroed when it is allocated, so it is on disk (after the writeback's first
 * sync) before the L1 entry that points at it.
 */
export class ClusterMap {
  readonly l2Entries: number;
  private readonly file: FileHandle;
  private readonly path: string;
  private readonly cs: number;
  private readonly version: number;
  private readonly l1: Uint8Array;
  private readonly l1View: DataView;
  private readonly l1Size: number;
  private readonly l1TableOffset: number;
  private readonly cache: MetadataCache;
  private readonly metadata: MetadataMap;
  private readonly hostEnd: () => number;
  /** L1 entries changed in memory, not yet written */
  private readonly l1Dirty = new Set<number>();
  /** those of them whose new table is not on disk yet (its early zeroing failed) */
  private readonly l1AfterTables = new Set<number>();

  constructor(o: ClusterMapOptions) {
    this.file = o.file;
    this.path = o.path;
    this.cs = 2 ** o.clusterBits;
    this.l2Entries = this.cs / 8;
    this.version = o.version;
    this.l1 = o.l1;
    this.l1View = new DataView(o.l1.buffer, o.l1.byteOffset, o.l1.byteLength);
    this.l1Size = o.l1Size;
    this.l1TableOffset = o.l1TableOffset;
    this.cache = new MetadataCache(Math.max(16, Math.floor(o.cacheBytes / this.cs)));
    this.metadata = o.metadata;
    this.hostEnd = o.hostEnd;
    for (let i = 0; i < o.l1Size; i++) {
      const off = this.l1Offset(i);
      if (off) this.metadata.addL2(off);
    }
  }

  l1Offset(index: number): number {
    if (index >= this.l1Size) return 0;
    const hi = this.l1View.getUint32(index * 8) & 0x00ffffff;
    const lo = this.l1View.getUint32(index * 8 + 4) & 0xfffffe00;
    return hi * 2 ** 32 + (lo >>> 0);
  }

  private async readL2(offset: number): Promise<Uint8Array> {
    if (offset % this.cs !== 0 || offset < this.cs || offset >= this.hostEnd() * this.cs) {
      throw corruptImage(this.path, `L2 table offset 0x${offset.toString(16)} is invalid`);
    }
    return this.file.pread(offset, this.cs);
  }

  /** The L2 table for an L1 index, or null when none is allocated. */
  async table(l1Index: number): Promise<DataView | null> {
    const off = this.l1Offset(l1Index);
    if (!off) return null;
    return tableView(await this.cache.get(off, () => this.readL2(off)));
  }

  decode(table: DataView, index: number): ClusterMapping {
    return decodeL2(table, index, this.version, this.path);
  }

  /**
   * Mappings of guest clusters [first, first+count) when every L2 table they need is in the
   * cache (or not allocated at all), without waiting for anything; undefined otherwise.
   */
  mapRangeCached(first: number, count: number): ClusterMapping[] | undefined {
    const out = new Array<ClusterMapping>(count);
    let i = 0;
    while (i < count) {
      const c = first + i;
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      const off = this.l1Offset(Math.floor(c / this.l2Entries));
      let table: DataView | null = null;
      if (off) {
        const t = this.cache.lookup(off);
        if (!t) return undefined;
        table = tableView(t);
      }
      this.decodeInto(out, i, c, inTable, table);
      i += inTable;
    }
    return out;
  }

  /** out[i, +n) = the mappings of guest clusters [c, +n), all in `table` (none allocated when null). */
  private decodeInto(out: ClusterMapping[], i: number, c: number, n: number, table: DataView | null): void {
    for (let k = 0; k < n; k++) out[i + k] = table ? this.decode(table, (c + k) % this.l2Entries) : UNALLOCATED;
  }

  /** Mappings of guest clusters [first, first+count). */
  async mapRange(first: number, count: number): Promise<ClusterMapping[]> {
    const out = new Array<ClusterMapping>(count);
    let i = 0;
    while (i < count) {
      const c = first + i;
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      this.decodeInto(out, i, c, inTable, await this.table(Math.floor(c / this.l2Entries)));
      i += inTable;
    }
    return out;
  }

  /** The L2 table for an L1 index, allocating an empty one (in memory: refcount, table, L1 entry) when missing. */
  async ensureL2(l1Index: number, allocator: HostAllocator): Promise<number> {
    if (l1Index >= this.l1Size) throw corruptImage(this.path, `guest cluster beyond the L1 table (index ${l1Index})`);
    const existing = this.l1Offset(l1Index);
    if (existing) {
      if (!(this.l1View.getUint32(l1Index * 8) & HI_COPIED)) {
        throw corruptImage(this.path, `L2 table ${l1Index} is shared (COPIED clear); images with snapshots are read-only here`);
      }
      return existing;
    }
    const offset = (await allocator.allocate(1)) * this.cs;
    this.cache.set(offset, new Uint8Array(this.cs));
    this.metadata.addL2(offset);
    encodeL2(this.l1View, l1Index, offset, { copied: true, zero: false });
    this.l1Dirty.add(l1Index);
    // The table goes out zeroed now (the cluster may be a reused one holding old bytes), so by
    // the writeback's first sync the L1 entry can only ever point at a valid table: it may then be
    // written with the entries. If this write fails, the (empty) table stays, to be written whole
    // before its L1 entry; the caller's write fails.
    try {
      await this.file.pwrite(offset, new Uint8Array(this.cs));
    } catch (err) {
      this.cache.markDirty(offset, 0, this.cs);
      this.l1AfterTables.add(l1Index);
      throw err;
    }
    return offset;
  }

  /**
   * Rewrites entries of guest clusters [first, first+count), all in existing L2 tables, in memory.
   * `decide(k, old)` returns the new entry for cluster first+k or null to keep it.
   */
  async setEntries(first: number, count: number, decide: (k: number, old: ClusterMapping) => EntryDecision): Promise<void> {
    let i = 0;
    while (i < count) {
      const c = first + i;
      const l1Index = Math.floor(c / this.l2Entries);
      const inTable = Math.min(count - i, this.l2Entries - (c % this.l2Entries));
      const off = this.l1Offset(l1Index);
      if (!off) throw corruptImage(this.path, `L2 table ${l1Index} vanished during an update`);
      const table = await this.cache.getPinned(off, () => this.readL2(off));
      try {
        const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
        const base = c % this.l2Entries;
        let lo = -1;
        let hi = -1;
        for (let k = 0; k < inTable; k++) {
          const d = decide(i + k, this.decode(view, base + k));
          if (!d) continue;
          encodeRaw(view, base + k, d.hi, d.lo);
          if (lo < 0) lo = k;
          hi = k;
        }
        if (lo >= 0) this.cache.markDirty(off, (base + lo) * 8, (base + hi + 1) * 8);
      } finally {
        this.cache.unpin(off);
      }
      i += inTable;
    }
  }

  /** L2 tables changed in memory and not yet written */
  get dirtyTables(): number {
    return this.cache.dirtyCount;
  }

  /** how many L2 tables the cache holds before it evicts */
  get cacheEntries(): number {
    return this.cache.maxEntries;
  }

  get hasDirtyL1(): boolean {
    return this.l1Dirty.size > 0;
  }

  /** Whether an L1 entry must wait for the L2 tables to be synced (else it may go out with them). */
  get l1WaitsForTables(): boolean {
    return this.l1AfterTables.size > 0;
  }

  /** Writes every changed L2 table (the changed range of each; a new table whole). What fails stays dirty. */
  writeTables(): Promise<number> {
    return writeDirty(this.cache, (at, bytes) => this.file.pwrite(at, bytes));
  }

  /** Writes the changed L1 entries (runs of neighbours in one write). What fails stays dirty. */
  async writeL1(): Promise<void> {
    if (this.l1Dirty.size === 0) return;
    const indices = [...this.l1Dirty].sort((a, b) => a - b);
    this.l1Dirty.clear();
    const writes: Promise<void>[] = [];
    const runs: [number, number][] = [];
    for (let i = 0; i < indices.length; ) {
      let j = i + 1;
      while (j < indices.length && indices[j] === indices[j - 1] + 1) j++;
      const a = indices[i];
      const b = indices[j - 1] + 1;
      runs.push([a, b]);
      // a handle may throw rather than reject: keep every write's outcome a promise
      writes.push(Promise.resolve().then(() => this.file.pwrite(this.l1TableOffset + a * 8, this.l1.slice(a * 8, b * 8))));
      i = j;
    }
    const results = await Promise.allSettled(writes);
    const failed = results.findIndex((r) => r.status === 'rejected');
    if (failed >= 0) {
      for (const [a, b] of runs) for (let k = a; k < b; k++) this.l1Dirty.add(k);
      throw (results[failed] as PromiseRejectedResult).reason;
    }
    this.l1AfterTables.clear();
  }
}

/** A cached L2 table's bytes as a DataView for decoding. */
function tableView(t: Uint8Array): DataView {
  return new DataView(t.buffer, t.byteOffset, t.byteLength);
}
