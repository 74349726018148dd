import { copyFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { TidemarkError } from '../../src-shared/errors.js';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import type { Qcow2Driver } from '../../src-main/engine/formats/qcow2/driver.js';
import type { FileHandle, FileOpener, HostExtent } from '../../src-main/engine/io/file-handle.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { makeTempDir, prng, qemuCheck, qemuReadAll, removeDir, seededBytes as makeSeeded } from '../helpers/qemu-tools.js';

/**
 * Simulated crashes: the file handle lets the first N writes through and fails everything after.
 * Two kinds:
 * - process crash (kill -9): the N writes all reached the page cache, nothing after;
 * - power loss: only what an fsync covered is certain; of the writes since the last fsync a
 *   random subset of 512-byte pieces survives (any order, torn writes included).
 * The contract (metadata is written back, as with QEMU's cache=writeback):
 * - whatever N, `qemu-img check` finds no corruption — leaked clusters are acceptable (exit 3),
 *   dangling pointers are not: no crash point may corrupt, between flushes or after one;
 * - every write acknowledged before a flush that completed reads back after the crash;
 *   writes after the last completed flush may be lost.
 */

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir();
});
afterAll(async () => removeDir(dir));

class CrashAfter {
  writes = 0;
  constructor(
    readonly budget: number,
    readonly power = false,
    readonly seed = 1,
  ) {}
  get crashed(): boolean {
    return this.writes >= this.budget;
  }
}

const PIECE = 512;

const seededCache = new Map<string, Uint8Array>();
/** the scenario's data, made once (the same bytes every run) */
function seededBytes(length: number, seed: number): Uint8Array {
  const key = `${length}/${seed}`;
  let bytes = seededCache.get(key);
  if (!bytes) seededCache.set(key, (bytes = makeSeeded(length, seed)));
  return bytes;
}

class CrashingFile implements FileHandle {
  /** power mode: writes since the last fsync, not yet in the file */
  private pending: { at: number; data: Uint8Array }[] = [];
  private settled = false;
  constructor(
    private readonly inner: FileHandle,
    private readonly crash: CrashAfter,
  ) {}
  get path(): string {
    return this.inner.path;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  async pread(position: number, length: number): Promise<Uint8Array> {
    const out = await this.inner.pread(position, length);
    for (const p of this.pending) {
      const from = Math.max(position, p.at);
      const to = Math.min(position + length, p.at + p.data.length);
      if (from < to) out.set(p.data.subarray(from - p.at, to - p.at), from - position);
    }
    return out;
  }
  async pwrite(position: number, data: Uint8Array): Promise<void> {
    if (this.crash.crashed) {
      await this.powerLoss();
      throw new TidemarkError('IO_ERROR', 'simulated crash');
    }
    this.crash.writes++;
    if (!this.crash.power) {
      await this.inner.pwrite(position, data);
      return;
    }
    this.pending.push({ at: position, data: data.slice() });
  }
  async size(): Promise<number> {
    let size = await this.inner.size();
    for (const p of this.pending) size = Math.max(size, p.at + p.data.length);
    return size;
  }
  async truncate(length: number): Promise<void> {
    if (this.crash.crashed) throw new TidemarkError('IO_ERROR', 'simulated crash');
    await this.apply(this.pending);
    await this.inner.truncate(length);
  }
  async sync(): Promise<void> {
    if (this.crash.crashed) {
      await this.powerLoss();
      throw new TidemarkError('IO_ERROR', 'simulated crash');
    }
    await this.apply(this.pending);
  }
  allocation(position: number, length: number): Promise<HostExtent[]> {
    return this.inner.allocation(position, length);
  }
  async close(): Promise<void> {
    // a clean end: everything reaches the file; after a crash only the survivors did
    if (this.crash.crashed) await this.powerLoss();
    else await this.apply(this.pending);
    await this.inner.close();
  }
  private async apply(pieces: { at: number; data: Uint8Array }[]): Promise<void> {
    this.pending = [];
    for (const p of pieces) await this.inner.pwrite(p.at, p.data);
  }
  /**
   * The unsynced 512-byte pieces that made it to the disk before the power went. By the seed:
   * only the last write (the worst case for a missing barrier: what was issued last survives,
   * what it depends on does not — over all crash points every write gets its turn), or a
   * random half of the pieces (any order, torn writes).
   */
  private async powerLoss(): Promise<void> {
    if (this.settled) return;
    this.settled = true;
    const rnd = prng(this.crash.seed);
    const lastOnly = this.crash.seed % 2 === 0;
    const candidates = lastOnly ? this.pending.slice(-1) : this.pending;
    const keepPiece = () => lastOnly || rnd() < 0.5;
    const survivors: { at: number; data: Uint8Array }[] = [];
    for (const w of candidates) {
      let run: { from: number; to: number } | undefined;
      const keep = () => run && survivors.push({ at: w.at + run.from, data: w.data.subarray(run.from, run.to) });
      for (let from = 0; from < w.data.length; ) {
        const to = Math.min(w.data.length, from + PIECE - ((w.at + from) % PIECE));
        if (keepPiece()) {
          if (run && run.to === from) run.to = to;
          else {
            keep();
            run = { from, to };
          }
        }
        from = to;
      }
      keep();
    }
    await this.apply(survivors);
  }
}

function crashingOpener(crash: CrashAfter): FileOpener {
  return { open: async (path, options) => new CrashingFile(await fsOpener.open(path, options), crash) };
}

/** What must read back after a crash once flush number `afterFlush` completed: guest range → expected bytes. */
interface Durable {
  afterFlush: number;
  offset: number;
  bytes: Uint8Array;
}

const MiB = 2 ** 20;

/** The data the scenario writes, and which ranges no later step touches (so they must survive a completed flush). */
function expectations(): Durable[] {
  const first = new Uint8Array(8192);
  first.set(seededBytes(3000, 1), 1000);
  first.set(seededBytes(100, 3), 1200);
  const big = seededBytes(600 * 1024, 2);
  const compressed = new Uint8Array(1024);
  compressed.fill(9, 0, 512);
  compressed.fill(10, 512);
  compressed.set(seededBytes(10, 4), 100);
  return [
    { afterFlush: 1, offset: 0, bytes: first },
    { afterFlush: 1, offset: 5 * MiB, bytes: big.subarray(0, 4096) },
    { afterFlush: 1, offset: 5 * MiB + 160 * 1024, bytes: big.subarray(160 * 1024) },
    { afterFlush: 2, offset: 5 * MiB + 4096, bytes: new Uint8Array(8192) },
    { afterFlush: 2, offset: 5 * MiB + 65536, bytes: new Uint8Array(8192) },
    { afterFlush: 2, offset: 7 * MiB, bytes: compressed },
    { afterFlush: 2, offset: 5 * MiB + 615424, bytes: seededBytes(1024, 8) },
    { afterFlush: 3, offset: 16384, bytes: seededBytes(2048, 9) },
    { afterFlush: 3, offset: 8 * MiB + 32768, bytes: seededBytes(9 * MiB, 5).subarray(32768) },
    { afterFlush: 3, offset: 20 * MiB, bytes: seededBytes(4096, 6) },
    { afterFlush: 3, offset: 21 * MiB, bytes: new Uint8Array(65536) },
  ];
}

/**
 * Exercises every kind of metadata update (L2 allocation, refcount block creation, table growth,
 * zeroing, discard, compression, a released cluster reused after a flush), with flushes between
 * the phases. Returns how many flushes completed (close counts as the fourth).
 */
async function scenario(path: string, opener: FileOpener): Promise<number> {
  const img = (await openImage(path, { readOnly: false, opener })) as Qcow2Driver;
  const attempt = async (p: Promise<unknown>) => p.catch((err: unknown) => {
    if (!(err instanceof TidemarkError)) throw err;
  });
  let flushed = 0;
  // a flush that failed means the process died: no later flush counts
  let dead = false;
  const flush = async () => {
    try {
      await img.flush();
      if (!dead) flushed++;
    } catch (err) {
      if (!(err instanceof TidemarkError)) throw err;
      dead = true;
    }
  };
  try {
    await attempt(img.write(1000, seededBytes(3000, 1)));
    await attempt(img.write(5 * MiB, seededBytes(600 * 1024, 2))); // several refcount blocks, table growth
    await attempt(img.write(1200, seededBytes(100, 3))); // in place
    await attempt(img.write(21 * MiB, seededBytes(65536, 7)));
    await flush();
    await attempt(img.writeZeroes(5 * MiB + 4096, 8192, { mayUnmap: true }));
    await attempt(img.writeZeroes(5 * MiB + 65536, 8192));
    await attempt(img.discard(5 * MiB + 131072, 16384));
    await attempt(img.writeCompressed(7 * MiB, new Uint8Array(512).fill(9)));
    await attempt(img.writeCompressed(7 * MiB + 512, new Uint8Array(512).fill(10)));
    await attempt(img.write(7 * MiB + 100, seededBytes(10, 4))); // rewrite over compressed
    await attempt(img.discard(21 * MiB, 65536)); // released: reusable only after the next flush
    await attempt(img.write(5 * MiB + 615424, seededBytes(1024, 8))); // a new cluster in an L2 table already on disk
    await flush();
    // past 8 MiB of host data the first refcount table (64 blocks of 256 clusters) is full and moves
    await attempt(img.write(8 * MiB, seededBytes(9 * MiB, 5))); // reuses the clusters freed above
    await attempt(img.write(20 * MiB, seededBytes(4096, 6)));
    await attempt(img.writeZeroes(21 * MiB, 65536));
    await attempt(img.write(16384, seededBytes(2048, 9))); // again, in the first L2 table
    await flush();
    // only unlinking in tables already on disk: the freeing waits for the L2 writes alone
    await attempt(img.discard(8 * MiB, 32768));
  } finally {
    try {
      await img.close();
      if (!dead) flushed++;
    } catch {
      // the crash happened before or during close
    }
  }
  return flushed;
}

/** The guest bytes of each expected range, read through a read-only open (qemu-img check judged the structure). */
async function readExpected(path: string, expected: Durable[]): Promise<Uint8Array[]> {
  const img = await openImage(path, { readOnly: true, opener: fsOpener });
  try {
    return await Promise.all(expected.map((e) => img.read(e.offset, e.bytes.length)));
  } finally {
    await img.close();
  }
}

test('a crash after any write leaves the image consistent (leaks at most) and keeps what a completed flush covered', async () => {
  const pristine = join(dir, 'pristine.qcow2');
  await createImage(pristine, { format: 'qcow2', virtualSize: 24 * MiB, clusterSize: 512, opener: fsOpener });
  // count the writes of an uninterrupted run
  const full = new CrashAfter(Number.MAX_SAFE_INTEGER);
  const reference = join(dir, 'reference.qcow2');
  await copyFile(pristine, reference);
  expect(await scenario(reference, crashingOpener(full))).toBe(4);
  const check = await qemuCheck(reference);
  expect(check.code, check.stdout).toBe(0);
  const total = full.writes;
  expect(total).toBeGreaterThan(20);
  const grown = (await openImage(reference, { readOnly: true, opener: fsOpener })) as Qcow2Driver;
  expect(grown.headerFields.refcountTableClusters).toBeGreaterThan(1);
  await grown.close();
  const expected = expectations();
  const whole = await qemuReadAll(reference, dir);
  for (const e of expected) expect(Buffer.compare(whole.subarray(e.offset, e.offset + e.bytes.length), e.bytes), `reference at ${e.offset}`).toBe(0);

  // process crashes: every point among the first 120 writes and the last 40, every 5th in between;
  // power losses: every point (even points keep only the last unsynced write, odd ones a random
  // half of the unsynced pieces)
  const points = (power: boolean) => {
    const out: number[] = [];
    for (let n = 0; n < total; n++) if (power || n < 120 || n >= total - 40 || n % 5 === 0) out.push(n);
    // power loss at the final fsync: every write issued, none of the last group synced
    if (power) out.push(total);
    return out;
  };
  const bad: string[] = [];
  const seen = new Set<number>();
  for (const power of [false, true]) {
    for (const n of points(power)) {
      const p = join(dir, `crash-${n}.qcow2`);
      await copyFile(pristine, p);
      const flushed = await scenario(p, crashingOpener(new CrashAfter(n, power, n)));
      seen.add(flushed);
      const what = `${power ? 'power loss' : 'crash'} after ${n} writes (${flushed} flushes completed)`;
      const r = await qemuCheck(p);
      if (r.code !== 0 && r.code !== 3) {
        bad.push(`${what}: exit ${r.code}\n${r.stdout}`);
        continue;
      }
      const got = await readExpected(p, expected);
      expected.forEach((e, i) => {
        if (e.afterFlush <= flushed && Buffer.compare(got[i], e.bytes) !== 0) bad.push(`${what}: guest bytes at ${e.offset} lost`);
      });
      await rm(p, { force: true });
    }
  }
  expect(bad).toEqual([]);
  // the crash points cover every stage: before the first flush completed, between the flushes, and during close
  expect([...seen].sort()).toEqual([0, 1, 2, 3]);
}, 300_000);
