import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { TidemarkApp, type AppOptions } from '../../src-main/app/app.js';
import { run } from '../helpers/qemu-tools.js';

/** The app's NBD listeners as app.info reports them: the unix socket, and the optional TCP one with TLS-PSK. */
describe('app NBD listeners', () => {
  const apps: TidemarkApp[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    for (const a of apps.splice(0)) await a.close();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
  const tempDir = () => {
    const d = mkdtempSync(join(tmpdir(), 'tm-app-nbd-'));
    dirs.push(d);
    return d;
  };
  const start = async (o: Omit<AppOptions, 'host'>) => {
    const app = await TidemarkApp.start({ host: 'web', ...o });
    apps.push(app);
    return app;
  };
  const info = async (app: TidemarkApp) => (await app.router.call('app.info', {})) as { nbdSocket: string | null; nbdTcp: { address: string; tls: boolean } | null };

  it('TCP is off unless asked for; with a keys file it requires TLS, and the drives are there behind it', async () => {
    const dir = tempDir();
    const plain = await start({ dataDir: join(dir, 'a'), nbdSocket: join(dir, 'a.sock') });
    expect(await info(plain)).toMatchObject({ nbdSocket: join(dir, 'a.sock'), nbdTcp: null });

    writeFileSync(join(dir, 'keys.psk'), `alice:${'42'.repeat(32)}\n`, { mode: 0o600 });
    const app = await start({ dataDir: join(dir, 'b'), nbdSocket: join(dir, 'b.sock'), nbdTcp: { host: '127.0.0.1', port: 0, tlsPskKeys: dir } });
    const { nbdTcp } = await info(app);
    expect(nbdTcp).toMatchObject({ tls: true });
    expect(nbdTcp!.address).toMatch(/^127\.0\.0\.1:\d+$/);
    await run('qemu-img', ['create', '-f', 'qcow2', join(dir, 'd.qcow2'), '8M']);
    await app.drives.add({ path: join(dir, 'd.qcow2'), id: 'd0' });
    const tls = await run('nbdinfo', ['--size', `nbds://alice@${nbdTcp!.address}/d0?tls-psk-file=${join(dir, 'keys.psk')}`]);
    expect(tls.stdout.trim(), tls.stderr).toBe(String(8 << 20));
    expect((await run('nbdinfo', ['--size', `nbd://${nbdTcp!.address}/d0`])).code).not.toBe(0);
  });

  it('a keys file that cannot work leaves TCP off, says why, and the app runs on', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'bad.psk'), 'alice:xyz\n');
    const log: string[] = [];
    const app = await start({ dataDir: join(dir, 'c'), nbdSocket: join(dir, 'c.sock'), nbdTcp: { host: '127.0.0.1', port: 0, tlsPskKeys: join(dir, 'bad.psk') }, log: (m) => log.push(m) });
    expect(await info(app)).toMatchObject({ nbdSocket: join(dir, 'c.sock'), nbdTcp: null });
    expect(log.join('\n')).toContain(`NBD TCP listener on 127.0.0.1:0 unavailable: ${join(dir, 'bad.psk')} line 1: the key must be an even number of hex digits`);
  });
});
