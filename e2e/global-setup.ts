import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * Builds main and renderer once, so the console under test serves the code in the tree.
 * Set TIDEMARK_E2E_SKIP_BUILD=1 when a build has just been made (e.g. by `npm test`).
 */
export default function globalSetup(): void {
  if (process.env.TIDEMARK_E2E_SKIP_BUILD === '1') return;
  const root = fileURLToPath(new URL('..', import.meta.url));
  const r = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('e2e: `node scripts/build.mjs` failed; see the output above.');
}
