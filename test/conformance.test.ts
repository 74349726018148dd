import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * QEMU conformance: each scenario runs against real QEMU and against `bin/tidemark.mjs serve
 * --qmp`, and qmpdiff.py reports every difference (outcomes, events, bitmaps, image contents,
 * qemu-img check). The shared scenarios this issue covers, plus the project's own.
 */
const root = fileURLToPath(new URL('..', import.meta.url));
const qmpdiff = join(root, '..', 'shared', 'conformance', 'qmpdiff.py');
const shared = join(root, '..', 'shared', 'conformance', 'scenarios');
const own = join(root, 'test', 'scenarios');


function run(scenario: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      'python3',
      [qmpdiff, scenario],
      // a data dir of its own: the engine must not touch the user's catalog, nor meet another test's lock
      { cwd: root, env: { ...process.env, TIDEMARK_DATA_DIR: mkdtempSync(join(tmpdir(), 'tm-qmpdiff-')) }, timeout: 300_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, out: stdout + stderr }),
    );
  });
}

describe('QMP conformance against QEMU (qmpdiff.py)', () => {
  it('has the conformance kit beside the project', () => {
    expect(existsSync(qmpdiff), `${qmpdiff} is missing: the shared/ folder must sit beside the project`).toBe(true);
  });

  // every shared scenario (the kit may grow: new ones run too), and the project's own
  const scenarios = [...(existsSync(shared) ? readdirSync(shared).filter((f) => f.endsWith('.json')).sort().map((f) => join(shared, f)) : []), ...readdirSync(own).filter((f) => f.endsWith('.json')).map((f) => join(own, f))];
  for (const scenario of scenarios) {
    it(`agrees with QEMU: ${scenario.split('/').slice(-1)[0]}`, async () => {
      const { code, out } = await run(scenario);
      expect(out, out).toMatch(/1 passed, 0 failed/);
      expect(code).toBe(0);
    });
  }
});
