import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { runOk, sleep, startEnv, type NbdEnv } from './helpers/env.js';
import { Qmp } from './helpers/qmp-client.js';

/**
 * A real QEMU attaches a Tidemark export as its disk (QEMU's own NBD client: structured replies,
 * base:allocation, GO) and writes to it; the data lands in the drive and marks its bitmaps.
 */

let env: NbdEnv;

beforeAll(async () => {
  env = await startEnv();
});

afterAll(async () => {
  await env?.close();
});

test('qemu-system-x86_64 with -drive file=nbd+unix:// writes into the drive and its bitmap', async () => {
  const img = join(env.dir, 'vm.qcow2');
  await runOk('qemu-img', ['create', '-f', 'qcow2', img, '32M']);
  const drive = await env.engine.attach({ id: 'drive0', path: img, format: 'qcow2' });
  const bitmap = env.engine.bitmapCommands.add('drive0', 'since-backup', { granularity: 65536 });
  const qmpSock = join(env.dir, 'vm-qmp.sock');
  const vm = spawn(
    'qemu-system-x86_64',
    ['-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpSock},server=on,wait=off`, '-drive', `if=none,id=vd0,file=${env.uri('drive0')},format=raw`],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  let stdout = '';
  vm.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  vm.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  const exited = new Promise<number | null>((r) => vm.once('exit', (code) => r(code)));
  try {
    const qmp = await Qmp.open(qmpSock);
    const blocks = (await qmp.execute('query-block')) as { device: string; inserted: { image: { 'virtual-size': number } } }[];
    expect(blocks.find((b) => b.device === 'vd0')?.inserted.image['virtual-size']).toBe(32 * 1024 * 1024);
    expect(env.server.connections().filter((c) => c.exportName === 'drive0')).toHaveLength(1);

    const hmp = async (line: string) => (await qmp.execute('human-monitor-command', { 'command-line': `qemu-io vd0 "${line}"` })) as string;
    // QEMU prints qemu-io's output on its own stdout; the reply is empty on success
    expect(await hmp('write -P 0x5a 0 64k')).toBe('');
    expect(await hmp('write -P 0x6b 1M 4k')).toBe('');
    expect(await hmp('flush')).toBe('');
    expect(Buffer.from(await drive.read(0, 65536)).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
    expect(Buffer.from(await drive.read(1024 * 1024, 4096)).equals(Buffer.alloc(4096, 0x6b))).toBe(true);
    expect(bitmap.dirtyExtents()).toEqual([
      { offset: 0, length: 65536 },
      { offset: 1024 * 1024, length: 65536 },
    ]);
    // and QEMU reads back what the engine holds: a write made by the engine shows in the VM
    await drive.write(2 * 1024 * 1024, Buffer.alloc(512, 0x7c));
    expect(await hmp('read -P 0x7c 2M 512')).toBe('');
    expect(await hmp('read -P 0x5a 0 64k')).toBe('');
    for (let i = 0; i < 50 && !stdout.includes('read 65536/65536'); i++) await sleep(20);
    // qemu-io's own report, on QEMU's stdout
    expect(stdout).toContain('wrote 65536/65536 bytes at offset 0');
    expect(stdout).toContain('read 512/512 bytes at offset 2097152');
    expect(stdout).toContain('read 65536/65536 bytes at offset 0');
    expect(stdout).not.toContain('Pattern verification failed');
    await qmp.execute('quit');
    qmp.close();
    expect(await exited).toBe(0);
    // QEMU disconnected cleanly
    for (let i = 0; i < 50 && env.server.clientCount > 0; i++) await sleep(20);
    expect(env.server.clientCount).toBe(0);
  } finally {
    if (vm.exitCode === null) vm.kill('SIGKILL');
    await exited;
    if (vm.exitCode !== 0) console.error(stderr);
  }
});
