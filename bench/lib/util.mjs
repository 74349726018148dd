// Shared helpers for the benchmarks: timing, a seeded PRNG, child processes, temp files, tables.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export const quick = process.env.BENCH_QUICK === '1';

export const now = () => performance.now();

/** Milliseconds `fn` takes (awaited). */
export async function timeIt(fn) {
  const t = now();
  await fn();
  return now() - t;
}

/** mulberry32: a small, fixed-seed PRNG so both sides of a comparison see the same offsets. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` distinct indices out of [0, n), fixed seed, in random order (partial Fisher-Yates on a sparse map). */
export function distinctIndices(n, count, seed) {
  if (count > n) throw new RangeError('more indices than slots');
  const rnd = prng(seed);
  const swapped = new Map();
  const out = new Array(count);
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(rnd() * (n - i));
    const vj = swapped.get(j) ?? j;
    swapped.set(j, swapped.get(i) ?? i);
    out[i] = vj;
  }
  return out;
}

/** Runs task(i) for i in [0, count) with at most `depth` in flight (what qemu-img bench -d does). */
export async function runQueue(count, depth, task) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(depth, count) }, worker));
}

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function best(xs) {
  return Math.min(...xs);
}

/** The best of `n` sequential runs of `once` (each resolving to milliseconds). */
export async function bestOfRuns(n, once) {
  const times = [];
  for (let k = 0; k < n; k++) times.push(await once());
  return best(times);
}

// ------------------------------------------------------------------ child processes

const children = new Set();

/** Every child process started through here is killed (by its pid) if the run is interrupted. */
export function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function killChildren() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

/** Runs a command to completion; resolves with {code, stdout, stderr, ms}; rejects on a non-zero exit unless allowFail. */
export function sh(cmd, args, { allowFail = false, env, cwd, input } = {}) {
  return new Promise((resolve, reject) => {
    const t = now();
    const child = track(spawn(cmd, args, { env: env ?? process.env, cwd, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    if (input !== undefined) {
      child.stdin.on('error', () => {});
      child.stdin.end(input);
    }
    child.on('error', reject);
    child.on('close', (code, signal) => {
      const r = { code, signal, stdout, stderr, ms: now() - t };
      if ((code !== 0 || signal) && !allowFail) {
        reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? code}): ${stderr.trim() || stdout.trim()}`));
      } else resolve(r);
    });
  });
}

// ------------------------------------------------------------------ files

export async function removeFile(path) {
  await rm(path, { force: true });
}

/** Bytes the file occupies on disk. */
export async function allocatedBytes(path) {
  const s = await stat(path);
  return s.blocks * 512;
}

/** fdatasync of one file (coreutils `sync --data FILE`): the time to make a finished copy durable. */
export async function syncFile(path) {
  return (await sh('sync', ['--data', path])).ms;
}

const tempDirs = new Set();
export function registerTemp(dir) {
  tempDirs.add(dir);
}
export function cleanupTemps() {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

// ------------------------------------------------------------------ output

export function fmtMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(ms)) return '—';
  if (ms < 0.001) return `${(ms * 1e6).toFixed(0)} ns`;
  if (ms < 0.01) return `${(ms * 1000).toFixed(2)} µs`;
  if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 1000) return `${ms.toFixed(0)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

export function fmtRate(bytes, ms) {
  if (!ms) return '—';
  return `${(bytes / MiB / (ms / 1000)).toFixed(0)} MiB/s`;
}

export function fmtRatio(r) {
  if (r === undefined || r === null || !Number.isFinite(r)) return '—';
  if (r > 0 && r < 0.01) return r.toExponential(0);
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

export function fmtBytes(n) {
  if (n >= GiB) return `${+(n / GiB).toFixed(2)} GiB`;
  if (n >= MiB) return `${+(n / MiB).toFixed(1)} MiB`;
  if (n >= KiB) return `${+(n / KiB).toFixed(1)} KiB`;
  return `${n} B`;
}

/**
 * A compact table. Rows: {case, engine, peer, ratio, target, ok, note}. `ok` true/false/undefined
 * prints ok / MISS / nothing after the target.
 */
export function printTable(title, rows, headers = {}) {
  const h = { case: 'case', engine: 'engine', peer: 'peer', ratio: 'ratio', target: 'target', note: 'note', ...headers };
  const cols = ['case', 'engine', 'peer', 'ratio', 'target', 'note'];
  const cells = rows.map((r) => ({
    case: r.case,
    engine: r.engine ?? '—',
    peer: r.peer ?? '—',
    ratio: typeof r.ratio === 'number' ? fmtRatio(r.ratio) : (r.ratio ?? '—'),
    target: r.target ? `${r.target}${r.ok === true ? ' ok' : r.ok === false ? ' MISS' : ''}` : '',
    note: r.note ?? '',
  }));
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(h[c].length, ...cells.map((x) => String(x[c]).length))]));
  const line = (x) =>
    cols
      .map((c) => (c === 'case' || c === 'note' || c === 'target' ? String(x[c]).padEnd(width[c]) : String(x[c]).padStart(width[c])))
      .join('  ')
      .trimEnd();
  const out = [`\n${title}`, line(h), cols.map((c) => '-'.repeat(width[c])).join('  ')];
  for (const c of cells) out.push(line(c));
  console.log(out.join('\n'));
}

export function log(msg) {
  process.stderr.write(`  · ${msg}\n`);
}
