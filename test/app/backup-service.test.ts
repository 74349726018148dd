import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TidemarkApp } from '../../src-main/app/app.js';
import type { ChainSummary } from '../../src-shared/api/domain.js';
import { qemu, qemuImgCheck, qemuImgCompare } from '../helpers/qemu.js';
import { appHarness } from '../helpers/apps.js';

const MiB = 1 << 20;
const { start, stop, crash, mount } = appHarness();

function world(): { root: string; dataDir: string; images: string; dest: string } {
  const root = mkdtempSync(join(tmpdir(), 'tm-backup-'));
  const w = { root, dataDir: join(root, 'data'), images: join(root, 'images'), dest: join(root, 'backups') };
  mkdirSync(w.images);
  mkdirSync(w.dest);
  return w;
}

function makeDrive(images: string, name: string, size = '32M', data: [number, string, string][] = [[0x5a, '0', '4M']]): string {
  const path = join(images, `${name}.qcow2`);
  qemu('qemu-img', ['create', '-f', 'qcow2', path, size]);
  if (data.length) qemu('qemu-io', ['-f', 'qcow2', ...data.flatMap(([p, o, l]) => ['-c', `write -P ${p} ${o} ${l}`]), path]);
  return path;
}

async function settle(app: TidemarkApp, driveId: string): Promise<ChainSummary[]> {
  for (let i = 0; i < 600; i++) {
    const chains = app.backups.list(driveId);
    if (!chains.some((c) => c.points.some((p) => p.status === 'running'))) return chains;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('backup did not finish');
}

/** The drive's guest-visible bytes right now, as a raw file (the reference for "the drive at that point"). */
async function snapshot(app: TidemarkApp, driveId: string, path: string): Promise<void> {
  const d = app.engine.get(driveId)!;
  writeFileSync(path, await d.read(0, d.virtualSize));
}

describe('Back up now', () => {
  it('first click anchors a chain, the second adds an incremental whose chain equals the drive at that point', async () => {
    const w = world();
    const app = await start(w.dataDir);
    const img = makeDrive(w.images, 'vm1');
    await app.drives.add({ path: img, id: 'vm1' });
    app.backups.setSettings('vm1', { backupDir: w.dest });

    const [first] = await app.backups.run({ driveId: 'vm1' });
    expect(first.kind).toBe('full');
    expect(first.reason).toMatch(/First backup/);
    await snapshot(app, 'vm1', join(w.root, 'at1.raw'));
    let chains = await settle(app, 'vm1');
    expect(chains).toHaveLength(1);
    const anchor = chains[0].points[0];
    expect(anchor).toMatchObject({ n: 1, kind: 'full', status: 'complete' });
    expect(anchor.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(anchor.file).toMatch(/\/vm1\/\d{8}T\d{6}Z\/001-full-\d{8}T\d{6}Z\.qcow2$/);
    expect(qemuImgCheck(anchor.file).ok).toBe(true);
    expect(qemuImgCompare(join(w.root, 'at1.raw'), anchor.file, 'raw', 'qcow2').same).toBe(true);

    const drive = app.engine.get('vm1')!;
    await drive.write(MiB, new Uint8Array(64 * 1024).fill(0x11));
    await drive.write(20 * MiB, new Uint8Array(300 * 1024).fill(0x22));
    const [second] = await app.backups.run({ driveId: 'vm1' });
    expect(second.kind).toBe('inc');
    await snapshot(app, 'vm1', join(w.root, 'at2.raw'));
    // writes after the point in time are not in the backup
    await drive.write(0, new Uint8Array(4096).fill(0x33));
    chains = await settle(app, 'vm1');
    const inc = chains[0].points[1];
    expect(inc).toMatchObject({ n: 2, kind: 'inc', status: 'complete' });
    expect(qemuImgCheck(inc.file).ok).toBe(true);
    expect(qemuImgCompare(join(w.root, 'at2.raw'), inc.file, 'raw', 'qcow2').same).toBe(true);
    // the incremental holds only what changed (a few clusters), backed by the anchor by a relative name
    expect(JSON.parse(qemu('qemu-img', ['info', '-U', '--output=json', inc.file]))['backing-filename']).toBe(anchor.file.split('/').pop());
    expect(inc.fileSize!).toBeLessThan(2 * MiB);
    // the manifest restates the catalog
    const manifest = JSON.parse(readFileSync(join(chains[0].folder, 'chain.json'), 'utf8'));
    expect(manifest.points.map((p: { kind: string }) => p.kind)).toEqual(['full', 'inc']);
  });

  it('starts a new chain and says why when the bitmap is gone, or was left inconsistent by a crash', async () => {
    const w = world();
    let app = await start(w.dataDir);
    await app.drives.add({ path: makeDrive(w.images, 'vm2'), id: 'vm2' });
    app.backups.setSettings('vm2', { backupDir: w.dest });
    await app.backups.run({ driveId: 'vm2' });
    const chainsBefore = await settle(app, 'vm2');
    const bitmap = chainsBefore[0].bitmap;
    await app.bitmaps.remove({ driveId: 'vm2', name: bitmap });
    const [r] = await app.backups.run({ driveId: 'vm2' });
    expect(r.kind).toBe('full');
    expect(r.reason).toMatch(/is gone/);
    const chains = await settle(app, 'vm2');
    expect(chains).toHaveLength(2);
    expect(chains[0].active).toBe(false);
    expect(chains[1].active).toBe(true);

    // a clean restart keeps the chain going: the bitmap was stored in the image at close
    await stop(app);
    app = await start(w.dataDir);
    expect(app.engine.get('vm2')!.bitmaps.find(chains[1].bitmap)?.info()).toMatchObject({ recording: true, persistent: true });
    await app.engine.get('vm2')!.write(0, new Uint8Array(512));
    // a crash: the process dies without closing the image, so its bitmap stays "in use" on disk
    await crash(app);
    app = await start(w.dataDir);
    const [after] = await app.backups.run({ driveId: 'vm2' });
    expect(after.kind).toBe('full');
    expect(after.reason).toMatch(/not saved cleanly/);
    await settle(app, 'vm2');
  });

  it('refuses clearly before starting when the destination is too small, changing nothing', async () => {
    const w = world();
    const small = join(w.root, 'small');
    mkdirSync(small);
    mount(small, '2M');
    const app = await start(w.dataDir);
    await app.drives.add({ path: makeDrive(w.images, 'vm3'), id: 'vm3' });
    await expect(app.backups.run({ driveId: 'vm3', dest: small })).rejects.toThrow(/Not enough free space/);
    expect(app.backups.list('vm3')).toEqual([]);
    expect(app.engine.get('vm3')!.bitmaps.named()).toEqual([]);
  });

  it('ENOSPC mid-backup: the attempt fails and is cleaned up, the chain and its bitmap stay intact, a retry works', async () => {
    const w = world();
    const tight = join(w.root, 'tight');
    mkdirSync(tight);
    mount(tight, '100M');
    const app = await start(w.dataDir);
    await app.drives.add({ path: makeDrive(w.images, 'vm4', '64M', [[0x5a, '0', '2M']]), id: 'vm4' });
    await app.backups.run({ driveId: 'vm4', dest: tight });
    await settle(app, 'vm4');
    const drive = app.engine.get('vm4')!;
    await drive.write(4 * MiB, new Uint8Array(24 * MiB).fill(0x44));
    const bitmapName = app.backups.list('vm4')[0].bitmap;
    const dirty = drive.bitmaps.get(bitmapName).count;
    expect(dirty).toBe(24 * MiB);
    // slow backup; then the disk fills up under it
    await app.backups.run({ driveId: 'vm4', speed: 4 * MiB });
    writeFileSync(join(tight, 'filler'), new Uint8Array(0));
    try {
      writeFileSync(join(tight, 'filler'), new Uint8Array(100 * MiB));
    } catch {
      // ENOSPC for the filler too: the disk is full, which is the point
    }
    let chains = await settle(app, 'vm4');
    const failed = chains[0].points[1];
    expect(failed.status).toBe('failed');
    expect(failed.n).toBeNull();
    expect(failed.error).toMatch(/No space left on device/);
    expect(existsSync(failed.file)).toBe(false);
    // no dirty bit was lost
    expect(drive.bitmaps.get(bitmapName).count).toBe(dirty);
    // make room, retry: an incremental into the same chain
    const { unlinkSync } = await import('node:fs');
    unlinkSync(join(tight, 'filler'));
    const [retry] = await app.backups.run({ driveId: 'vm4' });
    expect(retry.kind).toBe('inc');
    chains = await settle(app, 'vm4');
    expect(chains).toHaveLength(1);
    expect(chains[0].points.map((p) => p.status)).toEqual(['complete', 'failed', 'complete']);
    expect(readdirSync(chains[0].folder).filter((f) => f.endsWith('.qcow2'))).toHaveLength(2);
  });

  it('a machine group backs up all drives at one point in time, or none when one fails', async () => {
    const w = world();
    const tight = join(w.root, 'tight');
    mkdirSync(tight);
    mount(tight, '100M');
    const app = await start(w.dataDir);
    await app.drives.add({ path: makeDrive(w.images, 'g1'), id: 'g1' });
    await app.drives.add({ path: makeDrive(w.images, 'g2'), id: 'g2' });
    app.groups.set('vmA', ['g1', 'g2'], new Date().toISOString());
    app.backups.setSettings('g1', { backupDir: w.dest });
    app.backups.setSettings('g2', { backupDir: tight });
    const started = await app.backups.run({ group: 'vmA' });
    expect(started.map((s) => s.kind)).toEqual(['full', 'full']);
    await settle(app, 'g1');
    await settle(app, 'g2');
    const t1 = app.backups.list('g1')[0].points[0].time;
    expect(app.backups.list('g2')[0].points[0].time).toBe(t1);

    await app.engine.get('g1')!.write(0, new Uint8Array(MiB).fill(1));
    await app.engine.get('g2')!.write(0, new Uint8Array(24 * MiB).fill(2));
    await app.backups.run({ group: 'vmA', speed: 4 * MiB });
    try {
      writeFileSync(join(tight, 'filler'), new Uint8Array(100 * MiB));
    } catch {
      // the disk is full now
    }
    await settle(app, 'g1');
    await settle(app, 'g2');
    for (const id of ['g1', 'g2']) {
      const pts = app.backups.list(id)[0].points;
      expect(pts.map((p) => p.status)).toEqual(['complete', 'failed']);
    }
  });
});
