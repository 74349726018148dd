#!/usr/bin/env node
// Section "nbd" (issue 6): Tidemark's NBD server against qemu-nbd serving the same image.
//
//   node bench/nbd.mjs                  (or: node bench/run.mjs nbd; BENCH_QUICK=1 for 256 MiB)
//
// Both servers export a fresh qcow2 (64 KiB clusters) of the same size from the same folder;
// the clients are QEMU's and libnbd's own tools, run as child processes, so the Tidemark server
// (in this process) has the event loop to itself while they run:
//   - seq write: nbdcopy of a file with non-zero data into the export (+ flush), 1 connection;
//   - seq read: nbdcopy of the export to null:, 1 connection;
//   - seq read 4 connections: the same with --connections=4 (Tidemark advertises multi-conn;
//     qemu-nbd is started with --shared=4 on a read-only view, where QEMU advertises it too);
//   - rand write / rand read 4K: qemu-img bench -f raw nbd+unix://… -s 4096 -d 16, offsets
//     k·4096·104729 mod size (every 4 KiB slot at most once), into the written image;
//   - seq read over TLS-PSK: the 1-connection read on a socket that requires TLS with a
//     pre-shared key (nbds+unix://, libnbd's GnuTLS against Node's OpenSSL or qemu-nbd's GnuTLS).
// Rounds alternate which side goes first; the best of the rounds is kept (other load on a shared
// machine only ever adds time). The short cases — the reads, and the random writes, which only
// overwrite what the sequential write filled — take 0.3-0.5 s each and vary most from run to run
// (qemu-nbd's own best-of-3 sequential read ranged 3130-3837 MiB/s over one session), so each
// round runs them REPEATS times on either side. ratio = Tidemark throughput / qemu-nbd throughput.
//
// Needs dist/main (node scripts/build.mjs --main-only). The NBD server comes from
// dist/main/engine.mjs when it exports NbdServer; otherwise it is bundled from the sources here.
import { spawn } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KiB, MiB, GiB, best, bestOfRuns, fmtMs, fmtRate, log, printTable, prng, quick, sh, track } from './lib/util.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const PRIME = 104729;
/** Runs of each short case per side per round (see the header). */
const REPEATS = 3;

/** BlockEngine and NbdServer from one bundle (so they share their classes). */
async function loadEngine(scratch) {
  const dist = join(root, 'dist/main/engine.mjs');
  if (!existsSync(dist)) throw new Error('dist/main/engine.mjs is missing: run `node scripts/build.mjs --main-only` first');
  const mod = await import(dist);
  if (mod.NbdServer && mod.PskServerCredentials) return { BlockEngine: mod.BlockEngine, NbdServer: mod.NbdServer, PskServerCredentials: mod.PskServerCredentials, source: 'dist/main/engine.mjs' };
  // not exported (yet): bundle engine + server from the sources, with the I/O worker beside the bundle
  const { build } = await import('esbuild');
  const out = join(scratch, 'bundle');
  mkdirSync(out, { recursive: true });
  await build({
    stdin: {
      contents: `export { BlockEngine, NbdServer, PskServerCredentials } from ${JSON.stringify(join(root, 'src-main/engine/index.ts'))};`,
      resolveDir: root,
      loader: 'ts',
    },
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node22',
    outfile: join(out, 'engine-nbd.mjs'),
    logLevel: 'warning',
    banner: { js: "import { createRequire as __req } from 'node:module'; const require = __req(import.meta.url);" },
  });
  copyFileSync(join(root, 'dist/main/io-worker.mjs'), join(out, 'io-worker.mjs'));
  const m = await import(join(out, 'engine-nbd.mjs'));
  return { BlockEngine: m.BlockEngine, NbdServer: m.NbdServer, PskServerCredentials: m.PskServerCredentials, source: 'sources (bundled for this run)' };
}

/** A file of non-zero data (a 1 MiB random block, varied per MiB so nothing dedups or looks sparse). */
function makeSource(path, size) {
  const rnd = prng(42);
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i += 4) block.writeUInt32LE(Math.floor(rnd() * 2 ** 32) >>> 0 || 1, i);
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < size; at += MiB) {
      block.writeUInt32LE(at / MiB + 1, 0);
      writeSync(fd, block, 0, MiB, at);
    }
  } finally {
    closeSync(fd);
  }
}

async function startQemuNbd(dir, args, name) {
  const sock = join(dir, `${name}.sock`);
  rmSync(sock, { force: true });
  const child = track(spawn('qemu-nbd', ['-t', '-k', sock, ...args], { stdio: ['ignore', 'ignore', 'pipe'] }));
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.once('exit', r));
  for (let i = 0; i < 400 && !existsSync(sock); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(sock)) throw new Error(`qemu-nbd did not start: ${err}`);
  return {
    sock,
    uri: (exp = '') => `nbd+unix:///${exp}?socket=${sock}`,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** qemu-img bench's own figure ("Run completed in X seconds"), else the wall time. */
async function qemuImgBench(uri, { write, count, depth, size }) {
  const args = ['bench', '-f', 'raw', '-c', String(count), '-d', String(depth), '-s', String(size), '-S', String(4096 * PRIME)];
  if (write) args.push('-w', '--pattern=165');
  args.push(uri);
  const r = await sh('qemu-img', args);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  return m ? Number(m[1]) * 1000 : r.ms;
}

async function nbdcopy(src, dst, connections, extra = []) {
  return (await sh('nbdcopy', [`--connections=${connections}`, ...extra, src, dst])).ms;
}

/** The best of REPEATS reads of an export to null:. */
function nbdcopyReads(src, connections) {
  return bestOfRuns(REPEATS, () => nbdcopy(src, 'null:', connections));
}

/** The best of REPEATS qemu-img bench runs. */
function qemuImgBenchRepeated(uri, options) {
  return bestOfRuns(REPEATS, () => qemuImgBench(uri, options));
}

export async function run({ dir, reps = 3 }) {
  const size = quick ? 256 * MiB : GiB;
  const randCount = quick ? 10000 : 20000;
  const { BlockEngine, NbdServer, PskServerCredentials, source } = await loadEngine(dir);
  log(`nbd: ${size / MiB} MiB qcow2 images, ${randCount} random 4 KiB requests at queue depth 16, best of ${reps} rounds (short cases ${REPEATS} times per round); server from ${source}`);
  const src = join(dir, 'source.raw');
  makeSource(src, size);

  const cases = [
    { id: 'seqw', label: 'seq write (nbdcopy file→nbd, 1 conn, +flush)', bytes: size },
    { id: 'seqr', label: 'seq read (nbdcopy nbd→null:, 1 conn)', bytes: size },
    { id: 'seqr4', label: 'seq read (nbdcopy, 4 conns, read-only)', bytes: size },
    { id: 'rw', label: 'rand write 4K qd16 (qemu-img bench)', bytes: randCount * 4 * KiB },
    { id: 'rr', label: 'rand read 4K qd16 (qemu-img bench)', bytes: randCount * 4 * KiB },
    { id: 'seqrtls', label: 'seq read over TLS-PSK (nbdcopy, 1 conn)', bytes: size },
  ];
  const results = Object.fromEntries(cases.map((c) => [c.id, { tidemark: [], qemu: [] }]));
  let verified = true;

  const engine = new BlockEngine();
  const server = new NbdServer(engine, { exportAllDrives: false });
  const tsock = join(dir, 'tidemark.sock');
  await server.listenUnix(tsock);
  const turi = (name) => `nbd+unix:///${name}?socket=${tsock}`;
  // TLS-PSK: one key, QEMU's credentials directory for both servers, libnbd's key file for the client
  const pskDir = join(dir, 'psk');
  mkdirSync(pskDir, { recursive: true });
  writeFileSync(join(pskDir, 'keys.psk'), `bench:${'a5'.repeat(32)}\n`, { mode: 0o600 });
  const tlsSock = join(dir, 'tidemark-tls.sock');
  await server.listenUnix(tlsSock, { tls: new PskServerCredentials(join(pskDir, 'keys.psk')) });
  const tlsUri = (sock) => `nbds+unix://bench@/bench?socket=${sock}&tls-psk-file=${join(pskDir, 'keys.psk')}`;
  try {
    for (let r = 0; r < reps; r++) {
      const order = r % 2 === 0 ? ['tidemark', 'qemu'] : ['qemu', 'tidemark'];
      for (const side of order) {
        const img = join(dir, `${side}-${r}.qcow2`);
        await sh('qemu-img', ['create', '-f', 'qcow2', '-o', 'cluster_size=65536', img, String(size)]);
        const t = {};
        if (side === 'tidemark') {
          await engine.attach({ id: 'bench', path: img, format: 'qcow2' });
          server.addExport({ name: 'bench', driveId: 'bench', writable: true });
          t.seqw = await nbdcopy(src, turi('bench'), 1, ['--flush']);
          t.seqr = await nbdcopyReads(turi('bench'), 1);
          t.rw = await qemuImgBenchRepeated(turi('bench'), { write: true, count: randCount, depth: 16, size: 4096 });
          t.rr = await qemuImgBenchRepeated(turi('bench'), { write: false, count: randCount, depth: 16, size: 4096 });
          await server.removeExport('bench');
          // the read-only view (multi-conn either way)
          server.addExport({ name: 'bench', driveId: 'bench', writable: false });
          t.seqr4 = await nbdcopyReads(turi('bench'), 4);
          t.seqrtls = await nbdcopyReads(tlsUri(tlsSock), 1);
          await server.removeExport('bench');
          await engine.detach('bench');
        } else {
          const q = await startQemuNbd(dir, ['-f', 'qcow2', '--cache=writeback', '-x', 'bench', img], 'qemu-rw');
          try {
            t.seqw = await nbdcopy(src, q.uri('bench'), 1, ['--flush']);
            t.seqr = await nbdcopyReads(q.uri('bench'), 1);
            t.rw = await qemuImgBenchRepeated(q.uri('bench'), { write: true, count: randCount, depth: 16, size: 4096 });
            t.rr = await qemuImgBenchRepeated(q.uri('bench'), { write: false, count: randCount, depth: 16, size: 4096 });
          } finally {
            await q.stop();
          }
          const ro = await startQemuNbd(dir, ['-r', '--shared=4', '-f', 'qcow2', '--cache=writeback', '-x', 'bench', img], 'qemu-ro');
          try {
            t.seqr4 = await nbdcopyReads(ro.uri('bench'), 4);
          } finally {
            await ro.stop();
          }
          const tls = await startQemuNbd(dir, ['-r', '--object', `tls-creds-psk,id=tls0,dir=${pskDir},endpoint=server`, '--tls-creds', 'tls0', '-f', 'qcow2', '--cache=writeback', '-x', 'bench', img], 'qemu-tls');
          try {
            t.seqrtls = await nbdcopyReads(tlsUri(tls.sock), 1);
          } finally {
            await tls.stop();
          }
        }
        for (const [id, ms] of Object.entries(t)) results[id][side].push(ms);
      }
      // both images went through the same writes: they must read the same
      const cmp = await sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', join(dir, `tidemark-${r}.qcow2`), join(dir, `qemu-${r}.qcow2`)], { allowFail: true });
      if (cmp.code !== 0) verified = false;
      const check = await sh('qemu-img', ['check', join(dir, `tidemark-${r}.qcow2`)], { allowFail: true });
      if (check.code !== 0) verified = false;
      for (const side of ['tidemark', 'qemu']) rmSync(join(dir, `${side}-${r}.qcow2`), { force: true });
      log(`nbd: round ${r + 1}/${reps} done${cmp.code === 0 ? '' : ' (images differ!)'}`);
    }
  } finally {
    await server.close();
    await engine.close();
  }

  const rows = cases.map((c) => {
    const e = best(results[c.id].tidemark);
    const q = best(results[c.id].qemu);
    const ratio = q / e;
    return { case: c.label, engine: fmtRate(c.bytes, e), peer: fmtRate(c.bytes, q), ratio, target: '≥ 0.80', ok: ratio >= 0.8, note: `${fmtMs(e)} vs ${fmtMs(q)}` };
  });
  printTable(`nbd — qcow2 ${size / MiB} MiB over a unix socket; ratio = Tidemark / qemu-nbd throughput (best of ${reps} rounds; seq read and random cases best of ${reps * REPEATS})`, rows, { engine: 'Tidemark', peer: 'qemu-nbd' });
  console.log(verified ? 'both servers left identical images; qemu-img check clean on Tidemark\'s' : 'WARNING: the images differ or qemu-img check failed');
  return verified;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const own = !process.env.BENCH_TMPDIR;
  const dir = process.env.BENCH_TMPDIR ?? mkdtempSync(join(process.env.BENCH_TMP ?? tmpdir(), 'tidemark-bench-nbd-'));
  mkdirSync(dir, { recursive: true });
  const cleanup = () => {
    if (own) rmSync(dir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  try {
    const ok = await run({ dir });
    process.exitCode = ok ? 0 : 1;
  } catch (err) {
    console.error(`nbd: FAILED — ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  } finally {
    cleanup();
  }
}

export { GiB };
