import type { Drive } from '../../drive.js';
import type { DirtyBitmap } from '../../bitmap/dirty-bitmap.js';
import type { BlockDriver, BlockExtent } from '../../formats/types.js';
import type { Lent } from '../../io/file-handle.js';
import { Qcow2Driver } from '../../formats/qcow2/driver.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_BUFFER_SIZE,
} from './constants.js';
import type { MetaSource } from './meta.js';

/**
 * What an export reads from and writes to. For a drive, every write goes through the Drive
 * (so dirty bitmaps are marked and running backups copy before write); a point-in-time export
 * reads a backup's fleecing image instead.
 */
export interface ExportBackend {
  readonly size: number;
  /** the I/O size that avoids read-modify-write: the cluster size, at least 4 KiB */
  readonly preferredBlockSize: number;
  /** the drive whose detach must end the export (none for backends that watch their own source) */
  readonly drive?: Drive;
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Like read, into memory lent by the I/O layer where it can; release once the bytes are sent. */
  readLent(offset: number, length: number): Promise<Lent>;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  blockStatus(offset: number, length: number): Promise<BlockExtent[]>;
  /** Whether zeroing the range can be done without writing zero-filled buffers (NBD_CMD_FLAG_FAST_ZERO). */
  canZeroFast(offset: number, length: number): Promise<boolean>;
}

function preferredOf(driver: BlockDriver): number {
  return Math.max(4096, driver.clusterSize ?? 4096);
}

/** Whether `driver` zeroes [offset, offset+length) by metadata or truncation alone (see the drivers' writeZeroes). */
export async function driverZeroesFast(driver: BlockDriver, offset: number, length: number, status: (o: number, l: number) => Promise<BlockExtent[]>): Promise<boolean> {
  const end = offset + length;
  if (length === 0) return true;
  if (driver instanceof Qcow2Driver) {
    // v2 has no zero flag: clusters showing a backing file through need literal zeros
    if (driver.headerFields.version < 3) return false;
    const cs = driver.clusterSize;
    // partial clusters at the edges are written with literal zeros unless they read as zeros
    // already; a tail reaching the end of the disk counts as a whole cluster
    const edges: [number, number][] = [];
    const headEnd = Math.min(end, Math.ceil(offset / cs) * cs);
    if (headEnd > offset) edges.push([offset, headEnd - offset]);
    const tailStart = Math.max(headEnd, Math.floor(end / cs) * cs);
    if (end < driver.virtualSize && tailStart < end) edges.push([tailStart, end - tailStart]);
    for (const [o, l] of edges) {
      for (const e of await status(o, l)) if (!e.zero) return false;
    }
    return true;
  }
  // raw: only a range reaching the end is dropped (truncated) instead of written
  return end === driver.virtualSize;
}

/** A drive, as QEMU's NBD server exports a BlockBackend. */
export class DriveBackend implements ExportBackend {
  constructor(readonly drive: Drive) {}

  get size(): number {
    return this.drive.virtualSize;
  }

  get preferredBlockSize(): number {
    return preferredOf(this.drive.driver);
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.drive.read(offset, length);
  }

  readLent(offset: number, length: number): Promise<Lent> {
    return this.drive.readLent(offset, length);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.drive.write(offset, data);
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.drive.writeZeroes(offset, length, { mayUnmap });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.drive.discard(offset, length);
  }

  flush(): Promise<void> {
    return this.drive.flush();
  }

  blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    return this.drive.blockStatus(offset, length);
  }

  canZeroFast(offset: number, length: number): Promise<boolean> {
    return driverZeroesFast(this.drive.driver, offset, length, (o, l) => this.drive.blockStatus(o, l));
  }
}

export interface ExportConfig {
  /** the name clients ask for */
  name: string;
  /** the block-export id (QMP); the name when not given */
  id?: string;
  description?: string;
  backend: ExportBackend;
  readOnly: boolean;
  /** exported dirty bitmaps, in context-id order; each is marked busy while exported */
  bitmaps: DirtyBitmap[];
  allocationDepth: boolean;
  /** flush after every write (QEMU's writethrough cache mode) */
  writethrough: boolean;
}

/** Something an export must wait for when it goes away (a client connection). */
export interface ExportUser {
  /** stop taking requests, let those in flight finish, then disconnect */
  shutdown(): Promise<void>;
}

/**
 * One export: a name, a backend, the exported bitmaps (busy while exported, as in QEMU) and the
 * clients connected to it. Removing it disconnects the clients after their requests in flight
 * have been answered, then frees the bitmaps and runs the `onRemoved` callbacks.
 */
export class NbdExport implements MetaSource {
  readonly name: string;
  readonly id: string;
  readonly description: string | undefined;
  readonly backend: ExportBackend;
  readonly readOnly: boolean;
  readonly exportedBitmaps: DirtyBitmap[];
  readonly allocationDepth: boolean;
  readonly writethrough: boolean;
  readonly users = new Set<ExportUser>();
  private removing: Promise<void> | undefined;
  private readonly removedHooks: (() => void | Promise<void>)[] = [];

  constructor(config: ExportConfig) {
    this.name = config.name;
    this.id = config.id ?? config.name;
    this.description = config.description;
    this.backend = config.backend;
    this.readOnly = config.readOnly;
    this.exportedBitmaps = config.bitmaps;
    this.allocationDepth = config.allocationDepth;
    this.writethrough = config.writethrough;
    for (const b of this.exportedBitmaps) b.busy = true;
  }

  get bitmaps(): { name: string }[] {
    return this.exportedBitmaps.map((b) => ({ name: b.name ?? '' }));
  }

  get size(): number {
    return this.backend.size;
  }

  get live(): boolean {
    return this.removing === undefined;
  }

  /** QEMU's flags: flush and FUA always, cache, multi-conn (one shared engine below every connection), writes unless read-only. */
  transmissionFlags(structured: boolean): number {
    let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE | NBD_FLAG_CAN_MULTI_CONN;
    if (this.readOnly) f |= NBD_FLAG_READ_ONLY;
    else f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (structured) f |= NBD_FLAG_SEND_DF;
    return f;
  }

  /** minimum 1 (any alignment works), preferred the cluster size, maximum 32 MiB */
  blockSizes(): [number, number, number] {
    return [1, this.backend.preferredBlockSize, NBD_MAX_BUFFER_SIZE];
  }

  onRemoved(hook: () => void | Promise<void>): void {
    this.removedHooks.push(hook);
  }

  /** Disconnects every client (after their requests in flight), frees the bitmaps. Idempotent. */
  remove(): Promise<void> {
    this.removing ??= (async () => {
      await Promise.all([...this.users].map((u) => u.shutdown()));
      for (const b of this.exportedBitmaps) b.busy = false;
      for (const hook of this.removedHooks) await hook();
    })();
    return this.removing;
  }
}
