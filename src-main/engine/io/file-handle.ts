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
  /** Writes all of `data` at `position` (extends the file when needed). */
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

export interface HostExtent {
  offset: number;
  length: number;
  data: boolean;
}

/** Opens files for the engine. */
export interface FileOpener {
  open(path: string, options: { readOnly: boolean; create?: boolean; exclusive?: boolean }): Promise<FileHandle>;
}
