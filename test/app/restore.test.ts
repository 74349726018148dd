import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import type { TidemarkApp } from '../../src-main/app/app.js';
import type { RestoreReport } from '../../src-shared/api/domain.js';
import { qemu, qemuImgCheck, qemuImgCompare, umount } from '../helpers/qemu.js';
import { appHarness } from '../helpers/apps.js';
import { JobsRepo } from '../../src-main/app/catalog/jobs-repo.js';
import { PARTIAL_SUFFIX } from '../../src-main/engine/jobs/restore-job.js';

const MiB = 1 << 20;
const harness = appHarness();

async function setup(size = '64M') {
  const root = mkdtempSync(join(tmpdir(), 'tm-restore-'));
  const img = join(root, 'vm.qcow2');
  qemu('qemu-img', ['create', '-f', 'qcow2', img, size]);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x10 0 8M', img]);
  const app = await harness.start(join(root, 'data'));
  await app.drives.add({ path: img, id: 'vm' });
  app.backups.setSettings('vm', { backupDir: join(root, 'bk') });
  return { root, img, app, drive: app.engine.get('vm')! };
}

async function backUp(app: TidemarkApp, snapshotPath: string, force?: 'full' | 'diff'): Promise<void> {
  await app.backups.run({ driveId: 'vm', force });
  // the point in time is the job's start: snapshot now, before any later write
  const d = app.engine.get('vm')!;
  writeFileSync(snapshotPath, await d.read(0, d.virtualSize));
  for (let i = 0; i < 600 && app.backups.list('vm').some((c) => c.points.some((p) => p.status === 'running')); i++) await new Promise((r) => setTimeout(r, 50));
}

async function restore(app: TidemarkApp, n: number, target: Parameters<TidemarkApp['restore']['start']>[2], confirm?: string): Promise<RestoreReport> {
  const started = await app.restore.start('vm', n, target, confirm);
  let r = started;
  for (let i = 0; i < 1200 && r.outcome === 'running'; i++) {
    await new Promise((res) => setTimeout(res, 50));
    r = app.restore.report(started.jobId);
  }
  return r;
}

/** A seeded sequence of writes: data, zeroes, overwrites, unaligned edges. */
async function scribble(drive: TidemarkApp['engine'] extends { get(id: string): infer D } ? NonNullable<D> : never, seed: number): Promise<void> {
  let x = seed;
  const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0) % n);
  for (let i = 0; i < 12; i++) {
    const offset = rnd(60 * MiB) + (rnd(2) ? 0 : rnd(4096));
    const length = 1 + rnd(512 * 1024);
    if (rnd(5) === 0) await drive.writeZeroes(offset, length);
    else await drive.write(offset, new Uint8Array(length).fill(1 + rnd(250)));
  }
}

describe('restore', () => {
  it('restores every point of incremental and differential chains exactly, to raw and qcow2', async () => {
    const { root, app, drive } = await setup();
    const snaps: string[] = [];
    for (let i = 0; i < 4; i++) {
      if (i > 0) await scribble(drive, i);
      snaps.push(join(root, `snap${snaps.length + 1}.raw`));
      await backUp(app, snaps.at(-1)!);
    }
    app.backups.setSettings('vm', { backupMode: 'differential' });
    for (let i = 0; i < 3; i++) {
      await scribble(drive, 100 + i);
      snaps.push(join(root, `snap${snaps.length + 1}.raw`));
      await backUp(app, snaps.at(-1)!);
    }
    const chains = app.backups.list('vm');
    expect(chains.map((c) => c.points.map((p) => p.kind).join(','))).toEqual(['full,inc,inc,inc', 'full,diff,diff']);
    const points = chains.flatMap((c) => c.points);
    for (let n = 1; n <= snaps.length; n++) {
      const format = n % 2 ? 'raw' : 'qcow2';
      const to = join(root, `restored${n}.${format}`);
      const r = await restore(app, n, { kind: 'file', path: to, format, compress: format === 'qcow2' && n === 4 });
      expect(r, JSON.stringify(r)).toMatchObject({ outcome: 'completed', verified: true });
      expect(r.sourceHash).toBe(r.restoredHash);
      expect(qemuImgCompare(snaps[n - 1], to, 'raw', format).same, `point ${n}`).toBe(true);
      if (format === 'qcow2') expect(qemuImgCheck(to).ok).toBe(true);
      // the same chain flattened by QEMU's own tool reads the same
      const byQemu = join(root, `qemu${n}.raw`);
      qemu('qemu-img', ['convert', '-U', '-O', 'raw', points[n - 1].file, byQemu]);
      expect(qemuImgCompare(byQemu, to, 'raw', format).same).toBe(true);
    }
    // refuses to overwrite an existing file unless asked
    await expect(app.restore.start('vm', 1, { kind: 'file', path: join(root, 'restored1.raw'), format: 'raw' })).rejects.toThrow(/already exists/);
  });

  it('in place: applies the verified point through the engine, so a recording bitmap sees exactly what changed', async () => {
    const { root, app, drive } = await setup();
    await backUp(app, join(root, 's1.raw'));
    const b = app.engine.bitmapCommands.add('vm', 'watch');
    await drive.write(3 * MiB, new Uint8Array(100 * 1024).fill(0x77));
    await drive.writeZeroes(40 * MiB, MiB);
    app.engine.bitmapCommands.clear('vm', 'watch');
    await expect(app.restore.start('vm', 1, { kind: 'in-place' })).rejects.toThrow(/Confirm/);
    const r = await restore(app, 1, { kind: 'in-place' }, 'vm');
    expect(r).toMatchObject({ outcome: 'completed', verified: true });
    const now = join(root, 'now.raw');
    writeFileSync(now, await drive.read(0, drive.virtualSize));
    expect(qemuImgCompare(join(root, 's1.raw'), now, 'raw', 'raw').same).toBe(true);
    // only the 100 KiB at 3 MiB differed (the zeroed MiB was zero in the backup too)
    expect(b.dirtyExtents()).toEqual([{ offset: 3 * MiB, length: 2 * 65536 }]);
    expect(readdirSync(root).filter((f) => f.includes('tidemark-partial'))).toEqual([]);
  });

  it('a corrupted middle link: the pre-flight says which file and which points are still restorable; nothing is written', async () => {
    const { root, app, drive } = await setup();
    await backUp(app, join(root, 's1.raw'));
    await drive.write(0, new Uint8Array(MiB).fill(1));
    await backUp(app, join(root, 's2.raw'));
    await drive.write(MiB, new Uint8Array(MiB).fill(2));
    await backUp(app, join(root, 's3.raw'));
    const middle = app.backups.list('vm')[0].points[1].file;
    const fd = openSync(middle, 'r+');
    writeSync(fd, Buffer.from('bitrot'), 0, 6, 70000);
    closeSync(fd);
    const pre = await app.restore.preflight('vm', 3, { kind: 'file', path: join(root, 'out.raw'), format: 'raw' });
    expect(pre.ok).toBe(false);
    expect(pre.checks.find((c) => c.id === 'chain')).toMatchObject({ ok: false, detail: expect.stringMatching(/Link 2 of 3 .*checksum/) });
    await expect(app.restore.start('vm', 3, { kind: 'file', path: join(root, 'out.raw'), format: 'raw' })).rejects.toThrow(/Points still restorable: 1/);
    expect(existsSync(join(root, 'out.raw'))).toBe(false);
    const ok = await restore(app, 1, { kind: 'file', path: join(root, 'one.raw'), format: 'raw' });
    expect(ok.outcome).toBe('completed');
    // the middle link gone altogether: named as missing, point 1 still offered
    rmSync(middle);
    const gone = await app.restore.preflight('vm', 3, { kind: 'file', path: join(root, 'out.raw'), format: 'raw' });
    expect(gone.checks.find((c) => c.id === 'chain')).toMatchObject({ ok: false, detail: expect.stringMatching(/Link 2 of 3 .*missing/i) });
    expect(gone.restorable).toEqual([1]);
  });

  it('ENOSPC mid-restore and cancel mid-restore leave no file and the drive untouched', async () => {
    const { root, app, drive } = await setup('256M');
    await drive.write(0, new Uint8Array(96 * MiB).fill(0x5c));
    await backUp(app, join(root, 's1.raw'));
    const small = join(root, 'small');
    mkdirSync(small);
    harness.mount(small, '120M');
    const started = await app.restore.start('vm', 1, { kind: 'file', path: join(small, 'out.raw'), format: 'raw' });
    writeFileSync(join(small, 'filler1'), new Uint8Array(0));
    try {
      writeFileSync(join(small, 'filler1'), new Uint8Array(60 * MiB));
    } catch {
      // full
    }
    let r = app.restore.report(started.jobId);
    for (let i = 0; i < 1200 && r.outcome === 'running'; i++) {
      await new Promise((res) => setTimeout(res, 50));
      r = app.restore.report(started.jobId);
    }
    expect(r.outcome).toBe('failed');
    expect(r.error).toMatch(/No space left on device/);
    expect(readdirSync(small).filter((f) => f.startsWith('out'))).toEqual([]);

    const c = await app.restore.start('vm', 1, { kind: 'file', path: join(root, 'cancel.raw'), format: 'raw' });
    await app.jobs.cancel(c.jobId);
    for (let i = 0; i < 400 && app.restore.report(c.jobId).outcome === 'running'; i++) await new Promise((res) => setTimeout(res, 25));
    expect(app.restore.report(c.jobId).outcome).toBe('cancelled');
    expect(readdirSync(root).filter((f) => f.startsWith('cancel'))).toEqual([]);
    // the drive reads exactly as at the backup
    const now = join(root, 'now.raw');
    writeFileSync(now, await drive.read(0, drive.virtualSize));
    expect(qemuImgCompare(join(root, 's1.raw'), now, 'raw', 'raw').same).toBe(true);
  });

  it('a restore cut off by a dead process: the next start removes its partial file and records the job failed', async () => {
    const { root, app } = await setup();
    const partial = join(root, `lost.raw${PARTIAL_SUFFIX}`);
    writeFileSync(partial, 'half a disk');
    const keep = join(root, 'not-a-partial.raw');
    writeFileSync(keep, 'a user file');
    const repo = new JobsRepo(app.catalog.db);
    repo.start({ jobId: 'restore-vm-lost', kind: 'restore', label: 'restore', driveId: 'vm', startedAt: new Date().toISOString(), scratchFile: partial });
    // only files named like a restore's partial are ever removed, whatever the catalog says
    repo.start({ jobId: 'restore-vm-odd', kind: 'restore', label: 'restore', driveId: 'vm', startedAt: new Date().toISOString(), scratchFile: keep });
    await harness.crash(app);
    const again = await harness.start(join(root, 'data'));
    expect(existsSync(partial)).toBe(false);
    expect(existsSync(keep)).toBe(true);
    const lost = again.jobs.history().find((h) => h.jobId === 'restore-vm-lost')!;
    expect(lost.outcome).toBe('failed');
    expect(lost.error).toBe('Tidemark stopped while this job was running.');
  });

  it('a speed limit given at the start is the job’s, shown with its progress and changeable', async () => {
    const { root, app } = await setup();
    await backUp(app, join(root, 'snap1.raw'));
    const started = await app.restore.start('vm', 1, { kind: 'file', path: join(root, 'slow.raw'), format: 'raw' }, undefined, 1 << 20);
    const job = app.jobs.list().find((j) => j.id === started.jobId)!;
    expect(job.speedLimit).toBe(1 << 20);
    app.jobs.setSpeed(started.jobId, 0);
    expect(app.jobs.list().find((j) => j.id === started.jobId)?.speedLimit ?? 0).toBe(0);
    const r = await restore(app, 1, { kind: 'file', path: join(root, 'fast.raw'), format: 'raw' });
    expect(r.outcome).toBe('completed');
  });

  it('a target on a read-only mount: the pre-flight says so and nothing starts', async () => {
    const { root, app } = await setup();
    await backUp(app, join(root, 'snap1.raw'));
    const ro = join(root, 'ro');
    mkdirSync(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1M', 'tmpfs', ro]);
    try {
      const target = { kind: 'file' as const, path: join(ro, 'out.raw'), format: 'raw' as const };
      const pre = await app.restore.preflight('vm', 1, target);
      expect(pre.ok).toBe(false);
      expect(pre.checks.find((c) => c.id === 'target')).toMatchObject({ ok: false, detail: `Tidemark cannot write to '${ro}' (read-only or no permission).` });
      await expect(app.restore.start('vm', 1, target)).rejects.toThrow(/cannot write to/);
      expect(readdirSync(ro)).toEqual([]);
    } finally {
      umount(ro);
    }
  });
});

