import type { FileHandle } from '../../io/file-handle.js';
import { corruptImage, unsupportedImage } from '../image-errors.js';
import type { BlockDriver } from '../types.js';
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS, V2_HEADER_LENGTH } from './constants.js';
import { HEADER_PROBE_BYTES, parseHeader, type ParsedHeader } from './header.js';
import { checkedTableEntries, validateLayout, type FixedRegions } from './layout.js';

export interface Qcow2OpenOptions {
  readOnly: boolean;
  /**
   * Opens the backing file named in the header, read-only. open.ts supplies it: it resolves the
   * name against the image's folder, picks the format, and guards against loops and depth.
   */
  openBacking?: (name: string, format: string | undefined) => Promise<BlockDriver>;
  /** bytes of L2 tables to cache (default 32 MiB, QEMU's default on Linux) */
  l2CacheBytes?: number;
  /** bytes of refcount blocks to cache (default 8 MiB) */
  refcountCacheBytes?: number;
}

/** Everything read and validated at open, before the driver exists. */
export interface Qcow2State {
  parsed: ParsedHeader;
  regions: FixedRegions;
  fileSize: number;
  l1: Uint8Array;
  /** undefined on read-only opens (refcounts are not needed to read) */
  refcountTable: Uint8Array | undefined;
  backing: BlockDriver | null;
}

/**
 * Reads and validates the header and the L1 and refcount tables. Nothing is written here, so a
 * file that fails to open is left exactly as it was.
 */
export async function readQcow2State(file: FileHandle, options: Qcow2OpenOptions): Promise<Qcow2State> {
  const path = file.path;
  const fileSize = await file.size();
  if (fileSize < V2_HEADER_LENGTH) throw corruptImage(path, `file of ${fileSize} bytes is too short for a qcow2 header`);
  const probe = await file.pread(0, Math.min(fileSize, HEADER_PROBE_BYTES));
  const clusterBits = new DataView(probe.buffer, probe.byteOffset, probe.byteLength).getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    // parseHeader words this properly (magic and version are checked first)
    parseHeader(probe, path);
  }
  const clusterSize = 2 ** clusterBits;
  const cluster0 = await file.pread(0, Math.min(fileSize, clusterSize));
  const parsed = parseHeader(cluster0, path);
  const h = parsed.header;
  const regions = validateLayout(h, fileSize, path);

  if (!options.readOnly) {
    if (h.incompatibleFeatures & INCOMPAT_CORRUPT) {
      throw corruptImage(path, 'the image is marked corrupt; open it read-only or repair it with qemu-img check -r all');
    }
    if (h.incompatibleFeatures & INCOMPAT_DIRTY) {
      throw corruptImage(
        path,
        'the image was not closed cleanly (dirty bit, lazy refcounts); repair it with qemu-img check -r all before writing',
      );
    }
    if (h.nbSnapshots > 0) {
      throw unsupportedImage(path, `writing to images with internal snapshots (${h.nbSnapshots}) is not supported`);
    }
  }

  const l1 = await file.pread(h.l1TableOffset, h.l1Size * 8);
  checkedTableEntries(l1, h.l1Size, clusterSize, fileSize, regions, path, 'L1');
  let refcountTable: Uint8Array | undefined;
  if (!options.readOnly) {
    refcountTable = await file.pread(h.refcountTableOffset, h.refcountTableClusters * clusterSize);
    checkedTableEntries(refcountTable, refcountTable.length / 8, clusterSize, fileSize, regions, path, 'refcount table');
  }

  let backing: BlockDriver | null = null;
  if (parsed.backingFile !== undefined) {
    if (!options.openBacking) throw unsupportedImage(path, `backing file '${parsed.backingFile}' cannot be opened here`);
    backing = await options.openBacking(parsed.backingFile, parsed.backingFormat);
  }
  return { parsed, regions, fileSize, l1, refcountTable, backing };
}
