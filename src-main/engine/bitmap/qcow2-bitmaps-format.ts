/**
 * The qcow2 bitmaps extension, directory and tables as bytes (docs/interop/qcow2.txt, "Bitmaps
 * extension"): parsing with QEMU's load-time checks, and serializing the same layout QEMU writes.
 * All integers big-endian; the bitmap data itself is LSB-first bytes.
 */
export const BITMAPS_EXT_LENGTH = 24;
export const MAX_BITMAPS = 65535;
export const MAX_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
export const MAX_TABLE_ENTRIES = 0x8000000;
export const MAX_BITMAP_DATA = 0x20000000;
export const FLAG_IN_USE = 0x1;
export const FLAG_AUTO = 0x2;
const RESERVED_FLAGS = 0xfffffffc;
export const TABLE_OFFSET_MASK = 0x00fffffffffffe00n;
const TABLE_RESERVED_MASK = 0xff000000000001fen;
export const MIN_GRANULARITY_BITS = 9;
export const MAX_GRANULARITY_BITS = 31;

export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

export interface DirEntry {
  tableOffset: number;
  tableSize: number;
  flags: number;
  granularityBits: number;
  name: string;
}

export class BitmapFormatError extends Error {}

export function parseExtension(data: Uint8Array, clusterSize: number): BitmapsExtension {
  if (data.length !== BITMAPS_EXT_LENGTH) throw new BitmapFormatError('bitmaps_ext: Invalid extension length');
  const v = new DataView(data.buffer, data.byteOffset, data.length);
  const nbBitmaps = v.getUint32(0);
  if (nbBitmaps === 0) throw new BitmapFormatError('found bitmaps extension with zero bitmaps');
  if (nbBitmaps > MAX_BITMAPS) throw new BitmapFormatError(`too many persistent bitmaps (${nbBitmaps})`);
  if (v.getUint32(4) !== 0) throw new BitmapFormatError('bitmaps_ext: Reserved field is not zero');
  const directorySize = Number(v.getBigUint64(8));
  const directoryOffset = Number(v.getBigUint64(16));
  if (directorySize > MAX_DIRECTORY_SIZE) throw new BitmapFormatError('bitmaps directory is too large');
  if (directoryOffset % clusterSize !== 0 || directoryOffset === 0) throw new BitmapFormatError('bitmaps directory offset is not cluster-aligned');
  return { nbBitmaps, directorySize, directoryOffset };
}

export function serializeExtension(ext: BitmapsExtension): Uint8Array {
  const out = new Uint8Array(BITMAPS_EXT_LENGTH);
  const v = new DataView(out.buffer);
  v.setUint32(0, ext.nbBitmaps);
  v.setBigUint64(8, BigInt(ext.directorySize));
  v.setBigUint64(16, BigInt(ext.directoryOffset));
  return out;
}

export function entrySize(nameBytes: number): number {
  return Math.ceil((24 + nameBytes) / 8) * 8;
}

/** Number of table entries (= data clusters) a bitmap of this geometry needs, as QEMU computes it. */
export function tableSizeFor(diskSize: number, granularity: number, clusterSize: number): number {
  const bits = Math.ceil(diskSize / granularity);
  const bytes = Math.ceil(bits / 64) * 8;
  return Math.ceil(bytes / clusterSize);
}

export function parseDirectory(dir: Uint8Array, ext: BitmapsExtension, clusterSize: number, diskSize: number): DirEntry[] {
  const v = new DataView(dir.buffer, dir.byteOffset, dir.length);
  const entries: DirEntry[] = [];
  let at = 0;
  while (at < ext.directorySize) {
    if (entries.length >= ext.nbBitmaps) throw new BitmapFormatError('More bitmaps found than specified in header extension');
    if (at + 24 > ext.directorySize) throw new BitmapFormatError('Broken bitmap directory');
    const tableOffset = Number(v.getBigUint64(at));
    const tableSize = v.getUint32(at + 8);
    const flags = v.getUint32(at + 12);
    const type = v.getUint8(at + 16);
    const granularityBits = v.getUint8(at + 17);
    const nameSize = v.getUint16(at + 18);
    const extraDataSize = v.getUint32(at + 20);
    if (extraDataSize !== 0) throw new BitmapFormatError('Bitmap extra data is not supported');
    if (nameSize === 0 || nameSize > 1023) throw new BitmapFormatError('bitmap name has an invalid size');
    const size = entrySize(nameSize);
    if (at + size > ext.directorySize) throw new BitmapFormatError('Broken bitmap directory');
    const name = new TextDecoder('utf-8', { fatal: false }).decode(dir.subarray(at + 24, at + 24 + nameSize));
    const where = `bitmap '${name}'`;
    if (type !== 1) throw new BitmapFormatError(`${where}: unknown type ${type}`);
    if (flags & RESERVED_FLAGS) throw new BitmapFormatError(`${where}: reserved flags set (0x${flags.toString(16)})`);
    if (granularityBits < MIN_GRANULARITY_BITS || granularityBits > MAX_GRANULARITY_BITS) throw new BitmapFormatError(`${where}: granularity bits ${granularityBits} out of range`);
    if (tableOffset === 0 || tableOffset % clusterSize !== 0) throw new BitmapFormatError(`${where}: bitmap table offset is not cluster-aligned`);
    if (tableSize === 0 || tableSize > MAX_TABLE_ENTRIES) throw new BitmapFormatError(`${where}: invalid bitmap table size`);
    if (tableSize * clusterSize > MAX_BITMAP_DATA) throw new BitmapFormatError(`${where}: bitmap data too large`);
    const inUse = (flags & FLAG_IN_USE) !== 0;
    if (!inUse && tableSize !== tableSizeFor(diskSize, 2 ** granularityBits, clusterSize)) {
      throw new BitmapFormatError(`Could not read bitmap '${name}' from image`);
    }
    if (entries.some((e) => e.name === name)) throw new BitmapFormatError(`duplicate bitmap name '${name}'`);
    entries.push({ tableOffset, tableSize, flags, granularityBits, name });
    at += size;
  }
  if (entries.length < ext.nbBitmaps) throw new BitmapFormatError('Less bitmaps found than specified in header extension');
  if (at !== ext.directorySize) throw new BitmapFormatError('Broken bitmap directory');
  return entries;
}

export function serializeDirectory(entries: readonly DirEntry[]): Uint8Array {
  const names = entries.map((e) => new TextEncoder().encode(e.name));
  const total = names.reduce((n, b) => n + entrySize(b.length), 0);
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  let at = 0;
  entries.forEach((e, i) => {
    v.setBigUint64(at, BigInt(e.tableOffset));
    v.setUint32(at + 8, e.tableSize);
    v.setUint32(at + 12, e.flags);
    v.setUint8(at + 16, 1);
    v.setUint8(at + 17, e.granularityBits);
    v.setUint16(at + 18, names[i].length);
    v.setUint32(at + 20, 0);
    out.set(names[i], at + 24);
    at += entrySize(names[i].length);
  });
  return out;
}

/** A table entry: a data cluster's offset, or (offset 0) all-zero / all-ones. */
export type TableEntry = { kind: 'zeros' } | { kind: 'ones' } | { kind: 'data'; offset: number };

export function parseTable(bytes: Uint8Array, count: number, clusterSize: number, name: string): TableEntry[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out: TableEntry[] = [];
  for (let i = 0; i < count; i++) {
    const e = v.getBigUint64(i * 8);
    if (e & TABLE_RESERVED_MASK) throw new BitmapFormatError(`bitmap '${name}': reserved bits set in table entry ${i}`);
    const offset = Number(e & TABLE_OFFSET_MASK);
    if (offset === 0) out.push({ kind: e & 1n ? 'ones' : 'zeros' });
    else {
      if (e & 1n) throw new BitmapFormatError(`bitmap '${name}': table entry ${i} has data and the all-ones bit`);
      if (offset % clusterSize !== 0) throw new BitmapFormatError(`bitmap '${name}': table entry ${i} is not cluster-aligned`);
      out.push({ kind: 'data', offset });
    }
  }
  return out;
}
