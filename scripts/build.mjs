// Builds the main-process bundles (esbuild) and the renderer (Vite) into dist/.
//   node scripts/build.mjs              everything
//   node scripts/build.mjs --main-only  main bundles only (what tests and the headless CLI need)
//   node scripts/build.mjs --watch      rebuild on change (npm run dev)
import { build, context } from 'esbuild';
import { fileURLToPath } from 'node:url';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(`${root}/package.json`, 'utf8'));
const args = new Set(process.argv.slice(2));
const watch = args.has('--watch');
const mainOnly = args.has('--main-only');

// ESM bundles that contain CommonJS dependencies (ws) need a real `require`.
const requireShim = "import { createRequire as __tmCreateRequire } from 'node:module'; const require = __tmCreateRequire(import.meta.url);";

const common = {
  absWorkingDir: root,
  bundle: true,
  platform: 'node',
  target: 'node24',
  sourcemap: 'linked',
  logLevel: 'warning',
  external: ['electron', 'bufferutil', 'utf-8-validate'],
};

const configs = [
  {
    ...common,
    entryPoints: {
      cli: 'src-main/hosts/cli/main.ts',
      'io-worker': 'src-main/engine/io/io-worker.ts',
      'electron-main': 'src-main/hosts/electron/main.ts',
      engine: 'src-main/engine/index.ts',
    },
    outdir: 'dist/main',
    outExtension: { '.js': '.mjs' },
    format: 'esm',
    splitting: true,
    chunkNames: 'chunks/[name]-[hash]',
    banner: { js: requireShim },
    define: { __TIDEMARK_VERSION__: JSON.stringify(pkg.version) },
  },
  {
    ...common,
    // a sandboxed preload must be CommonJS
    entryPoints: { preload: 'src-main/hosts/electron/preload.ts' },
    outdir: 'dist/main',
    outExtension: { '.js': '.cjs' },
    format: 'cjs',
  },
];

mkdirSync(`${root}/dist/main`, { recursive: true });
if (watch) {
  for (const c of configs) await (await context(c)).watch();
  console.log('watching src-main/ for changes');
} else {
  // no clean first: a process starting from dist/main meanwhile must never find it missing
  const results = await Promise.all(configs.map((c) => build({ ...c, metafile: true })));
  // chunks of earlier builds are named by their content hash and would pile up: drop the ones
  // this build did not write (the entry points that imported them were just replaced)
  const written = new Set(results.flatMap((r) => Object.keys(r.metafile.outputs)).map((p) => resolve(root, p)));
  const chunkDir = `${root}/dist/main/chunks`;
  for (const name of existsSync(chunkDir) ? readdirSync(chunkDir) : []) {
    const path = resolve(chunkDir, name);
    if (!written.has(path)) rmSync(path, { force: true });
  }
}

if (!mainOnly) {
  const { build: viteBuild } = await import('vite');
  await viteBuild({ configFile: `${root}/vite.config.ts`, logLevel: 'warn', build: { watch: watch ? {} : null } });
}
