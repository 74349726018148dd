import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockEngine } from '../../src-main/engine/engine.js';
import { runTransaction } from '../../src-main/engine/jobs/transaction.js';
import type { BackupParams } from '../../src-main/engine/jobs/backup-create.js';
import { qemu, qemuImgCheck, qemuImgCompare } from '../helpers/qemu.js';

const MiB = 1 << 20;
const engines: BlockEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
});

async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'tm-faults-'));
  const img = join(dir, 'd0.qcow2');
  qemu('qemu-img', ['create', '-f', 'qcow2', img, '32M']);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 4M', img]);
  const engine = new BlockEngine();
  engines.push(engine);
  const drive = await engine.attach({ id: 'drive0', path: img, format: 'qcow2' });
  const events: [string, Record<string, unknown>][] = [];
  engine.jobs.on('event', (n, d) => events.push([n, d]));
  return { dir, img, engine, drive, events };
}

function until(events: [string, Record<string, unknown>][], name: string, from = 0): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const poll = () => {
      const hit = events.slice(from).find(([n]) => n === name);
      if (hit) return resolve(hit[1]);
      if (Date.now() - t0 > 60_000) return reject(new Error(`no ${name}`));
      setTimeout(poll, 10);
    };
    poll();
  });
}

function incremental(target: string, extra: Partial<BackupParams> = {}): BackupParams {
  return { device: 'drive0', sync: 'incremental', bitmap: 'b0', target: { kind: 'file', path: target, format: 'qcow2', mode: 'existing' }, ...extra };
}

async function anchor(s: Awaited<ReturnType<typeof setup>>): Promise<string> {
  const full = join(s.dir, 'full.qcow2');
  const from = s.events.length;
  await runTransaction(s.engine, [
    { type: 'block-dirty-bitmap-add', node: 'drive0', name: 'b0', options: {} },
    { type: 'drive-backup', params: { device: 'drive0', sync: 'full', target: { kind: 'file', path: full, format: 'qcow2', mode: 'absolute-paths' } } },
  ]);
  await until(s.events, 'BLOCK_JOB_COMPLETED', from);
  return full;
}

describe('backup failures (fault injection)', () => {
  it('fails cleanly at every target write, keeps every dirty bit, and a retry makes a correct backup', async () => {
    const s = await setup();
    await anchor(s);
    // scattered changes: many clusters, so many target writes
    for (let i = 0; i < 12; i++) await s.drive.write(i * 2 * MiB + 4096, new Uint8Array(70 * 1024).fill(i + 1));
    const dirty = s.drive.bitmaps.get('b0').count;
    const snap = join(s.dir, 'snap.raw');
    writeFileSync(snap, await s.drive.read(0, s.drive.virtualSize));

    // count the target writes of a clean run on a throwaway copy
    const probe = join(s.dir, 'probe.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', probe]);
    s.engine.bitmapCommands.add('drive0', 'probe');
    s.engine.bitmapCommands.merge('drive0', 'probe', ['b0']);
    let from = s.events.length;
    await runTransaction(s.engine, [{ type: 'drive-backup', params: { ...incremental(probe), bitmap: 'probe' } }]);
    await until(s.events, 'BLOCK_JOB_COMPLETED', from);
    const writes = s.engine.faults.counts.get(probe)!.write;
    expect(writes).toBeGreaterThan(10);

    for (const n of [1, 2, Math.floor(writes / 3), Math.floor(writes / 2), writes - 1]) {
      const target = join(s.dir, `inc-fail-${n}.qcow2`);
      qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', target]);
      s.engine.faults.clear();
      s.engine.faults.add({ path: target, op: 'write', errno: 'EIO', after: n - 1, once: true });
      from = s.events.length;
      await runTransaction(s.engine, [{ type: 'drive-backup', params: incremental(target) }]);
      const done = await until(s.events, 'BLOCK_JOB_COMPLETED', from);
      expect(done.error, `write ${n}`).toBe('Input/output error');
      const errs = s.events.slice(from).filter(([e]) => e === 'BLOCK_JOB_ERROR');
      expect(errs[0][1]).toEqual({ device: 'drive0', operation: 'write', action: 'report' });
      expect(s.drive.bitmaps.get('b0').info()).toMatchObject({ count: dirty, busy: false, recording: true });
    }
    s.engine.faults.clear();
    const good = join(s.dir, 'inc.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', good]);
    from = s.events.length;
    await runTransaction(s.engine, [{ type: 'drive-backup', params: incremental(good) }]);
    expect((await until(s.events, 'BLOCK_JOB_COMPLETED', from)).error).toBeUndefined();
    expect(s.drive.bitmaps.get('b0').count).toBe(0);
    expect(qemuImgCheck(good).ok).toBe(true);
    expect(qemuImgCompare(snap, good, 'raw', 'qcow2').same).toBe(true);
  });

  it("on-target-error=stop pauses the job, which resumes and completes once the cause is gone; read errors say 'read'", async () => {
    const s = await setup();
    await anchor(s);
    await s.drive.write(MiB, new Uint8Array(3 * MiB).fill(7));
    const target = join(s.dir, 'inc.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', target]);
    s.engine.faults.add({ path: target, op: 'write', errno: 'ENOSPC', after: 2 });
    const from = s.events.length;
    await runTransaction(s.engine, [{ type: 'drive-backup', params: incremental(target, { onTargetError: 'stop' }) }]);
    expect(await until(s.events, 'BLOCK_JOB_ERROR', from)).toEqual({ device: 'drive0', operation: 'write', action: 'stop' });
    await new Promise((r) => setTimeout(r, 100));
    const job = s.engine.jobs.get('drive0');
    expect(job.blockInfo()).toMatchObject({ status: 'paused', paused: true, 'io-status': 'nospace' });
    s.engine.faults.clear();
    s.engine.jobs.resume('drive0');
    const done = await until(s.events, 'BLOCK_JOB_COMPLETED', from);
    expect(done.error).toBeUndefined();
    // a metadata write that failed may leak a cluster (as in QEMU), never corrupt
    const check = qemuImgCheck(target);
    expect(check.ok || /leaked clusters/.test(check.out), check.out).toBe(true);
    expect(check.out).not.toMatch(/ERROR/);
    const snap = join(s.dir, 'snap.raw');
    writeFileSync(snap, await s.drive.read(0, s.drive.virtualSize));
    expect(qemuImgCompare(snap, target, 'raw', 'qcow2').same).toBe(true);

    // a failing source read is reported as operation "read"
    await s.drive.write(8 * MiB, new Uint8Array(MiB).fill(9));
    const t2 = join(s.dir, 'inc2.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'inc.qcow2', '-F', 'qcow2', t2]);
    s.engine.faults.add({ path: s.img, op: 'read', errno: 'EIO', offset: 0, length: 2 ** 40, after: 0 });
    const f2 = s.events.length;
    await runTransaction(s.engine, [{ type: 'drive-backup', params: incremental(t2) }]);
    const failed = await until(s.events, 'BLOCK_JOB_COMPLETED', f2);
    expect(failed.error).toBe('Input/output error');
    expect(s.events.slice(f2).find(([e]) => e === 'BLOCK_JOB_ERROR')![1]).toMatchObject({ operation: 'read' });
    s.engine.faults.clear();
  });

  it('point in time under load: the backup equals the drive at its start; the next incremental holds exactly the writes made meanwhile', async () => {
    const s = await setup();
    await s.drive.write(8 * MiB, new Uint8Array(8 * MiB).fill(0x33));
    const atStart = join(s.dir, 'at-start.raw');
    writeFileSync(atStart, await s.drive.read(0, s.drive.virtualSize));
    const full = join(s.dir, 'full.qcow2');
    const from = s.events.length;
    await runTransaction(s.engine, [
      { type: 'block-dirty-bitmap-add', node: 'drive0', name: 'b0', options: {} },
      { type: 'drive-backup', params: { device: 'drive0', sync: 'full', speed: 8 * MiB, target: { kind: 'file', path: full, format: 'qcow2', mode: 'absolute-paths' } } },
    ]);
    // several writers, overlapping regions, while the throttled job runs
    const written = new Set<number>();
    let x = 7;
    const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0) % n);
    const writers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; i < 25; i++) {
        const off = rnd(31 * MiB);
        const len = 1 + rnd(200 * 1024);
        for (let c = Math.floor(off / 65536); c <= Math.floor((off + len - 1) / 65536); c++) written.add(c);
        await s.drive.write(off, new Uint8Array(len).fill(0x80 + w));
        await new Promise((r) => setTimeout(r, rnd(20)));
      }
    });
    await Promise.all(writers);
    expect(s.engine.jobs.list().length, 'the job was still running while the writers ran').toBe(1);
    s.engine.jobs.setSpeed('drive0', 0);
    await until(s.events, 'BLOCK_JOB_COMPLETED', from);
    expect(qemuImgCompare(atStart, full, 'raw', 'qcow2').same).toBe(true);
    // the bitmap holds exactly the clusters written during the job
    const bits = s.drive.bitmaps.get('b0').dirtyExtents().flatMap((e) => Array.from({ length: Math.ceil(e.length / 65536) }, (_, k) => e.offset / 65536 + k));
    expect(new Set(bits)).toEqual(written);
    const atSecond = join(s.dir, 'at-second.raw');
    writeFileSync(atSecond, await s.drive.read(0, s.drive.virtualSize));
    const inc = join(s.dir, 'inc.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', inc]);
    const f2 = s.events.length;
    await runTransaction(s.engine, [{ type: 'drive-backup', params: incremental(inc) }]);
    await until(s.events, 'BLOCK_JOB_COMPLETED', f2);
    expect(qemuImgCompare(atSecond, inc, 'raw', 'qcow2').same).toBe(true);
    const map = JSON.parse(qemu('qemu-img', ['map', '--output=json', '-U', inc])) as { start: number; length: number; depth: number }[];
    const inTop = new Set(map.filter((m) => m.depth === 0).flatMap((m) => Array.from({ length: m.length / 65536 }, (_, k) => m.start / 65536 + k)));
    expect(inTop).toEqual(written);
  });
});
