import { open, rename, statfs, mkdir, access, constants, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { TidemarkError } from '../../../src-shared/errors.js';

/** Write-then-rename with fsync of the file and its folder: readers see the old file or the new one, whole. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${Date.now()}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDir(dirname(path));
}

export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Bytes available to us on the filesystem holding `path`. */
export async function freeSpace(path: string): Promise<number> {
  const s = await statfs(path);
  return Number(s.bavail) * Number(s.bsize);
}

/** Creates the folder if needed and proves we can write there; a clear error otherwise. */
export async function ensureWritableFolder(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new TidemarkError(code === 'EROFS' || code === 'EACCES' || code === 'EPERM' ? 'PERMISSION_DENIED' : 'IO_ERROR', `Cannot create the backup folder '${dir}': ${(err as Error).message}`);
  }
  const st = await stat(dir);
  if (!st.isDirectory()) throw new TidemarkError('NOT_A_FILE', `'${dir}' is not a folder.`);
  await access(dir, constants.W_OK).catch(() => {
    throw new TidemarkError('PERMISSION_DENIED', `Tidemark cannot write to the backup folder '${dir}'.`);
  });
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
