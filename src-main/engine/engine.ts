import { EventEmitter } from 'node:events';
import { realpath, stat } from 'node:fs/promises';
import { fileErrorToTidemark } from './io/file-errors.js';
import { Drive } from './drive.js';
import { IoPool } from './io/pool.js';
import { FaultInjector } from './io/fault-injection.js';
import { WriteMarker } from './bitmap/write-marker.js';
import type { FileOpener } from './io/file-handle.js';
import { openImage } from './formats/open.js';
import { assertNotLockedByOthers } from './locking.js';
import { BitmapCommands } from './bitmap/bitmap-ops.js';
import { JobManager } from './jobs/manager.js';
import { Qcow2Driver } from './formats/qcow2/driver.js';
import { Qcow2BitmapStore } from './bitmap/qcow2-store.js';
import type { ImageFormat } from './formats/types.js';
import { TidemarkError } from '../../src-shared/errors.js';

export interface AttachOptions {
  id: string;
  path: string;
  format?: ImageFormat | 'auto';
  readOnly?: boolean;
  /** QEMU's discard=: 'ignore' (default, as in QEMU) or 'unmap' */
  discard?: 'ignore' | 'unmap';
}

/** Runs when a drive opens (before anyone can write to it) or closes (before its image is closed). */
export type DriveHook = (drive: Drive) => Promise<void>;

interface EngineEvents {
  attached: [Drive];
  detached: [Drive];
  write: [Drive, number, number];
}

/**
 * The block engine: drives over format drivers over the I/O pool. Knows nothing of the app,
 * the catalog or any UI; runs the same in a plain Node process as inside Electron.
 */
export class BlockEngine extends EventEmitter<EngineEvents> {
  readonly pool: IoPool;
  /** every file the engine opens goes through here; tests add fault rules (QEMU's blkdebug, in spirit) */
  readonly faults: FaultInjector;
  readonly bitmapCommands = new BitmapCommands((idOrNode) => this.lookup(idOrNode));
  readonly jobs = new JobManager();
  private readonly drives = new Map<string, Drive>();
  private nodeCounter = 0;
  private readonly attachHooks: DriveHook[] = [];
  private readonly detachHooks: DriveHook[] = [];
  private closing: Promise<void> | undefined;
  /** hands guest-write marking to the I/O workers; made with the first drive */
  marker: WriteMarker | undefined;

  constructor(options: { ioWorkers?: number } = {}) {
    super();
    this.pool = new IoPool(options.ioWorkers);
    this.faults = new FaultInjector(this.pool);
  }

  /** How engine code opens image files. */
  get opener(): FileOpener {
    return this.faults;
  }

  onAttach(hook: DriveHook): void {
    this.attachHooks.push(hook);
  }

  onDetach(hook: DriveHook): void {
    this.detachHooks.push(hook);
  }

  list(): Drive[] {
    return [...this.drives.values()];
  }

  get(id: string): Drive | undefined {
    return this.drives.get(id);
  }

  /** Finds a drive by its id or its root node name (QMP accepts either). */
  lookup(idOrNode: string): Drive | undefined {
    return this.drives.get(idOrNode) ?? this.list().find((d) => d.nodeName === idOrNode);
  }

  async attach(options: AttachOptions): Promise<Drive> {
    if (this.closing) throw new TidemarkError('BUSY', 'The engine is shutting down.');
    if (this.drives.has(options.id)) throw new TidemarkError('ALREADY_EXISTS', `A drive with id '${options.id}' already exists.`);
    const real = await realpath(options.path).catch(() => options.path);
    for (const d of this.drives.values()) {
      if ((await realpath(d.driver.path).catch(() => d.driver.path)) === real) {
        throw new TidemarkError('ALREADY_EXISTS', `'${options.path}' is already attached as drive '${d.id}'.`);
      }
    }
    const readOnly = options.readOnly ?? false;
    await stat(options.path).catch((err: unknown) => {
      throw fileErrorToTidemark(err, options.path, 'open');
    });
    if (!readOnly) await assertNotLockedByOthers(options.path);
    const driver = await openImage(options.path, { readOnly, format: options.format ?? 'auto', opener: this.opener });
    // the id may have been taken while we opened the file
    if (this.drives.has(options.id)) {
      await driver.close();
      throw new TidemarkError('ALREADY_EXISTS', `A drive with id '${options.id}' already exists.`);
    }
    const drive = new Drive(options.id, this.nextNodeName(), driver, options.discard ?? 'ignore');
    // guest writes are marked right after the next request starts (bitmap/write-marker.ts)
    this.marker ??= new WriteMarker(this.pool);
    drive.bitmaps.useMarker(this.marker);
    try {
      if (driver instanceof Qcow2Driver) {
        // persistent bitmaps: loaded (and marked in use on disk) before anyone can write
        const store = new Qcow2BitmapStore(driver, drive.id);
        for (const b of await store.load(driver.virtualSize)) drive.bitmaps.insert(b);
        drive.bitmapStore = store;
      }
      for (const hook of this.attachHooks) await hook(drive);
    } catch (err) {
      await driver.close();
      throw err;
    }
    drive.onWrite((d, offset, length) => this.emit('write', d, offset, length));
    this.drives.set(drive.id, drive);
    this.emit('attached', drive);
    return drive;
  }

  /** Closes the drive's image cleanly (flushing metadata). Never deletes the file. */
  async detach(id: string): Promise<void> {
    const drive = this.drives.get(id);
    if (!drive) throw new TidemarkError('NOT_FOUND', `No drive with id '${id}'.`);
    const job = this.jobs.jobUsing(drive);
    if (job) throw new TidemarkError('BUSY', `Drive '${id}' is in use by ${job.type} job '${job.id}'; wait for it to finish or cancel it first.`);
    this.drives.delete(id);
    try {
      for (const hook of this.detachHooks) await hook(drive);
      // a clean close: persistent bitmaps written, in-use cleared
      await drive.bitmapStore?.store(drive.bitmaps.all());
    } finally {
      await drive.driver.close().finally(() => this.emit('detached', drive));
    }
  }

  /** Clean shutdown: every image flushed and closed, then the I/O pool stopped. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const errors: unknown[] = [];
      await this.jobs.cancelAll();
      for (const id of [...this.drives.keys()]) await this.detach(id).catch((e: unknown) => errors.push(e));
      this.marker?.close();
      await this.pool.close();
      if (errors.length) throw errors[0];
    })();
    return this.closing;
  }

  private nextNodeName(): string {
    // QEMU names the nodes of -drive images "#blockNNN"; we follow its shape
    return `#block${(++this.nodeCounter * 100 + 31).toString()}`;
  }
}
