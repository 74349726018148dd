import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * The I/O pool's worker and the headless CLI run as built bundles; build them once per run.
 * TIDEMARK_SKIP_BUILD=1 skips it (when a fresh build was just made, e.g. by `npm test`).
 */
export default function setup(): void {
  if (process.env.TIDEMARK_SKIP_BUILD === '1') return;
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, ['scripts/build.mjs', '--main-only'], { cwd: root, stdio: 'inherit' });
}
