import { basename, extname } from 'node:path';
import { parseSize } from '../../../src-shared/size.js';
import { TidemarkError } from '../../../src-shared/errors.js';

/** The largest disk Tidemark creates or accepts: 64 TiB. */
export const MAX_DRIVE_SIZE = 64 * 2 ** 40;

/** Parses and checks a new drive's size: more than 0, at most 64 TiB. */
export function checkDriveSize(input: string | number): number {
  const bytes = parseSize(input);
  if (bytes === undefined) throw new TidemarkError('INVALID_SIZE', `'${input}' is not a size. Use a number of bytes or a unit, like 10G or 512M.`);
  if (bytes === 0) throw new TidemarkError('INVALID_SIZE', 'A disk of 0 bytes cannot hold anything: give a size above 0.');
  if (bytes > MAX_DRIVE_SIZE) throw new TidemarkError('INVALID_SIZE', `${input} is more than the 64 TiB Tidemark supports.`);
  return bytes;
}

/** A drive id proposed from a file name: "Web Server.qcow2" → "Web-Server". */
export function idFromPath(path: string): string {
  let stem = basename(path, extname(path)).replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z]+/, '');
  stem = stem.slice(0, 28).replace(/[-.]+$/, '');
  return stem || 'drive';
}

/** The first of base, base-2, base-3… not in `taken`. */
export function uniqueId(base: string, taken: Set<string>): string {
  if (!taken.has(base)) return base;
  for (let n = 2; ; n++) {
    const candidate = `${base.slice(0, 31 - String(n).length - 1)}-${n}`;
    if (!taken.has(candidate)) return candidate;
  }
}
