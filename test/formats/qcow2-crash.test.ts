import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { TidemarkError } from '../../src-shared/errors.js';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import type { Qcow2Driver } from '../../src-main/engine/formats/qcow2/driver.js';
import type { FileHandle, FileOpener, HostExtent } from '../../src-main/engine/io/file-handle.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { makeTempDir, qemuCheck, removeDir, seededBytes } from '../helpers/qemu-tools.js';

/**
 * Simulated process crashes: the file handle lets the first N writes through and silently
 * drops everything after (as if the process had died there). Whatever N, `qemu-img check` must
 * find no corruption — leaked clusters are acceptable, dangling pointers are not.
 */

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => removeDir(dir));

class CrashAfter {
  writes = 0;
  constructor(readonly budget: number) {}
  get crashed(): boolean {
    return this.writes >= this.budget;
  }
}

class CrashingFile implements FileHandle {
  constructor(
    private readonly inner: FileHandle,
    private readonly crash: CrashAfter,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  pread(position: number, length: number): Promise<Uint8Array> {
    return this.inner.pread(position, length);
  }
  async pwrite(position: number, data: Uint8Array): Promise<void> {
    if (this.crash.crashed) throw new TidemarkError('IO_ERROR', 'simulated crash');
    this.crash.writes++;
    await this.inner.pwrite(position, data);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  async truncate(length: number): Promise<void> {
    if (this.crash.crashed) throw new TidemarkError('IO_ERROR', 'simulated crash');
    await this.inner.truncate(length);
  }
  async sync(): Promise<void> {
    if (this.crash.crashed) throw new TidemarkError('IO_ERROR', 'simulated crash');
  }
  allocation(position: number, length: number): Promise<HostExtent[]> {
    return this.inner.allocation(position, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

function crashingOpener(crash: CrashAfter): FileOpener {
  return { open: async (path, options) => new CrashingFile(await fsOpener.open(path, options), crash) };
}

/** Exercises every kind of metadata update: L2 allocation, refcount block creation, table growth, zeroing, discard, compression. */
async function scenario(path: string, opener: FileOpener): Promise<void> {
  const img = (await openImage(path, { readOnly: false, opener })) as Qcow2Driver;
  const attempt = async (p: Promise<unknown>) => p.catch((err: unknown) => {
    if (!(err instanceof TidemarkError)) throw err;
  });
  try {
    await attempt(img.write(1000, seededBytes(3000, 1)));
    await attempt(img.write(5 * 2 ** 20, seededBytes(600 * 1024, 2))); // several refcount blocks, table growth
    await attempt(img.write(1200, seededBytes(100, 3))); // in place
    await attempt(img.writeZeroes(5 * 2 ** 20 + 4096, 8192, { mayUnmap: true }));
    await attempt(img.writeZeroes(5 * 2 ** 20 + 65536, 8192));
    await attempt(img.discard(5 * 2 ** 20 + 131072, 16384));
    await attempt(img.writeCompressed(7 * 2 ** 20, new Uint8Array(512).fill(9)));
    await attempt(img.writeCompressed(7 * 2 ** 20 + 512, new Uint8Array(512).fill(10)));
    await attempt(img.write(7 * 2 ** 20 + 100, seededBytes(10, 4))); // rewrite over compressed
    // past 8 MiB of host data the first refcount table (64 blocks of 256 clusters) is full and moves
    await attempt(img.write(8 * 2 ** 20, seededBytes(9 * 2 ** 20, 5)));
    await attempt(img.write(20 * 2 ** 20, seededBytes(4096, 6)));
  } finally {
    await img.close().catch(() => undefined);
  }
}

test('a crash after any write leaves the image consistent (leaks at most)', async () => {
  const pristine = join(dir, 'pristine.qcow2');
  await createImage(pristine, { format: 'qcow2', virtualSize: 24 * 2 ** 20, clusterSize: 512, opener: fsOpener });
  // count the writes of an uninterrupted run
  const full = new CrashAfter(Number.MAX_SAFE_INTEGER);
  const reference = join(dir, 'reference.qcow2');
  await copyFile(pristine, reference);
  await scenario(reference, crashingOpener(full));
  const check = await qemuCheck(reference);
  expect(check.code, check.stdout).toBe(0);
  const total = full.writes;
  expect(total).toBeGreaterThan(20);
  const grown = (await openImage(reference, { readOnly: true, opener: fsOpener })) as Qcow2Driver;
  expect(grown.headerFields.refcountTableClusters).toBeGreaterThan(1);
  await grown.close();

  // every crash point among the first 120 writes and the last 20, about 60 spread in between
  const stride = Math.max(1, Math.ceil((total - 140) / 60));
  const points: number[] = [];
  for (let n = 0; n < total; n++) if (n < 120 || n >= total - 20 || n % stride === 0) points.push(n);
  const bad: string[] = [];
  for (const n of points) {
    const p = join(dir, `crash-${n}.qcow2`);
    await copyFile(pristine, p);
    await scenario(p, crashingOpener(new CrashAfter(n)));
    const r = await qemuCheck(p);
    if (r.code !== 0 && r.code !== 3) bad.push(`after ${n} writes: exit ${r.code}\n${r.stdout}`);
  }
  expect(bad).toEqual([]);
}, 120_000);
