import { corruptImage } from '../image-errors.js';
import {
  L1_HI_RESERVED,
  L1_LO_RESERVED,
  HI_OFFSET_MASK,
  LO_OFFSET_MASK,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
} from './constants.js';
import { l1EntriesFor, type Qcow2Header } from './header.js';

/** Host byte ranges that hold metadata the allocator must never hand out (for overlap checks). */
export interface FixedRegions {
  l1: { offset: number; length: number };
  refcountTable: { offset: number; length: number };
}

function overlaps(a: { offset: number; length: number }, b: { offset: number; length: number }): boolean {
  return a.length > 0 && b.length > 0 && a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

/**
 * Validates the table locations in the header against the file, before anything else is read, so
 * absurd values can neither make us allocate huge buffers nor read garbage as metadata.
 */
export function validateLayout(h: Qcow2Header, fileSize: number, path: string): FixedRegions {
  const cs = 2 ** h.clusterBits;
  const l1Bytes = h.l1Size * 8;
  if (l1Bytes > MAX_L1_BYTES) throw corruptImage(path, `L1 table of ${h.l1Size} entries is larger than ${MAX_L1_BYTES} bytes`);
  if (h.l1Size < l1EntriesFor(h.size, h.clusterBits)) {
    throw corruptImage(path, `L1 table of ${h.l1Size} entries is too small for the virtual size ${h.size}`);
  }
  const l1 = { offset: h.l1TableOffset, length: l1Bytes };
  if (h.l1Size > 0) checkTable(l1, cs, fileSize, path, 'L1 table');

  if (h.refcountTableClusters === 0) throw corruptImage(path, 'refcount table is empty');
  const rtBytes = h.refcountTableClusters * cs;
  if (rtBytes > MAX_REFTABLE_BYTES) {
    throw corruptImage(path, `refcount table of ${h.refcountTableClusters} clusters is larger than ${MAX_REFTABLE_BYTES} bytes`);
  }
  const refcountTable = { offset: h.refcountTableOffset, length: rtBytes };
  checkTable(refcountTable, cs, fileSize, path, 'refcount table');
  if (overlaps(l1, refcountTable)) throw corruptImage(path, 'L1 table and refcount table overlap');

  if (h.nbSnapshots > MAX_SNAPSHOTS) throw corruptImage(path, `too many snapshots (${h.nbSnapshots})`);
  if (h.nbSnapshots > 0) {
    if (h.snapshotsOffset % cs !== 0 || h.snapshotsOffset < cs || h.snapshotsOffset >= fileSize) {
      throw corruptImage(path, `snapshot table offset 0x${h.snapshotsOffset.toString(16)} is invalid`);
    }
  }
  return { l1, refcountTable };
}

function checkTable(t: { offset: number; length: number }, cs: number, fileSize: number, path: string, what: string): void {
  const hex = `0x${t.offset.toString(16)}`;
  if (t.offset % cs !== 0) throw corruptImage(path, `${what} offset ${hex} is not cluster-aligned`);
  if (t.offset < cs) throw corruptImage(path, `${what} offset ${hex} overlaps the header`);
  if (t.offset + t.length > fileSize) throw corruptImage(path, `${what} at ${hex} extends past the end of the file`);
}

/** Offset stored in an L1 entry or refcount table entry (bits 9..55), validated. */
export function checkedTableEntries(
  table: Uint8Array,
  entries: number,
  cs: number,
  fileSize: number,
  regions: FixedRegions,
  path: string,
  what: 'L1' | 'refcount table',
): void {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  for (let i = 0; i < entries; i++) {
    const hi = view.getUint32(i * 8);
    const lo = view.getUint32(i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    if (what === 'L1') {
      if (hi & L1_HI_RESERVED || lo & L1_LO_RESERVED) throw corruptImage(path, `L1 entry ${i} has reserved bits set`);
    } else if (lo & 0x1ff) {
      throw corruptImage(path, `refcount table entry ${i} is not cluster-aligned`);
    }
    const offset = (what === 'L1' ? hi & HI_OFFSET_MASK : hi) * 2 ** 32 + ((lo & LO_OFFSET_MASK) >>> 0);
    const target = { offset, length: cs };
    const name = what === 'L1' ? `L2 table ${i}` : `refcount block ${i}`;
    const hex = `0x${offset.toString(16)}`;
    if (offset === 0) continue; // only flag bits set: nothing allocated
    if (offset % cs !== 0) throw corruptImage(path, `${name} offset ${hex} is not cluster-aligned`);
    if (offset < cs) throw corruptImage(path, `${name} offset ${hex} overlaps the header`);
    if (offset >= fileSize) throw corruptImage(path, `${name} offset ${hex} is past the end of the file`);
    if (overlaps(target, regions.l1)) throw corruptImage(path, `${name} overlaps the L1 table`);
    if (overlaps(target, regions.refcountTable)) throw corruptImage(path, `${name} overlaps the refcount table`);
  }
}
