import { preadPassing, type FileHandle, type Lent, type ReadSegment } from '../../io/file-handle.js';
import { corruptImage } from '../image-errors.js';
import type { BlockDriver } from '../types.js';
import type { ClusterMap } from './cluster-map.js';
import { decodeCompressed, decompressCluster } from './compressed.js';
import type { ClusterMapping } from './l2-entry.js';

export interface ReadPathOptions {
  file: FileHandle;
  path: string;
  clusterBits: number;
  compressionType: number;
  map: ClusterMap;
  backing: BlockDriver | null;
  hostEnd: () => number;
}

/**
 * Guest reads: runs of clusters with the same kind (and, for data, contiguous host offsets)
 * become one pread each, unallocated runs go to the backing chain, compressed clusters are
 * inflated (the last one is cached for sequential small reads). No locking here.
 */
export class ReadPath {
  private readonly file: FileHandle;
  private readonly path: string;
  private readonly cs: number;
  private readonly clusterBits: number;
  private readonly compressionType: number;
  private readonly map: ClusterMap;
  private readonly backing: BlockDriver | null;
  private readonly hostEnd: () => number;
  private lastCompressed: { hi: number; lo: number; data: Uint8Array } | undefined;

  constructor(o: ReadPathOptions) {
    this.file = o.file;
    this.path = o.path;
    this.cs = 2 ** o.clusterBits;
    this.clusterBits = o.clusterBits;
    this.compressionType = o.compressionType;
    this.map = o.map;
    this.backing = o.backing;
    this.hostEnd = o.hostEnd;
  }

  /** Whether host clusters [host, +clusters) lie inside the file and past the header. */
  private hostInside(host: number, clusters: number): boolean {
    const first = host / this.cs;
    return first >= 1 && first + clusters <= this.hostEnd();
  }

  /** Throws unless host clusters [host, +clusters) lie inside the file and past the header. */
  checkHost(host: number, clusters: number, guestCluster: number): void {
    if (!this.hostInside(host, clusters)) {
      throw corruptImage(this.path, `data for guest cluster ${guestCluster} points to 0x${host.toString(16)}, outside the image file`);
    }
  }

  /**
   * The read when `maps` (of the clusters under [offset, +length)) is one run of data clusters
   * lying in order in the file: one pread into the buffer handed out. Undefined for anything else
   * — other kinds, several runs, or a host offset read() would refuse as corrupt — which read()
   * then handles (and reports).
   */
  readSingleRun(offset: number, length: number, maps: readonly ClusterMapping[]): Promise<Uint8Array> | undefined {
    const m = maps[0];
    if (m.kind !== 'normal' || runEnd(maps, 0, this.cs) !== maps.length || !this.hostInside(m.host, maps.length)) return undefined;
    return preadPassing(this.file, m.host + (offset % this.cs), length);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const cs = this.cs;
    const c0 = Math.floor(offset / cs);
    const n = Math.floor((offset + length - 1) / cs) - c0 + 1;
    const maps = await this.map.mapRange(c0, n);
    const end = offset + length;
    const runs: Run[] = [];
    for (let i = 0; i < n; ) {
      const j = runEnd(maps, i, cs);
      const start = Math.max(offset, (c0 + i) * cs);
      runs.push({ m: maps[i], first: c0 + i, count: j - i, start, stop: Math.min(end, (c0 + j) * cs) });
      i = j;
    }
    const data = runs.filter((r) => r.m.kind === 'normal');
    for (const r of data) this.checkHost(r.m.host, r.count, r.first);
    const hostStart = (r: Run) => r.m.host + (r.start - r.first * cs);
    // one run covering everything: hand out the pread buffer itself
    if (runs.length === 1 && data.length === 1) return preadPassing(this.file, hostStart(data[0]), length);
    // several data runs: one scatter read (zeros between them), when the file can do it
    const scatter = data.length > 1 && this.file.preadv !== undefined;
    const out = scatter
      ? this.file.preadv!(
          data.map((r) => ({ position: hostStart(r), length: r.stop - r.start, at: r.start - offset })),
          length,
        )
      : Promise.resolve(new Uint8Array(length));
    const tasks: Promise<{ at: number; bytes: Uint8Array | undefined }>[] = [];
    try {
      for (const r of runs) {
        const at = r.start - offset;
        if (r.m.kind === 'normal') {
          if (!scatter) tasks.push(this.file.pread(hostStart(r), r.stop - r.start).then((bytes) => ({ at, bytes })));
        } else if (r.m.kind === 'unallocated') {
          tasks.push(this.readBacking(r.start, r.stop - r.start).then((bytes) => ({ at, bytes })));
        } else if (r.m.kind === 'compressed') {
          const inCluster = r.start - r.first * cs;
          tasks.push(this.readCompressed(r.m, r.first).then((d) => ({ at, bytes: d.subarray(inCluster, inCluster + r.stop - r.start) })));
        }
      }
    } finally {
      // a run that fails synchronously must not leave the others' rejections unobserved
      await Promise.allSettled([out, ...tasks]);
    }
    const buf = await out;
    for (const r of await Promise.allSettled(tasks)) {
      if (r.status === 'rejected') throw r.reason;
      if (r.value.bytes) buf.set(r.value.bytes, r.value.at);
    }
    return buf;
  }

  /**
   * Guest ranges (sorted, not overlapping) into a lent buffer (see BlockDriver.readLent): data
   * runs and zero runs in one request, backing and compressed data filled in here.
   */
  async readLent(ranges: readonly { offset: number; length: number }[]): Promise<Lent | undefined> {
    if (!this.file.preadLent || ranges.length === 0) return undefined;
    const cs = this.cs;
    const base = ranges[0].offset;
    const last = ranges[ranges.length - 1];
    const segments: ReadSegment[] = [];
    const extras: Promise<{ at: number; length: number; bytes: Uint8Array | undefined }>[] = [];
    try {
      for (const r of ranges) {
        if (r.length <= 0) continue;
        const c0 = Math.floor(r.offset / cs);
        const n = Math.floor((r.offset + r.length - 1) / cs) - c0 + 1;
        const maps = await this.map.mapRange(c0, n);
        const end = r.offset + r.length;
        for (let i = 0; i < n; ) {
          const j = runEnd(maps, i, cs);
          const m = maps[i];
          const start = Math.max(r.offset, (c0 + i) * cs);
          const length = Math.min(end, (c0 + j) * cs) - start;
          const at = start - base;
          if (m.kind === 'normal') {
            this.checkHost(m.host, j - i, c0 + i);
            segments.push({ position: m.host + (start - (c0 + i) * cs), length, at });
          } else if (m.kind === 'zero' || m.kind === 'zero-alloc' || (m.kind === 'unallocated' && this.readsAsZero(m, c0 + i) && this.readsAsZero(m, c0 + j - 1))) {
            segments.push({ position: -1, length, at });
          } else if (m.kind === 'unallocated') {
            extras.push(this.readBacking(start, length).then((bytes) => ({ at, length, bytes })));
          } else {
            const inCluster = start - (c0 + i) * cs;
            extras.push(this.readCompressed(m, c0 + i).then((d) => ({ at, length, bytes: d.subarray(inCluster, inCluster + length) })));
          }
          i = j;
        }
      }
    } catch (err) {
      await Promise.allSettled(extras);
      throw err;
    }
    let lent: Lent | undefined;
    try {
      lent = await this.file.preadLent(segments, last.offset + last.length - base);
    } finally {
      // a failed read must not leave the extras' rejections unobserved
      await Promise.allSettled(extras);
    }
    if (!lent) return undefined;
    try {
      for (const e of await Promise.all(extras)) {
        if (e.bytes) lent.bytes.set(e.bytes, e.at);
        else lent.bytes.fill(0, e.at, e.at + e.length);
      }
    } catch (err) {
      lent.release();
      throw err;
    }
    return lent;
  }

  /** Backing data for a guest range; undefined when it reads as zeros (no backing, or past its end). */
  async readBacking(offset: number, length: number): Promise<Uint8Array | undefined> {
    const b = this.backing;
    if (!b || offset >= b.virtualSize) return undefined;
    const n = Math.min(length, b.virtualSize - offset);
    const data = await b.read(offset, n);
    if (n === length) return data;
    const padded = new Uint8Array(length);
    padded.set(data);
    return padded;
  }

  async readCompressed(m: ClusterMapping, guestCluster: number): Promise<Uint8Array> {
    const cached = this.lastCompressed;
    if (cached && cached.hi === m.hi && cached.lo === m.lo) return cached.data;
    const d = decodeCompressed(m.hi, m.lo, this.clusterBits);
    // the last sector may run past EOF (QEMU does not pad the file); the start may not
    if (d.offset < this.cs || d.offset >= this.hostEnd() * this.cs) {
      throw corruptImage(this.path, `compressed data for guest cluster ${guestCluster} points outside the image file`);
    }
    const raw = await this.file.pread(d.offset, d.length);
    const data = await decompressCluster(raw, this.cs, this.compressionType, this.path, guestCluster * this.cs);
    this.lastCompressed = { hi: m.hi, lo: m.lo, data };
    return data;
  }

  /** The full current contents of one guest cluster (for read-modify-write of partial writes). */
  async clusterContents(m: ClusterMapping, cluster: number): Promise<Uint8Array> {
    switch (m.kind) {
      case 'normal':
        this.checkHost(m.host, 1, cluster);
        return this.file.pread(m.host, this.cs);
      case 'compressed':
        return (await this.readCompressed(m, cluster)).slice();
      case 'unallocated':
        return (await this.readBacking(cluster * this.cs, this.cs)) ?? new Uint8Array(this.cs);
      default:
        return new Uint8Array(this.cs);
    }
  }

  /** Whether a cluster already reads as zeros, judged from its mapping alone. */
  readsAsZero(m: ClusterMapping, cluster: number): boolean {
    if (m.kind === 'zero' || m.kind === 'zero-alloc') return true;
    if (m.kind !== 'unallocated') return false;
    return !this.backing || cluster * this.cs >= this.backing.virtualSize;
  }
}

/** A run of guest clusters one read operation serves: clusters [first, first+count), guest bytes [start, stop). */
interface Run {
  m: ClusterMapping;
  first: number;
  count: number;
  start: number;
  stop: number;
}

/** End (exclusive) of the run of clusters starting at i that one read operation can serve. */
function runEnd(maps: readonly ClusterMapping[], i: number, cs: number): number {
  const m = maps[i];
  const n = maps.length;
  let j = i + 1;
  if (m.kind === 'normal') {
    while (j < n && maps[j].kind === 'normal' && maps[j].host === maps[j - 1].host + cs) j++;
  } else if (m.kind === 'unallocated') {
    while (j < n && maps[j].kind === 'unallocated') j++;
  } else if (m.kind !== 'compressed') {
    while (j < n && (maps[j].kind === 'zero' || maps[j].kind === 'zero-alloc')) j++;
  }
  return j;
}
