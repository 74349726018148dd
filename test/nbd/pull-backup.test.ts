import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { exportPointInTime } from '../../src-main/engine/protocols/nbd/point-in-time.js';
import type { Drive } from '../../src-main/engine/drive.js';
import { CMD, ERR, RawNbd, extentsOf } from './helpers/raw-client.js';
import { nbdMap, run, runOk, startEnv, type NbdEnv } from './helpers/env.js';
import { prng, seededBytes } from '../helpers/qemu-tools.js';

/**
 * Pull-mode backup: a point in time exported read-only (fleecing image + frozen bitmap) while the
 * drive keeps being written; clients copy exactly that instant; finishing settles the bitmap.
 */

const MiB = 1024 * 1024;
const SIZE = 96 * MiB;
const G = 65536;
let env: NbdEnv;
let drive: Drive;

/** Random 64 KiB-aligned writes (and zeroings) to the drive until `stop` says so; returns the granules written. */
function writer(seed: number): { stop: () => Promise<Set<number>>; count: () => number } {
  const rnd = prng(seed);
  const touched = new Set<number>();
  let running = true;
  let n = 0;
  const loop = (async () => {
    while (running) {
      const g = Math.floor(rnd() * (SIZE / G));
      const len = G * (1 + Math.floor(rnd() * 3));
      const off = Math.min(g * G, SIZE - len);
      // some zeroing too: an area holding data at the point in time must not read as a hole later
      if (n % 4 === 3) await drive.writeZeroes(off, len, { mayUnmap: true });
      else await drive.write(off, seededBytes(len, seed * 1000 + n));
      for (let x = off; x < off + len; x += G) touched.add(x / G);
      n++;
      // let the event loop breathe: the NBD server shares it
      await new Promise((r) => setImmediate(r));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return touched;
    },
    count: () => n,
  };
}

function granules(extents: { offset: number; length: number }[]): Set<number> {
  const out = new Set<number>();
  for (const e of extents) for (let x = Math.floor(e.offset / G); x * G < e.offset + e.length; x++) out.add(x);
  return out;
}

beforeAll(async () => {
  env = await startEnv();
  const img = join(env.dir, 'pd.qcow2');
  await runOk('qemu-img', ['create', '-f', 'qcow2', img, String(SIZE)]);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x41 0 40M', '-c', 'write -P 0x42 60M 8M', img]);
  drive = await env.engine.attach({ id: 'pd', path: img, format: 'qcow2' });
  env.engine.bitmapCommands.add('pd', 'inc', { granularity: G, persistent: true });
  // the changes since the last backup
  await drive.write(MiB, seededBytes(3 * G, 1));
  await drive.write(50 * MiB + 100, seededBytes(5000, 2));
  await drive.writeZeroes(64 * MiB, MiB);
});

afterAll(async () => {
  await env?.close();
});

describe('pull-mode backup (point in time)', () => {
  test('nbdcopy and an incremental pull both get the point in time while writes continue; success leaves only the new writes', async () => {
    const inc = drive.bitmaps.find('inc')!;
    const before = granules(inc.dirtyExtents());
    const pit = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', scratchDir: env.dir });
    // nothing has written since: this is the point in time
    const atPit = Buffer.from(await drive.read(0, SIZE));
    expect(pit.name).toBe('pd@pit');
    expect(existsSync(pit.scratchPath)).toBe(true);
    expect(inc.busy).toBe(true);
    expect(() => env.engine.bitmapCommands.clear('pd', 'inc')).toThrow('currently in use');
    expect(env.engine.jobs.list().map((j) => j.id)).toContain('pit-pd');

    const w = writer(7);
    let touched: Set<number>;
    try {
      // a full copy with nbdcopy
      const full = join(env.dir, 'full.raw');
      await runOk('nbdcopy', ['--connections=2', env.uri(pit.name), full]);
      expect((await readFile(full)).equals(atPit)).toBe(true);

      // the frozen bitmap over NBD: the dirty areas as of the point in time, not the new writes
      const map = await nbdMap(env.uri(pit.name), 'qemu:dirty-bitmap:inc');
      const dirty = map
        .split('\n')
        .map((l) => l.split(' '))
        .filter((p) => p[2] === '1')
        .map((p) => ({ offset: Number(p[0]), length: Number(p[1]) }));
      expect(granules(dirty)).toEqual(before);

      // an incremental pull (qemu-spec §7.4): walk the bitmap context, read only the dirty extents
      const { c, contexts } = await RawNbd.open(env.sock, pit.name, { meta: ['qemu:dirty-bitmap:inc', 'base:allocation'] });
      expect([...contexts.values()]).toEqual(['base:allocation', 'qemu:dirty-bitmap:inc']);
      const previous = Buffer.from(atPit);
      // the "previous backup" differs exactly in the dirty areas
      for (const d of dirty) previous.fill(0xee, d.offset, d.offset + d.length);
      let at = 0;
      let dirtyBytes = 0;
      while (at < SIZE) {
        const st = await c.cmd(CMD.BLOCK_STATUS, at, Math.min(SIZE - at, 0xffffffff));
        const ext = extentsOf(st).get(2)!;
        for (const [len, flags] of ext) {
          if (flags & 1) {
            for (let o = at; o < at + len; o += 4 * MiB) {
              const n = Math.min(4 * MiB, at + len - o);
              const r = await c.pread(o, n);
              expect(r.error).toBe(0);
              r.data!.copy(previous, o);
            }
            dirtyBytes += len;
          }
          at += len;
        }
      }
      expect(previous.equals(atPit)).toBe(true);
      expect(dirtyBytes).toBe(before.size * G);
      // the export is read-only
      expect((await c.pwrite(0, Buffer.alloc(512))).error).toBe(ERR.EPERM);
      c.close();
    } finally {
      touched = await w.stop();
    }
    expect(w.count()).toBeGreaterThan(20);
    // the drive really moved on
    expect(Buffer.from(await drive.read(0, SIZE)).equals(atPit)).toBe(false);

    const result = await pit.finish({ success: true });
    expect(result).toEqual({ success: true, bitmap: 'reset-to-new-writes' });
    expect(inc.busy).toBe(false);
    // the bitmap now holds exactly the writes made after the point in time
    expect(granules(inc.dirtyExtents())).toEqual(touched);
    expect(env.server.findExport('pd@pit')).toBeUndefined();
    expect(existsSync(pit.scratchDir)).toBe(false);
    expect(env.engine.jobs.list()).toEqual([]);
    expect(drive.bitmaps.all().filter((b) => b.name === undefined)).toEqual([]);
  });

  test('a block-status of the point in time racing a guest write is answered as of the point in time', async () => {
    // 30M..30M+64k holds data at the point in time; the guest zeroes it while a status query of
    // the fleecing image is still looking through to the drive's image
    await drive.write(30 * MiB, Buffer.alloc(G, 0x41));
    const pit = await exportPointInTime(env.engine, env.server, { drive: 'pd', name: 'race', scratchDir: env.dir });
    const image = (pit.job.target as unknown as { driver: { backing: { blockStatus: (o: number, l: number) => Promise<unknown> } } }).driver;
    const backing = image.backing;
    const original = backing.blockStatus.bind(backing);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let held = 0;
    backing.blockStatus = async (o: number, l: number) => {
      held++;
      await gate;
      return original(o, l);
    };
    try {
      const { c } = await RawNbd.open(env.sock, 'race', { meta: ['base:allocation'] });
      const status = c.cmd(CMD.BLOCK_STATUS, 30 * MiB, G);
      while (held === 0) await new Promise((r) => setTimeout(r, 5));
      let zeroed = false;
      const zeroing = drive.writeZeroes(30 * MiB, G, { mayUnmap: true }).then(() => (zeroed = true));
      await new Promise((r) => setTimeout(r, 200));
      // the guest write waits for the query that started before it
      expect(zeroed).toBe(false);
      open();
      const st = await status;
      expect(extentsOf(st).get(0)).toEqual([[G, 0]]);
      await zeroing;
      // and afterwards the point in time still reads as it was
      backing.blockStatus = original;
      const r = await c.pread(30 * MiB, G);
      expect(r.data!.equals(Buffer.alloc(G, 0x41))).toBe(true);
      c.close();
    } finally {
      backing.blockStatus = original;
      open();
      await pit.finish({ success: false });
    }
  });

  test('a raw drive: the fleecing image sits on top of the raw file', async () => {
    const rawPath = join(env.dir, 'pr.raw');
    await writeFile(rawPath, seededBytes(16 * MiB, 5));
    const raw = await env.engine.attach({ id: 'pr', path: rawPath, format: 'raw' });
    try {
      const pit = await exportPointInTime(env.engine, env.server, { drive: 'pr', scratchDir: env.dir });
      const atPit = Buffer.from(await raw.read(0, 16 * MiB));
      await raw.write(0, Buffer.alloc(8 * MiB, 0xff));
      await raw.writeZeroes(12 * MiB, 4 * MiB);
      const out = join(env.dir, 'pr-copy.raw');
      await runOk('nbdcopy', [env.uri(pit.name), out]);
      expect((await readFile(out)).equals(atPit)).toBe(true);
      expect((await pit.finish({ success: true })).success).toBe(true);
    } finally {
      await env.engine.detach('pr');
    }
  });

  test('a failed pull keeps the bitmap (old bits and every write since)', async () => {
    const inc = drive.bitmaps.find('inc')!;
    const old = granules(inc.dirtyExtents());
    const pit = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', name: 'attempt', scratchDir: env.dir });
    await drive.write(80 * MiB, seededBytes(G, 3));
    const result = await pit.finish({ success: false });
    expect(result).toEqual({ success: false, bitmap: 'kept' });
    expect(granules(inc.dirtyExtents())).toEqual(new Set([...old, (80 * MiB) / G]));
    expect(existsSync(pit.scratchDir)).toBe(false);
  });

  test('removing the export (or the job dying) ends the point in time as a failure', async () => {
    const inc = drive.bitmaps.find('inc')!;
    const old = inc.count;
    const pit = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', scratchDir: env.dir });
    await env.server.removeExport('pd@pit');
    const result = await pit.finish({ success: true });
    expect(result.success).toBe(false);
    expect(result.bitmap).toBe('kept');
    expect(result.reason).toMatch(/export was removed/);
    expect(inc.count).toBe(old);
    expect(inc.busy).toBe(false);

    const pit2 = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', scratchDir: env.dir });
    await env.engine.jobs.cancel(pit2.job.id);
    await pit2.job.gone;
    const r2 = await pit2.finish({ success: true });
    expect(r2.success).toBe(false);
    expect(r2.reason).toMatch(/fleecing job 'pit-pd' ended/);
    expect(env.server.findExport('pd@pit')).toBeUndefined();
    expect(existsSync(pit2.scratchDir)).toBe(false);
  });

  test('closing the server ends a point in time and cleans up before close() returns', async () => {
    const { NbdServer } = await import('../../src-main/engine/protocols/nbd/server.js');
    const other = new NbdServer(env.engine, { exportAllDrives: false });
    await other.listenUnix(join(env.dir, 'other.sock'));
    const pit = await exportPointInTime(env.engine, other, { drive: 'pd', bitmap: 'inc', scratchDir: env.dir });
    const { c } = await RawNbd.open(join(env.dir, 'other.sock'), pit.name);
    await other.close();
    expect(await c.waitClosed()).toBe(true);
    expect(existsSync(pit.scratchDir)).toBe(false);
    expect(env.engine.jobs.list()).toEqual([]);
    expect(drive.bitmaps.find('inc')!.busy).toBe(false);
    expect((await pit.finish({ success: true })).success).toBe(false);
  });

  test('refusals leave nothing behind; a pull without a bitmap; clearBitmapOnSuccess: false', async () => {
    await expect(exportPointInTime(env.engine, env.server, { drive: 'nope' })).rejects.toThrow("Cannot find device='nope' nor node-name='nope'");
    await expect(exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'zz' })).rejects.toThrow("Dirty bitmap 'zz' not found");
    await expect(exportPointInTime(env.engine, env.server, { drive: 'pd', name: 'pd' })).rejects.toThrow("NBD server already has export named 'pd'");
    const blocker = await exportPointInTime(env.engine, env.server, { drive: 'pd', name: 'first', scratchDir: env.dir });
    // one backup at a time on a drive (QEMU's rule)
    await expect(exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', name: 'second', scratchDir: env.dir })).rejects.toThrow("Node 'pd' is busy");
    expect(drive.bitmaps.find('inc')!.busy).toBe(false);
    expect(drive.bitmaps.all().filter((b) => b.name === undefined)).toEqual([]);
    expect(env.server.findExport('second')).toBeUndefined();
    // the plain pull: contents only, base:allocation, no bitmap context
    const { c, contexts } = await RawNbd.open(env.sock, 'first', { meta: ['qemu:', 'base:allocation'] });
    expect([...contexts.values()]).toEqual(['base:allocation']);
    c.close();
    expect((await blocker.finish({ success: true })).bitmap).toBe('none');

    const inc = drive.bitmaps.find('inc')!;
    const old = inc.count;
    const keep = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', clearBitmapOnSuccess: false, scratchDir: env.dir });
    expect((await keep.finish({ success: true })).bitmap).toBe('kept');
    expect(inc.count).toBe(old);
  });

  test('the drive cannot be detached under a point in time; after it the image is clean and keeps its bitmap', async () => {
    const pit = await exportPointInTime(env.engine, env.server, { drive: 'pd', bitmap: 'inc', scratchDir: env.dir });
    const path = drive.driver.path;
    const count = drive.bitmaps.find('inc')!.count;
    await expect(env.engine.detach('pd')).rejects.toThrow("is in use by backup job 'pit-pd'");
    expect((await pit.finish({ success: false })).bitmap).toBe('kept');
    await env.engine.detach('pd');
    expect(existsSync(pit.scratchDir)).toBe(false);
    expect((await run('qemu-img', ['check', path])).code).toBe(0);
    const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', path])) as { 'format-specific': { data: { bitmaps: { name: string; flags: string[] }[] } } };
    expect(info['format-specific'].data.bitmaps).toEqual([{ name: 'inc', flags: ['auto'], granularity: G }]);
    drive = await env.engine.attach({ id: 'pd', path, format: 'qcow2' });
    expect(drive.bitmaps.find('inc')!.count).toBe(count);
  });
});
