import { TidemarkError } from '../../../../src-shared/errors.js';
import type { FileHandle } from '../../io/file-handle.js';
import { corruptImage } from '../image-errors.js';
import { MetadataCache, writeDirty } from '../metadata-cache.js';
import { MAX_REFTABLE_BYTES } from './constants.js';
import type { MetadataMap } from './metadata-map.js';
import { refcountCodec, type RefcountCodec } from './refcount-codec.js';

export interface RefcountOptions {
  file: FileHandle;
  path: string;
  clusterBits: number;
  refcountOrder: number;
  tableOffset: number;
  tableClusters: number;
  /** the refcount table as read from disk (tableClusters clusters) */
  table: Uint8Array;
  /** host clusters in use or present in the file: everything at or past this is free */
  hostEndClusters: number;
  metadata: MetadataMap;
  cacheBytes: number;
  /** persists a moved refcount table in the image header (offset 48..59) */
  commitTable(offset: number, clusters: number): Promise<void>;
}

/**
 * The refcount table and blocks, and the cluster allocator built on them.
 *
 * All methods that change or write must be called with the driver's metadata lock held. Changes
 * stay in memory (writeback) until the driver writes them: `writeBlocks` (every changed block),
 * then — after an fsync — `writeTable` (table entries pointing at new blocks). In-memory
 * refcounts never drop below what the file references (the driver applies a decrement only once
 * the reference is gone on disk), so changed blocks may be written at any time: at worst a crash
 * then leaks clusters. Moving the table (growTable) is the exception and writes through: blocks,
 * new table, fsync, header, fsync.
 */
export class Refcounts {
  private readonly file: FileHandle;
  private readonly path: string;
  private readonly cs: number;
  /** refcount entries per block */
  private readonly perBlock: number;
  private readonly codec: RefcountCodec;
  private readonly cache: MetadataCache;
  private readonly metadata: MetadataMap;
  private readonly commitTable: (offset: number, clusters: number) => Promise<void>;
  private table: Uint8Array;
  private tableView: DataView;
  private tableEntries: number;
  tableOffset: number;
  tableClusters: number;
  /** QEMU's free_cluster_index: where the next search for free clusters starts */
  private hint = 0;
  /** one past the highest host cluster that may be in use */
  hostEnd: number;
  /** refcount table entries changed in memory, not yet written */
  private readonly tableDirty = new Set<number>();

  constructor(o: RefcountOptions) {
    this.file = o.file;
    this.path = o.path;
    this.cs = 2 ** o.clusterBits;
    this.codec = refcountCodec(o.refcountOrder);
    this.perBlock = (this.cs * 8) / this.codec.bits;
    this.cache = new MetadataCache(Math.max(8, Math.floor(o.cacheBytes / this.cs)));
    this.metadata = o.metadata;
    this.commitTable = o.commitTable;
    this.table = o.table;
    this.tableView = new DataView(o.table.buffer, o.table.byteOffset, o.table.byteLength);
    this.tableEntries = o.table.byteLength / 8;
    this.tableOffset = o.tableOffset;
    this.tableClusters = o.tableClusters;
    this.hostEnd = o.hostEndClusters;
    for (let t = 0; t < this.tableEntries; t++) {
      const off = this.blockOffset(t);
      if (off) this.metadata.addRefblock(off);
    }
  }

  get maxRefcount(): number {
    return this.codec.max;
  }

  private blockOffset(t: number): number {
    if (t >= this.tableEntries) return 0;
    const hi = this.tableView.getUint32(t * 8);
    const lo = this.tableView.getUint32(t * 8 + 4) & 0xfffffe00;
    return hi * 2 ** 32 + (lo >>> 0);
  }

  private loadBlock(offset: number): Promise<Uint8Array> {
    return this.cache.get(offset, () => this.readBlock(offset));
  }

  private async readBlock(offset: number): Promise<Uint8Array> {
    if (offset % this.cs !== 0 || offset < this.cs || offset >= this.hostEnd * this.cs) {
      throw corruptImage(this.path, `refcount block offset 0x${offset.toString(16)} is invalid`);
    }
    return this.file.pread(offset, this.cs);
  }

  async get(cluster: number): Promise<number> {
    const t = Math.floor(cluster / this.perBlock);
    const off = this.blockOffset(t);
    if (!off) return 0;
    const block = await this.loadBlock(off);
    return this.codec.get(new DataView(block.buffer, block.byteOffset, block.byteLength), cluster - t * this.perBlock);
  }

  /**
   * Runs found by findFree whose refcounts are still being written. Creating a refcount block
   * (or moving the table, which frees the old one and lowers the hint) may search for free
   * clusters meanwhile, and must not land inside such a run: QEMU restarts the allocation
   * (-EAGAIN) for the same reason.
   */
  private readonly pending: { start: number; end: number }[] = [];

  /**
   * Finds `count` contiguous clusters with refcount 0 from the search hint on, without taking
   * them (QEMU's alloc_clusters_noref). Clusters of missing refcount blocks count as free.
   */
  private async findFree(count: number): Promise<number> {
    let start = this.hint;
    let c = start;
    while (c - start < count) {
      const inPending = this.pending.find((r) => c >= r.start && c < r.end);
      if (inPending) {
        start = c = inPending.end;
        continue;
      }
      let nextPending = Infinity;
      for (const r of this.pending) if (r.start > c && r.start < nextPending) nextPending = r.start;
      const t = Math.floor(c / this.perBlock);
      const off = this.blockOffset(t);
      const stop = Math.min((t + 1) * this.perBlock, start + count, nextPending);
      if (!off) {
        c = stop;
        continue;
      }
      const block = await this.loadBlock(off);
      const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      const base = t * this.perBlock;
      for (; c < stop; c++) {
        if (this.codec.get(view, c - base) !== 0) start = c + 1;
      }
    }
    const reserved = this.metadata.find(start, count);
    if (reserved !== undefined) {
      throw corruptImage(this.path, `host cluster ${start}..${start + count - 1} has refcount 0 but holds ${reserved}`);
    }
    this.hint = start + count;
    this.hostEnd = Math.max(this.hostEnd, start + count);
    return start;
  }

  /** Allocates `count` contiguous host clusters (refcount 1 each); returns the first cluster index. */
  async allocate(count: number): Promise<number> {
    const first = await this.findFree(count);
    const run = { start: first, end: first + count };
    this.pending.push(run);
    try {
      await this.update(first, count, 1);
    } finally {
      this.pending.splice(this.pending.indexOf(run), 1);
    }
    return first;
  }

  /** Drops one reference from each of `count` clusters; clusters reaching 0 become reusable. */
  async free(first: number, count: number): Promise<void> {
    await this.update(first, count, -1);
  }

  /**
   * Adds `delta` to the refcount of clusters [first, first+count), creating refcount blocks (and
   * growing the table) as needed. In memory; the changed bytes are written at writeback.
   */
  async update(first: number, count: number, delta: number): Promise<void> {
    let c = first;
    const end = first + count;
    while (c < end) {
      const t = Math.floor(c / this.perBlock);
      const base = t * this.perBlock;
      const stop = Math.min(end, base + this.perBlock);
      // dropping references never creates a block: a missing one means refcount 0 (corruption)
      const off = delta < 0 ? this.blockOffset(t) : await this.ensureBlock(t);
      if (!off) throw corruptImage(this.path, `refcount of host cluster ${c} would drop below zero`);
      const block = await this.cache.getPinned(off, () => this.readBlock(off));
      try {
        const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
        // validate the whole run first so a bad refcount leaves this block untouched
        for (let i = c; i < stop; i++) {
          const next = this.codec.get(view, i - base) + delta;
          if (next < 0) throw corruptImage(this.path, `refcount of host cluster ${i} would drop below zero`);
          if (next > this.codec.max) {
            throw new TidemarkError('CORRUPT_IMAGE', `Image '${this.path}': refcount of host cluster ${i} would overflow`);
          }
        }
        for (let i = c; i < stop; i++) {
          const next = this.codec.get(view, i - base) + delta;
          this.codec.set(view, i - base, next);
          if (next === 0 && i < this.hint) this.hint = i;
        }
        const [from, to] = this.codec.byteRange(c - base, stop - 1 - base);
        this.cache.markDirty(off, from, to);
      } finally {
        this.cache.unpin(off);
      }
      c = stop;
    }
  }

  /** Offset of refcount block `t`, creating it (QEMU's alloc_refcount_block) when missing. */
  private async ensureBlock(t: number): Promise<number> {
    let off = this.blockOffset(t);
    if (off) return off;
    if (t >= this.tableEntries) {
      await this.growTable(t);
      off = this.blockOffset(t);
      if (off) return off;
    }
    const at = await this.findFree(1);
    const block = new Uint8Array(this.cs);
    if (Math.floor(at / this.perBlock) === t) {
      // the new block lies in the range it describes: it holds its own refcount
      this.codec.set(new DataView(block.buffer), at - t * this.perBlock, 1);
    } else {
      // counted by another block (which may itself be created here, so keep `at` reserved)
      const run = { start: at, end: at + 1 };
      this.pending.push(run);
      try {
        await this.update(at, 1, 1);
      } finally {
        this.pending.splice(this.pending.indexOf(run), 1);
      }
    }
    // written whole at writeback (the cluster may be a reused one), before the table entry
    const blockOffset = at * this.cs;
    this.cache.set(blockOffset, block);
    this.cache.markDirty(blockOffset, 0, this.cs);
    this.metadata.addRefblock(blockOffset);
    this.tableView.setBigUint64(t * 8, BigInt(blockOffset));
    this.tableDirty.add(t);
    return blockOffset;
  }

  /**
   * Moves the refcount table to a larger one covering block `t`. The new table and any refcount
   * blocks it needs go to a fresh area past everything in use; that area describes itself, so no
   * allocation through the old (full) table is needed.
   */
  private async growTable(t: number): Promise<void> {
    const cs = this.cs;
    const per = this.perBlock;
    const areaStart = Math.max(this.hostEnd, this.hint);
    let tableClusters = Math.max(Math.ceil(((t + 1) * 8) / cs), Math.ceil((this.tableClusters * 3) / 2));
    let newBlocks: number[] = [];
    for (let round = 0; ; round++) {
      if (round > 64) throw new TidemarkError('INTERNAL', `Image '${this.path}': refcount table growth did not converge`);
      const areaEnd = areaStart + newBlocks.length + tableClusters;
      const blocks: number[] = [];
      for (let r = Math.floor(areaStart / per); r <= Math.floor((areaEnd - 1) / per); r++) {
        if (!this.blockOffset(r)) blocks.push(r);
      }
      const needEntries = Math.max(t + 1, (blocks.at(-1) ?? 0) + 1, this.tableEntries);
      const clusters = Math.max(tableClusters, Math.ceil((needEntries * 8) / cs));
      if (blocks.length === newBlocks.length && clusters === tableClusters) break;
      newBlocks = blocks;
      tableClusters = clusters;
    }
    if (tableClusters * cs > MAX_REFTABLE_BYTES) {
      throw new TidemarkError('NO_SPACE', `Image '${this.path}': the refcount table would exceed ${MAX_REFTABLE_BYTES} bytes`);
    }
    const areaEnd = areaStart + newBlocks.length + tableClusters;
    const tableAt = areaStart + newBlocks.length;

    // 1. new refcount blocks, each counting the area clusters in its own range
    const newTable = new Uint8Array(tableClusters * cs);
    newTable.set(this.table);
    const newView = new DataView(newTable.buffer);
    for (let i = 0; i < newBlocks.length; i++) {
      const r = newBlocks[i];
      const block = new Uint8Array(cs);
      const view = new DataView(block.buffer);
      const lo = Math.max(areaStart, r * per);
      const hi = Math.min(areaEnd, (r + 1) * per);
      for (let c = lo; c < hi; c++) this.codec.set(view, c - r * per, 1);
      const offset = (areaStart + i) * cs;
      this.cache.set(offset, block);
      this.cache.markDirty(offset, 0, cs);
      this.metadata.addRefblock(offset);
      newView.setBigUint64(r * 8, BigInt(offset));
    }
    // 2. area clusters that fall into ranges with an existing block
    for (let r = Math.floor(areaStart / per); r <= Math.floor((areaEnd - 1) / per); r++) {
      if (newBlocks.includes(r)) continue;
      const lo = Math.max(areaStart, r * per);
      const hi = Math.min(areaEnd, (r + 1) * per);
      await this.update(lo, hi - lo, 1);
    }
    // 3. every block (new or changed, including those the old table's unwritten entries point
    //    at) and the new table; durable before the header points at it, and the header durable
    //    before the old table can be reused
    await this.writeBlocks();
    await this.file.pwrite(tableAt * cs, newTable.slice());
    await this.file.sync();
    await this.commitTable(tableAt * cs, tableClusters);
    await this.file.sync();
    // the new table was written whole: no entry is pending any more
    this.tableDirty.clear();

    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    this.table = newTable;
    this.tableView = newView;
    this.tableEntries = newTable.byteLength / 8;
    this.tableOffset = tableAt * cs;
    this.tableClusters = tableClusters;
    this.metadata.setFixed('the refcount table', this.tableOffset, tableClusters * cs);
    this.hostEnd = Math.max(this.hostEnd, areaEnd);
    // 4. only now is the old table unreferenced
    await this.update(oldOffset / cs, oldClusters, -1);
  }

  // ---------------------------------------------------------------- writeback

  /** refcount blocks changed in memory and not yet written */
  get dirtyBlocks(): number {
    return this.cache.dirtyCount;
  }

  /** how many blocks the cache holds before it evicts */
  get cacheEntries(): number {
    return this.cache.maxEntries;
  }

  get hasDirtyTable(): boolean {
    return this.tableDirty.size > 0;
  }

  /** Writes every changed refcount block (its changed range; a new block whole). */
  writeBlocks(): Promise<number> {
    return writeDirty(this.cache, (at, bytes) => this.file.pwrite(at, bytes));
  }

  /**
   * Writes the changed table entries (call after the blocks they point at are durable). A new
   * block's own refcount may live in another new block: an entry is written only after the entry
   * of the block counting it is durable (self-counting blocks first, an fsync between levels).
   */
  async writeTable(): Promise<void> {
    const pending = new Set(this.tableDirty);
    this.tableDirty.clear();
    try {
      while (pending.size > 0) {
        const level = [...pending]
          .filter((t) => {
            const counter = Math.floor(this.blockOffset(t) / this.cs / this.perBlock);
            return counter === t || !pending.has(counter);
          })
          .sort((a, b) => a - b);
        if (level.length === 0) throw new TidemarkError('INTERNAL', `Image '${this.path}': refcount blocks count each other in a cycle`);
        for (let i = 0; i < level.length; ) {
          let j = i + 1;
          while (j < level.length && level[j] === level[j - 1] + 1) j++;
          const a = level[i];
          const b = level[j - 1] + 1;
          await this.file.pwrite(this.tableOffset + a * 8, this.table.slice(a * 8, b * 8));
          for (let t = a; t < b; t++) pending.delete(t);
          i = j;
        }
        if (pending.size > 0) await this.file.sync();
      }
    } catch (err) {
      for (const t of pending) this.tableDirty.add(t);
      throw err;
    }
  }
}
