import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { BlockEngine } from '../../../src-main/engine/engine.js';
import { QmpServer } from '../../../src-main/engine/protocols/qmp/server.js';
import { Qmp } from './qmp-client.js';

/** A drive both peers open: `-drive if=none,id=ID,...` in QEMU, engine.attach in Tidemark. */
export interface PeerDrive {
  id: string;
  path: string;
  readOnly?: boolean;
}

/** Drive ids → node names (QEMU's and Tidemark's differ). */
export type NodeNames = Record<string, string>;

async function nodeNames(q: Qmp): Promise<NodeNames> {
  const blocks = (await q.execute('query-block')) as { device: string; inserted: { 'node-name': string } }[];
  return Object.fromEntries(blocks.map((b) => [b.device, b.inserted['node-name']]));
}

/** Runs `fn` against real QEMU (qemu-system-x86_64 -M none) with these drives; QEMU quits afterwards. */
export async function withQemu<T>(dir: string, drives: PeerDrive[], fn: (q: Qmp, nodes: NodeNames) => Promise<T>): Promise<T> {
  const qmpSock = join(dir, 'qmp.sock');
  const vm = spawn(
    'qemu-system-x86_64',
    [
      '-machine', 'none', '-nodefaults', '-display', 'none', '-qmp', `unix:${qmpSock},server=on,wait=off`,
      ...drives.flatMap((d) => ['-drive', `if=none,id=${d.id},file=${d.path},format=qcow2${d.readOnly ? ',readonly=on' : ''}`]),
    ],
    { stdio: 'ignore' },
  );
  const exited = new Promise((r) => vm.once('exit', r));
  try {
    const q = await Qmp.open(qmpSock);
    const out = await fn(q, await nodeNames(q));
    await q.execute('quit');
    q.close();
    return out;
  } finally {
    if (vm.exitCode === null) setTimeout(() => vm.kill('SIGKILL'), 3000).unref();
    await exited;
  }
}

/** Runs `fn` against Tidemark's QMP server over an engine with these drives. */
export async function withTidemark<T>(dir: string, drives: PeerDrive[], fn: (q: Qmp, nodes: NodeNames) => Promise<T>): Promise<T> {
  const engine = new BlockEngine({ ioWorkers: 2 });
  for (const d of drives) await engine.attach({ id: d.id, path: d.path, format: 'qcow2', readOnly: d.readOnly });
  const server = new QmpServer(engine, { path: join(dir, 'qmp.sock') });
  await server.listen();
  try {
    const q = await Qmp.open(join(dir, 'qmp.sock'));
    const out = await fn(q, await nodeNames(q));
    q.close();
    return out;
  } finally {
    await server.close();
    await engine.close();
  }
}
