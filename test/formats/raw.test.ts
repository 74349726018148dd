import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { createImage, openImage, probeFormat } from '../../src-main/engine/formats/open.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { makeTempDir, qemuImg, qemuInfo, removeDir, seededBytes } from '../helpers/qemu-tools.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => removeDir(dir));

test('createRaw makes a sparse file of the exact size', async () => {
  const p = join(dir, 'sparse.raw');
  await createImage(p, { format: 'raw', virtualSize: 10 * 2 ** 30 + 3, opener: fsOpener });
  const st = await stat(p);
  expect(st.size).toBe(10 * 2 ** 30 + 3);
  expect(st.blocks).toBe(0);
  // qemu-img reports raw sizes rounded up to whole sectors
  expect((await qemuInfo(p))['virtual-size']).toBe(10 * 2 ** 30 + 512);
});

test('reads, writes, zero writes (in the middle and at EOF), bounds', async () => {
  const p = join(dir, 'rw.raw');
  await createImage(p, { format: 'raw', virtualSize: 3 * 2 ** 20, opener: fsOpener });
  const img = await openImage(p, { readOnly: false, format: 'raw', opener: fsOpener });
  expect(img.format).toBe('raw');
  expect(img.clusterSize).toBeUndefined();
  const data = seededBytes(3 * 2 ** 20, 1);
  await img.write(0, data);
  await img.writeZeroes(1000, 2 ** 20 + 5);
  await img.writeZeroes(2 * 2 ** 20 + 7, 2 ** 20 - 7); // reaches EOF: truncate and re-extend
  await img.discard(0, 4096); // a hint: data stays
  const expected = Buffer.from(data);
  expected.fill(0, 1000, 1000 + 2 ** 20 + 5);
  expected.fill(0, 2 * 2 ** 20 + 7);
  expect(Buffer.compare(Buffer.from(await img.read(0, 3 * 2 ** 20)), expected)).toBe(0);
  await expect(img.write(3 * 2 ** 20 - 1, new Uint8Array(2))).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  await expect(img.read(3 * 2 ** 20, 1)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  const status = await img.blockStatus(0, img.virtualSize);
  expect(status.reduce((n, e) => n + e.length, 0)).toBe(img.virtualSize);
  expect(status.every((e) => e.allocatedHere && e.depth === 0)).toBe(true);
  await img.close();
  await img.close(); // idempotent
  expect(Buffer.compare(await readFile(p), expected)).toBe(0);
  expect((await stat(p)).size).toBe(3 * 2 ** 20);
});

test('read-only raw refuses writes', async () => {
  const p = join(dir, 'ro.raw');
  await writeFile(p, Buffer.alloc(4096, 1));
  const img = await openImage(p, { readOnly: true, opener: fsOpener });
  await expect(img.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  expect((await img.info()).format).toBe('raw');
  await img.close();
});

test('probeFormat: qcow2 magic or raw (also for tiny files)', async () => {
  const q = join(dir, 'probe.qcow2');
  await qemuImg('create', '-f', 'qcow2', q, '1M');
  const tiny = join(dir, 'tiny.raw');
  await writeFile(tiny, Buffer.from([1, 2]));
  for (const [path, fmt] of [
    [q, 'qcow2'],
    [tiny, 'raw'],
  ] as const) {
    const f = await fsOpener.open(path, { readOnly: true });
    expect(await probeFormat(f)).toBe(fmt);
    await f.close();
  }
  // a qcow2 file forced open as raw is just bytes
  const asRaw = await openImage(q, { readOnly: true, format: 'raw', opener: fsOpener });
  expect(asRaw.format).toBe('raw');
  await asRaw.close();
});
