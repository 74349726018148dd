import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BlockEngine } from '../../../src-main/engine/engine.js';
import { NbdServer, type NbdServerOptions } from '../../../src-main/engine/protocols/nbd/server.js';
import { makeTempDir, removeDir, run, runOk } from '../../helpers/qemu-tools.js';

export { makeTempDir, removeDir, run, runOk };

/** An engine with an NBD server on a unix socket in a temp folder. */
export interface NbdEnv {
  dir: string;
  engine: BlockEngine;
  server: NbdServer;
  sock: string;
  /** nbd+unix URI of an export */
  uri(name: string): string;
  log: string[];
  close(): Promise<void>;
}

export async function startEnv(options: NbdServerOptions = {}): Promise<NbdEnv> {
  const dir = await makeTempDir('tidemark-nbd-');
  const engine = new BlockEngine({ ioWorkers: 2 });
  const log: string[] = [];
  const server = new NbdServer(engine, { log: (m) => log.push(m), ...options });
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  return {
    dir,
    engine,
    server,
    sock,
    log,
    uri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`,
    async close() {
      await server.close();
      await engine.close();
      await removeDir(dir);
    },
  };
}

export interface QemuNbd {
  sock: string;
  uri(name?: string): string;
  stop(): Promise<void>;
}

/** Starts `qemu-nbd ARGS -k SOCK` (persistent, so several clients may connect) and waits for the socket. */
export async function startQemuNbd(dir: string, args: string[], name = 'qemu'): Promise<QemuNbd> {
  const sock = join(dir, `${name}-${Math.random().toString(36).slice(2)}.sock`);
  const child: ChildProcess = spawn('qemu-nbd', ['-t', '-k', sock, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  for (let i = 0; i < 200 && !existsSync(sock); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(sock)) {
    child.kill('SIGKILL');
    throw new Error(`qemu-nbd ${args.join(' ')} did not start: ${stderr}`);
  }
  return {
    sock,
    uri: (n = '') => `nbd+unix:///${encodeURIComponent(n)}?socket=${sock}`,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** `nbdinfo --map[=CONTEXT] URI` output, whitespace-normalised per line. */
export async function nbdMap(uri: string, context?: string): Promise<string> {
  const out = await runOk('nbdinfo', [context ? `--map=${context}` : '--map', uri]);
  return out
    .trim()
    .split('\n')
    .map((l) => l.trim().split(/\s+/).join(' '))
    .join('\n');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
