import { describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, statSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { qemu, qemuImgCompare } from './helpers/qemu.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'bin', 'tidemark.mjs');

function tm(dataDir: string, ...args: string[]): { code: number; out: string; err: string } {
  // as a user would run it: a separate process, stdout/stderr/exit code observed
  const r = spawnSync(process.execPath, [bin, '--data-dir', dataDir, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

/**
 * Runs `tidemark ARGS` (a serve) while `fn` runs: waits until `pattern` matches what it has
 * printed on `stream`, hands the match to `fn`, then stops the server.
 */
async function whileServing<T>(args: string[], stream: 'stdout' | 'stderr', pattern: RegExp, fn: (match: RegExpExecArray) => T | Promise<T>): Promise<T> {
  const server = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise((r) => server.once('exit', r));
  try {
    const match = await new Promise<RegExpExecArray>((resolve, reject) => {
      let text = '';
      server[stream].on('data', (c: Buffer) => {
        text += c.toString();
        const m = pattern.exec(text);
        if (m) resolve(m);
      });
      server.once('exit', (code) => reject(new Error(`serve exited ${code}: ${text}`)));
    });
    return await fn(match);
  } finally {
    server.kill('SIGTERM');
    await exited;
  }
}

function image(dir: string, name: string): string {
  const p = join(dir, name);
  qemu('qemu-img', ['create', '-f', 'qcow2', p, '32M']);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x61 0 2M', p]);
  return p;
}

describe('tidemark CLI', () => {
  it('adds drives, backs up, lists chains as JSON, verifies, and fails loudly with exit codes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-cli-'));
    const data = join(dir, 'data');
    const img = image(dir, 'web.qcow2');
    expect(tm(data, 'drives', 'add', img, '--id', 'web')).toMatchObject({ code: 0 });
    const listed = JSON.parse(tm(data, '--json', 'drives', 'list').out);
    expect(listed).toMatchObject([{ id: 'web', format: 'qcow2', virtualSize: 32 << 20 }]);

    expect(tm(data, 'backup', '--drive', 'web').code).toBe(1); // no folder yet: a clear error, exit 1
    const first = tm(data, 'backup', '--drive', 'web', '--dest', join(dir, 'bk'));
    expect(first.code, first.err).toBe(0);
    // a write while Tidemark is closed, by QEMU's own tool: the persistent bitmap still tracks it
    qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x62 4M 64k', img]);
    const second = tm(data, 'backup', '--drive', 'web', '--json');
    expect(second.code, second.err).toBe(0);
    expect(JSON.parse(second.out)).toEqual([{ drive: 'web', kind: 'inc', outcome: 'completed', error: null }]);

    const chains = JSON.parse(tm(data, 'chains', '--json').out);
    expect(chains).toHaveLength(1);
    expect(chains[0].drive).toBe('web');
    expect(chains[0].points.map((p: { n: number; kind: string; status: string }) => [p.n, p.kind, p.status])).toEqual([
      [1, 'full', 'complete'],
      [2, 'inc', 'complete'],
    ]);
    for (const p of chains[0].points) {
      expect(p.file.startsWith('/')).toBe(true);
      expect(new Date(p.time).toISOString()).toBe(p.time);
    }
    // the incremental holds exactly the one 64 KiB write
    const map = JSON.parse(qemu('qemu-img', ['map', '--output=json', '-U', chains[0].points[1].file])) as { start: number; length: number; depth: number; data: boolean }[];
    expect(map.filter((m) => m.depth === 0 && m.data)).toEqual([expect.objectContaining({ start: 4 << 20, length: 65536 })]);

    expect(tm(data, 'verify', '--drive', 'web').code).toBe(0);
    // corrupt the incremental on disk: verify names it and exits 1
    const fd = openSync(chains[0].points[1].file, 'r+');
    writeSync(fd, Buffer.from('garbage'), 0, 7, 200000);
    closeSync(fd);
    const bad = tm(data, 'verify', '--drive', 'web');
    expect(bad.code).toBe(1);
    expect(bad.err).toMatch(/point 2 .*checksum/);

    expect(tm(data, 'drives', 'add', join(dir, 'missing.qcow2')).code).toBe(1);
    expect(tm(data, 'nonsense').code).toBe(2);
    expect(tm(data, 'backup', '--drive', 'web', '--full', '--diff').code).toBe(2);
  });

  it('restores a point by number or by time, to raw by default or qcow2, refuses an existing file without --force, and in place only with --yes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-cli-'));
    const data = join(dir, 'data');
    const img = image(dir, 'web.qcow2');
    expect(tm(data, 'drives', 'add', img, '--id', 'web').code).toBe(0);
    expect(tm(data, 'backup', '--drive', 'web', '--dest', join(dir, 'bk')).code).toBe(0);
    qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x62 4M 64k', img]);
    expect(tm(data, 'backup', '--drive', 'web').code).toBe(0);
    const points = JSON.parse(tm(data, 'chains', '--json').out)[0].points as { n: number; file: string; time: string }[];

    // by number, default format raw
    const one = join(dir, 'one.raw');
    const r1 = tm(data, 'restore', '--drive', 'web', '--point', '1', '--to', one);
    expect(r1.code, r1.err).toBe(0);
    expect(r1.out).toMatch(/Restored and verified: .*one\.raw \(content digest [0-9a-f]{64}\)/);
    expect(JSON.parse(qemu('qemu-img', ['info', '--output=json', one])).format).toBe('raw');
    expect(qemuImgCompare(points[0].file, one, 'qcow2', 'raw').same).toBe(true);
    // an existing file is refused, and kept; --force overwrites it
    const again = tm(data, 'restore', '--drive', 'web', '--point', '1', '--to', one);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/already exists/);
    expect(tm(data, 'restore', '--drive', 'web', '--point', '1', '--to', one, '--force').code).toBe(0);

    // by time (the latest point at or before it), to qcow2, as JSON
    const two = join(dir, 'two.qcow2');
    const r2 = tm(data, '--json', 'restore', '--drive', 'web', '--point', points[1].time, '--to', two, '--format', 'qcow2');
    expect(r2.code, r2.err).toBe(0);
    expect(JSON.parse(r2.out)).toMatchObject({ n: 2, outcome: 'completed', verified: true, format: 'qcow2' });
    expect(qemuImgCompare(points[1].file, two, 'qcow2', 'qcow2').same).toBe(true);

    // usage errors: exit 2, nothing done
    expect(tm(data, 'restore', '--drive', 'web', '--point', 'someday', '--to', join(dir, 'x.raw')).code).toBe(2);
    expect(tm(data, 'restore', '--drive', 'web', '--point', '1', '--in-place').code).toBe(2);
    expect(qemuImgCompare(points[1].file, img, 'qcow2', 'qcow2').same).toBe(true);
    // in place, confirmed: the drive reads as point 1 again
    const inPlace = tm(data, 'restore', '--drive', 'web', '--point', '1', '--in-place', '--yes');
    expect(inPlace.code, inPlace.err).toBe(0);
    expect(qemuImgCompare(points[0].file, img, 'qcow2', 'qcow2').same).toBe(true);
  });

  it('serve --nbd: the drives on an owner-only unix socket, as qemu-img and nbdinfo see them', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-cli-'));
    const img = image(dir, 'nbd.qcow2');
    const sock = join(dir, 'n.sock');
    const server = spawn(process.execPath, [bin, '--data-dir', join(dir, 'data'), 'serve', '--no-web', '--nbd', `unix:${sock}`, '--drive', `id=d0,file=${img},format=qcow2`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const exited = new Promise<never>((_, reject) => server.once('exit', (code) => reject(new Error(`serve exited ${code}`))));
      const until = Date.now() + 30_000;
      while (!existsSync(sock) && Date.now() < until) await Promise.race([exited, new Promise((r) => setTimeout(r, 50))]);
      expect(statSync(sock).mode & 0o777).toBe(0o600);
      const uri = `nbd+unix:///d0?socket=${sock}`;
      // the socket listens before the drives are attached: wait for the export
      let info = spawnSync('nbdinfo', ['--json', uri], { encoding: 'utf8' });
      while (info.status !== 0 && Date.now() < until) {
        await Promise.race([exited, new Promise((r) => setTimeout(r, 50))]);
        info = spawnSync('nbdinfo', ['--json', uri], { encoding: 'utf8' });
      }
      expect(info.status, info.stderr).toBe(0);
      expect(JSON.parse(info.stdout)).toMatchObject({ exports: [{ 'export-name': 'd0', 'export-size': 32 << 20 }] });
      // the export reads as the image does
      expect(qemu('qemu-img', ['compare', '-U', '-f', 'raw', '-F', 'qcow2', uri, img])).toContain('Images are identical');
    } finally {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
  });

  it('serve --nbd tcp: --nbd-tls-psk: a loopback TCP listener that lets in only clients holding a key', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-cli-'));
    const img = image(dir, 'tls.qcow2');
    const keys = join(dir, 'keys.psk');
    writeFileSync(keys, `alice:${'5a'.repeat(32)}\n`, { mode: 0o600 });
    // refused at once, with the reason: no TCP listener to apply TLS to; a keys file that cannot work
    const usage = tm(join(dir, 'data'), 'serve', '--no-web', '--nbd-tls-psk', keys);
    expect(usage.code).toBe(2);
    expect(usage.err).toContain('--nbd-tls-psk applies to the TCP listener');
    writeFileSync(join(dir, 'bad.psk'), 'alice\n');
    const bad = tm(join(dir, 'data'), 'serve', '--no-web', '--nbd', 'tcp:127.0.0.1:0', '--nbd-tls-psk', join(dir, 'bad.psk'));
    expect(bad.code).toBe(1);
    expect(bad.err).toContain(`${join(dir, 'bad.psk')} line 1: expected 'username:hexkey'`);
    expect(tm(join(dir, 'data'), 'serve', '--no-web', '--nbd', 'tcp:0.0.0.0:10809').err).toContain('takes a loopback address');
    // without a keys file TCP is plain, and serve says what that means
    await whileServing(['--data-dir', join(dir, 'plain'), 'serve', '--no-web', '--nbd', 'tcp:127.0.0.1:0'], 'stderr', /^.*\n/, ([warning]) => {
      expect(warning).toMatch(/Warning: NBD on TCP 127\.0\.0\.1:\d+ without TLS: every local user can read and write the drives/);
    });

    const serveTls = ['--data-dir', join(dir, 'data'), 'serve', '--no-web', '--nbd', 'tcp:127.0.0.1:0', '--nbd-tls-psk', keys, '--drive', `id=d0,file=${img},format=qcow2`];
    await whileServing(serveTls, 'stdout', /Tidemark NBD on TCP: nbds:\/\/(127\.0\.0\.1:\d+)\/<drive id> \(TLS-PSK required\)/, ([, address]) => {
      const info = spawnSync('nbdinfo', ['--json', `nbds://alice@${address}/d0?tls-psk-file=${keys}`], { encoding: 'utf8' });
      expect(info.status, info.stderr).toBe(0);
      expect(JSON.parse(info.stdout)).toMatchObject({ protocol: 'newstyle-fixed', TLS: true, exports: [{ 'export-name': 'd0', 'export-size': 32 << 20 }] });
      expect(spawnSync('nbdinfo', [`nbd://${address}/d0`], { encoding: 'utf8' }).status).not.toBe(0);
    });
  });

  it('talks to the running Tidemark that owns the data dir instead of opening files twice', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-cli-'));
    const data = join(dir, 'data');
    const img = image(dir, 'db.qcow2');
    await whileServing(['--data-dir', data, 'serve', '--web', '127.0.0.1:0'], 'stdout', /token=/, () => {
      const added = tm(data, 'drives', 'add', img, '--id', 'db');
      expect(added.code, added.err).toBe(0);
      writeFileSync(join(dir, 'marker'), '');
      // the server knows the drive: it was added through it, not behind its back
      const listed = JSON.parse(tm(data, '--json', 'drives', 'list').out);
      expect(listed.map((d: { id: string }) => d.id)).toEqual(['db']);
      const b = tm(data, 'backup', '--drive', 'db', '--dest', join(dir, 'bk'));
      expect(b.code, b.err).toBe(0);
    });
  });
});
