import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * QEMU's own tools as test oracles: whatever the engine writes must satisfy `qemu-img check`,
 * and whatever QEMU writes must read back the same through the engine.
 */

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`${cmd} ${args.join(' ')} failed to run: ${err.message}`));
        return;
      }
      resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
    });
  });
}

/** Runs a tool and throws (with its output) unless it exits 0. */
export async function runOk(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export const qemuImg = (...args: string[]) => runOk('qemu-img', args);
export const qemuIo = (...args: string[]) => runOk('qemu-io', args);

/** `qemu-img check` result: exit 0 clean, 1 failed, 2 corrupt, 3 leaks only. */
export async function qemuCheck(path: string): Promise<RunResult> {
  return run('qemu-img', ['check', path]);
}

/** Asserts `qemu-img check` is clean and reports no leaks; returns its output. */
export async function expectCheckClean(path: string): Promise<string> {
  const r = await qemuCheck(path);
  if (r.code !== 0 || /leaked/i.test(r.stdout)) {
    throw new Error(`qemu-img check ${path} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

/** Guest contents equal (`qemu-img compare`, strict about sizes). Throws with the tool's message. */
export async function expectSameContents(a: string, fmtA: string, b: string, fmtB: string): Promise<void> {
  const r = await run('qemu-img', ['compare', '-f', fmtA, '-F', fmtB, a, b]);
  if (r.code !== 0) throw new Error(`qemu-img compare ${a} ${b} exited ${r.code}: ${r.stdout}${r.stderr}`);
}

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

export async function qemuMap(path: string, format = 'qcow2'): Promise<MapEntry[]> {
  return JSON.parse(await qemuImg('map', '-f', format, '--output=json', path)) as MapEntry[];
}

export async function qemuInfo(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await qemuImg('info', '--output=json', path)) as Record<string, unknown>;
}

/** Full guest contents via `qemu-img convert -O raw`. */
export async function qemuReadAll(path: string, dir: string, format = 'qcow2'): Promise<Buffer> {
  const out = join(dir, `convert-${Math.random().toString(36).slice(2)}.raw`);
  await qemuImg('convert', '-f', format, '-O', 'raw', path, out);
  const data = await readFile(out);
  await rm(out, { force: true });
  return data;
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function fileSha256(path: string): Promise<string> {
  return sha256(await readFile(path));
}

export async function makeTempDir(prefix = 'tidemark-formats-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

/** Deterministic pseudo-random bytes (xorshift), so failures reproduce. */
export function seededBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
    if (i + 1 < length) out[i + 1] = (x >>> 8) & 0xff;
    if (i + 2 < length) out[i + 2] = (x >>> 16) & 0xff;
    if (i + 3 < length) out[i + 3] = x >>> 24;
  }
  return out;
}

/** Small seeded PRNG for randomized operation sequences. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}
