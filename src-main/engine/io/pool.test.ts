import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { FileError } from './file-errors.js';
import type { FileHandle } from './file-handle.js';
import { contentDigest } from './content-digest.js';
import { IoPool } from './pool.js';
import { CTRL_SLEEPING } from './io-protocol.js';

/** Deterministic bytes (so a mismatch shows where). */
function bytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

let dir: string;
let pool: IoPool;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tidemark-pool-'));
  pool = new IoPool(2);
});
afterAll(async () => {
  await pool.close();
  await rm(dir, { recursive: true, force: true });
});

async function fileWith(name: string, content: Uint8Array): Promise<{ path: string; file: FileHandle }> {
  const path = join(dir, name);
  await writeFile(path, content);
  return { path, file: await pool.open(path, { readOnly: false }) };
}

describe('IoPool', () => {
  test('reads small (slab) and large (worker buffer) ranges, zeros past EOF, and empty ranges', async () => {
    const content = bytes(3 * 2 ** 20 + 123, 1);
    const { file } = await fileWith('read.bin', content);
    try {
      for (const [at, n] of [
        [0, 4096],
        [5, 100],
        [1000, 16384],
        [1000, 16385],
        [2 ** 20 - 7, 2 ** 20 + 9],
      ]) {
        expect(Buffer.compare(await file.pread(at, n), content.subarray(at, at + n)), `${n} at ${at}`).toBe(0);
      }
      // past EOF: the rest reads as zeros, whatever the path
      for (const n of [4096, 300_000]) {
        const at = content.length - 50;
        const got = await file.pread(at, n);
        expect(got.length).toBe(n);
        expect(Buffer.compare(got.subarray(0, 50), content.subarray(at))).toBe(0);
        expect(got.subarray(50).every((b) => b === 0)).toBe(true);
      }
      expect((await file.pread(10, 0)).length).toBe(0);
    } finally {
      await file.close();
    }
  });

  test('a write takes its bytes at once: the caller may reuse its buffer, also when the request had to wait', async () => {
    const { path, file } = await fileWith('write.bin', new Uint8Array(0));
    try {
      const expected = new Uint8Array(8 * 2 ** 20 + 4096);
      const buf = new Uint8Array(64 * 1024);
      const writes: Promise<void>[] = [];
      // more requests than the ring has slots, more bytes than the data ring holds: some wait
      for (let k = 0; k < 600; k++) {
        const n = k % 3 === 0 ? 64 * 1024 : 4096;
        const data = bytes(n, k + 10);
        buf.set(data);
        const at = ((k * 7919) % 128) * 65536;
        writes.push(file.pwrite(at, buf.subarray(0, n)));
        expected.set(data, at);
        buf.fill(0xee); // overwritten right after the call
      }
      // one larger than the data ring allows (sent as a copy)
      const big = bytes(3 * 2 ** 20, 99);
      const bigWrite = file.pwrite(5 * 2 ** 20, big);
      expected.set(big, 5 * 2 ** 20);
      big.fill(1);
      await Promise.all([...writes, bigWrite]);
      await file.sync();
      const onDisk = await readFile(path);
      expect(Buffer.compare(onDisk, expected.subarray(0, onDisk.length))).toBe(0);
      expect(onDisk.length).toBe(8 * 2 ** 20);
    } finally {
      await file.close();
    }
  });

  test('concurrent reads of every size all come back right', async () => {
    const content = bytes(4 * 2 ** 20, 2);
    const { file } = await fileWith('many.bin', content);
    try {
      const reads = Array.from({ length: 700 }, (_, k) => {
        const n = [512, 4096, 20_000, 65536, 300_000][k % 5];
        const at = (k * 104729) % (content.length - n);
        return file.pread(at, n).then((got) => Buffer.compare(got, content.subarray(at, at + n)));
      });
      expect(new Set(await Promise.all(reads))).toEqual(new Set([0]));
    } finally {
      await file.close();
    }
  });

  test('small passing reads come back in buffers of their own, even when many share a carved chunk', async () => {
    const content = bytes(2 ** 20, 12);
    const { file } = await fileWith('carved.bin', content);
    try {
      const sizes = [1, 512, 4096, 5000, 16384];
      const got = await Promise.all(
        Array.from({ length: 300 }, (_, k) => {
          const n = sizes[k % sizes.length];
          const at = (k * 7919) % (content.length - n);
          return file.preadPassing!(at, n).then((b) => ({ b, at }));
        }),
      );
      for (const { b, at } of got) expect(Buffer.compare(b, content.subarray(at, at + b.length))).toBe(0);
      // they do share chunks (what makes them cheap)...
      expect(new Set(got.map(({ b }) => b.buffer)).size).toBeLessThan(got.length / 4);
      // ...and scribbling over each one touches no other
      got.forEach(({ b }, k) => b.fill(k & 0xff));
      got.forEach(({ b }, k) => expect(b.every((x) => x === (k & 0xff))).toBe(true));
      // a plain pread (metadata a cache may keep) never shares: it holds exactly its own bytes
      const own = await file.pread(4096, 4096);
      expect(own.buffer.byteLength).toBe(4096);
    } finally {
      await file.close();
    }
  });

  test('preadv: scattered ranges in one request, zeros between them and past EOF', async () => {
    const content = bytes(2 ** 20, 3);
    const { file } = await fileWith('scatter.bin', content);
    try {
      const segments = [
        { position: 4096, length: 8192, at: 100 },
        { position: 12288, length: 4096, at: 20_000 }, // follows the first in the file: one preadv
        { position: 500_000, length: 1000, at: 30_000 },
        { position: content.length - 10, length: 100, at: 40_000 }, // runs past EOF
      ];
      const got = await file.preadv!(segments, 50_000);
      const want = new Uint8Array(50_000);
      for (const s of segments) want.set(content.subarray(s.position, Math.min(content.length, s.position + s.length)), s.at);
      expect(Buffer.compare(got, want)).toBe(0);
    } finally {
      await file.close();
    }
  });

  test('preadLent: a lent buffer filled in place (zero segments too), written from without a copy, reusable after release', async () => {
    const content = bytes(2 ** 20, 4);
    const { file } = await fileWith('lent-src.bin', content);
    const { path: outPath, file: out } = await fileWith('lent-dst.bin', new Uint8Array(0));
    try {
      const lent = await file.preadLent!(
        [
          { position: 0, length: 4096, at: 0 },
          { position: -1, length: 4096, at: 4096 },
          { position: 65536, length: 65536, at: 65536 },
        ],
        131072,
      );
      expect(lent).toBeDefined();
      const b = lent!.bytes;
      expect(b.length).toBe(131072);
      expect(Buffer.compare(b.subarray(0, 4096), content.subarray(0, 4096))).toBe(0);
      expect(b.subarray(4096, 8192).every((x) => x === 0)).toBe(true);
      expect(Buffer.compare(b.subarray(65536), content.subarray(65536, 131072))).toBe(0);
      await out.pwrite(0, b.subarray(65536));
      await out.pwrite(65536, b.subarray(0, 8192));
      lent!.release();
      lent!.release(); // a second release is harmless
      const written = await readFile(outPath);
      expect(Buffer.compare(written.subarray(0, 65536), content.subarray(65536, 131072))).toBe(0);
      expect(Buffer.compare(written.subarray(65536, 65536 + 4096), content.subarray(0, 4096))).toBe(0);
      expect(written.subarray(65536 + 4096).every((x) => x === 0)).toBe(true);

      // the pool lends a bounded number of buffers: when all are out, undefined (read normally then)
      const held = [];
      const arenaBytes = pool.arenaFree;
      for (;;) {
        const l = await file.preadLent!([{ position: 0, length: 512, at: 0 }], 1 << 20);
        if (!l) break;
        held.push(l);
        expect(held.length).toBeLessThan(1000);
      }
      expect(held.length).toBe(arenaBytes >> 20);
      expect(await file.preadLent!([{ position: 0, length: 10, at: 0 }], 2 ** 23)).toBeUndefined(); // too large to lend
      held.pop()!.release();
      const again = await file.preadLent!([{ position: 10, length: 10, at: 0 }], 10);
      expect(Buffer.compare(again!.bytes.subarray(0, 10), content.subarray(10, 20))).toBe(0);
      again!.release();
      for (const l of held) l.release();
      expect(pool.arenaFree).toBe(arenaBytes);
    } finally {
      await file.close();
      await out.close();
    }
  });

  test('sha256 is hashed on a worker', async () => {
    const content = bytes(5 * 2 ** 20 + 17, 5);
    const { path, file } = await fileWith('hash.bin', content);
    await file.close();
    expect(await pool.hashFile(path)).toBe(createHash('sha256').update(content).digest('hex'));
    // runs of zeros are only compared, not hashed, until data follows: the digest is the same
    const sparse = new Uint8Array(13 * 2 ** 20 + 5);
    sparse.set(bytes(3000, 8), 9 * 2 ** 20 - 1000);
    const s = await fileWith('sparse.bin', sparse);
    await s.file.close();
    expect(await pool.hashFile(s.path)).toBe(createHash('sha256').update(sparse).digest('hex'));
    const zeros = await fileWith('zeros.bin', new Uint8Array(9 * 2 ** 20));
    await zeros.file.close();
    expect(await pool.hashFile(zeros.path)).toBe(createHash('sha256').update(new Uint8Array(9 * 2 ** 20)).digest('hex'));
  });

  test('content digests on a worker equal those taken here, of lent bytes and of file ranges', async () => {
    const content = new Uint8Array(3 * 2 ** 20);
    content.set(bytes(70_000, 9), 1_000_000);
    content.set(bytes(5, 10), 2 * 2 ** 20 + 4095);
    const { file } = await fileWith('digest.bin', content);
    try {
      for (const [at, len] of [
        [0, 2 ** 20],
        [2 ** 20, 2 ** 20],
        [2 * 2 ** 20, 2 ** 20],
      ]) {
        const want = contentDigest(at, [{ bytes: content.subarray(at, at + len), length: len }]);
        expect(await file.contentDigest!(at, len)).toBe(want);
        const lent = (await file.preadLent!([{ position: at, length: len, at: 0 }], len))!;
        try {
          // cut in two, the second half given as zeros where it is zeros
          const half = len / 2;
          const second = content.subarray(at + half, at + len);
          const parts = [{ bytes: lent.bytes.subarray(0, half), length: half }, second.every((b) => b === 0) ? { length: half } : { bytes: lent.bytes.subarray(half), length: half }];
          expect(await pool.contentDigest(at, parts)).toBe(want);
        } finally {
          lent.release();
        }
      }
    } finally {
      await file.close();
    }
  });

  test('errors carry the errno: a write to a read-only file, a read of a closed descriptor', async () => {
    const { path } = await fileWith('ro.bin', bytes(4096, 6));
    const ro = await pool.open(path, { readOnly: true });
    await expect(ro.pwrite(0, new Uint8Array(10))).rejects.toMatchObject({ errno: 'EBADF' });
    await ro.close();
    const err = await ro.pread(0, 4096).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FileError);
    expect((err as FileError).errno).toBe('EBADF');
    await expect(pool.open(join(dir, 'missing', 'x'), { readOnly: true })).rejects.toMatchObject({ code: 'FILE_NOT_FOUND' });
  });

  test('a closed pool fails what is pending and refuses what comes', async () => {
    const own = new IoPool(1);
    const { path } = await fileWith('closing.bin', bytes(2 ** 20, 7));
    const file = await own.open(path, { readOnly: true });
    const pending = Array.from({ length: 50 }, (_, k) => file.pread(k * 4096, 4096).then(() => 'ok', () => 'failed'));
    await own.close();
    const outcomes = await Promise.all(pending);
    expect(outcomes.every((o) => o === 'ok' || o === 'failed')).toBe(true);
    await expect(file.pread(0, 10)).rejects.toBeInstanceOf(Error);
  });

  test('a sleeping worker whose wake-up is lost still serves the request, one nap later', async () => {
    const own = new IoPool(1);
    const { path } = await fileWith('lost-wake.bin', bytes(8192, 8));
    const file = await own.open(path, { readOnly: true });
    try {
      await file.pread(0, 4096);
      // the state a lost notify leaves (seen once, in a hang): the worker asleep, SLEEPING down,
      // so the main thread sees no reason to wake it
      const ctrl = (own as unknown as { channels: { ctrl: Int32Array }[] }).channels[0].ctrl;
      const until = Date.now() + 2000;
      while (Atomics.load(ctrl, CTRL_SLEEPING) !== 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(Atomics.load(ctrl, CTRL_SLEEPING)).toBe(1);
      Atomics.store(ctrl, CTRL_SLEEPING, 0);
      const read = file.pread(4096, 4096).then((b) => b.length);
      const stuck = new Promise<string>((r) => setTimeout(() => r('stuck'), 3000).unref());
      expect(await Promise.race([read, stuck])).toBe(4096);
    } finally {
      await file.close();
      await own.close();
    }
  });

  test('a completion whose wake-up is lost on the main thread is still taken, by the watchdog', async () => {
    const own = new IoPool(1);
    const { path } = await fileWith('lost-completion.bin', bytes(2 ** 20, 9));
    const file = await own.open(path, { readOnly: true });
    try {
      await file.pread(0, 4096);
      // a large read (not polled for) with the channel believing it is armed already: the state
      // a lost notify of Atomics.waitAsync would leave
      const channel = (own as unknown as { channels: { armed: boolean }[] }).channels[0];
      channel.armed = true;
      const read = file.pread(0, 2 ** 20).then((b) => b.length);
      const stuck = new Promise<string>((r) => setTimeout(() => r('stuck'), 3000).unref());
      expect(await Promise.race([read, stuck])).toBe(2 ** 20);
    } finally {
      await file.close();
      await own.close();
    }
  });
});
