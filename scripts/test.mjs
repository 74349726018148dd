// `npm test`: system tools → build → typecheck → lint → unit/integration (Vitest) → e2e (Playwright).
// Ends with one line "N passed, M failed" counting every test that ran.
import { spawnSync } from 'node:child_process';
import { readFileSync, mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { ensureSystemTools } from './system-tools.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const node = process.execPath;
const bin = (name) => `${root}node_modules/.bin/${name}`;
// one build up front; the vitest and playwright set-ups then skip theirs
const env = { ...process.env, ELECTRON_SKIP_BINARY_DOWNLOAD: '1', PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: '1', FORCE_COLOR: '0', TIDEMARK_SKIP_BUILD: '1', TIDEMARK_E2E_SKIP_BUILD: '1' };

function step(title, cmd, args) {
  console.log(`\n=== ${title}`);
  const started = Date.now();
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  console.log(`=== ${title}: ${r.status === 0 ? 'ok' : 'FAILED'} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  return r.status === 0;
}

if (!ensureSystemTools()) process.exit(1);
mkdirSync(`${root}.tmp`, { recursive: true });
let passed = 0;
let failed = 0;
const ok = [];

ok.push(step('build', node, [`${root}scripts/build.mjs`]));
ok.push(step('typecheck', node, [bin('tsc'), '-p', 'tsconfig.json', '--noEmit']) && step('typecheck renderer', node, [bin('vue-tsc'), '-p', 'src-renderer/tsconfig.json', '--noEmit']));
ok.push(step('lint', node, [bin('eslint'), '--max-warnings=0', '.']));

rmSync(`${root}.tmp/vitest.json`, { force: true });
ok.push(step('unit + integration (vitest)', node, [bin('vitest'), 'run', '--reporter=default', '--reporter=json', '--outputFile.json=.tmp/vitest.json']));
try {
  const v = JSON.parse(readFileSync(`${root}.tmp/vitest.json`, 'utf8'));
  passed += v.numPassedTests;
  failed += v.numFailedTests;
} catch {
  failed += 1;
}

rmSync(`${root}.tmp/playwright.json`, { force: true });
ok.push(step('e2e (playwright)', node, [bin('playwright'), 'test']));
try {
  const p = JSON.parse(readFileSync(`${root}.tmp/playwright.json`, 'utf8'));
  passed += p.stats.expected + p.stats.flaky;
  failed += p.stats.unexpected;
} catch {
  failed += 1;
}

const stepsFailed = ok.filter((x) => !x).length;
if (stepsFailed && failed === 0) failed = stepsFailed;
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(stepsFailed || failed ? 1 : 0);
