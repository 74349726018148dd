import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Qcow2Driver } from '../../src-main/engine/formats/qcow2/driver.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import { expectCheckClean, expectSameContents, makeTempDir, prng, qemuImg, qemuIo, qemuMap, removeDir, seededBytes } from '../helpers/qemu-tools.js';
import { ReferencePair } from './reference-pair.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => removeDir(dir));

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe.each([
  { cs: 512, size: 4 * MiB },
  { cs: 64 * KiB, size: 1 * GiB + 12345 * 512 },
  { cs: 2 * MiB, size: 600 * GiB },
])('cluster size $cs', ({ cs, size }) => {
  // one L2 table covers this many guest bytes
  const l2Span = (cs / 8) * cs;

  test('aligned, unaligned and cluster-spanning writes', async () => {
    const p = await ReferencePair.create(dir, `basic-${cs}`, size, { clusterSize: cs });
    await p.write(0, seededBytes(cs, 1)); // one whole cluster
    await p.write(3 * cs + 17, seededBytes(5, 2)); // tiny write inside an unallocated cluster
    await p.write(5 * cs - 100, seededBytes(3 * cs + 300, 3)); // spans 5 clusters, both ends partial
    await p.write(5 * cs - 50, seededBytes(60, 4)); // rewrite in place, across a cluster boundary
    await p.write(l2Span - cs / 2, seededBytes(cs * 2, 5)); // spans two L2 tables
    await p.write(size - 700, seededBytes(700, 6)); // the very end of the disk
    await p.expectSameRead(0, 8 * cs);
    await p.expectSameRead(l2Span - cs, 3 * cs);
    await p.expectSameRead(size - 4096, 4096);
    await p.verify();
  });

  test('write zeroes over data, with and without unmap, and discard', async () => {
    const p = await ReferencePair.create(dir, `zero-${cs}`, size, { clusterSize: cs });
    await p.write(0, seededBytes(10 * cs, 7));
    await p.writeZeroes(cs, 2 * cs); // keeps allocation (QEMU's default)
    await p.writeZeroes(4 * cs, cs, true); // unmaps
    await p.writeZeroes(6 * cs + 10, 100); // partial: literal zeros
    await p.writeZeroes(20 * cs, 3 * cs); // over unallocated clusters
    await p.discard(7 * cs - 1, cs + 2); // covers no whole cluster... except the partial logic
    await p.discard(8 * cs, 2 * cs);
    await p.write(cs + 5, seededBytes(20, 8)); // write into a preallocated zero cluster
    await p.write(4 * cs + 5, seededBytes(20, 9)); // and into an unmapped one
    await p.expectSameRead(0, 12 * cs);
    await p.verify();
    if (cs === 64 * KiB) {
      // the preallocated zero cluster kept its host cluster; the unmapped one got it back via reuse
      const map = await qemuMap(p.qcowPath);
      expect(map.find((e) => e.start === 2 * cs)).toMatchObject({ zero: true, data: false, present: true });
    }
  });
});

test('an image larger than 4 GiB (writes near 5 GiB)', async () => {
  const p = await ReferencePair.create(dir, 'big', 6 * GiB);
  await p.write(5 * GiB - 3000, seededBytes(1 * MiB, 11));
  await p.write(4 * GiB - 10, seededBytes(20, 12));
  await p.writeZeroes(5 * GiB + 64 * KiB, 128 * KiB);
  await p.expectSameRead(5 * GiB - 4096, 1 * MiB + 8192);
  await p.verify();
});

test('refcount blocks and the refcount table grow (512-byte clusters, 12 MiB of data)', async () => {
  const p = await ReferencePair.create(dir, 'growth', 64 * MiB, { clusterSize: 512 });
  // scattered writes so the L2 tables interleave with data
  for (let i = 0; i < 48; i++) await p.write(((i * 37) % 64) * MiB + i * 512, seededBytes(256 * KiB, 100 + i));
  await p.verify();
  const img = await openImage(p.qcowPath, { readOnly: true, opener: fsOpener });
  // the table started as one 512-byte cluster (64 blocks × 128 KiB); 12 MiB of data needs it moved
  expect((img as Qcow2Driver).headerFields.refcountTableClusters).toBeGreaterThan(1);
  await img.close();
});

test('a large multi-cluster write allocates one contiguous host run', async () => {
  const p = await ReferencePair.create(dir, 'contig', 64 * MiB);
  await p.write(0, seededBytes(8 * MiB, 13));
  await p.verify();
  const map = await qemuMap(p.qcowPath);
  expect(map.length).toBe(2);
  expect(map[0]).toMatchObject({ start: 0, length: 8 * MiB, data: true, offset: 5 * 65536 });
});

test('randomized operation sequences match a raw reference', async () => {
  for (const { seed, cs, size } of [
    { seed: 1, cs: 64 * KiB, size: 16 * MiB },
    { seed: 2, cs: 512, size: 2 * MiB },
    { seed: 3, cs: 4 * KiB, size: 8 * MiB + 1536 },
  ]) {
    const rnd = prng(seed);
    const p = await ReferencePair.create(dir, `random-${seed}`, size, { clusterSize: cs });
    for (let op = 0; op < 250; op++) {
      const offset = Math.floor(rnd() * size);
      const length = Math.min(size - offset, 1 + Math.floor(rnd() * rnd() * 8 * cs));
      const kind = rnd();
      if (kind < 0.55) await p.write(offset, seededBytes(length, seed * 1000 + op));
      else if (kind < 0.75) await p.writeZeroes(offset, length, rnd() < 0.5);
      else if (kind < 0.9) await p.discard(offset, length);
      else await p.expectSameRead(offset, length);
    }
    await p.expectSameRead(0, size);
    await p.verify();
  }
});

test('concurrent overlapping writes complete in issue order', async () => {
  const p = await ReferencePair.create(dir, 'concurrent', 4 * MiB);
  const rnd = prng(77);
  const ops: { offset: number; data: Uint8Array }[] = [];
  for (let i = 0; i < 64; i++) {
    const offset = Math.floor(rnd() * 3 * MiB);
    ops.push({ offset, data: seededBytes(1 + Math.floor(rnd() * 300 * KiB), 500 + i) });
  }
  // all in flight at once on the qcow2; the reference applies them in order
  const inflight = ops.map((o) => p.qcow.write(o.offset, o.data));
  // reads and zero writes in the mix must not break the ordering either
  inflight.push(p.qcow.writeZeroes(3 * MiB, 512 * KiB));
  await Promise.all(inflight);
  for (const o of ops) await p.raw.write(o.offset, o.data);
  await p.raw.writeZeroes(3 * MiB, 512 * KiB);
  await p.expectSameRead(0, 4 * MiB);
  await p.verify();
});

test('a read issued while a write to its clusters is in flight sees the write (the fast read path too)', async () => {
  const p = await ReferencePair.create(dir, 'read-behind-write', 4 * MiB);
  await p.write(0, seededBytes(256 * KiB, 31));
  // the tables are cached and the clusters allocated: what the fast path serves, unless locked
  await p.qcow.read(0, 4096);
  for (let i = 0; i < 20; i++) {
    const data = seededBytes(64 * KiB, 40 + i);
    const at = (i % 4) * 64 * KiB;
    const write = p.qcow.write(at, data);
    const read = p.qcow.read(at + 100, 4096);
    expect(Buffer.compare(await read, data.subarray(100, 100 + 4096))).toBe(0);
    await write;
  }
});

test('concurrent writes to distinct clusters all land', async () => {
  const p = await ReferencePair.create(dir, 'parallel', 16 * MiB, { clusterSize: 4096 });
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) writes.push(p.write(((i * 7919) % 4000) * 4096, seededBytes(4096 + (i % 3) * 100, 900 + i)));
  await Promise.all(writes);
  await p.verify();
});

test('concurrent allocating writes while refcount blocks and the table grow (512-byte clusters)', async () => {
  const p = await ReferencePair.create(dir, 'parallel-growth', 32 * MiB, { clusterSize: 512 });
  const writes: Promise<void>[] = [];
  // 64 × 200 KiB in flight: far past the 8 MiB the first refcount table can describe
  for (let i = 0; i < 64; i++) writes.push(p.write(i * 480 * KiB + (i % 5) * 100, seededBytes(200 * KiB, 1300 + i)));
  writes.push(p.qcow.writeZeroes(30 * MiB, 512 * KiB).then(() => p.raw.writeZeroes(30 * MiB, 512 * KiB)));
  await Promise.all(writes);
  await p.verify();
});

test('v2 images: zero writes and discard without the zero flag', async () => {
  const p = await ReferencePair.create(dir, 'v2', 8 * MiB, { version: 2 });
  await p.write(0, seededBytes(1 * MiB, 21));
  await p.writeZeroes(64 * KiB, 128 * KiB);
  await p.writeZeroes(256 * KiB, 64 * KiB, true);
  await p.writeZeroes(2 * MiB, 64 * KiB);
  await p.discard(512 * KiB, 128 * KiB);
  await p.expectSameRead(0, 3 * MiB);
  await p.verify();
});

describe('compressed writes', () => {
  for (const compressionType of ['zlib', 'zstd'] as const) {
    test(`${compressionType}: writeCompressed, then overwrite and zero some`, async () => {
      const p = await ReferencePair.create(dir, `compressed-${compressionType}`, 4 * MiB + 4096, { compressionType });
      const cs = 64 * KiB;
      const text = new TextEncoder().encode('tidemark compressible cluster '.repeat(3000)).subarray(0, cs);
      const q = p.qcow as Qcow2Driver;
      for (let i = 0; i < 20; i++) {
        const data = text.map((b, k) => (k % 97 === 0 ? (b + i) & 0xff : b));
        await q.writeCompressed(i * cs, data);
        await p.raw.write(i * cs, data);
      }
      // incompressible data falls back to a normal write
      const noise = seededBytes(cs, 31);
      await q.writeCompressed(30 * cs, noise);
      await p.raw.write(30 * cs, noise);
      // the last, partial cluster of the disk
      const tail = text.subarray(0, 4096);
      await q.writeCompressed(64 * cs, tail);
      await p.raw.write(64 * cs, tail);
      await p.expectSameRead(0, 31 * cs);
      // compressed writes over clusters that already hold data (normal, then compressed) free the old ones
      await p.write(40 * cs, seededBytes(cs, 35));
      for (const c of [40, 0, 1]) {
        const data = text.map((b, k) => (k % 89 === 0 ? (b + c) & 0xff : b));
        await q.writeCompressed(c * cs, data);
        await p.raw.write(c * cs, data);
      }
      await p.write(3 * cs + 100, seededBytes(1000, 32)); // partial overwrite of a compressed cluster
      await p.write(11 * cs - 100, seededBytes(300, 34)); // partial at both ends of two compressed clusters
      await p.write(5 * cs, seededBytes(cs, 33)); // full overwrite
      await p.writeZeroes(7 * cs, cs);
      await p.discard(9 * cs, cs);
      await p.verify();
      const map = await qemuMap(p.qcowPath);
      expect(map.some((e) => e.data && e.offset === undefined)).toBe(true); // compressed extents have no offset
    });
  }
});

test('metadata reaches the file without an explicit flush, and close is idempotent', async () => {
  const p = await ReferencePair.create(dir, 'closing', 2 * MiB);
  await p.write(100, seededBytes(1000, 41));
  await p.verify();
  await p.qcow.close();
  await expectCheckClean(p.qcowPath);
  await expect(p.qcow.read(0, 1)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
});

test('out-of-range and read-only requests are refused', async () => {
  const p = await ReferencePair.create(dir, 'refusals', 1 * MiB);
  await expect(p.qcow.write(1 * MiB - 1, new Uint8Array(2))).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  await expect(p.qcow.read(-1, 1)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  await p.verify();
  const ro = await openImage(p.qcowPath, { readOnly: true, opener: fsOpener });
  await expect(ro.write(0, new Uint8Array(1))).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  await expect(ro.writeZeroes(0, 1)).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
  await ro.close();
});

describe('writes onto an overlay', () => {
  for (const cs of [512, 64 * KiB]) {
    test(`partial clusters come from the backing chain (cluster ${cs})`, async () => {
      const base = join(dir, `ovl-base-${cs}.qcow2`);
      const mid = join(dir, `ovl-mid-${cs}.qcow2`);
      const top = join(dir, `ovl-top-${cs}.qcow2`);
      const ref = join(dir, `ovl-ref-${cs}.raw`);
      await qemuImg('create', '-f', 'qcow2', base, '4M');
      await qemuIo('-c', 'write -P 0x11 0 4M', base);
      await qemuImg('create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', mid, '6M');
      await qemuIo('-c', 'write -P 0x22 1M 512k', '-c', 'write -z 2M 128k', mid);
      await createImage(top, { format: 'qcow2', backingFile: `ovl-mid-${cs}.qcow2`, clusterSize: cs, opener: fsOpener });
      await qemuImg('convert', '-f', 'qcow2', '-O', 'raw', top, ref);
      const img = await openImage(top, { readOnly: false, opener: fsOpener });
      const rawRef = await openImage(ref, { readOnly: false, opener: fsOpener });
      const both = async (fn: (d: typeof img) => Promise<void>) => {
        await fn(img);
        await fn(rawRef);
      };
      for (const [offset, len, seed] of [
        [100, 10, 1],
        [cs - 5, 10, 2], // both ends partial, two clusters
        [1 * MiB - 300, 700, 3], // across the mid layer's data boundary
        [2 * MiB + 64 * KiB - 1, 3, 4], // inside the mid layer's zero clusters
        [4 * MiB - 10, 20, 5], // across the end of the base (base is shorter)
        [5 * MiB + 7, 9, 6], // beyond the base: zeros
      ]) {
        await both((d) => d.write(offset, seededBytes(len, seed)));
      }
      // zero writes must mask the backing data; discard leaves whole clusters reading zero
      await both((d) => d.writeZeroes(3 * MiB, 3 * cs));
      await img.discard(3 * MiB + 8 * cs, 2 * cs);
      await rawRef.writeZeroes(3 * MiB + 8 * cs, 2 * cs);
      const [a, b] = await Promise.all([img.read(0, 6 * MiB), rawRef.read(0, 6 * MiB)]);
      expect(Buffer.compare(Buffer.from(a), Buffer.from(b))).toBe(0);
      await img.close();
      await rawRef.close();
      await expectCheckClean(top);
      await expectSameContents(top, 'qcow2', ref, 'raw');
    });
  }

  test('a raw backing file, named relative to the overlay', async () => {
    const base = join(dir, 'raw-base.img');
    await qemuImg('create', '-f', 'raw', base, '1M');
    await qemuIo('-f', 'raw', '-c', 'write -P 0x5a 0 1M', base);
    const top = join(dir, 'raw-top.qcow2');
    await createImage(top, { format: 'qcow2', backingFile: 'raw-base.img', backingFormat: 'raw', opener: fsOpener });
    const ref = join(dir, 'raw-top-ref.raw');
    await copyFile(base, ref);
    const img = await openImage(top, { readOnly: false, opener: fsOpener });
    const rawRef = await openImage(ref, { readOnly: false, opener: fsOpener });
    for (const d of [img, rawRef]) await d.write(1000, seededBytes(70000, 9));
    await img.close();
    await rawRef.close();
    await expectCheckClean(top);
    await expectSameContents(top, 'qcow2', ref, 'raw');
  });
});
