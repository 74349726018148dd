import { existsSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { BlockEngine } from '../../src-main/engine/engine.js';
import { QmpServer } from '../../src-main/engine/protocols/qmp/server.js';
import { nbdServerOf } from '../../src-main/engine/protocols/qmp/nbd-commands.js';
import { Qmp } from './helpers/qmp-client.js';
import { withQemu, withTidemark } from './helpers/qmp-peers.js';
import { RawNbd } from './helpers/raw-client.js';
import { makeTempDir, nbdMap, removeDir, runOk, sleep } from './helpers/env.js';

/**
 * QMP's NBD export commands, run as one script against real QEMU (qemu-system-x86_64 -M none)
 * and against Tidemark's QMP server: every outcome (and error text) and every
 * BLOCK_EXPORT_DELETED must agree.
 */

let dir: string;

beforeAll(async () => {
  dir = await makeTempDir('tidemark-nbd-qmp-');
  await runOk('qemu-img', ['create', '-f', 'qcow2', join(dir, 'd0.qcow2'), '16M']);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 0 1M', join(dir, 'd0.qcow2')]);
  await runOk('qemu-img', ['create', '-f', 'qcow2', join(dir, 'ro.qcow2'), '16M']);
});

afterAll(async () => {
  await removeDir(dir);
});

interface Step {
  cmd: string;
  outcome: string;
}

/** The script. `nodes` maps drive ids to node names (they differ between the two). */
async function script(q: Qmp, nodes: Record<string, string>, sockDir: string): Promise<{ steps: Step[]; maps: string[] }> {
  const steps: Step[] = [];
  const maps: string[] = [];
  const sock = join(sockDir, 'nbd.sock');
  const step = async (cmd: string, args?: Record<string, unknown>) => {
    const r = await q.command(cmd, args);
    const outcome = 'error' in r ? `error: ${(r.error as { class: string; desc: string }).class}: ${(r.error as { desc: string }).desc}` : 'ok';
    // the events that arrived before this reply
    steps.push({ cmd: `${cmd} ${JSON.stringify(args ?? {}).replaceAll(nodes.drive0, '<drive0>').replaceAll(nodes.ro0, '<ro0>').replaceAll(sockDir, '<dir>')}`, outcome });
    return r;
  };
  // BLOCK_EXPORT_DELETED may trail the reply (QEMU deletes an export once its clients are gone)
  const events = async (...ids: string[]) => {
    const deleted = () => q.events.filter((x) => x.event === 'BLOCK_EXPORT_DELETED');
    for (let i = 0; i < 150 && deleted().length < ids.length; i++) await sleep(20);
    await sleep(20);
    const e = deleted();
    q.events.splice(0);
    steps.push({ cmd: 'events', outcome: e.map((x) => JSON.stringify(x.data)).join(' ') });
  };
  await step('nbd-server-stop');
  await step('nbd-server-add', { device: 'drive0' });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0 });
  await step('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
  await step('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
  await step('nbd-server-start', { addr: { type: 'inet', data: { host: '127.0.0.1', port: '0' } } });
  await step('block-export-add', { type: 'nbd', id: '0bad', 'node-name': nodes.drive0 });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'drive0' });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': 'no-such-node' });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.ro0, writable: true });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, name: 'x'.repeat(4097) });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, description: 'd'.repeat(4097) });
  await step('block-dirty-bitmap-add', { node: 'drive0', name: 'b0' });
  await step('block-dirty-bitmap-add', { node: 'drive0', name: 'b1', disabled: true });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, bitmaps: ['nope'] });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, bitmaps: ['b0'] });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, bitmaps: [{ node: 'nope', name: 'b0' }] });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, bitmaps: [{ node: 'drive0', name: 'zz' }] });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, name: 'disk', writable: true, bitmaps: ['b0'] });
  await step('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, name: 'other' });
  await step('block-export-add', { type: 'nbd', id: 'e1', 'node-name': nodes.drive0, name: 'disk' });
  await step('block-export-add', { type: 'nbd', id: 'e1', 'node-name': nodes.drive0, name: 'disk2', writable: true, bitmaps: ['b0'] });
  await step('block-dirty-bitmap-clear', { node: 'drive0', name: 'b0' });
  await step('block-export-add', { type: 'nbd', id: 'e2', 'node-name': nodes.drive0, name: 'frozen', bitmaps: ['b1', { node: 'drive0', name: 'b1' }], 'allocation-depth': true });
  await step('block-dirty-bitmap-remove', { node: 'drive0', name: 'b1' });
  await step('nbd-server-add', { device: 'ro0', name: 'legacy', writable: true });
  await step('nbd-server-add', { device: 'nope' });
  await step('nbd-server-add', { device: 'drive0', name: 'legacy' });
  const exports = (await q.execute('query-block-exports')) as { id: string; type: string; 'node-name': string }[];
  steps.push({ cmd: 'query-block-exports', outcome: JSON.stringify(exports.map((e) => [e.id, e.type, e.id === 'legacy' ? e['node-name'] === nodes.ro0 : e['node-name'] === nodes.drive0]).sort()) });
  // what a client sees
  const uri = (n: string) => `nbd+unix:///${n}?socket=${sock}`;
  maps.push(await nbdMap(uri('disk')), await nbdMap(uri('frozen'), 'qemu:dirty-bitmap:b1'), await nbdMap(uri('frozen'), 'qemu:allocation-depth'));
  // a connected client blocks a safe removal
  const { c } = await RawNbd.open(sock, 'disk');
  await step('block-export-del', { id: 'e0' });
  await step('nbd-server-remove', { name: 'e0' });
  await events();
  await step('block-export-del', { id: 'e0', mode: 'hard' });
  await events('e0');
  steps.push({ cmd: 'client disconnected', outcome: String(await c.waitClosed(5000)) });
  await step('block-export-del', { id: 'e0' });
  await step('nbd-server-remove', { name: 'legacy' });
  await events('legacy');
  await step('block-dirty-bitmap-clear', { node: 'drive0', name: 'b0' });
  await step('block-dirty-bitmap-remove', { node: 'drive0', name: 'b1' });
  await step('nbd-server-stop');
  await events('e2');
  await step('nbd-server-stop');
  await step('block-dirty-bitmap-remove', { node: 'drive0', name: 'b1' });
  steps.push({ cmd: 'socket removed', outcome: String(!existsSync(sock)) });
  return { steps, maps };
}

describe('QMP NBD commands agree with QEMU 7.2', () => {
  test('the same script, the same outcomes, texts and events', async () => {
    const peerRun = async (name: string, peer: typeof withQemu) => {
      const d = join(dir, name);
      await runOk('mkdir', ['-p', d]);
      for (const f of ['d0.qcow2', 'ro.qcow2']) await copyFile(join(dir, f), join(d, f));
      const drives = [
        { id: 'drive0', path: join(d, 'd0.qcow2') },
        { id: 'ro0', path: join(d, 'ro.qcow2'), readOnly: true },
      ];
      return peer(d, drives, (q, nodes) => script(q, nodes, d));
    };
    const theirs = await peerRun('qemu', withQemu);
    const ours = await peerRun('ours', withTidemark);
    expect(ours.steps).toEqual(theirs.steps);
    expect(ours.maps).toEqual(theirs.maps);
    // the script did exercise both paths
    expect(ours.steps.filter((s) => s.outcome === 'ok').length).toBeGreaterThan(8);
    expect(ours.steps.filter((s) => s.outcome.startsWith('error')).length).toBeGreaterThan(15);
  });
});

describe('Tidemark extensions', () => {
  let engine: BlockEngine;
  let server: QmpServer;
  let q: Qmp;
  let tdir: string;

  beforeAll(async () => {
    tdir = await makeTempDir('tidemark-nbd-qmp2-');
    await copyFile(join(dir, 'd0.qcow2'), join(tdir, 'd0.qcow2'));
    engine = new BlockEngine({ ioWorkers: 2 });
    await engine.attach({ id: 'drive0', path: join(tdir, 'd0.qcow2'), format: 'qcow2' });
    server = new QmpServer(engine, { path: join(tdir, 'qmp.sock') });
    await server.listen();
    q = await Qmp.open(join(tdir, 'qmp.sock'));
  });

  afterAll(async () => {
    q?.close();
    await server?.close();
    await engine?.close();
    await removeDir(tdir);
  });

  test('the flat SocketAddress form is accepted; TCP only on loopback; the socket is owner-only', async () => {
    expect(await q.error('nbd-server-start', { addr: { type: 'inet', data: { host: '0.0.0.0', port: '10809' } } })).toMatch(/loopback/);
    expect(await q.error('nbd-server-start', { addr: { type: 'unix', data: { path: join(tdir, 'n.sock') } }, 'tls-creds': 'tls0' })).toBe("No TLS credentials with id 'tls0'");
    await q.execute('nbd-server-start', { addr: { type: 'unix', path: join(tdir, 'n.sock') } });
    const { statSync } = await import('node:fs');
    expect(statSync(join(tdir, 'n.sock')).mode & 0o777).toBe(0o600);
    await q.execute('nbd-server-add', { device: 'drive0', writable: true });
    const { c, flags } = await RawNbd.open(join(tdir, 'n.sock'), 'drive0');
    expect(flags & 2).toBe(0);
    expect((await c.pread(0, 4096)).data![0]).toBe(0x31);
    c.close();
    await q.execute('nbd-server-stop');
    expect(nbdServerOf(engine)).toBeUndefined();
    // TCP on loopback, port picked by the system
    await q.execute('nbd-server-start', { addr: { type: 'inet', host: '127.0.0.1', port: '0' } });
    const addr = nbdServerOf(engine)!.listenerInfo()[0].address;
    expect(addr).toMatch(/^127\.0\.0\.1:\d+$/);
    await q.execute('nbd-server-add', { device: 'drive0' });
    const info = await runOk('nbdinfo', [`nbd://${addr}/drive0`]);
    expect(info).toContain('export-size: 16777216');
    expect(info).toContain('is_read_only: true');
    await q.execute('nbd-server-stop');
    await sleep(10);
    expect(q.events.filter((e) => e.event === 'BLOCK_EXPORT_DELETED').map((e) => e.data)).toEqual([{ id: 'drive0' }, { id: 'drive0' }]);
  });
});
