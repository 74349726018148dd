import { corruptImage, unsupportedImage } from '../image-errors.js';
import {
  COMPRESSION_DEFLATE,
  COMPRESSION_ZSTD,
  EXT_BACKING_FORMAT,
  EXT_END,
  EXT_FEATURE_TABLE,
  FEATURE_TABLE,
  FEATURE_TYPE_INCOMPAT,
  INCOMPAT_COMPRESSION,
  INCOMPAT_KNOWN,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_REFCOUNT_ORDER,
  MAX_VIRTUAL_SIZE,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from './constants.js';

/** The fixed header fields (v2 images get the v3 defaults for the fields they lack). */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
}

export interface HeaderExtension {
  magic: number;
  data: Uint8Array;
}

export interface ParsedHeader {
  header: Qcow2Header;
  /** every extension found, in file order (the end marker excluded) */
  extensions: HeaderExtension[];
  backingFile: string | undefined;
  backingFormat: string | undefined;
}

/** Minimum bytes needed to learn the cluster size. */
export const HEADER_PROBE_BYTES = V3_MIN_HEADER_LENGTH;

function u64(view: DataView, offset: number): bigint {
  return view.getBigUint64(offset, false);
}

/** A u64 that must fit a JS number exactly; anything larger cannot be a valid offset or size for us. */
function safeU64(view: DataView, offset: number, path: string, field: string): number {
  const value = u64(view, offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corruptImage(path, `${field} ${value} is out of range`);
  return Number(value);
}

function featureNames(extensions: HeaderExtension[]): Map<string, string> {
  const names = new Map<string, string>();
  for (const ext of extensions) {
    if (ext.magic !== EXT_FEATURE_TABLE) continue;
    for (let at = 0; at + 48 <= ext.data.length; at += 48) {
      const raw = ext.data.subarray(at + 2, at + 48);
      const end = raw.indexOf(0);
      const name = new TextDecoder().decode(end < 0 ? raw : raw.subarray(0, end));
      names.set(`${ext.data[at]}:${ext.data[at + 1]}`, name);
    }
  }
  return names;
}

function describeBits(bits: bigint, type: number, names: Map<string, string>): string {
  const parts: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if (!(bits & (1n << BigInt(bit)))) continue;
    const name = names.get(`${type}:${bit}`);
    parts.push(name ? `bit ${bit} (${name})` : `bit ${bit}`);
  }
  return parts.join(', ');
}

/**
 * Parses and validates cluster 0. `cluster0` must hold the whole first cluster (or the whole file
 * when that is shorter). Checks only what the header alone can tell; `validateLayout` checks the
 * tables against the file.
 */
export function parseHeader(cluster0: Uint8Array, path: string): ParsedHeader {
  if (cluster0.length < V2_HEADER_LENGTH) throw corruptImage(path, 'file is too short for a qcow2 header');
  const view = new DataView(cluster0.buffer, cluster0.byteOffset, cluster0.byteLength);
  if (view.getUint32(0) !== QCOW2_MAGIC) throw corruptImage(path, 'missing qcow2 magic');
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) throw unsupportedImage(path, `qcow2 version ${version} is not supported`);

  const clusterBits = view.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw unsupportedImage(path, `cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
  }
  const clusterSize = 2 ** clusterBits;

  let headerLength = V2_HEADER_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let compressionType = COMPRESSION_DEFLATE;
  if (version === 3) {
    if (cluster0.length < V3_MIN_HEADER_LENGTH) throw corruptImage(path, 'file is too short for a qcow2 v3 header');
    headerLength = view.getUint32(100);
    if (headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0 || headerLength > clusterSize) {
      throw corruptImage(path, `invalid header_length ${headerLength}`);
    }
    if (headerLength > cluster0.length) throw corruptImage(path, 'file is truncated inside the header');
    incompatibleFeatures = u64(view, 72);
    compatibleFeatures = u64(view, 80);
    autoclearFeatures = u64(view, 88);
    refcountOrder = view.getUint32(96);
    if (headerLength >= V3_HEADER_LENGTH) compressionType = cluster0[104];
  }

  const header: Qcow2Header = {
    version,
    backingFileOffset: safeU64(view, 8, path, 'backing_file_offset'),
    backingFileSize: view.getUint32(16),
    clusterBits,
    size: safeU64(view, 24, path, 'virtual size'),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: safeU64(view, 40, path, 'l1_table_offset'),
    refcountTableOffset: safeU64(view, 48, path, 'refcount_table_offset'),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: safeU64(view, 64, path, 'snapshots_offset'),
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
  };

  // Extensions run up to the backing file name when there is one, else to the end of cluster 0.
  const hasBacking = header.backingFileOffset !== 0 && header.backingFileSize !== 0;
  if (hasBacking) {
    if (header.backingFileSize > MAX_BACKING_NAME) {
      throw corruptImage(path, `backing file name length ${header.backingFileSize} exceeds ${MAX_BACKING_NAME}`);
    }
    if (header.backingFileOffset < headerLength || header.backingFileOffset + header.backingFileSize > clusterSize) {
      throw corruptImage(path, `backing file name at ${header.backingFileOffset} is outside the header cluster`);
    }
  }
  const extEnd = Math.min(hasBacking ? header.backingFileOffset : clusterSize, cluster0.length);
  const extensions: HeaderExtension[] = [];
  let at = headerLength;
  while (at + 8 <= extEnd) {
    const magic = view.getUint32(at);
    const len = view.getUint32(at + 4);
    if (magic === EXT_END) break;
    if (len > extEnd - at - 8) {
      throw corruptImage(path, `header extension 0x${magic.toString(16)} (length ${len}) runs past the header area`);
    }
    extensions.push({ magic, data: cluster0.slice(at + 8, at + 8 + len) });
    at += 8 + Math.ceil(len / 8) * 8;
  }

  let backingFile: string | undefined;
  if (hasBacking) {
    if (header.backingFileOffset + header.backingFileSize > cluster0.length) {
      throw corruptImage(path, 'file is truncated inside the backing file name');
    }
    const raw = cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize);
    try {
      backingFile = new TextDecoder('utf-8', { fatal: true }).decode(raw);
    } catch {
      throw corruptImage(path, 'backing file name is not valid UTF-8');
    }
    if (backingFile.includes('\0')) throw corruptImage(path, 'backing file name contains a NUL byte');
  }
  let backingFormat: string | undefined;
  for (const ext of extensions) {
    if (ext.magic !== EXT_BACKING_FORMAT) continue;
    try {
      backingFormat = new TextDecoder('utf-8', { fatal: true }).decode(ext.data);
    } catch {
      throw corruptImage(path, 'backing format extension is not valid UTF-8');
    }
  }

  validateFeatures(header, extensions, path);
  return { header, extensions, backingFile, backingFormat };
}

function validateFeatures(header: Qcow2Header, extensions: HeaderExtension[], path: string): void {
  if (header.version === 3 && header.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw corruptImage(path, `refcount_order ${header.refcountOrder} is larger than ${MAX_REFCOUNT_ORDER}`);
  }
  if (header.cryptMethod !== 0) throw unsupportedImage(path, `encrypted images (crypt_method ${header.cryptMethod}) are not supported`);
  const unknown = header.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown) {
    // name the bits like QEMU does: from the image's own feature table, else from ours
    const names = new Map(FEATURE_TABLE.map((f) => [`${f.type}:${f.bit}`, f.name]));
    for (const [key, name] of featureNames(extensions)) names.set(key, name);
    throw unsupportedImage(path, `unsupported incompatible features: ${describeBits(unknown, FEATURE_TYPE_INCOMPAT, names)}`);
  }
  const hasCompressionBit = (header.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (header.compressionType !== COMPRESSION_DEFLATE && header.compressionType !== COMPRESSION_ZSTD) {
    throw unsupportedImage(path, `unknown compression type ${header.compressionType}`);
  }
  if (header.compressionType === COMPRESSION_DEFLATE && hasCompressionBit) {
    throw corruptImage(path, 'compression type bit is set but the compression type is zlib');
  }
  if (header.compressionType !== COMPRESSION_DEFLATE && !hasCompressionBit) {
    throw corruptImage(path, 'compression type is set but the compression type incompatible bit is not');
  }
  if (header.size > MAX_VIRTUAL_SIZE) throw unsupportedImage(path, `virtual size ${header.size} is too large`);
}

/** Number of L1 entries a virtual size needs. */
export function l1EntriesFor(size: number, clusterBits: number): number {
  const bytesPerL2 = 2 ** (clusterBits * 2 - 3);
  return Math.ceil(size / bytesPerL2);
}

export interface SerializeInput {
  header: Qcow2Header;
  /** extensions to keep as they are (bitmaps, unknown ones), in order */
  preserved: HeaderExtension[];
  backingFile: string | undefined;
  backingFormat: string | undefined;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/**
 * Builds cluster 0 the way QEMU lays it out: fixed header, backing-format extension, feature
 * name table (v3, clusters > 4 KiB), preserved extensions, end marker, then the backing file name.
 * Returns the whole cluster (zero-padded) and the header it describes (backing offset/size filled in).
 * Throws a plain Error when it does not fit; callers turn that into a user-facing error.
 */
export function serializeHeader(input: SerializeInput): { bytes: Uint8Array; header: Qcow2Header } {
  const h = { ...input.header };
  const clusterSize = 2 ** h.clusterBits;
  const enc = new TextEncoder();
  const exts: HeaderExtension[] = [];
  if (input.backingFile !== undefined && input.backingFormat !== undefined) {
    exts.push({ magic: EXT_BACKING_FORMAT, data: enc.encode(input.backingFormat) });
  }
  if (h.version === 3 && clusterSize > 4096) {
    const table = new Uint8Array(FEATURE_TABLE.length * 48);
    FEATURE_TABLE.forEach((f, i) => {
      table[i * 48] = f.type;
      table[i * 48 + 1] = f.bit;
      table.set(enc.encode(f.name), i * 48 + 2);
    });
    exts.push({ magic: EXT_FEATURE_TABLE, data: table });
  }
  for (const ext of input.preserved) {
    if (ext.magic === EXT_BACKING_FORMAT || ext.magic === EXT_FEATURE_TABLE || ext.magic === EXT_END) continue;
    exts.push(ext);
  }
  const headerLength = h.version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH;
  let length = headerLength;
  for (const ext of exts) length += 8 + align8(ext.data.length);
  length += 8; // end marker
  const backingBytes = input.backingFile !== undefined ? enc.encode(input.backingFile) : undefined;
  if (backingBytes && backingBytes.length > MAX_BACKING_NAME) {
    throw new Error(`backing file name is longer than ${MAX_BACKING_NAME} bytes`);
  }
  const total = length + (backingBytes?.length ?? 0);
  if (total > clusterSize) throw new Error(`header and extensions (${total} bytes) do not fit in one ${clusterSize}-byte cluster`);

  h.headerLength = headerLength;
  h.backingFileOffset = backingBytes ? length : 0;
  h.backingFileSize = backingBytes ? backingBytes.length : 0;

  const bytes = new Uint8Array(clusterSize);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, QCOW2_MAGIC);
  view.setUint32(4, h.version);
  view.setBigUint64(8, BigInt(h.backingFileOffset));
  view.setUint32(16, h.backingFileSize);
  view.setUint32(20, h.clusterBits);
  view.setBigUint64(24, BigInt(h.size));
  view.setUint32(32, h.cryptMethod);
  view.setUint32(36, h.l1Size);
  view.setBigUint64(40, BigInt(h.l1TableOffset));
  view.setBigUint64(48, BigInt(h.refcountTableOffset));
  view.setUint32(56, h.refcountTableClusters);
  view.setUint32(60, h.nbSnapshots);
  view.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version === 3) {
    view.setBigUint64(72, h.incompatibleFeatures);
    view.setBigUint64(80, h.compatibleFeatures);
    view.setBigUint64(88, h.autoclearFeatures);
    view.setUint32(96, h.refcountOrder);
    view.setUint32(100, h.headerLength);
    bytes[104] = h.compressionType;
  }
  let at = headerLength;
  for (const ext of exts) {
    view.setUint32(at, ext.magic);
    view.setUint32(at + 4, ext.data.length);
    bytes.set(ext.data, at + 8);
    at += 8 + align8(ext.data.length);
  }
  at += 8; // end marker is already zero
  if (backingBytes) bytes.set(backingBytes, at);
  return { bytes, header: h };
}
