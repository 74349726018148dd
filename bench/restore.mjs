// Section "restore" (issue 8): flattening a 10-link backup chain into one image, Tidemark against
// qemu-img convert, in one run on the same files.
//
// The chain: a 4 GiB base with 1 GiB of data, then 9 qcow2 overlays (each backed by the previous
// one), each holding ~114 MiB of new data in 64 KiB pieces scattered over the disk — 2 GiB of
// data in the chain (BENCH_QUICK=1: 1 GiB disk, 512 MiB data). Tidemark's restore job copies the
// data (hashing each MiB as it goes) and then verifies the result (reads the restored image back
// and compares the hashes); qemu-img convert only copies. So the table shows the copy phase
// (the job's own clock, up to a complete image made durable by fsync) against convert followed
// by `sync FILE` (the same durability; convert itself does not fsync), and the whole
// restore against convert followed by `qemu-img compare` (the same guarantee by QEMU's tools).
// Best of 3 rounds per side, alternating which side goes first.
import { join } from 'node:path';
import { BlockEngine, RestoreJob } from '../dist/main/engine.mjs';
import { GiB, KiB, MiB, fmtBytes, fmtMs, fmtRate, log, now, printTable, prng, quick, removeFile, sh } from './lib/util.mjs';

const TARGET = '≤ 1.20';

async function buildChain(dir, disk, data) {
  const base = join(dir, 'link0.qcow2');
  await sh('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(disk)]);
  const baseData = data / 2;
  const lines = [];
  for (let off = 0; off < baseData * 2; off += 128 * KiB) lines.push(`write -P 0x11 ${off} 64k`);
  await sh('qemu-io', ['-f', 'qcow2', '-t', 'writeback', base], { input: `${lines.join('\n')}\nquit\n` });
  const rnd = prng(42);
  const perLink = Math.floor((data - baseData) / 9 / (64 * KiB));
  let prev = base;
  for (let i = 1; i <= 9; i++) {
    const link = join(dir, `link${i}.qcow2`);
    await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', prev.split('/').pop(), '-F', 'qcow2', link]);
    const w = [];
    for (let k = 0; k < perLink; k++) w.push(`write -P ${0x20 + i} ${Math.floor(rnd() * (disk / (64 * KiB))) * 64 * KiB} 64k`);
    await sh('qemu-io', ['-f', 'qcow2', '-t', 'writeback', link], { input: `${w.join('\n')}\nquit\n` });
    prev = link;
  }
  return prev;
}

async function tidemarkRestore(engine, top, target, format) {
  const job = new RestoreJob({ id: `r${Math.floor(Math.random() * 1e9)}`, pointFile: top, targetPath: target, format, compress: false, opener: engine.opener, digest: (offset, parts) => engine.pool.contentDigest(offset, parts) }, engine.jobs.sink, engine.jobs.onNull);
  engine.jobs.add(job);
  const t = now();
  job.start();
  await job.gone;
  if (!job.report?.verified) throw new Error(`restore failed: ${job.error}`);
  return { total: now() - t, copy: job.report.copyMs, verify: job.report.verifyMs };
}

export async function run({ dir, reps = 3 }) {
  const disk = quick ? GiB : 4 * GiB;
  const data = quick ? 512 * MiB : 2 * GiB;
  log(`restore: building a 10-link chain of a ${fmtBytes(disk)} disk with ${fmtBytes(data)} of data`);
  const top = await buildChain(dir, disk, data);
  const engine = new BlockEngine();
  const rows = [];
  try {
    for (const format of ['raw', 'qcow2']) {
      const ours = join(dir, `tm.${format}`);
      const theirs = join(dir, `qemu.${format}`);
      await sh('sync', []);
      // best of `reps` rounds, the two sides alternating which goes first
      let tm;
      let conv = Infinity;
      let cmp = Infinity;
      for (let r = 0; r < reps; r++) {
        const sides = [
          async () => {
            await sh('sync', []);
            const t = await tidemarkRestore(engine, top, ours, format);
            if (!tm || t.total < tm.total) tm = t;
            await removeFile(ours);
          },
          async () => {
            await sh('sync', []);
            // the same promise as a restore's: the image is on disk (fsync) when it says done
            const converted = (await sh('qemu-img', ['convert', '-f', 'qcow2', '-O', format, top, theirs])).ms + (await sh('sync', [theirs])).ms;
            conv = Math.min(conv, converted);
            cmp = Math.min(cmp, (await sh('qemu-img', ['compare', '-f', 'qcow2', '-F', format, top, theirs])).ms);
            await removeFile(theirs);
          },
        ];
        if (r % 2 === 1) sides.reverse();
        for (const side of sides) await side();
      }
      rows.push({
        case: `flatten to ${format} vs convert+fsync`,
        engine: `${fmtMs(tm.copy)} (${fmtRate(data, tm.copy)})`,
        peer: `${fmtMs(conv)} (${fmtRate(data, conv)})`,
        ratio: tm.copy / conv,
        target: TARGET,
        ok: tm.copy / conv <= 1.2,
        note: 'until the image is complete and on disk',
      });
      rows.push({
        case: `flatten+verify to ${format} vs convert+compare`,
        engine: fmtMs(tm.total),
        peer: fmtMs(conv + cmp),
        ratio: tm.total / (conv + cmp),
        target: TARGET,
        ok: tm.total / (conv + cmp) <= 1.2,
        note: `verify ${fmtMs(tm.verify)} vs compare ${fmtMs(cmp)}`,
      });
    }
  } finally {
    await engine.close();
  }
  printTable('restore (10-link chain; ratio = Tidemark time / qemu-img time)', rows);
  return rows;
}

// run standalone (bench/run.mjs starts it as a child with BENCH_TMPDIR)
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop())) {
  const { mkdtempSync, mkdirSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const own = !process.env.BENCH_TMPDIR;
  const dir = process.env.BENCH_TMPDIR ? join(process.env.BENCH_TMPDIR, 'restore') : mkdtempSync(join(tmpdir(), 'tm-bench-restore-'));
  mkdirSync(dir, { recursive: true });
  try {
    await run({ dir });
  } catch (err) {
    console.error(`restore: FAILED — ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
    void own;
  }
}
