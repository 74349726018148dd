/**
 * The one way the engine touches an image file. Formats never call `fs` directly: they get a
 * FileHandle, so the same driver code runs on the worker pool (production) or on plain async fs
 * (small tools), and tests can inject faults by wrapping a handle.
 */
export interface FileHandle {
  /** Absolute path, for messages. */
  readonly path: string;
  readonly readOnly: boolean;
  /** Reads up to `length` bytes at `position`; bytes past EOF read as zeros. Returns a new buffer of exactly `length`. */
  pread(position: number, length: number): Promise<Uint8Array>;
  /**
   * Reads several ranges of the file into one new buffer of `length` bytes: segment k's bytes
   * land at its `at`; everything else (and anything past EOF) reads as zeros. Optional: one
   * request instead of one per range; callers fall back to pread where it is missing.
   */
  preadv?(segments: readonly ReadSegment[], length: number): Promise<Uint8Array>;
  /**
   * Writes all of `data` at `position` (extends the file when needed). The caller must not
   * change `data` until the promise settles.
   */
  pwrite(position: number, data: Uint8Array): Promise<void>;
  /** Current file length in bytes. */
  size(): Promise<number>;
  truncate(length: number): Promise<void>;
  /** fdatasync/fsync: durability point. */
  sync(): Promise<void>;
  /**
   * Allocation map of the host file for [position, position+length): extents of data and holes
   * (SEEK_DATA/SEEK_HOLE). Where the platform cannot tell, one data extent covering the range.
   */
  allocation(position: number, length: number): Promise<HostExtent[]>;
  close(): Promise<void>;
}

/** `length` bytes of the file at `position`, for the buffer at offset `at` (see FileHandle.preadv). */
export interface ReadSegment {
  position: number;
  length: number;
  at: number;
}

export interface HostExtent {
  offset: number;
  length: number;
  data: boolean;
}

/** Opens files for the engine. */
export interface FileOpener {
  open(path: string, options: { readOnly: boolean; create?: boolean; exclusive?: boolean }): Promise<FileHandle>;
}
