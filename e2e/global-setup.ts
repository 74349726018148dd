import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Builds main and renderer once, so the console under test serves the code in the tree.
 * Set TIDEMARK_E2E_SKIP_BUILD=1 when a build has just been made (e.g. by `npm test`).
 */
export default function globalSetup(): () => void {
  // every temporary folder of the run (data dirs, images) under one, removed at the end: the
  // workers inherit TMPDIR, which os.tmpdir() reads
  const scratch = mkdtempSync(join(tmpdir(), 'tidemark-e2e-'));
  process.env.TMPDIR = scratch;
  const removeScratch = () => rmSync(scratch, { recursive: true, force: true });
  if (process.env.TIDEMARK_E2E_SKIP_BUILD !== '1') {
    const root = fileURLToPath(new URL('..', import.meta.url));
    const r = spawnSync(process.execPath, ['scripts/build.mjs'], { cwd: root, stdio: 'inherit' });
    if (r.status !== 0) {
      removeScratch();
      throw new Error('e2e: `node scripts/build.mjs` failed; see the output above.');
    }
  }
  return removeScratch;
}
