import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { expectCheckClean, makeTempDir, qemuImg, qemuInfo, removeDir } from '../helpers/qemu-tools.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
  await qemuImg('create', '-f', 'qcow2', join(dir, 'base.qcow2'), '1G');
});
afterAll(async () => removeDir(dir));

/** info fields that depend on the file name or host allocation are left out */
function comparableInfo(info: Record<string, unknown>): Record<string, unknown> {
  const { filename: _f, 'actual-size': _a, 'full-backing-filename': _fb, ...rest } = info;
  return rest;
}

interface Case {
  name: string;
  size: number;
  clusterSize?: number;
  qemuOpts: string[];
  backing?: boolean;
  version?: 2 | 3;
  zstd?: boolean;
}

const cases: Case[] = [
  { name: '64K / 1G', size: 2 ** 30, qemuOpts: [] },
  { name: '64K / 5000 B (rounded up to 512)', size: 5000, qemuOpts: [] },
  { name: '64K / empty', size: 0, qemuOpts: [] },
  { name: '64K / 5 TiB', size: 5 * 2 ** 40, qemuOpts: [] },
  { name: '4K / 1G (no feature table)', size: 2 ** 30, clusterSize: 4096, qemuOpts: ['-o', 'cluster_size=4096'] },
  { name: '512 / 1G (L1 spills past the first refcount block)', size: 2 ** 30, clusterSize: 512, qemuOpts: ['-o', 'cluster_size=512'] },
  { name: '2M / 1G', size: 2 ** 30, clusterSize: 2 ** 21, qemuOpts: ['-o', 'cluster_size=2M'] },
  { name: '64K / backing', size: 2 ** 30, qemuOpts: ['-b', 'base.qcow2', '-F', 'qcow2'], backing: true },
  { name: '512 / backing', size: 2 ** 30, clusterSize: 512, qemuOpts: ['-o', 'cluster_size=512', '-b', 'base.qcow2', '-F', 'qcow2'], backing: true },
  { name: 'v2 (compat=0.10)', size: 2 ** 30, qemuOpts: ['-o', 'compat=0.10'], version: 2 },
  { name: 'zstd', size: 2 ** 30, qemuOpts: ['-o', 'compression_type=zstd'], zstd: true },
];

describe('created images match qemu-img create', () => {
  for (const c of cases) {
    test(c.name, async () => {
      const slug = c.name.replace(/[^a-z0-9]+/gi, '-');
      const ours = join(dir, `ours-${slug}.qcow2`);
      const theirs = join(dir, `qemu-${slug}.qcow2`);
      await createImage(ours, {
        format: 'qcow2',
        virtualSize: c.size,
        clusterSize: c.clusterSize,
        backingFile: c.backing ? 'base.qcow2' : undefined,
        backingFormat: c.backing ? 'qcow2' : undefined,
        version: c.version,
        compressionType: c.zstd ? 'zstd' : undefined,
        opener: fsOpener,
      });
      const args = ['create', '-f', 'qcow2', ...c.qemuOpts, theirs];
      if (!c.backing) args.push(String(c.size));
      await qemuImg(...args);
      expect(comparableInfo(await qemuInfo(ours))).toEqual(comparableInfo(await qemuInfo(theirs)));
      const a = await readFile(ours);
      const b = await readFile(theirs);
      // the whole file: header, refcount structures and L1 byte for byte, and the same length
      expect(a.length).toBe(b.length);
      expect(Buffer.compare(a, b)).toBe(0);
      await expectCheckClean(ours);
    });
  }

  test('an existing file is replaced', async () => {
    const p = join(dir, 'replace.qcow2');
    await createImage(p, { format: 'qcow2', virtualSize: 2 ** 20, opener: fsOpener });
    const img = await openImage(p, { readOnly: false, opener: fsOpener });
    await img.write(0, new Uint8Array(65536).fill(7));
    await img.close();
    await createImage(p, { format: 'qcow2', virtualSize: 2 ** 20, opener: fsOpener });
    const again = await openImage(p, { readOnly: true, opener: fsOpener });
    expect((await again.read(0, 16)).every((b) => b === 0)).toBe(true);
    await again.close();
    await expectCheckClean(p);
  });

  test('invalid parameters are refused before the file is touched', async () => {
    const p = join(dir, 'never.qcow2');
    await expect(createImage(p, { format: 'qcow2', virtualSize: 2 ** 20, clusterSize: 1000, opener: fsOpener })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
    });
    await expect(createImage(p, { format: 'qcow2', virtualSize: 2 ** 20, clusterSize: 256, opener: fsOpener })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
    });
    await expect(createImage(p, { format: 'qcow2', virtualSize: -1, opener: fsOpener })).rejects.toMatchObject({ code: 'INVALID_SIZE' });
    // 512-byte clusters leave no room for a 400-byte backing name after the header
    await expect(
      createImage(p, { format: 'qcow2', virtualSize: 2 ** 20, clusterSize: 512, backingFile: 'x'.repeat(400), backingFormat: 'raw', opener: fsOpener }),
    ).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(readFile(p)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('backing size and format are taken from the backing image when omitted', async () => {
    const p = join(dir, 'overlay-auto.qcow2');
    await createImage(p, { format: 'qcow2', backingFile: 'base.qcow2', opener: fsOpener });
    const info = await qemuInfo(p);
    expect(info['virtual-size']).toBe(2 ** 30);
    expect(info['backing-filename-format']).toBe('qcow2');
    await expectCheckClean(p);
  });
});
