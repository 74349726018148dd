import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The I/O pool's worker and the headless CLI run as built bundles; build them once per run.
 * TIDEMARK_SKIP_BUILD=1 skips it (when a fresh build was just made, e.g. by `npm test`).
 */
export default function setup(): () => void {
  const removeScratch = useScratchTmpdir();
  if (process.env.TIDEMARK_SKIP_BUILD !== '1') {
    const root = fileURLToPath(new URL('..', import.meta.url));
    execFileSync(process.execPath, ['scripts/build.mjs', '--main-only'], { cwd: root, stdio: 'inherit' });
  }
  return removeScratch;
}

/**
 * Every temporary folder the tests make (images, catalogs, sockets: gigabytes per run) goes under
 * one folder of this run, removed when the run ends: the workers inherit TMPDIR, which
 * os.tmpdir() reads. Without it each run left its images behind.
 */
function useScratchTmpdir(): () => void {
  const scratch = mkdtempSync(join(tmpdir(), 'tidemark-test-'));
  process.env.TMPDIR = scratch;
  return () => rmSync(scratch, { recursive: true, force: true });
}
