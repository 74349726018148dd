import { decodeCompressed } from './compressed.js';
import type { ClusterMapping } from './l2-entry.js';
import type { MetaGuard } from './meta-guard.js';
import type { Refcounts } from './refcounts.js';

/**
 * Host space on top of the refcounts: whole clusters for data and tables, byte ranges packed
 * into shared clusters for compressed data, and freeing what an old L2 entry held.
 * Callers hold the driver's metadata lock.
 *
 * Freeing comes in two kinds. `free` drops references at once: for clusters nothing on disk
 * points at (an allocation whose data write failed, or clusters the caller already unlinked
 * durably). `release` is for clusters an L2 entry pointed at until a change still in memory:
 * the file may point at them until that change is written, so the references are only dropped
 * (`applyReleased`) once the driver has written the L2 tables and synced — until then the
 * clusters cannot be handed out again.
 */
export class HostAllocator {
  /** byte offset where the next compressed cluster may be packed (0: start a new host cluster) */
  private compressedTail = 0;
  /** released host clusters → references to drop once their unlinking is durable */
  private released = new Map<number, number>();

  constructor(
    private readonly refcounts: Refcounts,
    private readonly clusterSize: number,
    private readonly clusterBits: number,
    private readonly guard: MetaGuard,
  ) {}

  /** one past the highest host cluster that may be in use */
  get hostEnd(): number {
    return this.refcounts.hostEnd;
  }

  /** `count` contiguous clusters with refcount 1; returns the first host cluster index. */
  allocate(count: number): Promise<number> {
    return this.guard.run(this.refcounts.allocate(count));
  }

  async free(first: number, count: number): Promise<void> {
    const tail = Math.floor(this.compressedTail / this.clusterSize);
    if (this.compressedTail && tail >= first && tail < first + count) this.compressedTail = 0;
    await this.guard.run(this.refcounts.free(first, count));
  }

  /**
   * Host bytes for compressed data, packed after the previous compressed cluster while it fits
   * in that host cluster. Each compressed cluster adds one reference to every host cluster its
   * sectors touch, which is how qemu-img check counts them.
   */
  async allocateBytes(length: number): Promise<number> {
    const cs = this.clusterSize;
    const tail = this.compressedTail;
    let offset: number;
    if (tail && (tail % cs) + length <= cs) {
      await this.guard.run(this.refcounts.update(Math.floor(tail / cs), 1, 1));
      offset = tail;
    } else {
      offset = (await this.allocate(1)) * cs;
    }
    // a tail on a cluster boundary would point into a cluster we do not own
    const next = offset + length;
    this.compressedTail = next % cs === 0 ? 0 : next;
    return offset;
  }

  /** Undoes allocateBytes (the host clusters the byte range touches lose one reference). */
  async freeBytes(offset: number, length: number): Promise<void> {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    await this.free(first, last - first + 1);
  }

  /** clusters released and not yet freed */
  get releasedCount(): number {
    return this.released.size;
  }

  /** Releases the host clusters that old L2 entries held (call after the entries were rewritten in memory). */
  release(maps: readonly ClusterMapping[]): void {
    const cs = this.clusterSize;
    const decrements = this.released;
    const add = (cluster: number) => decrements.set(cluster, (decrements.get(cluster) ?? 0) + 1);
    for (const m of maps) {
      if (m.kind === 'normal' || m.kind === 'zero-alloc') add(m.host / cs);
      else if (m.kind === 'compressed') {
        const d = decodeCompressed(m.hi, m.lo, this.clusterBits);
        const first = Math.floor(d.sectorStart / cs);
        const last = Math.floor((d.sectorStart + d.sectors * 512 - 1) / cs);
        for (let c = first; c <= last; c++) add(c);
      }
    }
  }

  /** Frees what was released (call once the L2 changes that unlinked it are written and synced). */
  async applyReleased(): Promise<void> {
    const decrements = this.released;
    if (decrements.size === 0) return;
    this.released = new Map();
    // runs of consecutive clusters losing the same number of references go out together
    const clusters = [...decrements.keys()].sort((a, b) => a - b);
    let start = clusters[0];
    let len = 1;
    const flush = async () => {
      const times = decrements.get(start) ?? 1;
      for (let k = 0; k < times; k++) await this.free(start, len);
    };
    for (let i = 1; i < clusters.length; i++) {
      const c = clusters[i];
      if (c === start + len && decrements.get(c) === decrements.get(start)) {
        len++;
        continue;
      }
      await flush();
      start = c;
      len = 1;
    }
    await flush();
  }
}
