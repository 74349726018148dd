import type { FileHandle, Lent } from '../io/file-handle.js';

export type ImageFormat = 'raw' | 'qcow2';

/** One run of the guest-visible disk with the same status (QEMU's block-status). */
export interface BlockExtent {
  offset: number;
  length: number;
  /** reads as zeros */
  zero: boolean;
  /** backed by data in this image or its chain (false: a hole or a zero cluster) */
  data: boolean;
  /** answered by this node itself rather than a backing file */
  allocatedHere: boolean;
  /** depth in the backing chain that answered (0 = this image); undefined when nothing in the chain has it */
  depth?: number;
}

export interface ImageInfo {
  format: ImageFormat;
  path: string;
  virtualSize: number;
  /** bytes the file occupies on the host (st_blocks * 512) */
  actualSize: number;
  clusterSize?: number;
  /** as written in the header (may be relative) */
  backingFile?: string;
  /** absolute path after resolving against the image's folder */
  backingFilename?: string;
  backingFormat?: ImageFormat;
  /** the whole chain below this image, nearest first */
  backingChain: { path: string; format: ImageFormat; virtualSize: number }[];
  dirtyFlag?: boolean;
  readOnly: boolean;
}

/**
 * A format driver over one image (and, for qcow2, its backing chain). All offsets are guest
 * offsets in bytes; any alignment is accepted (the driver does read-modify-write where needed).
 * Every method rejects with an ImageError (see errors.ts) naming the image and the problem.
 */
export interface BlockDriver {
  readonly format: ImageFormat;
  readonly path: string;
  readonly readOnly: boolean;
  /** guest-visible size in bytes */
  readonly virtualSize: number;
  /** cluster size for qcow2; undefined for raw */
  readonly clusterSize: number | undefined;
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Reads guest ranges (sorted, not overlapping) into a buffer lent by the I/O layer, in one
   * request where possible: `bytes[k]` is guest byte `ranges[0].offset + k`, filled for the
   * ranges only, the rest unspecified. Writing from the lent bytes copies nothing; release it
   * once those writes have settled. Resolves to undefined when nothing can be lent (read
   * normally then). Optional.
   */
  readLent?(ranges: readonly { offset: number; length: number }[]): Promise<Lent | undefined>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** the range reads as zeros afterwards; `mayUnmap` lets the driver free clusters (qemu-io `write -z -u`) */
  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void>;
  /** hint: the range's contents become unspecified (qcow2: clusters fully covered are deallocated) */
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  blockStatus(offset: number, length: number): Promise<BlockExtent[]>;
  info(): Promise<ImageInfo>;
  /** flushes and closes this image and its backing chain; idempotent */
  close(): Promise<void>;
  /** the underlying file (for locking, bitmaps extension access later) */
  readonly file: FileHandle;
}
