#!/usr/bin/env node
// Tidemark benchmarks: `npm run bench` (builds first) or `node bench/run.mjs [section...]`.
// Sections: formats bitmaps backup restore nbd (default: all). BENCH_QUICK=1 scales the data down.
// Every figure that matters is a ratio against a peer measured in the same run; absolute times
// are printed for context only. A target MISS is reported, never turned into a failing exit code:
// the exit code is non-zero only when a section could not run.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { availableParallelism, cpus, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupTemps, fmtMs, killChildren, now, quick, registerTemp, sh, track } from './lib/util.mjs';

const here = fileURLToPath(new URL('.', import.meta.url));
const SECTIONS = ['formats', 'bitmaps', 'backup', 'restore', 'nbd'];
/** sections written as standalone scripts (by their own owners): run as child processes when present */
const EXTERNAL = { restore: 'restore.mjs', nbd: 'nbd.mjs' };
const EXTERNAL_TIMEOUT_MS = 15 * 60 * 1000;

function usage() {
  return `usage: node bench/run.mjs [${SECTIONS.join('|')}]...   (BENCH_QUICK=1 for a smaller, faster run)`;
}

async function header(selected) {
  const qemu = await sh('qemu-img', ['--version'], { allowFail: true }).catch(() => ({ stdout: 'qemu-img: not found' }));
  console.log(
    [
      `Tidemark bench — ${new Date().toISOString()}`,
      `node ${process.versions.node}; ${qemu.stdout.split('\n')[0]}`,
      `${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
      `mode: ${quick ? 'QUICK (BENCH_QUICK=1: smaller data)' : 'full'}; sections: ${selected.join(' ')}`,
      'ratios compare against a peer measured in the same run; timings on a shared 2-core machine are noisy',
    ].join('\n'),
  );
}

function runExternal(name, dir) {
  const script = join(here, EXTERNAL[name]);
  if (!existsSync(script)) {
    console.log(`\n${name}: skipped — bench/${EXTERNAL[name]} is not there yet`);
    return Promise.resolve(true);
  }
  console.log(`\n${name}: running bench/${EXTERNAL[name]} (its output follows)`);
  return new Promise((resolve) => {
    const child = track(
      spawn(process.execPath, [script], {
        stdio: ['ignore', 'inherit', 'inherit'],
        env: { ...process.env, BENCH_QUICK: quick ? '1' : (process.env.BENCH_QUICK ?? ''), BENCH_TMPDIR: dir },
      }),
    );
    const timer = setTimeout(() => {
      console.log(`${name}: bench/${EXTERNAL[name]} ran past ${EXTERNAL_TIMEOUT_MS / 60000} minutes; stopping it`);
      child.kill('SIGKILL');
    }, EXTERNAL_TIMEOUT_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) console.log(`${name}: bench/${EXTERNAL[name]} exited with ${signal ?? code}`);
      resolve(code === 0);
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      console.log(`${name}: could not start bench/${EXTERNAL[name]}: ${err.message}`);
      resolve(false);
    });
  });
}

export async function main(argv) {
  if (argv.includes('-h') || argv.includes('--help')) {
    console.log(usage());
    return 0;
  }
  const unknown = argv.filter((a) => !SECTIONS.includes(a));
  if (unknown.length) {
    console.error(`unknown section(s): ${unknown.join(' ')}\n${usage()}`);
    return 2;
  }
  const selected = argv.length ? [...new Set(argv)] : SECTIONS;
  if (!existsSync(join(here, '../dist/main/engine.mjs'))) {
    console.error('dist/main/engine.mjs is missing: run `node scripts/build.mjs --main-only` (npm run bench builds it)');
    return 2;
  }

  const root = mkdtempSync(join(process.env.BENCH_TMP ?? tmpdir(), 'tidemark-bench-'));
  registerTemp(root);
  const onSignal = (sig) => {
    killChildren();
    cleanupTemps();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  await header(selected);
  const spent = [];
  let failed = 0;
  const t0 = now();
  try {
    for (const name of selected) {
      const dir = join(root, name);
      mkdirSync(dir, { recursive: true });
      const t = now();
      let ok = true;
      try {
        if (EXTERNAL[name]) ok = await runExternal(name, dir);
        else await (await import(`./${name}.mjs`)).run({ dir });
      } catch (err) {
        ok = false;
        console.log(`\n${name}: FAILED — ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      }
      if (!ok) failed++;
      spent.push(`${name} ${fmtMs(now() - t)}${ok ? '' : ' (failed)'}`);
    }
  } finally {
    killChildren();
    cleanupTemps();
  }
  console.log(`\ntime: ${spent.join(', ')}; total ${fmtMs(now() - t0)}`);
  return failed ? 1 : 0;
}

/** For `node bench/<section>.mjs`: the same as `node bench/run.mjs <section>`. */
export async function standalone(section) {
  process.exitCode = await main([section]);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main(process.argv.slice(2));
}
