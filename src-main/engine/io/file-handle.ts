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
   * Like pread, for bytes the caller passes on and does not keep (guest data for a client): the
   * buffer may share its ArrayBuffer with other such reads, so keeping it keeps that memory too.
   * Optional; callers fall back to pread. Metadata that is cached must use pread.
   */
  preadPassing?(position: number, length: number): Promise<Uint8Array>;
  /**
   * Reads several ranges of the file into one new buffer of `length` bytes: segment k's bytes
   * land at its `at`; everything else (and anything past EOF) reads as zeros. Optional: one
   * request instead of one per range; callers fall back to pread where it is missing.
   */
  preadv?(segments: readonly ReadSegment[], length: number): Promise<Uint8Array>;
  /**
   * Like preadv, but into a buffer lent from memory the I/O workers share: no allocation, and a
   * write from the lent bytes (to any file of the same I/O pool) copies nothing either. A
   * segment at position -1 is zero-filled; bytes no segment covers are unspecified. Resolves to
   * undefined when nothing can be lent right now (the caller reads normally). Optional.
   */
  preadLent?(segments: readonly ReadSegment[], length: number): Promise<Lent | undefined>;
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
  /**
   * The content digest (content-digest.ts) of a file range of at most 4 MiB (bytes past EOF as
   * zeros), computed where the reads happen (an I/O worker) so the bytes never travel. With
   * `data` (sorted ranges inside it), only those are read and the rest counts as zeros — for
   * holes the file system reported. Optional: callers read and digest themselves without it.
   */
  contentDigest?(position: number, length: number, data?: readonly { offset: number; length: number }[]): Promise<string>;
  close(): Promise<void>;
}

/**
 * Bytes lent by the I/O layer: they stay valid, and untouched by it, until `release()`. The
 * holder may write from them (the write must have settled before the release) but not change them.
 */
export interface Lent {
  readonly bytes: Uint8Array;
  release(): void;
}

/** `file.preadPassing` where the file has it, else `file.pread`. */
export function preadPassing(file: FileHandle, position: number, length: number): Promise<Uint8Array> {
  return file.preadPassing ? file.preadPassing(position, length) : file.pread(position, length);
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
