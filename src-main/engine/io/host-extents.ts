import { execFile } from 'node:child_process';

/** A byte range of a file the file system has storage for (FIEMAP's extents). */
export interface DataRange {
  offset: number;
  length: number;
}

/**
 * Where a file has data, as the file system maps it — what SEEK_DATA/SEEK_HOLE would tell, which
 * Node cannot call. Asked of `filefrag` (e2fsprogs, on every Debian-like system), which reads the
 * FIEMAP mapping; `undefined` when that cannot be had (no filefrag, a file system without FIEMAP,
 * output not understood): the caller then treats the whole file as data. Unwritten (preallocated)
 * extents count as data: reading them is merely wasted, skipping data never is.
 *
 * One process per call: for whole-file questions (verifying a restored raw image), not per I/O.
 */
export function hostDataRanges(path: string, fileSize: number): Promise<DataRange[] | undefined> {
  return new Promise((resolve) => {
    execFile('filefrag', ['-e', '-b1', path], { timeout: 30_000, maxBuffer: 256 << 20, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout) => {
      if (err) return resolve(undefined);
      resolve(parseFilefrag(stdout, fileSize));
    });
  });
}

/** The data ranges in `filefrag -e -b1` output (byte units), merged and clipped to the file; undefined if it is not that. */
export function parseFilefrag(out: string, fileSize: number): DataRange[] | undefined {
  if (!/ extents? found\s*$/.test(out) || !/blocks of 1 bytes\)/.test(out)) return undefined;
  const ranges: DataRange[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):/.exec(line);
    if (!m) continue;
    const start = Number(m[1]);
    const end = Math.min(fileSize, Number(m[2]) + 1);
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end <= start) continue;
    const last = ranges.at(-1);
    if (last && start < last.offset) return undefined; // not in order: not understood
    if (last && start <= last.offset + last.length) last.length = Math.max(last.length, end - last.offset);
    else ranges.push({ offset: start, length: end - start });
  }
  return ranges;
}

/** The parts of `ranges` inside [offset, offset + length). */
export function rangesWithin(ranges: readonly DataRange[], offset: number, length: number): DataRange[] {
  const out: DataRange[] = [];
  const end = offset + length;
  // ranges are sorted: find the first that ends after `offset`
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ranges[mid].offset + ranges[mid].length <= offset) lo = mid + 1;
    else hi = mid;
  }
  for (let k = lo; k < ranges.length && ranges[k].offset < end; k++) {
    const s = Math.max(offset, ranges[k].offset);
    const e = Math.min(end, ranges[k].offset + ranges[k].length);
    if (e > s) out.push({ offset: s, length: e - s });
  }
  return out;
}
