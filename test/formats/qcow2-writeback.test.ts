import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { TidemarkError } from '../../src-shared/errors.js';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import type { Qcow2Driver } from '../../src-main/engine/formats/qcow2/driver.js';
import { FaultInjector } from '../../src-main/engine/io/fault-injection.js';
import type { FileHandle, FileOpener } from '../../src-main/engine/io/file-handle.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { IoPool } from '../../src-main/engine/io/pool.js';
import { expectCheckClean, makeTempDir, qemuCheck, qemuImg, qemuIo, qemuMap, qemuReadAll, removeDir, seededBytes } from '../helpers/qemu-tools.js';

/**
 * Metadata writeback (QEMU's cache=writeback): a write into a new cluster costs one data write,
 * the refcount and L2 changes reach the file at flush/close, in an order that keeps the file
 * consistent at every moment (qcow2-crash.test.ts simulates the crashes).
 */

const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let pool: IoPool;
beforeAll(async () => {
  dir = await makeTempDir();
  pool = new IoPool(2);
});
afterAll(async () => {
  await pool.close();
  await removeDir(dir);
});

/** Records every write and sync that reaches the file. */
function recordingOpener(log: string[]): FileOpener {
  return {
    async open(path, options) {
      const inner = await fsOpener.open(path, options);
      const f: FileHandle = {
        path: inner.path,
        readOnly: inner.readOnly,
        pread: (p, n) => inner.pread(p, n),
        pwrite: (p, d) => {
          log.push(`write ${p} ${d.length}`);
          return inner.pwrite(p, d);
        },
        size: () => inner.size(),
        truncate: (n) => inner.truncate(n),
        sync: () => {
          log.push('sync');
          return inner.sync();
        },
        allocation: (p, n) => inner.allocation(p, n),
        close: () => inner.close(),
      };
      return f;
    },
  };
}

async function newImage(name: string, size = 64 * MiB, clusterSize = 64 * KiB): Promise<string> {
  const path = join(dir, name);
  await createImage(path, { format: 'qcow2', virtualSize: size, clusterSize, opener: fsOpener });
  return path;
}

describe('qcow2 metadata writeback', () => {
  test('a 4 KiB write into a new cluster writes 4 KiB of data (and a new L2 table, zeroed); the metadata follows at flush in two synced groups', async () => {
    const path = await newImage('one-write.qcow2');
    const log: string[] = [];
    const img = await openImage(path, { readOnly: false, opener: recordingOpener(log) });
    await img.write(8 * MiB + 8192, seededBytes(4096, 1));
    // clusters: header, reftable, refblock, L1, then the new L2 table (written zeroed at once) and the data
    expect(log).toEqual([`write ${4 * 64 * KiB} ${64 * KiB}`, `write ${5 * 64 * KiB + 8192} 4096`]);
    // the file is consistent meanwhile (the data is simply not referenced yet)
    const before = await qemuCheck(path);
    expect(before.code, before.stdout).toBe(0);
    expect((await qemuReadAll(path, dir)).subarray(8 * MiB, 8 * MiB + 16384).every((b) => b === 0)).toBe(true);

    log.length = 0;
    await img.flush();
    // the refcount block (only the two changed entries, for clusters 4 and 5); sync; the changed
    // L2 entry and the L1 entry (the table itself is on disk already); final sync
    expect(log).toEqual([`write ${2 * 64 * KiB + 8} 4`, 'sync', `write ${4 * 64 * KiB + 128 * 8} 8`, `write ${3 * 64 * KiB} 8`, 'sync']);
    await expectCheckClean(path);
    const guest = await qemuReadAll(path, dir);
    expect(Buffer.compare(guest.subarray(8 * MiB + 8192, 8 * MiB + 12288), seededBytes(4096, 1))).toBe(0);
    expect(guest.subarray(8 * MiB, 8 * MiB + 8192).every((b) => b === 0)).toBe(true);
    expect(guest.subarray(8 * MiB + 12288, 8 * MiB + 64 * KiB).every((b) => b === 0)).toBe(true);
    // nothing changed since: a second flush writes nothing but the sync
    log.length = 0;
    await img.flush();
    expect(log).toEqual(['sync']);
    await img.close();
  });

  test('a partial write into a fresh cluster leaves the rest of it a hole that reads as zeros', async () => {
    const path = await newImage('fresh.qcow2');
    const img = await openImage(path, { readOnly: false, opener: fsOpener });
    await img.write(1000, seededBytes(100, 2));
    await img.close();
    // 5 clusters of metadata + the data cluster's first 1100 bytes
    expect((await stat(path)).size).toBe(5 * 64 * KiB + 1100);
    await expectCheckClean(path);
    await qemuIo('-c', 'read -P 0 0 1000', '-c', 'read -P 0 1100 64436', path);
    const again = await openImage(path, { readOnly: false, opener: fsOpener });
    // a second partial write lands in the partly written last cluster, in place
    await again.write(5000, seededBytes(100, 3));
    await again.write(64 * KiB + 10, seededBytes(10, 4));
    await again.close();
    await expectCheckClean(path);
    const guest = await qemuReadAll(path, dir);
    const want = new Uint8Array(2 * 64 * KiB);
    want.set(seededBytes(100, 2), 1000);
    want.set(seededBytes(100, 3), 5000);
    want.set(seededBytes(10, 4), 64 * KiB + 10);
    expect(Buffer.compare(guest.subarray(0, want.length), want)).toBe(0);
  });

  test('released clusters are reused only once their unlinking is on disk; a reused cluster is written whole', async () => {
    const path = await newImage('reuse.qcow2');
    const img = await openImage(path, { readOnly: false, opener: fsOpener });
    await img.write(0, new Uint8Array(64 * KiB).fill(0x77)); // host cluster 5
    await img.flush();
    await img.discard(0, 64 * KiB); // released: still counted until the L2 change is written
    await img.write(1 * MiB + 100, seededBytes(50, 5)); // must not land in cluster 5
    await img.flush(); // now cluster 5 is free
    await img.write(2 * MiB + 300, seededBytes(50, 6)); // reuses cluster 5: no 0x77 may show around it
    await img.close();
    await expectCheckClean(path);
    const map = await qemuMap(path);
    const at = (start: number) => map.find((e) => e.start === start && e.data)?.offset;
    expect(at(1 * MiB)).toBe(6 * 64 * KiB);
    expect(at(2 * MiB)).toBe(5 * 64 * KiB);
    const guest = await qemuReadAll(path, dir);
    const want = new Uint8Array(64 * KiB);
    want.set(seededBytes(50, 6), 300);
    expect(Buffer.compare(guest.subarray(2 * MiB, 2 * MiB + 64 * KiB), want)).toBe(0);
    expect(guest.subarray(0, 64 * KiB).every((b) => b === 0)).toBe(true);
  });

  test('a failed writeback keeps the changes: the flush reports it, the next one writes them', async () => {
    const path = await newImage('retry.qcow2');
    const faults = new FaultInjector(fsOpener);
    const img = await openImage(path, { readOnly: false, opener: faults });
    await img.write(3 * MiB, seededBytes(70 * KiB, 7)); // two clusters, a new L2 table
    // the L2 table write fails once (ENOSPC), then the sync after the refcount blocks
    faults.add({ path, op: 'write', errno: 'ENOSPC', offset: 4 * 64 * KiB, length: 64 * KiB, once: true });
    await expect(img.flush()).rejects.toMatchObject({ code: 'NO_SPACE' });
    // the refcounts went out ahead of the L2 table: leaked clusters, nothing worse
    const mid = await qemuCheck(path);
    expect(mid.code, mid.stdout).toBe(3);
    faults.clear();
    faults.add({ path, op: 'sync', errno: 'EIO', once: true });
    await expect(img.flush()).rejects.toBeInstanceOf(TidemarkError);
    faults.clear();
    await img.flush();
    await img.close();
    await expectCheckClean(path);
    const guest = await qemuReadAll(path, dir);
    expect(Buffer.compare(guest.subarray(3 * MiB, 3 * MiB + 70 * KiB), seededBytes(70 * KiB, 7))).toBe(0);
  });

  test('refcount blocks created and the refcount table moved in one writeback (512-byte clusters)', async () => {
    const path = await newImage('grow.qcow2', 24 * MiB, 512);
    const img = (await openImage(path, { readOnly: false, opener: fsOpener })) as Qcow2Driver;
    await img.write(0, seededBytes(12 * MiB, 8));
    await img.write(20 * MiB + 77, seededBytes(3000, 9));
    await img.close();
    await expectCheckClean(path);
    const reopened = (await openImage(path, { readOnly: true, opener: fsOpener })) as Qcow2Driver;
    expect(reopened.headerFields.refcountTableClusters).toBeGreaterThan(1);
    expect(Buffer.compare(await reopened.read(0, 12 * MiB), seededBytes(12 * MiB, 8))).toBe(0);
    expect(Buffer.compare(await reopened.read(20 * MiB + 77, 3000), seededBytes(3000, 9))).toBe(0);
    await reopened.close();
  });

  test('bitmap-style allocations (allocateClusters) are on disk before they return', async () => {
    const path = await newImage('alloc.qcow2');
    const img = (await openImage(path, { readOnly: false, opener: fsOpener })) as Qcow2Driver;
    const at = await img.allocateClusters(2);
    await img.file.pwrite(at, new Uint8Array(2 * 64 * KiB)); // what the bitmap store does next
    // refcount 1 on disk, nothing referencing them yet: qemu-img sees leaked clusters, not corruption
    const r = await qemuCheck(path);
    expect(r.code, r.stdout).toBe(3);
    expect(r.stdout).toMatch(/2 leaked clusters/);
    await img.freeClusters(at, 2);
    await img.close();
    await expectCheckClean(path);
  });
});

describe('readLent (block copies)', () => {
  test('the ranges read through a lent buffer match plain reads: data, zero, compressed and backing clusters', async () => {
    const base = join(dir, 'lent-base.qcow2');
    await qemuImg('create', '-f', 'qcow2', base, '8M');
    await qemuIo('-c', 'write -P 0x11 0 1M', base);
    const top = join(dir, 'lent-top.qcow2');
    await qemuImg('create', '-f', 'qcow2', '-b', 'lent-base.qcow2', '-F', 'qcow2', top, '8M');
    await qemuIo('-c', 'write -P 0x22 64k 64k', '-c', 'write -z 192k 64k', '-c', 'write -c -P 0x33 256k 64k', '-c', 'write -P 0x44 2M 100k', top);
    const ranges = [
      { offset: 0, length: 64 * KiB }, // backing data
      { offset: 64 * KiB, length: 64 * KiB }, // data here
      { offset: 192 * KiB, length: 64 * KiB }, // zero cluster masking the backing file
      { offset: 256 * KiB, length: 70 * KiB }, // compressed, then backing
      { offset: 900 * KiB, length: 10 }, // backing, unaligned
    ];
    for (const opener of [pool, fsOpener]) {
      const img = await openImage(top, { readOnly: true, opener });
      try {
        const lent = await img.readLent!(ranges);
        if (opener === fsOpener) {
          expect(lent).toBeUndefined(); // plain fs handles lend nothing
          continue;
        }
        expect(lent).toBeDefined();
        for (const r of ranges) {
          const want = await img.read(r.offset, r.length);
          expect(Buffer.compare(lent!.bytes.subarray(r.offset, r.offset + r.length), want), `range at ${r.offset}`).toBe(0);
        }
        lent!.release();
        const far = await img.readLent!([{ offset: 2 * MiB, length: 100 * KiB }]);
        expect(Buffer.compare(far!.bytes, await img.read(2 * MiB, 100 * KiB))).toBe(0);
        far!.release();
      } finally {
        await img.close();
      }
    }
  });

  test('writing lent bytes into a new image copies nothing and lands right', async () => {
    const src = await newImage('lent-src.qcow2', 8 * MiB);
    const s = await openImage(src, { readOnly: false, opener: pool });
    await s.write(0, seededBytes(3 * MiB, 10));
    const dst = await newImage('lent-dst.qcow2', 8 * MiB);
    const d = await openImage(dst, { readOnly: false, opener: pool });
    const ranges = [
      { offset: 0, length: 64 * KiB },
      { offset: 128 * KiB, length: 64 * KiB },
      { offset: 512 * KiB, length: 100 },
    ];
    const lent = await s.readLent!(ranges);
    for (const r of ranges) await d.write(r.offset, lent!.bytes.subarray(r.offset, r.offset + r.length));
    lent!.release();
    await Promise.all([s.close(), d.close()]);
    await expectCheckClean(dst);
    const guest = await qemuReadAll(dst, dir);
    const all = seededBytes(3 * MiB, 10);
    for (const r of ranges) expect(Buffer.compare(guest.subarray(r.offset, r.offset + r.length), all.subarray(r.offset, r.offset + r.length))).toBe(0);
    expect(guest.subarray(64 * KiB, 128 * KiB).every((b) => b === 0)).toBe(true);
  });
});
