import { promisify } from 'node:util';
import * as zlib from 'node:zlib';
import { TidemarkError } from '../../../../src-shared/errors.js';
import { corruptImage, unsupportedImage } from '../image-errors.js';
import { COMPRESSION_DEFLATE, COMPRESSION_ZSTD, HI_COMPRESSED } from './constants.js';

const inflateRaw = promisify(zlib.inflateRaw);
const deflateRaw = promisify(zlib.deflateRaw);

/** A compressed cluster's data: `length` bytes at host `offset`, counted in whole 512-byte sectors. */
export interface CompressedDescriptor {
  offset: number;
  /** bytes to read: sectors * 512 minus the offset within the first sector */
  length: number;
  /** host byte range [sectorStart, sectorStart + sectors*512) the refcounts cover */
  sectorStart: number;
  sectors: number;
}

/** Bit at which the sector count starts in a compressed L2 entry (x = 62 - (cluster_bits - 8)). */
function sizeShift(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

export function decodeCompressed(hi: number, lo: number, clusterBits: number): CompressedDescriptor {
  const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(sizeShift(clusterBits));
  const offset = Number(entry & ((1n << x) - 1n));
  const sectors = Number((entry >> x) & ((1n << (62n - x)) - 1n)) + 1;
  const sectorStart = offset - (offset % 512);
  return { offset, length: sectors * 512 - (offset % 512), sectorStart, sectors };
}

export function encodeCompressed(offset: number, length: number, clusterBits: number): { hi: number; lo: number } {
  const sectors = Math.ceil(((offset % 512) + length) / 512);
  const entry = (BigInt(HI_COMPRESSED) << 32n) | (BigInt(sectors - 1) << BigInt(sizeShift(clusterBits))) | BigInt(offset);
  return { hi: Number(entry >> 32n), lo: Number(entry & 0xffffffffn) };
}

/**
 * Length of the first zstd frame in `buf`, so that trailing sector padding (or a neighbour's
 * data) is not fed to the decoder. Returns undefined when the frame is malformed or incomplete.
 */
function zstdFrameLength(buf: Uint8Array): number | undefined {
  if (buf.length < 6 || buf[0] !== 0x28 || buf[1] !== 0xb5 || buf[2] !== 0x2f || buf[3] !== 0xfd) return undefined;
  const fhd = buf[4];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictIdSize = [0, 1, 2, 4][fhd & 3];
  const fcsSize = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
  let at = 5 + (singleSegment ? 0 : 1) + dictIdSize + fcsSize;
  for (;;) {
    if (at + 3 > buf.length) return undefined;
    const bh = buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) return undefined;
    at += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  at += checksum ? 4 : 0;
  return at <= buf.length ? at : undefined;
}

/** Decompresses one cluster; any failure is a corrupt cluster, reported for this request only. */
export async function decompressCluster(
  data: Uint8Array,
  clusterSize: number,
  compressionType: number,
  path: string,
  guestOffset: number,
): Promise<Uint8Array> {
  const bad = (why: string) => corruptImage(path, `compressed cluster at guest offset ${guestOffset} ${why}`);
  let out: Uint8Array;
  try {
    if (compressionType === COMPRESSION_DEFLATE) {
      // QEMU writes raw deflate (window 2^12); a larger window reads it too. The data may be
      // followed by unrelated bytes of the last sector: SYNC_FLUSH stops at the stream's end.
      out = await inflateRaw(data, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
    } else if (compressionType === COMPRESSION_ZSTD) {
      const len = zstdFrameLength(data);
      if (len === undefined) throw bad('is not a valid zstd frame');
      const zstdDecompress = promisify(zlib.zstdDecompress);
      out = await zstdDecompress(data.subarray(0, len), { maxOutputLength: clusterSize });
    } else {
      throw unsupportedImage(path, `compression type ${compressionType}`);
    }
  } catch (err) {
    if (err instanceof TidemarkError) throw err;
    throw bad(`cannot be decompressed (${err instanceof Error ? err.message : String(err)})`);
  }
  if (out.length < clusterSize) throw bad(`decompresses to ${out.length} bytes instead of ${clusterSize}`);
  return out.length === clusterSize ? out : out.subarray(0, clusterSize);
}

/** Compresses one cluster the way QEMU does; undefined when it does not shrink below a cluster. */
export async function compressCluster(data: Uint8Array, clusterSize: number, compressionType: number): Promise<Uint8Array | undefined> {
  let out: Uint8Array;
  if (compressionType === COMPRESSION_ZSTD) {
    const zstdCompress = promisify(zlib.zstdCompress);
    out = await zstdCompress(data);
  } else {
    out = await deflateRaw(data, { windowBits: 12, level: zlib.constants.Z_DEFAULT_COMPRESSION, memLevel: 9 });
  }
  return out.length < clusterSize ? out : undefined;
}
