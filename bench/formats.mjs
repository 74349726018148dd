// Section "formats" (issue 3): the qcow2 driver's data path against qemu-img bench.
//
// Both sides: a new qcow2 (64 KiB clusters), cache=writeback (the host page cache, no flush per
// request), the same request sizes, the same offsets and the same queue depth. The engine side
// goes through BlockEngine.attach → drive.write/read (the guest path: drive → qcow2 → I/O pool);
// its clock runs from the first request to the last completion, as qemu-img bench's "Run
// completed in" does (opening and closing are outside both clocks).
import { openSync, readSync, closeSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { BlockEngine, createImage } from '../dist/main/engine.mjs';
import { KiB, MiB, GiB, best, bestOfRuns, fmtMs, fmtRate, log, now, printTable, quick, removeFile, runQueue, sh } from './lib/util.mjs';

/** qemu-img bench's "-S" step between 4 KiB requests: an odd multiple of 4 KiB visits every 4 KiB slot once (mod the size). */
const PRIME = 104729;
const STEP = 4096 * PRIME;
/**
 * Runs per side per round of the cases that leave the image as they found it (the reads, and the
 * overwrite of clusters already written). They take 40-300 ms, and on this shared 2-core machine
 * both sides swing 3-4× between runs (qemu-img bench's random read measured 26-305 ms), far more
 * than the rounds alone average out.
 */
const REPEATS = 5;

export async function run({ dir, reps = 3 }) {
  const size = quick ? 256 * MiB : GiB;
  const seqCount = size / MiB;
  const randCount = quick ? 10000 : 20000;
  const randOffset = (k) => (k * STEP) % size;
  log(`formats: ${size / MiB} MiB images, ${randCount} random 4 KiB requests (offset k·${STEP} mod size), best of ${reps} rounds (reads and overwrites ${REPEATS} times per round)`);

  const cases = [
    { id: 'seqw', label: 'seq write 1M qd1 (new image)', bytes: size, qd: 1 },
    { id: 'seqr', label: 'seq read 1M qd1', bytes: size, qd: 1 },
    { id: 'seqr8', label: 'seq read 1M qd8', bytes: size, qd: 8 },
    { id: 'rw1', label: 'rand write 4K qd1 (allocating)', bytes: randCount * 4 * KiB, qd: 1 },
    { id: 'rw16', label: 'rand write 4K qd16 (allocating)', bytes: randCount * 4 * KiB, qd: 16 },
    { id: 'ro16', label: 'rand overwrite 4K qd16 (allocated)', bytes: randCount * 4 * KiB, qd: 16 },
    { id: 'rr16', label: 'rand read 4K qd16 (allocated)', bytes: randCount * 4 * KiB, qd: 16 },
  ];
  const results = Object.fromEntries(cases.map((c) => [c.id, { engine: [], qemu: [] }]));

  const engine = new BlockEngine();
  let diag;
  try {
    for (let r = 0; r < reps; r++) {
      const order = r % 2 === 0 ? ['engine', 'qemu'] : ['qemu', 'engine'];
      for (const side of order) {
        const times = side === 'engine' ? await engineRound(engine, dir, size, seqCount, randCount, randOffset) : await qemuRound(dir, size, seqCount, randCount);
        for (const [id, ms] of Object.entries(times)) results[id][side].push(ms);
      }
      log(`formats: round ${r + 1}/${reps} done`);
    }
    diag = await ioPoolDiagnostics(engine, dir, size);
  } finally {
    await engine.close();
  }

  const rows = cases.map((c) => {
    const e = best(results[c.id].engine);
    const q = best(results[c.id].qemu);
    const ratio = q / e; // engine throughput / QEMU throughput
    return { case: c.label, engine: fmtRate(c.bytes, e), peer: fmtRate(c.bytes, q), ratio, target: '≥ 0.80', ok: ratio >= 0.8, note: `${fmtMs(e)} vs ${fmtMs(q)}` };
  });
  printTable(`formats — qcow2 ${size / MiB} MiB, cache=writeback; ratio = engine / qemu-img bench throughput (best of ${reps} rounds; reads and overwrites best of ${reps * REPEATS})`, rows, {
    engine: 'engine',
    peer: 'qemu-img bench',
  });
  printTable('formats — where the time goes: the I/O pool alone vs synchronous fs calls on the same file (no qcow2)', diag, {
    engine: 'IoPool',
    peer: 'fs.readSync',
    ratio: 'ratio',
  });
  return { rows, diag };
}

async function engineRound(engine, dir, size, seqCount, randCount, randOffset) {
  const t = {};
  const path = join(dir, 'engine-seq.qcow2');
  await createImage(path, { format: 'qcow2', virtualSize: size, opener: engine.pool });
  let drive = await engine.attach({ id: 'bench', path, format: 'qcow2' });
  const buf = new Uint8Array(MiB).fill(0xab);
  const small = new Uint8Array(4 * KiB).fill(0xcd);
  try {
    t.seqw = await timed(() => runQueue(seqCount, 1, (i) => drive.write(i * MiB, buf)));
    t.seqr = await bestOfRuns(REPEATS, () => timed(() => runQueue(seqCount, 1, (i) => readReused(drive, i * MiB, MiB))));
    t.seqr8 = await bestOfRuns(REPEATS, () => timed(() => runQueue(seqCount, 8, (i) => readReused(drive, i * MiB, MiB))));
    t.ro16 = await bestOfRuns(REPEATS, () => timed(() => runQueue(randCount, 16, (k) => drive.write(randOffset(k), small))));
    t.rr16 = await bestOfRuns(REPEATS, () => timed(() => runQueue(randCount, 16, (k) => readReused(drive, randOffset(k), 4 * KiB))));
  } finally {
    await engine.detach('bench');
    await removeFile(path);
  }
  for (const [id, qd] of [
    ['rw1', 1],
    ['rw16', 16],
  ]) {
    const p = join(dir, `engine-rand-${qd}.qcow2`);
    await createImage(p, { format: 'qcow2', virtualSize: size, opener: engine.pool });
    drive = await engine.attach({ id: 'bench', path: p, format: 'qcow2' });
    try {
      t[id] = await timed(() => runQueue(randCount, qd, (k) => drive.write(randOffset(k), small)));
    } finally {
      await engine.detach('bench');
      await removeFile(p);
    }
  }
  return t;
}

/**
 * A read into reused memory, as qemu-img bench reads into the one buffer it allocated up front:
 * drive.readLent lends one of the I/O pool's resident buffers and takes it back at release.
 */
async function readReused(drive, offset, length) {
  (await drive.readLent(offset, length)).release();
}

async function qemuBench(path, args) {
  const r = await sh('qemu-img', ['bench', '-t', 'writeback', '-f', 'qcow2', ...args, path]);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  if (!m) throw new Error(`qemu-img bench printed no time: ${r.stdout}`);
  return Number(m[1]) * 1000;
}

async function qemuRound(dir, size, seqCount, randCount) {
  const t = {};
  const path = join(dir, 'qemu-seq.qcow2');
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
  try {
    t.seqw = await qemuBench(path, ['-w', '--pattern=171', '-s', '1M', '-c', String(seqCount), '-d', '1']);
    t.seqr = await bestOfRuns(REPEATS, () => qemuBench(path, ['-s', '1M', '-c', String(seqCount), '-d', '1']));
    t.seqr8 = await bestOfRuns(REPEATS, () => qemuBench(path, ['-s', '1M', '-c', String(seqCount), '-d', '8']));
    t.ro16 = await bestOfRuns(REPEATS, () => qemuBench(path, ['-w', '--pattern=205', '-s', '4k', '-S', String(STEP), '-c', String(randCount), '-d', '16']));
    t.rr16 = await bestOfRuns(REPEATS, () => qemuBench(path, ['-s', '4k', '-S', String(STEP), '-c', String(randCount), '-d', '16']));
  } finally {
    await removeFile(path);
  }
  for (const [id, qd] of [
    ['rw1', 1],
    ['rw16', 16],
  ]) {
    const p = join(dir, `qemu-rand-${qd}.qcow2`);
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', p, String(size)]);
    try {
      t[id] = await qemuBench(p, ['-w', '--pattern=205', '-s', '4k', '-S', String(STEP), '-c', String(randCount), '-d', String(qd)]);
    } finally {
      await removeFile(p);
    }
  }
  return t;
}

async function timed(fn) {
  const t = now();
  await fn();
  return now() - t;
}

/**
 * Attribution: the engine's I/O pool (PoolFile.pread/pwrite: a message to a worker thread, a
 * fresh buffer per read, a copy per write) against plain synchronous fs calls into one reused
 * buffer, on the same plain file. The gap is the pool's per-request cost, paid by every format.
 */
async function ioPoolDiagnostics(engine, dir, size) {
  const path = join(dir, 'pool.raw');
  const n = size / MiB;
  const fd = openSync(path, 'w+');
  const buf = new Uint8Array(MiB).fill(0x5a);
  for (let i = 0; i < n; i++) writeSync(fd, buf, 0, MiB, i * MiB);
  const small = new Uint8Array(4 * KiB);
  const count4k = quick ? 5000 : 20000;
  const slots = size / (4 * KiB);
  const off4k = (k) => ((k * PRIME) % slots) * 4 * KiB;
  const file = await engine.pool.open(path, { readOnly: false });
  const rows = [];
  try {
    const pool = { r1: [], w1: [], r4k: [] };
    const sync = { r1: [], w1: [], r4: [], r4k: [] };
    for (let rep = 0; rep < 3; rep++) {
      pool.r1.push(await timed(() => runQueue(n, 1, (i) => file.pread(i * MiB, MiB))));
      pool.w1.push(await timed(() => runQueue(n, 1, (i) => file.pwrite(i * MiB, buf))));
      pool.r4k.push(await timed(() => runQueue(count4k, 1, (k) => file.pread(off4k(k), 4 * KiB))));
      sync.r1.push(timeSync(() => { for (let i = 0; i < n; i++) readSync(fd, buf, 0, MiB, i * MiB); }));
      sync.w1.push(timeSync(() => { for (let i = 0; i < n; i++) writeSync(fd, buf, 0, MiB, i * MiB); }));
      sync.r4k.push(timeSync(() => { for (let k = 0; k < count4k; k++) readSync(fd, small, 0, 4 * KiB, off4k(k)); }));
      sync.r4.push(timeSync(() => { for (let i = 0; i < n; i++) readSync(fd, new Uint8Array(MiB), 0, MiB, i * MiB); }));
    }
    const perReq = (ms, count) => `${((ms / count) * 1000).toFixed(ms / count < 0.1 ? 1 : 0)} µs`;
    const row = (label, bytes, count, p, s) => {
      const e = best(p);
      const q = best(s);
      return { case: label, engine: fmtRate(bytes, e), peer: fmtRate(bytes, q), ratio: q / e, note: `${perReq(e, count)} vs ${perReq(q, count)} per request` };
    };
    rows.push(row('pread 1M qd1: IoPool vs readSync (reused buffer)', size, n, pool.r1, sync.r1));
    rows.push(row('pread 1M: readSync into a fresh buffer vs reused', size, n, sync.r4, sync.r1));
    rows.push(row('pwrite 1M qd1: IoPool vs writeSync', size, n, pool.w1, sync.w1));
    rows.push(row('pread 4K qd1: IoPool vs readSync (round trip)', count4k * 4 * KiB, count4k, pool.r4k, sync.r4k));
  } finally {
    await file.close();
    closeSync(fd);
    await removeFile(path);
  }
  rows.push(await allocationCost(engine, dir, size));
  return rows;
}

/** What one 4 KiB allocating write costs the engine in I/O requests and bytes (counted at the pool). */
async function allocationCost(engine, dir, size) {
  const path = join(dir, 'alloc-count.qcow2');
  await createImage(path, { format: 'qcow2', virtualSize: size, opener: engine.pool });
  const drive = await engine.attach({ id: 'count', path, format: 'qcow2' });
  const count = 2000;
  const cs = 64 * KiB;
  const offsets = Array.from({ length: count }, (_, k) => ((k * PRIME) % (size / cs)) * cs);
  const small = new Uint8Array(4 * KiB).fill(1);
  const pool = engine.pool;
  const original = pool.run;
  let requests = 0;
  let bytes = 0;
  pool.run = function (body, transfer) {
    requests++;
    if (body.data) bytes += body.data.byteLength;
    return original.call(this, body, transfer);
  };
  try {
    for (const off of offsets) await drive.write(off, small);
  } finally {
    pool.run = original;
    await engine.detach('count');
    await removeFile(path);
  }
  return {
    case: 'engine I/O per 4K write into a new cluster',
    engine: `${(requests / count).toFixed(2)} req`,
    peer: '',
    ratio: '',
    note: `${(bytes / count / KiB).toFixed(1)} KiB written per 4 KiB guest write (data cluster written whole + metadata written through)`,
  };
}

function timeSync(fn) {
  const t = now();
  fn();
  return now() - t;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { standalone } = await import('./run.mjs');
  await standalone('formats');
}
