// Section "backup" (issue 5): full and incremental push backups, Tidemark against QEMU.
//
// Source: a qcow2 (64 KiB clusters) whose data is 64 KiB written in every other 128 KiB
// (qemu-io -t writeback, `write -P 0x5a`), i.e. half the disk is data in 64 KiB pieces, half never written:
// 4 GiB with 2 GiB of data (BENCH_QUICK=1: 1 GiB with 512 MiB). Each side gets its own copy.
//
// Both servers run side by side and are driven the same way over QMP: `transaction` of
// block-dirty-bitmap-add (64 KiB) + drive-backup sync=full to a new qcow2 (absolute-paths), later
// drive-backup sync=incremental bitmap=b0 after 1% and after 10% of the disk was rewritten in
// scattered 64 KiB pieces (the same offsets on both sides, written with `qemu-io` through
// human-monitor-command; not timed). A job is timed from sending the command to receiving its
// BLOCK_JOB_COMPLETED. "durable" adds an fdatasync of the target after the event (Tidemark
// syncs the target before it completes a job; QEMU flushes it when it closes the target).
// Before every timed job the page cache is synced so no job pays for another's writeback.
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { copyFile } from 'node:fs/promises';
import { BlockEngine, runTransaction } from '../dist/main/engine.mjs';
import { startQemu, startTidemark, timedJob } from './lib/qmp.mjs';
import { GiB, KiB, MiB, best, distinctIndices, fmtBytes, fmtMs, fmtRate, log, now, printTable, quick, removeFile, sh, syncFile } from './lib/util.mjs';

const CLUSTER = 64 * KiB;
const TARGET = '≤ 1.20';

export async function run({ dir }) {
  const disk = quick ? GiB : 4 * GiB;
  const data = disk / 2;
  const clusters = disk / CLUSTER;
  const reps = 3;
  // the incrementals take 40-450 ms and swing ±15% between runs on either side (1%: 45-70 ms);
  // with best of 3 the 1% row crossed its 1.20 line in some runs whatever the build
  const incReps = 6;
  const src = join(dir, 'src-qemu.qcow2');
  const srcTm = join(dir, 'src-tidemark.qcow2');

  log(`backup: building a ${fmtBytes(disk)} qcow2 with ${fmtBytes(data)} of data (64 KiB in every other 128 KiB) with qemu-io`);
  let t = now();
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(disk)]);
  const lines = [];
  for (let off = 0; off < disk; off += 2 * CLUSTER) lines.push(`write -P 0x5a ${off} 64k`);
  await sh('qemu-io', ['-f', 'qcow2', '-t', 'writeback', src], { input: `${lines.join('\n')}\nquit\n` });
  await copyFile(src, srcTm);
  await globalSync();
  log(`backup: source ready in ${fmtMs(now() - t)}`);

  const results = { convert: [], inproc: [], full: { tidemark: [], qemu: [] }, durable: { tidemark: [], qemu: [] }, inc1: { tidemark: [], qemu: [] }, inc10: { tidemark: [], qemu: [] } };
  const notes = {};

  // ---- qemu-img convert (the offline copy every backup tool is compared with)
  for (let r = 0; r < reps; r++) {
    const out = join(dir, 'convert.qcow2');
    await globalSync();
    const c = await sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', src, out]);
    const s = await syncFile(out);
    results.convert.push({ ms: c.ms, durable: c.ms + s });
    await removeFile(out);
  }

  // ---- Tidemark in-process (engine API, no QMP), on its pristine copy; also counts the I/O it issues
  {
    const engine = new BlockEngine();
    try {
      await engine.attach({ id: 'drive0', path: srcTm, format: 'qcow2' });
      for (let r = 0; r < reps; r++) {
        const out = join(dir, 'inproc.qcow2');
        await globalSync();
        const counted = countPoolIo(engine.pool);
        const elu0 = performance.eventLoopUtilization();
        const done = new Promise((resolve) => {
          const on = (ev, d) => {
            if ((ev === 'BLOCK_JOB_COMPLETED' || ev === 'BLOCK_JOB_CANCELLED') && d.device === 'inproc') {
              engine.jobs.off('event', on);
              resolve({ ev, d });
            }
          };
          engine.jobs.on('event', on);
        });
        const t0 = now();
        await runTransaction(engine, [{ type: 'drive-backup', params: { jobId: 'inproc', device: 'drive0', sync: 'full', target: { kind: 'file', path: out, format: 'qcow2', mode: 'absolute-paths' } } }]);
        const { ev, d } = await done;
        const ms = now() - t0;
        const io = counted.stop();
        io.elu = performance.eventLoopUtilization(elu0).utilization;
        if (ev !== 'BLOCK_JOB_COMPLETED' || d.error) throw new Error(`in-process backup failed: ${JSON.stringify(d)}`);
        results.inproc.push({ ms, io });
        await removeFile(out);
      }
    } finally {
      await engine.close();
    }
  }

  // ---- the two QMP servers
  const qemu = await startQemu(src, join(dir, 'qemu.sock'));
  let tm;
  try {
    tm = await startTidemark(srcTm, join(dir, 'tidemark.sock'), join(dir, 'tidemark-data'));
    const sides = { qemu, tidemark: tm };
    const order = (r) => (r % 2 === 0 ? ['qemu', 'tidemark'] : ['tidemark', 'qemu']);

    // full backups: the first in a transaction with the bitmap that the incrementals use
    for (let r = 0; r < reps; r++) {
      for (const side of order(r)) {
        const out = join(dir, `${side}-full.qcow2`);
        const backup = { 'job-id': `full${r}`, device: 'drive0', target: out, sync: 'full', format: 'qcow2', mode: 'absolute-paths' };
        await globalSync();
        const job =
          r === 0
            ? await timedJob(sides[side].qmp, `full${r}`, 'transaction', {
                actions: [
                  { type: 'block-dirty-bitmap-add', data: { node: 'drive0', name: 'b0', granularity: CLUSTER } },
                  { type: 'drive-backup', data: backup },
                ],
              })
            : await timedJob(sides[side].qmp, `full${r}`, 'drive-backup', backup);
        const s = await syncFile(out);
        results.full[side].push(job.ms);
        results.durable[side].push(job.ms + s);
        if (r === 0 && side === 'tidemark') notes.fullCheck = await compare(src, out);
        await removeFile(out);
      }
      log(`backup: full backup round ${r + 1}/${reps} done`);
    }

    // incrementals: the same scattered 64 KiB writes on both sides, then sync=incremental
    const sets = { inc1: distinctIndices(clusters, Math.round(clusters / 100), 101), inc10: distinctIndices(clusters, Math.round(clusters / 10), 1010) };
    for (let r = 0; r < incReps; r++) {
      for (const kind of ['inc1', 'inc10']) {
        const offsets = sets[kind].map((c) => c * CLUSTER);
        for (const side of ['qemu', 'tidemark']) await writeScattered(sides[side].qmp, offsets, 0x60 + r);
        for (const side of order(r)) {
          const out = join(dir, `${side}-${kind}.qcow2`);
          await globalSync();
          const job = await timedJob(sides[side].qmp, `${kind}r${r}`, 'drive-backup', { 'job-id': `${kind}r${r}`, device: 'drive0', target: out, sync: 'incremental', bitmap: 'b0', format: 'qcow2', mode: 'absolute-paths' });
          results[kind][side].push(job.ms);
          if (r === 0) notes[`${kind}-${side}`] = { len: job.event.data.len, data: await dataBytes(out) };
          await removeFile(out);
        }
      }
      log(`backup: incremental round ${r + 1}/${incReps} done`);
    }
  } finally {
    await Promise.all([qemu.stop(), tm?.stop()]);
  }

  // ---- report
  const rows = [];
  const bestOf = (side, key) => best(results[key][side]);
  const tFull = bestOf('tidemark', 'full');
  const qFull = bestOf('qemu', 'full');
  rows.push({
    case: `full, QMP drive-backup (${fmtBytes(data)} data)`,
    engine: `${fmtMs(tFull)} · ${fmtRate(data, tFull)}`,
    peer: `${fmtMs(qFull)} · ${fmtRate(data, qFull)}`,
    ratio: tFull / qFull,
    target: TARGET,
    ok: tFull / qFull <= 1.2,
    note: `command → BLOCK_JOB_COMPLETED; Tidemark copy ${notes.fullCheck}`,
  });
  const tDur = bestOf('tidemark', 'durable');
  const qDur = bestOf('qemu', 'durable');
  rows.push({ case: 'full, QMP, until durable', engine: fmtMs(tDur), peer: fmtMs(qDur), ratio: tDur / qDur, target: TARGET, ok: tDur / qDur <= 1.2, note: '+ fdatasync of the target after the event' });
  const conv = best(results.convert.map((x) => x.durable));
  const convFast = best(results.convert.map((x) => x.ms));
  rows.push({ case: 'full, vs qemu-img convert -O qcow2', engine: fmtMs(tDur), peer: fmtMs(conv), ratio: tDur / conv, target: TARGET, ok: tDur / conv <= 1.2, note: `both until durable; convert alone ${fmtMs(convFast)} (${fmtRate(data, convFast)})` });
  const inproc = best(results.inproc.map((x) => x.ms));
  const io = results.inproc[0].io;
  rows.push({
    case: 'full, Tidemark in-process (engine API)',
    engine: `${fmtMs(inproc)} · ${fmtRate(data, inproc)}`,
    peer: `${fmtMs(qFull)} · ${fmtRate(data, qFull)}`,
    ratio: inproc / qFull,
    target: TARGET,
    ok: inproc / qFull <= 1.2,
    note: `vs QEMU over QMP; ${(io.requests / (data / MiB)).toFixed(1)} I/O requests per MiB of data (${io.summary}); main thread busy ${(io.elu * 100).toFixed(0)}%`,
  });
  for (const [kind, pct] of [
    ['inc1', 1],
    ['inc10', 10],
  ]) {
    const tt = bestOf('tidemark', kind);
    const qq = bestOf('qemu', kind);
    const dirty = Math.round(clusters * (pct / 100)) * CLUSTER;
    const nt = notes[`${kind}-tidemark`];
    const nq = notes[`${kind}-qemu`];
    rows.push({
      case: `incremental after ${pct}% (${fmtBytes(dirty)} dirty)`,
      engine: `${fmtMs(tt)} · ${fmtRate(dirty, tt)}`,
      peer: `${fmtMs(qq)} · ${fmtRate(dirty, qq)}`,
      ratio: tt / qq,
      target: TARGET,
      ok: tt / qq <= 1.2,
      note: `job len ${fmtBytes(nt.len)} / ${fmtBytes(nq.len)}; data in target ${fmtBytes(nt.data)} / ${fmtBytes(nq.data)}`,
    });
  }
  const prop = (side) => bestOf(side, 'inc10') / bestOf(side, 'inc1');
  rows.push({
    case: 'incremental 10% time / 1% time',
    engine: prop('tidemark').toFixed(1),
    peer: prop('qemu').toFixed(1),
    ratio: '',
    note: '10 = proportional to dirty bytes; less = a fixed cost per job dominates',
  });
  const perMiB = (ms, bytes) => `${(ms / (bytes / MiB)).toFixed(2)}`;
  const d1 = Math.round(clusters / 100) * CLUSTER;
  const d10 = Math.round(clusters / 10) * CLUSTER;
  rows.push({
    case: 'ms per dirty MiB: full / inc10% / inc1%',
    engine: [perMiB(tFull, data), perMiB(bestOf('tidemark', 'inc10'), d10), perMiB(bestOf('tidemark', 'inc1'), d1)].join(' / '),
    peer: [perMiB(qFull, data), perMiB(bestOf('qemu', 'inc10'), d10), perMiB(bestOf('qemu', 'inc1'), d1)].join(' / '),
    ratio: '',
    note: 'flat across the three = time proportional to data copied',
  });
  // incremental time ≈ fixed + perMiB × dirty MiB, from the two incremental points
  const fit = (side) => {
    const b = (bestOf(side, 'inc10') - bestOf(side, 'inc1')) / ((d10 - d1) / MiB);
    const a = bestOf(side, 'inc1') - b * (d1 / MiB);
    return `${fmtMs(Math.max(0, a))} + ${b.toFixed(2)} ms/MiB`;
  };
  rows.push({ case: 'incremental ≈ fixed + per dirty MiB', engine: fit('tidemark'), peer: fit('qemu'), ratio: '', note: 'line through the 1% and 10% points' });
  printTable(`backup — ${fmtBytes(disk)} qcow2, ${fmtBytes(data)} data (64 KiB in every other 128 KiB); ratio = Tidemark time / peer time (best of ${reps}; incrementals best of ${incReps})`, rows, { engine: 'Tidemark', peer: 'QEMU' });
  return { rows, results };
}

async function globalSync() {
  await sh('sync', []);
}

/** Writes 64 KiB at each offset through `qemu-io` in human-monitor-command (pipelined: QMP answers in order). */
async function writeScattered(qmp, offsets, pattern) {
  const batch = 256;
  for (let i = 0; i < offsets.length; i += batch) {
    await Promise.all(offsets.slice(i, i + batch).map((off) => qmp.qemuIo('drive0', `write -P 0x${pattern.toString(16)} ${off} 64k`)));
  }
}

async function compare(a, b) {
  const r = await sh('qemu-img', ['compare', '-U', '-f', 'qcow2', '-F', 'qcow2', a, b], { allowFail: true });
  return r.code === 0 ? 'matches the source' : `DIFFERS from the source: ${r.stdout.trim() || r.stderr.trim()}`;
}

/** Bytes of data (not zero, not unallocated) in an image, from qemu-img map. */
async function dataBytes(path) {
  const r = await sh('qemu-img', ['map', '-U', '--output=json', '-f', 'qcow2', path]);
  return JSON.parse(r.stdout)
    .filter((e) => e.data)
    .reduce((n, e) => n + e.length, 0);
}

/** Counts the requests the engine's I/O pool gets until stop(). */
function countPoolIo(pool) {
  const original = pool.run;
  const ops = {};
  let requests = 0;
  pool.run = function (body, transfer) {
    requests++;
    ops[body.op] = (ops[body.op] ?? 0) + 1;
    return original.call(this, body, transfer);
  };
  return {
    stop() {
      pool.run = original;
      return { requests, summary: Object.entries(ops).map(([k, v]) => `${k} ${v}`).join(', ') };
    },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { standalone } = await import('./run.mjs');
  await standalone('backup');
}
