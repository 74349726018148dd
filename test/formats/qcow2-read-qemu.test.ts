import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { openImage } from '../../src-main/engine/formats/open.js';
import type { BlockDriver, BlockExtent } from '../../src-main/engine/formats/types.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { makeTempDir, qemuImg, qemuIo, qemuMap, qemuReadAll, removeDir, type MapEntry } from '../helpers/qemu-tools.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => removeDir(dir));

const KiB = 1024;
const MiB = 1024 * KiB;

/** Reads the whole disk through the engine in uneven pieces (exercising partial clusters). */
async function readAll(img: BlockDriver): Promise<Buffer> {
  const out = Buffer.alloc(img.virtualSize);
  let pos = 0;
  let step = 100_000;
  while (pos < img.virtualSize) {
    const n = Math.min(step, img.virtualSize - pos);
    out.set(await img.read(pos, n), pos);
    pos += n;
    step = step === 100_000 ? 777_777 : 100_000;
  }
  return out;
}

type Run = { start: number; end: number; zero: boolean; data: boolean };

function normalize(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    const last = out.at(-1);
    if (last && last.end === r.start && last.zero === r.zero && last.data === r.data) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

/** blockStatus and qemu-img map must agree on data/zero for every byte. */
async function expectMapAgrees(img: BlockDriver, path: string): Promise<void> {
  const theirs = normalize((await qemuMap(path)).map((e: MapEntry) => ({ start: e.start, end: e.start + e.length, zero: e.zero, data: e.data })));
  const ours = normalize(
    (await img.blockStatus(0, img.virtualSize)).map((e: BlockExtent) => ({ start: e.offset, end: e.offset + e.length, zero: e.zero, data: e.data })),
  );
  expect(ours).toEqual(theirs);
}

async function expectReadsLikeQemu(path: string): Promise<BlockDriver> {
  const img = await openImage(path, { readOnly: true, opener: fsOpener });
  const expected = await qemuReadAll(path, dir);
  const actual = await readAll(img);
  expect(actual.length).toBe(expected.length);
  expect(Buffer.compare(actual, expected)).toBe(0);
  await expectMapAgrees(img, path);
  return img;
}

describe.each(['4K', '64K', '2M'])('qemu-made images, cluster size %s', (cs) => {
  test('data, zero clusters (write -z, with and without -u), discard', async () => {
    const p = join(dir, `zeros-${cs}.qcow2`);
    await qemuImg('create', '-f', 'qcow2', '-o', `cluster_size=${cs}`, p, '20M');
    await qemuIo(
      '-c', 'write -P 0xaa 0 6M',
      '-c', 'write -P 0xbb 7M 1536k',
      '-c', 'write -z 1M 2M',
      '-c', 'write -z -u 4M 1M',
      '-c', 'discard 8M 256k',
      '-c', 'write -z 12M 4M',
      '-c', 'write -P 0xcc 19M 3',
      p,
    );
    const img = await expectReadsLikeQemu(p);
    await img.close();
  });
});

test('a backing chain three deep (qcow2 → qcow2 → qcow2), with a shorter base', async () => {
  const base = join(dir, 'chain-base.qcow2');
  const mid = join(dir, 'chain-mid.qcow2');
  const top = join(dir, 'chain-top.qcow2');
  await qemuImg('create', '-f', 'qcow2', base, '3M');
  await qemuIo('-c', 'write -P 1 0 3M', base);
  await qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'chain-base.qcow2', '-F', 'qcow2', mid, '5M');
  await qemuIo('-c', 'write -P 2 1M 1M', '-c', 'write -z 2560k 64k', '-c', 'write -P 3 4M 4k', mid);
  await qemuImg('create', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', top, '6M');
  await qemuIo('-c', 'write -P 4 1536k 64k', '-c', 'write -z 128k 64k', top);
  const img = await expectReadsLikeQemu(top);
  const info = await img.info();
  expect(info.backingChain.map((b) => b.path)).toEqual([mid, base]);
  expect(info.backingFile).toBe('chain-mid.qcow2');
  // depth: the top's own data at 0, the mid layer at 1, the base at 2
  const status = await img.blockStatus(0, img.virtualSize);
  const at = (off: number) => status.find((e) => e.offset <= off && off < e.offset + e.length);
  expect(at(1536 * KiB)).toMatchObject({ allocatedHere: true, depth: 0, data: true });
  expect(at(1 * MiB)).toMatchObject({ allocatedHere: false, depth: 1, data: true });
  expect(at(0)).toMatchObject({ allocatedHere: false, depth: 2, data: true });
  expect(at(5.5 * MiB)).toMatchObject({ allocatedHere: false, depth: undefined, zero: true });
  await img.close();
});

test('a backing chain ending in a raw file', async () => {
  const base = join(dir, 'rawchain-base.raw');
  const top = join(dir, 'rawchain-top.qcow2');
  await writeFile(base, Buffer.alloc(2 * MiB, 0x61));
  await qemuImg('create', '-f', 'qcow2', '-b', base, '-F', 'raw', top);
  await qemuIo('-c', 'write -P 0x62 100k 10k', top);
  const img = await openImage(top, { readOnly: true, opener: fsOpener });
  expect(Buffer.compare(Buffer.from(await readAll(img)), await qemuReadAll(top, dir))).toBe(0);
  await img.close();
});

describe('compressed clusters from qemu-img convert -c', () => {
  for (const [type, cs] of [
    ['zlib', '64K'],
    ['zlib', '4K'],
    ['zlib', '2M'],
    ['zstd', '64K'],
  ] as const) {
    test(`${type}, cluster ${cs}`, async () => {
      const src = join(dir, `comp-src-${type}-${cs}.raw`);
      const chunks: Buffer[] = [];
      for (let i = 0; i < 3000; i++) chunks.push(Buffer.from(`line ${i} of compressible text ${'abc'.repeat(i % 50)}\n`));
      const text = Buffer.concat(chunks);
      const disk = Buffer.alloc(8 * MiB);
      text.copy(disk, 0);
      text.copy(disk, 5 * MiB);
      for (let i = 3 * MiB; i < 3 * MiB + 300 * KiB; i++) disk[i] = (i * 2654435761) >>> 24; // incompressible
      await writeFile(src, disk);
      const p = join(dir, `comp-${type}-${cs}.qcow2`);
      await qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cs},compression_type=${type}`, src, p);
      const img = await expectReadsLikeQemu(p);
      await img.close();
    });
  }
});

test('a v2 (compat=0.10) image', async () => {
  const p = join(dir, 'v2.qcow2');
  await qemuImg('create', '-f', 'qcow2', '-o', 'compat=0.10', p, '10M');
  await qemuIo('-c', 'write -P 7 0 3M', '-c', 'write -z 1M 1M', '-c', 'write -P 8 9M 12k', p);
  const img = await expectReadsLikeQemu(p);
  await img.close();
});

test('an image with internal snapshots reads fine but is not opened for writing', async () => {
  const p = join(dir, 'snap.qcow2');
  await qemuImg('create', '-f', 'qcow2', p, '4M');
  await qemuIo('-c', 'write -P 1 0 1M', p);
  await qemuImg('snapshot', '-c', 'snap1', p);
  await qemuIo('-c', 'write -P 2 512k 1M', p);
  const img = await expectReadsLikeQemu(p);
  await img.close();
  await expect(openImage(p, { readOnly: false, opener: fsOpener })).rejects.toMatchObject({ code: 'UNSUPPORTED_FORMAT' });
});
