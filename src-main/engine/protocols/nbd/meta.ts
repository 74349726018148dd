import type { DirtyBitmap } from '../../bitmap/dirty-bitmap.js';
import type { BlockExtent } from '../../formats/types.js';
import {
  META_ID_ALLOCATION_DEPTH,
  META_ID_BASE_ALLOCATION,
  META_ID_DIRTY_BITMAP,
  NBD_MAX_STRING_SIZE,
  NBD_STATE_DIRTY,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  UINT32_MAX,
} from './constants.js';

/**
 * Metadata contexts as QEMU's NBD server offers them: `base:allocation` (id 0),
 * `qemu:allocation-depth` (id 1, when the export enables it) and `qemu:dirty-bitmap:NAME`
 * (id 2 + the bitmap's index in the export), with QEMU's query rules and extent semantics.
 */

/** What a metadata-context option payload says: the export name and the query strings. */
export interface MetaRequest {
  exportName: string;
  /** queries longer than the string limit are skipped, as QEMU skips them */
  queries: string[];
}

/** Parses `u32 namelen, name, u32 count, count × (u32 len, query)`; a string says what is malformed. */
export function parseMetaRequest(data: Buffer): MetaRequest | string {
  let at = 0;
  const need = (n: number) => at + n <= data.length;
  if (!need(4)) return 'option is too short';
  const nameLen = data.readUInt32BE(at);
  at += 4;
  if (nameLen > NBD_MAX_STRING_SIZE) return 'export name too long';
  if (!need(nameLen)) return 'inconsistent lengths in option';
  const exportName = data.toString('utf8', at, at + nameLen);
  at += nameLen;
  if (!need(4)) return 'inconsistent lengths in option';
  const count = data.readUInt32BE(at);
  at += 4;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (!need(4)) return 'inconsistent lengths in option';
    const len = data.readUInt32BE(at);
    at += 4;
    if (!need(len)) return 'inconsistent lengths in option';
    if (len <= NBD_MAX_STRING_SIZE) queries.push(data.toString('utf8', at, at + len));
    at += len;
  }
  if (at !== data.length) return 'inconsistent lengths in option';
  return { exportName, queries };
}

/** The contexts an export can offer. */
export interface MetaSource {
  allocationDepth: boolean;
  bitmaps: readonly { name: string }[];
}

/** A client's selection on one export (SET replaces it; LIST computes one and throws it away). */
export interface MetaSelection {
  exportName: string;
  base: boolean;
  depth: boolean;
  bitmaps: boolean[];
}

export function emptySelection(exportName: string, source: MetaSource): MetaSelection {
  return { exportName, base: false, depth: false, bitmaps: source.bitmaps.map(() => false) };
}

export function selectionCount(sel: MetaSelection): number {
  return (sel.base ? 1 : 0) + (sel.depth ? 1 : 0) + sel.bitmaps.filter(Boolean).length;
}

/**
 * QEMU's matching: `base:allocation` and `qemu:allocation-depth` by name,
 * `qemu:dirty-bitmap:NAME` by the exported bitmap's exact name. The wildcards `base:`, `qemu:`
 * and `qemu:dirty-bitmap:` select everything below them in LIST only; a LIST without queries
 * lists everything. Unknown names and namespaces are ignored.
 */
export function selectContexts(source: MetaSource, req: MetaRequest, list: boolean): MetaSelection {
  const sel = emptySelection(req.exportName, source);
  if (list && req.queries.length === 0) {
    sel.base = true;
    sel.depth = source.allocationDepth;
    sel.bitmaps.fill(true);
    return sel;
  }
  for (const q of req.queries) {
    if (q.startsWith('base:')) {
      const leaf = q.slice(5);
      if (leaf === 'allocation' || (leaf === '' && list)) sel.base = true;
      continue;
    }
    if (!q.startsWith('qemu:')) continue;
    const leaf = q.slice(5);
    if (leaf === '') {
      if (list) {
        sel.depth = source.allocationDepth;
        sel.bitmaps.fill(true);
      }
    } else if (leaf === 'allocation-depth') {
      sel.depth = source.allocationDepth;
    } else if (leaf.startsWith('dirty-bitmap:')) {
      const name = leaf.slice('dirty-bitmap:'.length);
      if (name === '') {
        if (list) sel.bitmaps.fill(true);
        continue;
      }
      const i = source.bitmaps.findIndex((b) => b.name === name);
      if (i >= 0) sel.bitmaps[i] = true;
    }
  }
  return sel;
}

/** The selected contexts with their ids, in QEMU's order (which is also the order of block-status chunks). */
export function selectedContexts(source: MetaSource, sel: MetaSelection): { id: number; name: string }[] {
  const out: { id: number; name: string }[] = [];
  if (sel.base) out.push({ id: META_ID_BASE_ALLOCATION, name: 'base:allocation' });
  if (sel.depth) out.push({ id: META_ID_ALLOCATION_DEPTH, name: 'qemu:allocation-depth' });
  source.bitmaps.forEach((b, i) => {
    if (sel.bitmaps[i]) out.push({ id: META_ID_DIRTY_BITMAP + i, name: `qemu:dirty-bitmap:${b.name}` });
  });
  return out;
}

/**
 * The extents of one block-status chunk, built like QEMU's NBDExtentArray: an extent with the
 * same flags as the previous one extends it (while the sum fits 32 bits, even when the array is
 * full), a new extent needs a free slot, and once one is refused nothing more is added.
 */
export class ExtentArray {
  readonly lengths: number[] = [];
  readonly flags: number[] = [];
  total = 0;
  private closed = false;

  constructor(readonly max: number) {}

  get count(): number {
    return this.lengths.length;
  }

  get full(): boolean {
    return this.closed;
  }

  /** false when the extent did not fit (the array is then closed) */
  add(length: number, flags: number): boolean {
    if (this.closed) return false;
    if (length <= 0) return true;
    const n = this.lengths.length;
    if (n > 0 && this.flags[n - 1] === flags && this.lengths[n - 1] + length <= UINT32_MAX) {
      this.lengths[n - 1] += length;
      this.total += length;
      return true;
    }
    if (n >= this.max) {
      this.closed = true;
      return false;
    }
    this.lengths.push(length);
    this.flags.push(flags);
    this.total += length;
    return true;
  }

  /** `u32 context id` + n × `(u32 length, u32 flags)` */
  encode(contextId: number): Buffer {
    const out = Buffer.allocUnsafe(4 + 8 * this.lengths.length);
    out.writeUInt32BE(contextId, 0);
    for (let i = 0; i < this.lengths.length; i++) {
      out.writeUInt32BE(this.lengths[i], 4 + 8 * i);
      out.writeUInt32BE(this.flags[i], 8 + 8 * i);
    }
    return out;
  }
}

/** base:allocation flags of one block-status extent: HOLE unless it holds data, ZERO when it reads as zeros. */
export function allocationFlags(e: BlockExtent): number {
  return (e.data ? 0 : NBD_STATE_HOLE) | (e.zero ? NBD_STATE_ZERO : 0);
}

/** qemu:allocation-depth value: 0 unallocated in the whole chain, 1 this image, 2 its backing file, … */
export function depthValue(e: BlockExtent): number {
  return e.depth === undefined ? 0 : e.depth + 1;
}

/** Asked of the backend at most this much at a time, so a full array stops the walk early. */
const STATUS_STEP = 1024 * 1024 * 1024;

/** Fills `arr` from the backend's block status over [offset, offset+length), stopping once the array is full. */
export async function statusExtents(
  status: (offset: number, length: number) => Promise<BlockExtent[]>,
  offset: number,
  length: number,
  arr: ExtentArray,
  flagsOf: (e: BlockExtent) => number,
): Promise<void> {
  const end = offset + length;
  for (let pos = offset; pos < end && !arr.full; ) {
    const n = Math.min(STATUS_STEP, end - pos);
    let covered = 0;
    for (const e of await status(pos, n)) {
      if (!arr.add(e.length, flagsOf(e))) break;
      covered += e.length;
    }
    // a driver that answered short: go on from where it stopped
    if (covered === 0) break;
    pos += covered;
  }
}

/**
 * A dirty bitmap's extents over [offset, offset+length) (which lies inside the disk): clean (0)
 * and dirty runs alternating, granule-aligned except at the request's edges.
 */
export function bitmapExtents(bitmap: DirtyBitmap, offset: number, length: number, arr: ExtentArray): void {
  const g = bitmap.granularity;
  const end = Math.min(bitmap.size, offset + length);
  let at = offset;
  for (const [bit, n] of bitmap.bits.runs(Math.floor(offset / g), Math.ceil(end / g))) {
    const start = Math.max(offset, bit * g);
    const stop = Math.min(end, (bit + n) * g);
    if (!arr.add(start - at, 0) || !arr.add(stop - start, NBD_STATE_DIRTY)) return;
    at = stop;
  }
  arr.add(end - at, 0);
}
