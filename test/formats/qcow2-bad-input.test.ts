import { readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { TidemarkError } from '../../src-shared/errors.js';
import { openImage } from '../../src-main/engine/formats/open.js';
import { EXT_BITMAPS } from '../../src-main/engine/formats/qcow2/constants.js';
import type { Qcow2Driver } from '../../src-main/engine/formats/qcow2/driver.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { expectCheckClean, fileSha256, makeTempDir, qemuImg, qemuIo, qemuMap, removeDir } from '../helpers/qemu-tools.js';

let dir: string;
let good: Buffer;
let counter = 0;
beforeAll(async () => {
  dir = await makeTempDir();
  const p = join(dir, 'good.qcow2');
  await qemuImg('create', '-f', 'qcow2', p, '64M');
  await qemuIo('-c', 'write -P 0x33 0 256k', p);
  good = await readFile(p);
});
afterAll(async () => removeDir(dir));

/** Layout of `good`: header, refcount table at 64K, refcount block at 128K, L1 at 192K, L2 at 256K, data at 320K. */
const L1 = 0x30000;
const L2 = 0x40000;

async function variant(patch: (b: Buffer) => Buffer | void): Promise<string> {
  const copy = Buffer.from(good);
  const result = patch(copy) ?? copy;
  const p = join(dir, `bad-${counter++}.qcow2`);
  await writeFile(p, result);
  return p;
}

/** Opening (read-write, then read-only) fails with this code and a message naming the file; the file is untouched. */
async function expectOpenFails(p: string, code: string, message?: RegExp, readOnlyToo = true): Promise<void> {
  const before = await fileSha256(p);
  for (const readOnly of readOnlyToo ? [false, true] : [false]) {
    const err = await openImage(p, { readOnly, opener: fsOpener }).then(
      async (img) => {
        await img.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err, `open readOnly=${readOnly}`).toBeInstanceOf(TidemarkError);
    expect((err as TidemarkError).code).toBe(code);
    expect((err as TidemarkError).message).toContain(`'${p}'`);
    if (message) expect((err as TidemarkError).message).toMatch(message);
  }
  expect(await fileSha256(p)).toBe(before);
}

describe('refused at open, file unchanged', () => {
  test('truncated files', async () => {
    await expectOpenFails(await variant((b) => b.subarray(0, 50)), 'CORRUPT_IMAGE', /too short/);
    await expectOpenFails(await variant((b) => b.subarray(0, 100)), 'CORRUPT_IMAGE');
    await expectOpenFails(await variant((b) => b.subarray(0, 0x10000)), 'CORRUPT_IMAGE', /past the end of the file/);
  });
  test('table offsets not aligned, past EOF, overlapping the header or each other', async () => {
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(BigInt(L1 + 8), 40)), 'CORRUPT_IMAGE', /not cluster-aligned/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(0n, 40)), 'CORRUPT_IMAGE', /overlaps the header/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 40n, 48)), 'CORRUPT_IMAGE', /past the end/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(BigInt(L1), 48)), 'CORRUPT_IMAGE', /overlap/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(0xffffffffffffffffn, 48)), 'CORRUPT_IMAGE');
    // an L2 table pointer that is misaligned, in the header, or past EOF
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(0x8000000000000000n | BigInt(L2 + 512), L1)), 'CORRUPT_IMAGE');
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(0x8000000000000000n | 0x200n, L1)), 'CORRUPT_IMAGE');
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(0x8000000000000000n | (1n << 40n), L1)), 'CORRUPT_IMAGE');
    // a refcount block inside the L1 table
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(BigInt(L1), 0x10000)), 'CORRUPT_IMAGE', /overlaps the L1/, false);
  });
  test('absurd sizes', async () => {
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(2 ** 31, 36)), 'CORRUPT_IMAGE', /L1 table/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 40n, 24)), 'CORRUPT_IMAGE', /too small/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 62n, 24)), 'CORRUPT_IMAGE');
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(100_000, 56)), 'CORRUPT_IMAGE', /refcount table/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(0, 56)), 'CORRUPT_IMAGE', /empty/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(8, 20)), 'UNSUPPORTED_FORMAT', /cluster_bits/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(22, 20)), 'UNSUPPORTED_FORMAT', /cluster_bits/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(7, 96)), 'CORRUPT_IMAGE', /refcount_order/);
  });
  test('weird header_length and extensions', async () => {
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(100, 100)), 'CORRUPT_IMAGE', /header_length/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(113, 100)), 'CORRUPT_IMAGE', /header_length/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(0x20000, 100)), 'CORRUPT_IMAGE', /header_length/);
    // the feature table extension claims to run past cluster 0
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(0x10000, 116)), 'CORRUPT_IMAGE', /extension/);
    // backing file name outside cluster 0
    await expectOpenFails(
      await variant((b) => {
        b.writeBigUInt64BE(0xfff0n, 8);
        b.writeUInt32BE(100, 16);
      }),
      'CORRUPT_IMAGE',
      /backing file name/,
    );
  });
  test('features and versions we cannot handle are named', async () => {
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 10n, 72)), 'UNSUPPORTED_FORMAT', /bit 10/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 4n, 72)), 'UNSUPPORTED_FORMAT', /extended L2 entries/);
    await expectOpenFails(await variant((b) => void b.writeBigUInt64BE(1n << 2n, 72)), 'UNSUPPORTED_FORMAT', /external data file/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(4, 4)), 'UNSUPPORTED_FORMAT', /version 4/);
    await expectOpenFails(await variant((b) => void b.writeUInt32BE(1, 32)), 'UNSUPPORTED_FORMAT', /encrypted/);
    await expectOpenFails(await variant((b) => void (b[104] = 1)), 'CORRUPT_IMAGE', /compression/);
    await expectOpenFails(await variant((b) => void (b[104] = 9)), 'UNSUPPORTED_FORMAT', /compression type/);
  });
  test('a missing file', async () => {
    await expect(openImage(join(dir, 'nope.qcow2'), { readOnly: true, opener: fsOpener })).rejects.toMatchObject({ code: 'FILE_NOT_FOUND' });
  });
});

describe('dirty and corrupt bits', () => {
  for (const [bit, name] of [
    [1n, 'dirty'],
    [2n, 'corrupt'],
  ] as const) {
    test(`${name}: read-only works, read-write is refused`, async () => {
      const p = await variant((b) => void b.writeBigUInt64BE(bit, 72));
      await expectOpenFails(p, 'CORRUPT_IMAGE', name === 'dirty' ? /not closed cleanly/ : /marked corrupt/, false);
      const img = await openImage(p, { readOnly: true, opener: fsOpener });
      expect((await img.read(0, 4)).every((x) => x === 0x33)).toBe(true);
      expect((await img.info()).dirtyFlag).toBe(name === 'dirty');
      await img.close();
    });
  }
});

describe('backing chains', () => {
  test('loops are detected', async () => {
    const a = join(dir, 'loop-a.qcow2');
    const b = join(dir, 'loop-b.qcow2');
    await qemuImg('create', '-f', 'qcow2', a, '1M');
    await qemuImg('create', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', b, '1M');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'loop-b.qcow2', '-F', 'qcow2', a);
    await expectOpenFails(a, 'CORRUPT_IMAGE', /loop/);
    const self = join(dir, 'loop-self.qcow2');
    await qemuImg('create', '-f', 'qcow2', self, '1M');
    await qemuImg('rebase', '-u', '-f', 'qcow2', '-b', 'loop-self.qcow2', '-F', 'qcow2', self);
    await expectOpenFails(self, 'CORRUPT_IMAGE', /loop/);
  });
  test('a missing backing file names both files', async () => {
    const p = join(dir, 'orphan.qcow2');
    await qemuImg('create', '-f', 'qcow2', '-b', 'gone.qcow2', '-F', 'qcow2', '-u', p, '1M');
    await expectOpenFails(p, 'FILE_NOT_FOUND', /gone\.qcow2/);
  });
  test('depth is bounded', async () => {
    let prev = 'depth-0.qcow2';
    await qemuImg('create', '-f', 'qcow2', join(dir, prev), '1M');
    for (let i = 1; i <= 4; i++) {
      const name = `depth-${i}.qcow2`;
      await qemuImg('create', '-f', 'qcow2', '-b', prev, '-F', 'qcow2', join(dir, name), '1M');
      prev = name;
    }
    const top = join(dir, prev);
    await expect(openImage(top, { readOnly: true, opener: fsOpener, maxChainDepth: 2 })).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    const img = await openImage(top, { readOnly: true, opener: fsOpener });
    expect((await img.info()).backingChain).toHaveLength(4);
    await img.close();
  });
});

describe('bad pointers found at runtime fail that request only', () => {
  test('a data cluster past EOF, and one pointing at the L1 table', async () => {
    const p = await variant((b) => {
      b.writeBigUInt64BE(0x8000000000000000n | (1n << 40n), L2 + 8); // guest cluster 1 → far past EOF
      b.writeBigUInt64BE(0x8000000000000000n | BigInt(L1), L2 + 16); // guest cluster 2 → the L1 table
    });
    const before = await fileSha256(p);
    const img = await openImage(p, { readOnly: false, opener: fsOpener });
    await expect(img.read(65536, 10)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await expect(img.write(65536, new Uint8Array(10))).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await expect(img.write(131072 + 5, new Uint8Array(10).fill(1))).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    expect((await img.read(0, 4)).every((x) => x === 0x33)).toBe(true); // the rest still works
    await img.close();
    expect(await fileSha256(p)).toBe(before);
  });
  test('L2 entries with reserved bits', async () => {
    const p = await variant((b) => void b.writeBigUInt64BE(0x8000000000050002n, L2));
    const img = await openImage(p, { readOnly: true, opener: fsOpener });
    await expect(img.read(0, 10)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
    await img.close();
  });
});

describe('header rewriting', () => {
  test('unknown autoclear bits are cleared on a read-write open; bitmaps bit and unknown extensions survive', async () => {
    // insert an unknown extension (magic 0x12345678, 5 bytes) and a bitmaps-looking one before the end marker
    const p = await variant((b) => {
      b.writeBigUInt64BE((1n << 0n) | (1n << 5n) | (1n << 40n), 88);
      const end = 112 + 8 + 384; // after the feature table
      b.writeUInt32BE(0x12345678, end);
      b.writeUInt32BE(5, end + 4);
      b.write('hello', end + 8);
      b.writeUInt32BE(EXT_BITMAPS, end + 16);
      b.writeUInt32BE(24, end + 20);
      b.fill(0xab, end + 24, end + 48);
      b.writeBigUInt64BE(0n, end + 48);
    });
    const img = (await openImage(p, { readOnly: false, opener: fsOpener })) as Qcow2Driver;
    expect(img.headerFields.autoclearFeatures).toBe(1n);
    expect(Buffer.from(img.readHeaderExtension(0x12345678) ?? []).toString()).toBe('hello');
    expect(img.readHeaderExtension(EXT_BITMAPS)).toEqual(new Uint8Array(24).fill(0xab));
    await img.close();
    const bytes = await readFile(p);
    expect(bytes.readBigUInt64BE(88)).toBe(1n);
    expect(bytes.indexOf(Buffer.from('hello'))).toBeGreaterThan(0);
    // a later rewrite keeps them too
    const again = (await openImage(p, { readOnly: false, opener: fsOpener })) as Qcow2Driver;
    again.setHeaderExtension(0x12345678, new TextEncoder().encode('world!'));
    await again.writeHeader();
    await again.close();
    const reread = (await openImage(p, { readOnly: true, opener: fsOpener })) as Qcow2Driver;
    expect(Buffer.from(reread.readHeaderExtension(0x12345678) ?? []).toString()).toBe('world!');
    expect(reread.readHeaderExtension(EXT_BITMAPS)).toEqual(new Uint8Array(24).fill(0xab));
    await reread.close();
  });

  test('allocateClusters / freeClusters keep refcounts consistent', async () => {
    const p = await variant(() => undefined);
    const img = (await openImage(p, { readOnly: false, opener: fsOpener })) as Qcow2Driver;
    const a = await img.allocateClusters(3);
    expect(a % 65536).toBe(0);
    const b = await img.allocateClusters(1);
    expect(b).toBe(a + 3 * 65536);
    await img.freeClusters(a, 3);
    // freed clusters are reused first
    expect(await img.allocateClusters(2)).toBe(a);
    await img.freeClusters(a, 2);
    await img.freeClusters(b, 1);
    await img.close();
    await expectCheckClean(p);
    // a raw truncation of the freed tail does not matter to qemu; the guest data is intact
    expect((await qemuMap(p))[0]).toMatchObject({ start: 0, length: 256 * 1024, data: true });
  });
});

test('a qcow2 file truncated in its data area reads as corrupt, not as garbage', async () => {
  const p = await variant(() => undefined);
  await truncate(p, 0x50000); // data cluster of guest offset 0 was at 0x50000
  const img = await openImage(p, { readOnly: true, opener: fsOpener });
  await expect(img.read(0, 512)).rejects.toMatchObject({ code: 'CORRUPT_IMAGE' });
  await img.close();
});
