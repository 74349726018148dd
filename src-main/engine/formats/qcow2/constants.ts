/** On-disk constants of qcow2 (docs/interop/qcow2.rst). All integers are big-endian. */

export const QCOW2_MAGIC = 0x514649fb;

export const V2_HEADER_LENGTH = 72;
/** the v3 header QEMU writes: 104 mandatory bytes + compression_type + padding */
export const V3_HEADER_LENGTH = 112;
export const V3_MIN_HEADER_LENGTH = 104;

export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTENDED_L2 = 1n << 4n;
/** incompatible bits this implementation understands (data file and extended L2 are refused by name) */
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION;

export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
/** autoclear bits we keep on a read-write open; every other one is cleared, as the spec demands */
export const AUTOCLEAR_KEPT = AUTOCLEAR_BITMAPS;

export const COMPRESSION_DEFLATE = 0;
export const COMPRESSION_ZSTD = 1;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_SIZE = 65536;
export const DEFAULT_REFCOUNT_ORDER = 4;
export const MAX_REFCOUNT_ORDER = 6;

/** QEMU's limits (QCOW_MAX_L1_SIZE, QCOW_MAX_REFTABLE_SIZE) */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_BACKING_NAME = 1023;
export const MAX_SNAPSHOTS = 65536;

/**
 * Largest virtual size we accept: offsets must stay exact in a JS number. 2^52 (4 PiB) keeps
 * `offset + length` exact too.
 */
export const MAX_VIRTUAL_SIZE = 2 ** 52;

/** L1/L2 entry bit layout, split in 32-bit halves so the hot path needs no BigInt. */
export const HI_COPIED = 0x80000000;
export const HI_COMPRESSED = 0x40000000;
/** bits 56..61 of a standard entry (reserved) */
export const HI_RESERVED_STANDARD = 0x3f000000;
/** bits 32..55: high part of the host offset */
export const HI_OFFSET_MASK = 0x00ffffff;
/** bits 9..31: low part of the host offset */
export const LO_OFFSET_MASK = 0xfffffe00;
export const LO_ZERO = 0x1;
/** bits 1..8 of a standard L2 entry (reserved) */
export const LO_RESERVED_STANDARD = 0x1fe;
/** L1 entries: bits 0..8 and 56..62 are reserved */
export const L1_HI_RESERVED = 0x7f000000;
export const L1_LO_RESERVED = 0x1ff;

export const FEATURE_TYPE_INCOMPAT = 0;
export const FEATURE_TYPE_COMPAT = 1;
export const FEATURE_TYPE_AUTOCLEAR = 2;

/** The feature name table QEMU writes (same order and names). */
export const FEATURE_TABLE: readonly { type: number; bit: number; name: string }[] = [
  { type: FEATURE_TYPE_INCOMPAT, bit: 0, name: 'dirty bit' },
  { type: FEATURE_TYPE_INCOMPAT, bit: 1, name: 'corrupt bit' },
  { type: FEATURE_TYPE_INCOMPAT, bit: 2, name: 'external data file' },
  { type: FEATURE_TYPE_INCOMPAT, bit: 3, name: 'compression type' },
  { type: FEATURE_TYPE_INCOMPAT, bit: 4, name: 'extended L2 entries' },
  { type: FEATURE_TYPE_COMPAT, bit: 0, name: 'lazy refcounts' },
  { type: FEATURE_TYPE_AUTOCLEAR, bit: 0, name: 'bitmaps' },
  { type: FEATURE_TYPE_AUTOCLEAR, bit: 1, name: 'raw external data' },
];
