import { access, constants, stat, unlink } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { BlockEngine } from '../../engine/engine.js';
import type { Drive } from '../../engine/drive.js';
import { createImage } from '../../engine/formats/open.js';
import type { Catalog, DriveRow } from '../catalog/catalog.js';
import type { EventBus } from '../router/router.js';
import type { DriveInfo } from '../../../src-shared/api/domain.js';
import type { RequestParams } from '../../../src-shared/api/contract.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { checkDriveSize, idFromPath, uniqueId, MAX_DRIVE_SIZE } from './drive-rules.js';
import { fileErrorToTidemark } from '../../engine/io/file-errors.js';

/**
 * Drives as the user sees them: the catalog's list (what survives a restart) joined with what
 * the engine has open. Drives given on the command line (`serve --drive`) are session-only,
 * like QEMU's -drive: attached, listed, never written to the catalog.
 */
export class DrivesService {
  /** catalog drives the engine could not open, with the reason */
  private readonly offline = new Map<string, { row: DriveRow; problem: string }>();
  private readonly sessionOnly = new Set<string>();

  constructor(
    private readonly engine: BlockEngine,
    private readonly catalog: Catalog,
    private readonly bus: EventBus,
  ) {
    engine.on('attached', () => this.changed());
    engine.on('detached', () => this.changed());
  }

  /** Opens every catalog drive; one that fails stays listed as offline with the reason. */
  async openAll(): Promise<void> {
    for (const row of this.catalog.listDrives()) {
      try {
        await this.engine.attach({ id: row.id, path: row.path, format: row.format });
        this.offline.delete(row.id);
      } catch (err) {
        this.offline.set(row.id, { row, problem: err instanceof Error ? err.message : String(err) });
      }
    }
  }

  /** A drive for this session only (command line). */
  async attachSessionDrive(id: string, path: string, format: 'raw' | 'qcow2' | 'auto', discard: 'ignore' | 'unmap' = 'ignore'): Promise<Drive> {
    if (this.catalog.listDrives().some((r) => r.id === id)) {
      throw new TidemarkError('ALREADY_EXISTS', `Drive id '${id}' is already used by a drive in the catalog.`);
    }
    const drive = await this.engine.attach({ id, path: resolve(path), format, discard });
    this.sessionOnly.add(id);
    return drive;
  }

  async list(): Promise<DriveInfo[]> {
    const out: DriveInfo[] = [];
    for (const d of this.engine.list()) out.push(await describe(d));
    for (const { row, problem } of this.offline.values()) {
      out.push({ id: row.id, path: row.path, format: row.format, virtualSize: 0, actualSize: 0, backingChain: [], readOnly: false, state: 'offline', problem });
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  async create(params: RequestParams<'drives.create'>): Promise<DriveInfo> {
    const path = absolute(params.path);
    const size = params.size === undefined ? undefined : checkDriveSize(params.size);
    if (size === undefined && !(params.format === 'qcow2' && params.backingFile)) {
      throw new TidemarkError('INVALID_SIZE', 'Give the new disk a size, like 10G.');
    }
    if (params.format === 'raw' && params.backingFile) {
      throw new TidemarkError('INVALID_INPUT', 'Only qcow2 images can have a backing file; choose qcow2 or leave the backing file empty.');
    }
    const id = this.pickId(params.id, path);
    await assertMissing(path);
    await assertWritableFolder(dirname(path));
    await createImage(path, {
      format: params.format,
      virtualSize: size,
      clusterSize: params.clusterSize,
      backingFile: params.backingFile,
      opener: this.engine.opener,
    });
    try {
      return await this.attachAndRecord(id, path, params.format);
    } catch (err) {
      // we made the file a moment ago and nothing references it: take it back
      await unlink(path).catch(() => {});
      throw err;
    }
  }

  async add(params: RequestParams<'drives.add'>): Promise<DriveInfo> {
    const path = absolute(params.path);
    const st = await stat(path).catch((err: unknown) => {
      throw fileErrorToTidemark(err, path, 'open');
    });
    if (!st.isFile()) throw new TidemarkError('NOT_A_FILE', `'${path}' is not a regular file; choose a disk image file.`);
    if (st.size === 0) throw new TidemarkError('INVALID_SIZE', `'${path}' is empty (0 bytes), so it is not a disk image.`);
    if (st.size > MAX_DRIVE_SIZE) throw new TidemarkError('INVALID_SIZE', `'${path}' is larger than the 64 TiB Tidemark supports.`);
    await access(path, constants.R_OK | constants.W_OK).catch((err: unknown) => {
      throw new TidemarkError('PERMISSION_DENIED', `'${path}' cannot be read and written by Tidemark (${(err as NodeJS.ErrnoException).code ?? 'no access'}).`);
    });
    const id = this.pickId(params.id, path);
    return this.attachAndRecord(id, path, 'auto');
  }

  async remove(id: string): Promise<void> {
    if (this.offline.delete(id)) {
      this.catalog.deleteDrive(id);
      this.changed();
      return;
    }
    if (!this.engine.get(id)) throw new TidemarkError('NOT_FOUND', `No drive with id '${id}'.`);
    await this.engine.detach(id);
    if (!this.sessionOnly.delete(id)) this.catalog.deleteDrive(id);
    this.changed();
  }

  private async attachAndRecord(id: string, path: string, format: 'raw' | 'qcow2' | 'auto'): Promise<DriveInfo> {
    const drive = await this.engine.attach({ id, path, format });
    try {
      this.catalog.transaction(() => this.catalog.insertDrive({ id, path, format: drive.driver.format, addedAt: new Date().toISOString() }));
    } catch (err) {
      await this.engine.detach(id);
      throw err;
    }
    return describe(drive);
  }

  private pickId(requested: string | undefined, path: string): string {
    const taken = new Set([...this.engine.list().map((d) => d.id), ...this.offline.keys(), ...this.catalog.listDrives().map((r) => r.id)]);
    if (requested !== undefined) {
      if (taken.has(requested)) throw new TidemarkError('ALREADY_EXISTS', `A drive with id '${requested}' already exists; choose another id.`);
      return requested;
    }
    return uniqueId(idFromPath(path), taken);
  }

  private changed(): void {
    void this.list().then(
      (drives) => this.bus.emit('drives.changed', { drives }),
      () => {},
    );
  }
}

function absolute(path: string): string {
  return isAbsolute(path) ? path : resolve(path);
}

async function assertMissing(path: string): Promise<void> {
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists) throw new TidemarkError('ALREADY_EXISTS', `'${path}' already exists. Tidemark never overwrites a file: choose another name, or add the existing image instead.`);
}

async function assertWritableFolder(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st) throw new TidemarkError('FILE_NOT_FOUND', `The folder '${dir}' does not exist.`);
  if (!st.isDirectory()) throw new TidemarkError('NOT_A_FILE', `'${dir}' is not a folder.`);
  await access(dir, constants.W_OK).catch(() => {
    throw new TidemarkError('PERMISSION_DENIED', `Tidemark cannot write to the folder '${dir}'.`);
  });
}

export async function describe(d: Drive): Promise<DriveInfo> {
  const info = await d.driver.info();
  return {
    id: d.id,
    path: info.path,
    format: info.format,
    virtualSize: info.virtualSize,
    actualSize: info.actualSize,
    clusterSize: info.clusterSize,
    backingFile: info.backingFile,
    backingChain: info.backingChain,
    readOnly: info.readOnly,
    state: 'online',
  };
}
