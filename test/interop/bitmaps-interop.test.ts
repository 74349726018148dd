import { afterEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockEngine } from '../../src-main/engine/engine.js';
import { qemu, qemuImgCheck } from '../helpers/qemu.js';

const engines: BlockEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
});

/** Dirty extents of a persistent bitmap as QEMU's own tools read them: qemu-nbd -B + nbdinfo --map. */
async function qemuExtents(image: string, bitmap: string): Promise<{ offset: number; length: number }[]> {
  const sock = join(mkdtempSync(join(tmpdir(), 'tm-nbd-')), 's');
  const nbd = spawn('qemu-nbd', ['-r', '-t', '-f', 'qcow2', '-k', sock, '-B', bitmap, image], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 25));
    const r = spawnSync('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${bitmap}`, `nbd+unix:///?socket=${sock}`], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(r.stderr);
    return (JSON.parse(r.stdout) as { offset: number; length: number; type: number }[]).filter((e) => e.type === 1).map(({ offset, length }) => ({ offset, length }));
  } finally {
    nbd.kill();
    await new Promise((r) => nbd.once('exit', r));
  }
}

function merge(extents: { offset: number; length: number }[]): { offset: number; length: number }[] {
  const out: { offset: number; length: number }[] = [];
  for (const e of extents) {
    const last = out.at(-1);
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

describe('persistent bitmaps, both ways with QEMU', () => {
  it('a bitmap the engine saved reads in QEMU with the same name, granularity, flags and extents', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-bmi-'));
    const img = join(dir, 'd.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', img, '100M']);
    const engine = new BlockEngine();
    engines.push(engine);
    const d = await engine.attach({ id: 'd', path: img, format: 'qcow2' });
    const a = engine.bitmapCommands.add('d', 'alpha', { persistent: true, granularity: 4096 });
    const b = engine.bitmapCommands.add('d', 'beta', { persistent: true, granularity: 1 << 20, disabled: true });
    for (const [off, len] of [
      [0, 1],
      [65535, 2],
      [10 << 20, 300000],
      [(100 << 20) - 10, 10],
    ]) await d.write(off, new Uint8Array(len).fill(3));
    b.mark(50 << 20, 1);
    const ours = { alpha: a.dirtyExtents(), beta: b.dirtyExtents() };
    await engine.detach('d');
    expect(qemuImgCheck(img).ok).toBe(true);
    const info = JSON.parse(qemu('qemu-img', ['info', '--output=json', img]));
    expect(info['format-specific'].data.bitmaps).toEqual(
      expect.arrayContaining([
        { name: 'alpha', granularity: 4096, flags: ['auto'] },
        { name: 'beta', granularity: 1 << 20, flags: [] },
      ]),
    );
    expect(merge(await qemuExtents(img, 'alpha'))).toEqual(ours.alpha);
    expect(merge(await qemuExtents(img, 'beta'))).toEqual(ours.beta);
  });

  it('a bitmap QEMU created and dirtied loads in the engine with identical extents and count', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-bmi-'));
    const img = join(dir, 'q.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', img, '64M']);
    qemu('qemu-img', ['bitmap', '--add', '-g', '65536', img, 'fromqemu']);
    qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 1', '-c', 'write -P 2 1M 200k', '-c', 'write -z 40M 64k', '-c', 'write -P 3 63M 1M', img]);
    const theirs = merge(await qemuExtents(img, 'fromqemu'));
    const engine = new BlockEngine();
    engines.push(engine);
    const d = await engine.attach({ id: 'q', path: img, format: 'qcow2' });
    const b = d.bitmaps.get('fromqemu');
    expect(b.info()).toMatchObject({ persistent: true, recording: true, granularity: 65536 });
    expect(b.dirtyExtents()).toEqual(theirs);
    expect(b.count).toBe(theirs.reduce((n, e) => n + Math.ceil(e.length / 65536) * 65536, 0));
    // while the engine has it open, the bitmap is marked in use on disk (a crash now would show it)
    const during = JSON.parse(qemu('qemu-img', ['info', '-U', '--output=json', img]));
    expect(during['format-specific'].data.bitmaps[0].flags).toEqual(['in-use', 'auto']);
    await engine.detach('q');
    const after = JSON.parse(qemu('qemu-img', ['info', '--output=json', img]));
    expect(after['format-specific'].data.bitmaps[0].flags).toEqual(['auto']);
    expect(qemuImgCheck(img).ok).toBe(true);
  });
});

describe("QEMU's image locking", () => {
  it('refuses to open read-write an image a running QEMU holds, naming the holder', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-lock-'));
    const img = join(dir, 'busy.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', img, '16M']);
    const vm = spawn('qemu-system-x86_64', ['-nodefaults', '-display', 'none', '-machine', 'none', '-drive', `if=none,id=d0,file=${img},format=qcow2`], { stdio: 'ignore' });
    try {
      // wait until QEMU has taken its locks
      for (let i = 0; i < 200 && spawnSync('qemu-img', ['info', img]).status === 0; i++) await new Promise((r) => setTimeout(r, 25));
      const engine = new BlockEngine();
      engines.push(engine);
      await expect(engine.attach({ id: 'x', path: img, format: 'qcow2' })).rejects.toThrow(/in use by qemu-system-x86.*pid/);
      expect(engine.list()).toEqual([]);
      // read-only is fine (QEMU shares reads)
      await engine.attach({ id: 'ro', path: img, format: 'qcow2', readOnly: true });
    } finally {
      vm.kill();
      await new Promise((r) => vm.once('exit', r));
    }
  });
});
