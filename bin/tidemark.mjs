#!/usr/bin/env node
// Tidemark's headless entry. Runs on the project's pinned Node (the `node` devDependency, the same
// major as Electron's main process): started by an older node on PATH, it re-executes itself.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const REQUIRED_MAJOR = 24;
const root = fileURLToPath(new URL('..', import.meta.url));
const major = Number(process.versions.node.split('.')[0]);

if (major < REQUIRED_MAJOR) {
  const pinned = `${root}node_modules/node/bin/node`;
  if (!existsSync(pinned)) {
    console.error(`tidemark: needs Node ${REQUIRED_MAJOR}+ (this is ${process.versions.node}); run \`npm install\` in ${root} to get the pinned runtime.`);
    process.exit(1);
  }
  // an IPC channel ties the child's life to ours: if this process is killed outright (SIGKILL),
  // the channel closes and the child dies the same way instead of living on as an orphan
  const child = spawn(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: ['inherit', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, TIDEMARK_REEXEC: '1' },
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => {
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
} else {
  if (process.env.TIDEMARK_REEXEC === '1' && process.connected) {
    process.on('disconnect', () => process.kill(process.pid, 'SIGKILL'));
    // the channel must not keep us alive on its own
    process.channel?.unref();
  }
  const cli = `${root}dist/main/cli.mjs`;
  if (!existsSync(cli) || !existsSync(`${root}dist/renderer/index.html`)) {
    // a fresh clone: build once, quietly, so `node bin/tidemark.mjs` just works
    const r = spawnSync(process.execPath, [`${root}scripts/build.mjs`], { stdio: ['ignore', 'ignore', 'inherit'], cwd: root });
    if (r.status !== 0) {
      console.error('tidemark: the build failed; run `npm run build` to see why.');
      process.exit(1);
    }
  }
  const { main } = await import(pathToFileURL(cli).href);
  process.exitCode = await main(process.argv.slice(2));
}
