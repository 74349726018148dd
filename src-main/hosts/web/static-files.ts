import { readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { extname, join, normalize, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json',
  '.woff2': 'font/woff2',
  '.map': 'application/json',
};

/** The built renderer: beside the bundle (dist/main → dist/renderer), or dist/renderer from source. */
export function rendererDir(): string {
  for (const rel of ['../renderer/', '../../../dist/renderer/']) {
    const dir = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(join(dir, 'index.html'))) return dir;
  }
  throw new Error('The renderer is not built: run `npm run build` first.');
}

/** Reads a file under `root` for a URL path; undefined when absent or outside root. */
export async function loadStatic(root: string, urlPath: string): Promise<{ body: Buffer; type: string } | undefined> {
  let rel: string;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    return undefined;
  }
  if (rel.includes('\0')) return undefined;
  if (rel === '/' || rel === '') rel = '/index.html';
  const full = normalize(join(root, rel));
  if (!full.startsWith(root.endsWith(sep) ? root : root + sep)) return undefined;
  const st = await stat(full).catch(() => undefined);
  if (!st?.isFile()) return undefined;
  return { body: await readFile(full), type: TYPES[extname(full)] ?? 'application/octet-stream' };
}
