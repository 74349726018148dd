import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { runTransaction } from '../../src-main/engine/jobs/transaction.js';
import type { Drive } from '../../src-main/engine/drive.js';
import { CMD, CMDF, ERR, OPT, RawNbd, TF, extentsOf } from './helpers/raw-client.js';
import { run, runOk, sleep, startEnv, type NbdEnv } from './helpers/env.js';
import { seededBytes } from '../helpers/qemu-tools.js';

/**
 * Transmission semantics that need the engine's view: replies out of order, FUA and flush,
 * trim and write-zeroes as QEMU maps them, copy-before-write under a running backup, the
 * automatic exports following attach and detach.
 */

const MiB = 1024 * 1024;
let env: NbdEnv;

beforeAll(async () => {
  env = await startEnv();
});

afterAll(async () => {
  await env?.close();
});

async function qcow2(name: string, size = 16 * MiB, fill = true): Promise<string> {
  const img = join(env.dir, name);
  await runOk('qemu-img', ['create', '-f', 'qcow2', img, String(size)]);
  if (fill) await runOk('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x21 0 ${size}`, img]);
  return img;
}

interface MapEntry {
  start: number;
  length: number;
  zero: boolean;
  data: boolean;
  offset?: number;
}

describe('transmission', () => {
  test('replies come back as requests finish, not in request order', async () => {
    const drive = await env.engine.attach({ id: 'ooo', path: await qcow2('ooo.qcow2'), format: 'qcow2' });
    const { c } = await RawNbd.open(env.sock, 'ooo');
    // hold guest writes (a drained section): the write waits, the read behind it does not
    const release = await drive.quiesce();
    const order: string[] = [];
    const w = c.pwrite(0, Buffer.alloc(4096, 0x55)).then((r) => (order.push('write'), r));
    const r = c.pread(MiB, 4096).then((x) => (order.push('read'), x));
    expect((await r).error).toBe(0);
    await sleep(50);
    expect(order).toEqual(['read']);
    release();
    expect((await w).error).toBe(0);
    expect(order).toEqual(['read', 'write']);
    expect(Buffer.from(await drive.read(0, 4096)).equals(Buffer.alloc(4096, 0x55))).toBe(true);
    c.close();
    await env.engine.detach('ooo');
  });

  test('FUA and flush reach the disk; a writethrough export flushes every write', async () => {
    const drive = await env.engine.attach({ id: 'fua', path: await qcow2('fua.qcow2'), format: 'qcow2' });
    let flushes = 0;
    const flush = drive.flush.bind(drive);
    drive.flush = async () => {
      flushes++;
      return flush();
    };
    const { c } = await RawNbd.open(env.sock, 'fua');
    await c.pwrite(0, Buffer.alloc(512, 1));
    expect(flushes).toBe(0);
    await c.pwrite(0, Buffer.alloc(512, 2), CMDF.FUA);
    expect(flushes).toBe(1);
    await c.cmd(CMD.WRITE_ZEROES, 0, 4096, CMDF.FUA);
    await c.cmd(CMD.TRIM, 0, 4096, CMDF.FUA);
    expect(flushes).toBe(3);
    await c.cmd(CMD.FLUSH, 0, 0);
    expect(flushes).toBe(4);
    c.close();
    env.server.addExport({ name: 'fua-wt', driveId: 'fua', writable: true, writethrough: true });
    const { c: wt } = await RawNbd.open(env.sock, 'fua-wt');
    await wt.pwrite(4096, Buffer.alloc(512, 3));
    await wt.pwrite(8192, Buffer.alloc(512, 3));
    expect(flushes).toBe(6);
    wt.close();
    await env.server.removeExport('fua-wt');
    await env.engine.detach('fua');
  });

  test('write-zeroes: NO_HOLE keeps the clusters, without it they are freed; FAST_ZERO refuses slow zeroing untouched', async () => {
    const img = await qcow2('wz.qcow2');
    const drive = await env.engine.attach({ id: 'wz', path: img, format: 'qcow2' });
    const bm = env.engine.bitmapCommands.add('wz', 'b', { granularity: 65536 });
    const { c } = await RawNbd.open(env.sock, 'wz', { meta: ['base:allocation'] });
    expect((await c.cmd(CMD.WRITE_ZEROES, 0, MiB, CMDF.NO_HOLE)).error).toBe(0);
    expect((await c.cmd(CMD.WRITE_ZEROES, 2 * MiB, MiB)).error).toBe(0);
    // unaligned and over data: would need literal zeros
    expect((await c.cmd(CMD.WRITE_ZEROES, 4 * MiB + 512, 4096, CMDF.FAST_ZERO)).error).toBe(ERR.ENOTSUP);
    expect(Buffer.from(await drive.read(4 * MiB, 8192)).equals(Buffer.alloc(8192, 0x21))).toBe(true);
    expect((await c.cmd(CMD.WRITE_ZEROES, 6 * MiB, MiB, CMDF.FAST_ZERO)).error).toBe(0);
    // all read as zeros and report as holes
    const st = extentsOf(await c.cmd(CMD.BLOCK_STATUS, 0, 8 * MiB)).get(0)!;
    expect(st.slice(0, 3)).toEqual([
      [MiB, 3],
      [MiB, 0],
      [MiB, 3],
    ]);
    expect(bm.dirtyExtents()).toEqual([
      { offset: 0, length: MiB },
      { offset: 2 * MiB, length: MiB },
      { offset: 6 * MiB, length: MiB },
    ]);
    c.close();
    await env.engine.detach('wz');
    const map = JSON.parse(await runOk('qemu-img', ['map', '--output=json', img])) as MapEntry[];
    const at = (o: number) => map.find((e) => e.start <= o && o < e.start + e.length)!;
    expect(at(0)).toMatchObject({ zero: true, data: false });
    expect(at(0).offset).toBeDefined(); // still allocated (zero flag on a kept cluster)
    expect(at(2 * MiB)).toMatchObject({ zero: true, data: false });
    expect(at(2 * MiB).offset).toBeUndefined(); // freed
    expect((await run('qemu-img', ['check', img])).code).toBe(0);
  });

  test("trim follows the drive's discard mode, as QEMU's -drive discard= does", async () => {
    const ignore = await env.engine.attach({ id: 'tr-ignore', path: await qcow2('tri.qcow2'), format: 'qcow2' });
    const unmap = await env.engine.attach({ id: 'tr-unmap', path: await qcow2('tru.qcow2'), format: 'qcow2', discard: 'unmap' });
    for (const d of [ignore, unmap]) env.engine.bitmapCommands.add(d.id, 'b', { granularity: 65536 });
    for (const d of [ignore, unmap]) {
      const { c } = await RawNbd.open(env.sock, d.id);
      expect((await c.cmd(CMD.TRIM, MiB, 2 * MiB)).error).toBe(0);
      c.close();
    }
    // discard=ignore: nothing happens, nothing is dirtied
    expect(ignore.bitmaps.find('b')!.count).toBe(0);
    expect((await ignore.blockStatus(MiB, 2 * MiB)).every((e) => e.data)).toBe(true);
    // discard=unmap: the clusters go, the bitmap sees it
    expect(unmap.bitmaps.find('b')!.dirtyExtents()).toEqual([{ offset: MiB, length: 2 * MiB }]);
    expect((await unmap.blockStatus(MiB, 2 * MiB)).every((e) => !e.data)).toBe(true);
    await env.engine.detach('tr-ignore');
    await env.engine.detach('tr-unmap');
  });

  test('many clients writing at once all land', async () => {
    const drive = await env.engine.attach({ id: 'many', path: await qcow2('many.qcow2', 32 * MiB, false), format: 'qcow2' });
    const clients = await Promise.all(Array.from({ length: 8 }, () => RawNbd.open(env.sock, 'many')));
    await Promise.all(
      clients.map(async ({ c }, i) => {
        const writes = [];
        for (let k = 0; k < 16; k++) writes.push(c.pwrite((i * 16 + k) * 256 * 1024, seededBytes(256 * 1024, i * 100 + k)));
        const rs = await Promise.all(writes);
        expect(rs.every((r) => r.error === 0)).toBe(true);
        c.disconnect();
      }),
    );
    for (let i = 0; i < 8; i++) {
      for (let k = 0; k < 16; k++) {
        expect(Buffer.from(await drive.read((i * 16 + k) * 256 * 1024, 256 * 1024)).equals(Buffer.from(seededBytes(256 * 1024, i * 100 + k)))).toBe(true);
      }
    }
    await env.engine.detach('many');
  });
});

describe('writes under a running backup', () => {
  test('an NBD write to a region the backup has not copied yet is copied before it lands', async () => {
    const src = await qcow2('cbw.qcow2', 32 * MiB);
    const drive: Drive = await env.engine.attach({ id: 'cbw', path: src, format: 'qcow2' });
    const target = join(env.dir, 'cbw-full.qcow2');
    // slow enough that the end of the disk is copied long after the NBD write
    const [job] = await runTransaction(env.engine, [
      { type: 'drive-backup', params: { device: 'cbw', target: { kind: 'file', path: target, format: 'qcow2', mode: 'absolute-paths' }, sync: 'full', speed: 8 * MiB } },
    ]);
    const { c } = await RawNbd.open(env.sock, 'cbw');
    expect((await c.pwrite(30 * MiB, Buffer.alloc(MiB, 0x99))).error).toBe(0);
    c.close();
    expect(Buffer.from(await drive.read(30 * MiB, MiB)).equals(Buffer.alloc(MiB, 0x99))).toBe(true);
    env.engine.jobs.setSpeed(job.id, 0);
    await job.gone;
    expect(job.error).toBeUndefined();
    // the backup holds the disk as it was when the job started
    const out = await runOk('qemu-io', ['-f', 'qcow2', '-c', `read -P 0x21 ${30 * MiB} ${MiB}`, target]);
    expect(out).not.toContain('Pattern verification failed');
    expect(out).toContain(`read ${MiB}/${MiB} bytes`);
    await env.engine.detach('cbw');
  });
});

describe('exports follow the drives', () => {
  test('attach exports (read-only drives read-only), detach disconnects and removes', async () => {
    const img = await qcow2('follow.qcow2');
    const ro = await qcow2('follow-ro.qcow2');
    await env.engine.attach({ id: 'follow', path: img, format: 'qcow2' });
    await env.engine.attach({ id: 'follow-ro', path: ro, format: 'qcow2', readOnly: true });
    const list = await runOk('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${env.sock}`]);
    const names = (JSON.parse(list) as { exports: { 'export-name': string; is_read_only: boolean }[] }).exports.map((e) => [e['export-name'], e.is_read_only]);
    expect(names).toContainEqual(['follow', false]);
    expect(names).toContainEqual(['follow-ro', true]);
    const { c, flags } = await RawNbd.open(env.sock, 'follow-ro');
    expect(flags & TF.READ_ONLY).toBe(TF.READ_ONLY);
    expect((await c.pwrite(0, Buffer.alloc(512))).error).toBe(ERR.EPERM);
    c.close();
    const { c: live } = await RawNbd.open(env.sock, 'follow');
    await env.engine.detach('follow');
    expect(await live.waitClosed()).toBe(true);
    expect(env.server.findExport('follow')).toBeUndefined();
    const gone = await RawNbd.connect(env.sock);
    await gone.hello();
    const info = await gone.option(OPT.INFO, Buffer.concat([Buffer.from([0, 0, 0, 6]), Buffer.from('follow'), Buffer.from([0, 0])]));
    expect(info.at(-1)!.type).toBe(0x80000006);
    gone.close();
    await env.engine.detach('follow-ro');
  });

  test('NBD_OPT_EXPORT_NAME with and without the 124 zero bytes', async () => {
    await env.engine.attach({ id: 'oldway', path: await qcow2('oldway.qcow2'), format: 'qcow2' });
    for (const flags of [1, 3]) {
      const c = await RawNbd.connect(env.sock);
      await c.greeting();
      c.clientFlags(flags);
      c.sendOption(OPT.EXPORT_NAME, Buffer.from('oldway'));
      const info = await c.read(flags === 3 ? 10 : 134);
      expect(Number(info.readBigUInt64BE(0))).toBe(16 * MiB);
      c.startDemux();
      const r = await c.pread(0, 512);
      expect(r.error).toBe(0);
      expect(r.data![0]).toBe(0x21);
      c.close();
    }
    await env.engine.detach('oldway');
  });
});
