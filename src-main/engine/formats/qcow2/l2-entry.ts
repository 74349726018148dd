import { corruptImage } from '../image-errors.js';
import {
  HI_COMPRESSED,
  HI_COPIED,
  HI_OFFSET_MASK,
  HI_RESERVED_STANDARD,
  LO_OFFSET_MASK,
  LO_RESERVED_STANDARD,
  LO_ZERO,
} from './constants.js';

/**
 * What one L2 entry says about a guest cluster:
 * - unallocated: read from the backing file (zeros without one);
 * - zero: reads as zeros, no host cluster;
 * - zero-alloc: reads as zeros, host cluster kept (preallocated);
 * - normal: data at `host`;
 * - compressed: compressed data described by `hi`/`lo` (see compressed.ts).
 */
export type ClusterKind = 'unallocated' | 'zero' | 'zero-alloc' | 'normal' | 'compressed';

export interface ClusterMapping {
  kind: ClusterKind;
  /** host offset of the cluster (normal, zero-alloc), else 0 */
  host: number;
  /** COPIED flag: refcount is exactly 1, so the cluster may be written in place */
  copied: boolean;
  /** raw entry halves, for compressed descriptors and for freeing */
  hi: number;
  lo: number;
}

export const UNALLOCATED: ClusterMapping = { kind: 'unallocated', host: 0, copied: false, hi: 0, lo: 0 };

/** Decodes entry `index` of an L2 table; throws CORRUPT_IMAGE for reserved bits or misaligned offsets. */
export function decodeL2(table: DataView, index: number, version: number, path: string): ClusterMapping {
  const hi = table.getUint32(index * 8);
  const lo = table.getUint32(index * 8 + 4);
  if (hi === 0 && lo === 0) return UNALLOCATED;
  if (hi & HI_COMPRESSED) return { kind: 'compressed', host: 0, copied: false, hi, lo };
  if (hi & HI_RESERVED_STANDARD || lo & LO_RESERVED_STANDARD) {
    throw corruptImage(path, `L2 entry 0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')} has reserved bits set`);
  }
  const host = (hi & HI_OFFSET_MASK) * 2 ** 32 + ((lo & LO_OFFSET_MASK) >>> 0);
  const copied = (hi & HI_COPIED) !== 0;
  // v2 has no zero flag; QEMU reads the bit as zero anyway, and so do we
  if (lo & LO_ZERO && version >= 2) return { kind: host ? 'zero-alloc' : 'zero', host, copied, hi, lo };
  if (!host) {
    // COPIED without an offset: nothing allocated
    return UNALLOCATED;
  }
  return { kind: 'normal', host, copied, hi, lo };
}

export function encodeL2(view: DataView, index: number, host: number, flags: { copied: boolean; zero: boolean }): void {
  view.setUint32(index * 8, (flags.copied ? HI_COPIED : 0) | Math.floor(host / 2 ** 32));
  view.setUint32(index * 8 + 4, ((host % 2 ** 32) | (flags.zero ? LO_ZERO : 0)) >>> 0);
}

export function encodeRaw(view: DataView, index: number, hi: number, lo: number): void {
  view.setUint32(index * 8, hi >>> 0);
  view.setUint32(index * 8 + 4, lo >>> 0);
}
