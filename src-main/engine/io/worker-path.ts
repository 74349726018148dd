import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * Where the built worker bundle is. Inside the bundle (dist/main/*.mjs) it sits beside us; when
 * running from source (Vitest), it is the one `scripts/build.mjs --main-only` wrote to dist/main.
 */
export function ioWorkerPath(): string {
  const candidates = [new URL('./io-worker.mjs', import.meta.url), new URL('../../../dist/main/io-worker.mjs', import.meta.url)];
  for (const url of candidates) {
    const path = fileURLToPath(url);
    if (existsSync(path)) return path;
  }
  throw new Error('The I/O worker bundle is missing: run `npm run build` first.');
}
