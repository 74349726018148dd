import { TidemarkError } from '../../../../src-shared/errors.js';
import type { FileOpener } from '../../io/file-handle.js';
import {
  COMPRESSION_DEFLATE,
  COMPRESSION_ZSTD,
  DEFAULT_CLUSTER_SIZE,
  DEFAULT_REFCOUNT_ORDER,
  INCOMPAT_COMPRESSION,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_VIRTUAL_SIZE,
  MIN_CLUSTER_BITS,
} from './constants.js';
import { l1EntriesFor, serializeHeader, type Qcow2Header } from './header.js';
import { MetadataMap } from './metadata-map.js';
import { Refcounts } from './refcounts.js';

export interface Qcow2CreateOptions {
  virtualSize: number;
  /** power of two, 512 B .. 2 MiB; default 64 KiB */
  clusterSize?: number;
  /** stored as given (relative names resolve against the image's folder when opened) */
  backingFile?: string;
  backingFormat?: 'raw' | 'qcow2';
  /** 'zlib' (default) or 'zstd' for compressed clusters */
  compressionType?: 'zlib' | 'zstd';
  /** 3 (default) or 2 (QEMU's compat=0.10) */
  version?: 2 | 3;
}

function invalid(path: string, problem: string): TidemarkError {
  return new TidemarkError('INVALID_INPUT', `Cannot create '${path}': ${problem}`);
}

/**
 * Creates an empty qcow2 image laid out exactly like `qemu-img create -f qcow2`: header in
 * cluster 0, refcount table in cluster 1, refcount block in cluster 2, then the L1 table taken
 * from the allocator (so very large L1 tables get their refcount blocks where QEMU puts them).
 * An existing file is truncated, as qemu-img does.
 */
export async function createQcow2(path: string, options: Qcow2CreateOptions, opener: FileOpener): Promise<void> {
  const cs = options.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(path, `cluster size ${cs} must be a power of two between 512 and 2097152`);
  }
  if (!Number.isSafeInteger(options.virtualSize) || options.virtualSize < 0) {
    throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': invalid virtual size ${options.virtualSize}`);
  }
  // QEMU rounds the size up to whole 512-byte sectors
  const size = Math.ceil(options.virtualSize / 512) * 512;
  if (size > MAX_VIRTUAL_SIZE) throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': virtual size ${size} is too large`);
  const l1Size = l1EntriesFor(size, clusterBits);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': virtual size ${size} needs an L1 table over 32 MiB`);
  }
  if (options.backingFile !== undefined) {
    if (options.backingFile === '') throw invalid(path, 'the backing file name is empty');
    if (new TextEncoder().encode(options.backingFile).length > MAX_BACKING_NAME) {
      throw invalid(path, `the backing file name is longer than ${MAX_BACKING_NAME} bytes`);
    }
  }
  const version = options.version ?? 3;
  const zstd = options.compressionType === 'zstd';
  if (zstd && version !== 3) throw invalid(path, 'zstd compression needs a version 3 image');

  const header: Qcow2Header = {
    version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    size,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: zstd ? INCOMPAT_COMPRESSION : 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: DEFAULT_REFCOUNT_ORDER,
    headerLength: 0,
    compressionType: zstd ? COMPRESSION_ZSTD : COMPRESSION_DEFLATE,
  };
  const serialize = () => {
    try {
      return serializeHeader({ header, preserved: [], backingFile: options.backingFile, backingFormat: options.backingFormat });
    } catch (err) {
      throw invalid(path, err instanceof Error ? err.message : String(err));
    }
  };
  serialize(); // fail on an oversized header before touching the file

  const file = await opener.open(path, { readOnly: false, create: true });
  try {
    await file.truncate(0);
    // clusters 0..2: header, refcount table (entry 0 → cluster 2), refcount block (clusters 0..2 used)
    const table = new Uint8Array(cs);
    new DataView(table.buffer).setBigUint64(0, BigInt(2 * cs));
    const block = new Uint8Array(cs);
    for (let c = 0; c < 3; c++) new DataView(block.buffer).setUint16(c * 2, 1);
    await file.pwrite(0, serialize().bytes);
    await file.pwrite(cs, table);
    await file.pwrite(2 * cs, block);

    if (l1Size > 0) {
      const metadata = new MetadataMap(cs);
      const refcounts = new Refcounts({
        file,
        path,
        clusterBits,
        refcountOrder: DEFAULT_REFCOUNT_ORDER,
        tableOffset: cs,
        tableClusters: 1,
        table,
        hostEndClusters: 3,
        metadata,
        cacheBytes: 4 * 1024 * 1024,
        commitTable: async (offset, clusters) => {
          header.refcountTableOffset = offset;
          header.refcountTableClusters = clusters;
          await file.pwrite(0, serialize().bytes);
        },
      });
      const l1Clusters = Math.ceil((l1Size * 8) / cs);
      const l1Offset = (await refcounts.allocate(l1Clusters)) * cs;
      // the refcounts change in memory only: write them (blocks before the table entries naming new ones)
      await refcounts.writeBlocks();
      await refcounts.writeTable();
      // like QEMU, only the entries themselves are written
      await file.pwrite(l1Offset, new Uint8Array(l1Size * 8));
      header.l1Size = l1Size;
      header.l1TableOffset = l1Offset;
    }
    await file.pwrite(0, serialize().bytes);
    await file.sync();
  } finally {
    await file.close();
  }
}
