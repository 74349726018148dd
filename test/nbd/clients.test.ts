import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { nbdMap, run, runOk, startEnv, startQemuNbd, type NbdEnv } from './helpers/env.js';
import { seededBytes } from '../helpers/qemu-tools.js';

/**
 * Real NBD clients against Tidemark: qemu-io, qemu-img, nbdinfo, nbdcopy. Writes through NBD are
 * guest writes (visible in the drive, marking its bitmaps), and Tidemark's maps equal qemu-nbd's
 * for the same image and bitmap.
 */

const MiB = 1024 * 1024;
let env: NbdEnv;

beforeAll(async () => {
  env = await startEnv();
});

afterAll(async () => {
  await env?.close();
});

describe('writes through NBD are guest writes', () => {
  test('qemu-io over nbd+unix lands in a qcow2 drive, marks its bitmap, and qemu-img compare agrees', async () => {
    const img = join(env.dir, 'w.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', img, '64M']);
    const drive = await env.engine.attach({ id: 'wq', path: img, format: 'qcow2' });
    const bm = env.engine.bitmapCommands.add('wq', 'b0', { granularity: 65536 });
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0x33 1M 4k', '-c', 'write -P 0x44 10M 200k', '-c', 'write -z 20M 1M', env.uri('wq')]);
    // visible through the engine
    expect(Buffer.from(await drive.read(0, 65536)).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
    expect(Buffer.from(await drive.read(MiB, 4096)).equals(Buffer.alloc(4096, 0x33))).toBe(true);
    expect(Buffer.from(await drive.read(10 * MiB, 200 * 1024)).equals(Buffer.alloc(200 * 1024, 0x44))).toBe(true);
    // marked in the bitmap at its granularity (write-zeroes dirties too)
    expect(bm.dirtyExtents()).toEqual([
      { offset: 0, length: 65536 },
      { offset: MiB, length: 65536 },
      { offset: 10 * MiB, length: 262144 },
      { offset: 20 * MiB, length: MiB },
    ]);
    await drive.flush();
    // the NBD view (raw) equals the qcow2 file
    const cmp = await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', env.uri('wq'), img]);
    expect(cmp.stdout + cmp.stderr).toContain('Images are identical');
    expect(cmp.code).toBe(0);
    await env.engine.detach('wq');
  });

  test('a raw drive: writes land in the file; qemu-img compare sees a difference, then none', async () => {
    const img = join(env.dir, 'w.raw');
    await writeFile(img, seededBytes(8 * MiB, 7));
    const drive = await env.engine.attach({ id: 'wr', path: img, format: 'raw' });
    const bm = env.engine.bitmapCommands.add('wr', 'b', { granularity: 4096 });
    const copy = join(env.dir, 'w-copy.raw');
    await copyFile(img, copy);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x01 4095 2', '-c', 'discard 0 64k', env.uri('wr')]);
    expect(bm.dirtyExtents()).toEqual([{ offset: 0, length: 8192 }]);
    const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', env.uri('wr'), copy]);
    expect(differs.code).toBe(1);
    await drive.flush();
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', env.uri('wr'), img]);
    expect(same.code).toBe(0);
    const file = await readFile(img);
    expect([file[4094], file[4095], file[4096], file[4097]]).toEqual([seededBytes(8 * MiB, 7)[4094], 1, 1, seededBytes(8 * MiB, 7)[4097]]);
    await env.engine.detach('wr');
  });

  test("qemu-spec §7.3's example: a live exported bitmap through nbdinfo", async () => {
    const img = join(env.dir, 's73.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', img, '64M']);
    await env.engine.attach({ id: 's73', path: img, format: 'qcow2' });
    env.engine.bitmapCommands.add('s73', 'bm', { granularity: 65536 });
    // an enabled bitmap may be exported on a writable export; it is busy while exported
    env.server.addExport({ name: 's73-bm', driveId: 's73', writable: true, bitmaps: ['bm'] });
    expect(() => env.engine.bitmapCommands.clear('s73', 'bm')).toThrow("Bitmap 'bm' is currently in use by another operation and cannot be used");
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write 0 64k', '-c', 'write 1M 4k', '-c', 'write 10M 200k', env.uri('s73-bm')]);
    const map = await nbdMap(env.uri('s73-bm'), 'qemu:dirty-bitmap:bm');
    expect(map.split('\n').map((l) => l.split(' ').slice(0, 3).join(' '))).toEqual([
      '0 65536 1',
      '65536 983040 0',
      '1048576 65536 1',
      '1114112 9371648 0',
      '10485760 262144 1',
      '10747904 56360960 0',
    ]);
    await env.server.removeExport('s73-bm');
    env.engine.bitmapCommands.clear('s73', 'bm');
    await env.engine.detach('s73');
  });
});

describe('maps equal qemu-nbd for the same image and bitmap', () => {
  test('base:allocation, qemu:dirty-bitmap and qemu:allocation-depth over a backing chain', async () => {
    const base = join(env.dir, 'chain-base.qcow2');
    const top = join(env.dir, 'chain-top.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', base, '48M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x10 0 2M', '-c', 'write -P 0x11 8M 192k', '-c', 'write -z 16M 1M', '-c', 'write -P 0x12 40M 64k', base]);
    await runOk('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    await runOk('qemu-img', ['bitmap', '--add', '-g', '4096', top, 'inc']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x20 1M 64k', '-c', 'write -z 8M 64k', '-c', 'write -P 0x21 24M 128k', top]);
    // more writes through Tidemark's NBD: unaligned ones mark 4 KiB granules
    await env.engine.attach({ id: 'chain', path: top, format: 'qcow2' });
    const exp = env.server.findExport('chain')!;
    expect(exp.readOnly).toBe(false);
    await runOk('qemu-io', ['-f', 'raw', '-c', 'write -P 0x30 33M 64k', '-c', 'write -P 0x31 100000 5000', '-c', 'write -z 40M 64k', env.uri('chain')]);
    // detach stores the bitmap in the image; qemu-nbd reads a copy
    await env.engine.detach('chain');
    const copy = join(env.dir, 'chain-top-copy.qcow2');
    await copyFile(top, copy);
    await runOk('qemu-img', ['rebase', '-u', '-b', base, '-F', 'qcow2', copy]);
    const q = await startQemuNbd(env.dir, ['-r', '-f', 'qcow2', '-A', '-B', 'inc', '-x', 'chain', copy], 'chain');
    try {
      const drive = await env.engine.attach({ id: 'chain', path: top, format: 'qcow2' });
      expect(drive.bitmaps.find('inc')?.count).toBeGreaterThan(0);
      // read-only export of a writable drive: the bitmap must be disabled first (QEMU's rule)
      expect(() => env.server.addExport({ name: 'chain-ro', driveId: 'chain', bitmaps: ['inc'], allocationDepth: true })).toThrow("Enabled bitmap 'inc' incompatible with readonly export");
      env.engine.bitmapCommands.disable('chain', 'inc');
      env.server.addExport({ name: 'chain-ro', driveId: 'chain', bitmaps: ['inc'], allocationDepth: true });
      for (const ctx of [undefined, 'qemu:dirty-bitmap:inc', 'qemu:allocation-depth']) {
        const ours = await nbdMap(env.uri('chain-ro'), ctx);
        const theirs = await nbdMap(q.uri('chain'), ctx);
        expect(ours, `map ${ctx ?? 'base:allocation'}`).toBe(theirs);
        expect(ours.split('\n').length).toBeGreaterThan(4);
      }
      // and the contents
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', env.uri('chain-ro'), q.uri('chain')]);
      expect(cmp.code).toBe(0);
      await env.server.removeExport('chain-ro');
      await env.engine.detach('chain');
    } finally {
      await q.stop();
    }
  });
});

describe('nbdcopy', () => {
  test('copies an export out and a file in (multi-conn), byte for byte', async () => {
    const img = join(env.dir, 'c.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', img, '40M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 0 3M', '-c', 'write -P 0x62 17M 1M', img]);
    await env.engine.attach({ id: 'cp', path: img, format: 'qcow2' });
    const out = join(env.dir, 'c-out.raw');
    await runOk('nbdcopy', ['--connections=4', env.uri('cp'), out]);
    expect((await run('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', out, img])).code).toBe(0);
    // and back in: random data over the whole disk through 4 connections
    const src = join(env.dir, 'c-in.raw');
    await writeFile(src, seededBytes(40 * MiB, 99));
    await runOk('nbdcopy', ['--connections=4', '--flush', src, env.uri('cp')]);
    const drive = env.engine.get('cp')!;
    expect(Buffer.from(await drive.read(0, 40 * MiB)).equals(await readFile(src))).toBe(true);
    await env.engine.detach('cp');
    expect((await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', src, img])).code).toBe(0);
    expect((await run('qemu-img', ['check', img])).code).toBe(0);
  });
});
