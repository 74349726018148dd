import { describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, mkdtempSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemu } from '../helpers/qemu.js';
import { appHarness } from '../helpers/apps.js';

const { start, stop } = appHarness();

describe('drives', () => {
  it('creates raw and qcow2 drives, lists them with sizes, and remembers them across a restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-drives-'));
    const data = join(dir, 'data');
    let app = await start(data);
    const raw = await app.drives.create({ path: join(dir, 'a.raw'), format: 'raw', size: '10G' });
    expect(raw).toMatchObject({ id: 'a', format: 'raw', virtualSize: 10 * 2 ** 30, state: 'online' });
    expect(raw.actualSize).toBeLessThan(1 << 20); // sparse
    const base = await app.drives.create({ path: join(dir, 'base.qcow2'), format: 'qcow2', size: '1G', clusterSize: 65536 });
    expect(base).toMatchObject({ format: 'qcow2', clusterSize: 65536, virtualSize: 2 ** 30 });
    const top = await app.drives.create({ path: join(dir, 'top.qcow2'), format: 'qcow2', backingFile: 'base.qcow2', id: 'top' });
    expect(top.virtualSize).toBe(2 ** 30);
    expect(top.backingChain).toEqual([{ path: join(dir, 'base.qcow2'), format: 'qcow2', virtualSize: 2 ** 30 }]);
    expect(JSON.parse(qemu('qemu-img', ['info', '-U', '--output=json', join(dir, 'top.qcow2')]))['backing-filename']).toBe('base.qcow2');
    await stop(app);
    app = await start(data);
    expect((await app.drives.list()).map((d) => [d.id, d.state])).toEqual([
      ['a', 'online'],
      ['base', 'online'],
      ['top', 'online'],
    ]);
    // a file gone while Tidemark was closed: still listed, offline, with the reason
    await stop(app);
    rmSync(join(dir, 'a.raw'));
    app = await start(data);
    const a = (await app.drives.list()).find((d) => d.id === 'a')!;
    expect(a).toMatchObject({ state: 'offline', problem: expect.stringMatching(/No such file/) });
    await app.drives.remove('a');
    expect((await app.drives.list()).map((d) => d.id)).toEqual(['base', 'top']);
  });

  it('refuses bad input with a clear error and changes nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-drives-'));
    const app = await start(join(dir, 'data'));
    const img = join(dir, 'disk.qcow2');
    qemu('qemu-img', ['create', '-f', 'qcow2', img, '16M']);
    await app.drives.add({ path: img, id: 'disk' });
    const sub = join(dir, 'folder');
    mkdirSync(sub);
    const locked = join(dir, 'locked.raw');
    writeFileSync(locked, new Uint8Array(4096));
    chmodSync(locked, 0o000);
    const empty = join(dir, 'empty.raw');
    writeFileSync(empty, '');
    const cases: [() => Promise<unknown>, RegExp, string][] = [
      [() => app.drives.add({ path: join(dir, 'missing.raw') }), /No such file/, 'FILE_NOT_FOUND'],
      [() => app.drives.add({ path: sub }), /not a regular file/, 'NOT_A_FILE'],
      [() => app.drives.add({ path: img }), /already attached as drive 'disk'/, 'ALREADY_EXISTS'],
      [() => app.drives.add({ path: empty }), /empty/, 'INVALID_SIZE'],
      [() => app.drives.create({ path: join(dir, 'z.raw'), format: 'raw', size: '0' }), /0 bytes/, 'INVALID_SIZE'],
      [() => app.drives.create({ path: join(dir, 'z.raw'), format: 'raw', size: '65T' }), /64 TiB/, 'INVALID_SIZE'],
      [() => app.drives.create({ path: join(dir, 'z.raw'), format: 'raw', size: '1G', id: 'disk' }), /already exists/, 'ALREADY_EXISTS'],
      [() => app.drives.create({ path: img, format: 'raw', size: '1G' }), /never overwrites/, 'ALREADY_EXISTS'],
      [() => app.drives.create({ path: join(dir, 'nofolder', 'x.raw'), format: 'raw', size: '1G' }), /does not exist/, 'FILE_NOT_FOUND'],
    ];
    if (process.getuid?.() !== 0) cases.push([() => app.drives.add({ path: locked }), /cannot be read/, 'PERMISSION_DENIED']);
    for (const [call, message, code] of cases) {
      await expect(call()).rejects.toMatchObject({ code, message: expect.stringMatching(message) });
    }
    expect((await app.drives.list()).map((d) => d.id)).toEqual(['disk']);
    expect(existsSync(join(dir, 'z.raw'))).toBe(false);
    expect(app.catalog.listDrives().map((d) => d.id)).toEqual(['disk']);
  });
});
