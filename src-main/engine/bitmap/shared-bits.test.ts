import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { SharedBits } from './shared-bits.js';
import { groupShapes } from './bits-group.js';

/** A plain boolean array as the reference. */
class Naive {
  readonly bits: boolean[];
  constructor(n: number) {
    this.bits = new Array<boolean>(n).fill(false);
  }
  set(a: number, b: number) {
    for (let i = a; i <= b; i++) this.bits[i] = true;
  }
  clear(a: number, b: number) {
    for (let i = a; i <= b; i++) this.bits[i] = false;
  }
  runs(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i < this.bits.length; i++) {
      if (!this.bits[i]) continue;
      let j = i;
      while (j + 1 < this.bits.length && this.bits[j + 1]) j++;
      out.push([i, j - i + 1]);
      i = j;
    }
    return out;
  }
}

describe('SharedBits', () => {
  it('matches a naive reference on random set/clear sequences', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5000 }),
        fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.nat({ max: 300 })), { maxLength: 60 }),
        (n, ops) => {
          const s = new SharedBits(n);
          const ref = new Naive(n);
          for (const [set, a, len] of ops) {
            const first = a % n;
            const last = Math.min(n - 1, first + len);
            if (set) {
              s.setRange(first, last);
              ref.set(first, last);
            } else {
              s.clearRange(first, last);
              ref.clear(first, last);
            }
          }
          expect([...s.runs()]).toEqual(ref.runs());
          expect(s.count()).toBe(ref.bits.filter(Boolean).length);
          for (let probe = 0; probe < n; probe += Math.max(1, Math.floor(n / 37))) {
            expect(s.nextSet(probe)).toBe(ref.bits.indexOf(true, probe));
            expect(s.nextClear(probe)).toBe(ref.bits.indexOf(false, probe));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('round-trips LSB-first bytes, aligned and unaligned', () => {
    const s = new SharedBits(1000);
    s.setRange(3, 3);
    s.setRange(64, 100);
    s.setRange(999, 999);
    const bytes = s.toBytes(0, 1000);
    expect(bytes[0]).toBe(0b1000);
    const t = new SharedBits(1000);
    t.setFromBytes(0, bytes);
    expect([...t.runs()]).toEqual([...s.runs()]);
    const u = new SharedBits(1000);
    u.setFromBytes(0, s.toBytes(0, 1000));
    expect(u.count()).toBe(s.count());
    // unaligned window
    const part = s.toBytes(60, 50);
    const v = new SharedBits(50);
    v.setFromBytes(0, part);
    expect([...v.runs()]).toEqual([[4, 37]]);
  });

  it('finds the one set bit of a 2^33-bit (1 TiB at 128 B… i.e. huge) bitmap without a linear scan', () => {
    const s = new SharedBits(2 ** 29); // 2 TiB at 4 KiB granularity: 64 MiB of bits
    s.setRange(2 ** 29 - 5, 2 ** 29 - 5);
    const t0 = performance.now();
    expect(s.nextSet(0)).toBe(2 ** 29 - 5);
    expect(s.nextSet(2 ** 29 - 4)).toBe(-1);
    expect([...s.runs()]).toEqual([[2 ** 29 - 5, 1]]);
    // a linear scan of 2^24 words takes tens of milliseconds; the summary walk takes microseconds
    expect(performance.now() - t0).toBeLessThan(20);
  });

  it('keeps the count exact with several threads setting overlapping ranges at once', async () => {
    const bits = 1 << 20;
    const s = new SharedBits(bits);
    // the main thread counts apart from the others (a plain count only it writes): set some
    // bits here first, clear and set some after the workers, and the sum must still be exact
    s.setRange(1000, 90_000);
    // the workers run the real SharedBits, bundled for them on the fly
    const { outputFiles } = await build({ entryPoints: [fileURLToPath(new URL('./shared-bits.ts', import.meta.url))], bundle: true, format: 'cjs', write: false, platform: 'node' });
    const code = `${outputFiles[0].text}
      const { workerData, parentPort } = require('node:worker_threads');
      const { buffer, seed, bits } = workerData;
      const s = new module.exports.SharedBits(bits, buffer);
      let x = seed;
      const rnd = () => (x = (x * 1103515245 + 12345) >>> 0);
      for (let i = 0; i < 20000; i++) {
        const first = rnd() % bits;
        s.setRange(first, Math.min(bits - 1, first + (rnd() % 200)));
      }
      parentPort.postMessage('done');
    `;
    await Promise.all(
      [1, 2, 3, 4].map(
        (seed) =>
          new Promise<void>((resolve, reject) => {
            const w = new Worker(code, { eval: true, workerData: { buffer: s.buffer, seed, bits } });
            w.once('message', () => resolve());
            w.once('error', reject);
          }),
      ),
    );
    s.clearRange(50_000, 60_000);
    s.setRange(bits - 70_000, bits - 1);
    let naive = 0;
    let runBits = 0;
    for (const [, len] of s.runs()) runBits += len;
    for (let w = 0; w < bits / 32; w++) {
      let v = s.peekWord(w);
      while (v) {
        v &= v - 1;
        naive++;
      }
    }
    expect(s.count()).toBe(naive);
    // the summary levels saw every word the workers touched
    expect(runBits).toBe(naive);
    expect(naive).toBeGreaterThan(0);
  });

  it('keeps grouped bits apart while their group grows past 16 members, each exact', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3000 }),
        fc.array(fc.tuple(fc.nat({ max: 19 }), fc.boolean(), fc.nat(), fc.nat({ max: 200 })), { maxLength: 120 }),
        (n, ops) => {
          // members join one by one between operations, so groups grow (and copy) mid-sequence
          const members: { bits: SharedBits; ref: Naive }[] = [];
          for (const [who, set, a, len] of ops) {
            while (members.length <= who) members.push({ bits: SharedBits.grouped(n), ref: new Naive(n) });
            const { bits, ref } = members[who];
            const first = a % n;
            const last = Math.min(n - 1, first + len);
            if (set) {
              bits.setRange(first, last);
              ref.set(first, last);
            } else {
              bits.clearRange(first, last);
              ref.clear(first, last);
            }
          }
          for (const { bits, ref } of members) {
            expect([...bits.runs()]).toEqual(ref.runs());
            expect(bits.count()).toBe(ref.bits.filter(Boolean).length);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('interleaves grouped bits of one size, doubling up to 16 per group', () => {
    const bits = 123_457; // a size no other test uses
    const layout = new SharedBits(bits).layout;
    const totalWords = layout.levelOffsets.at(-1)! + layout.levelWords.at(-1)!;
    const members = Array.from({ length: 17 }, () => SharedBits.grouped(bits));
    expect(groupShapes(totalWords)).toEqual([16, 1]);
    members[3].setRange(64, 64);
    expect(members[3].peekWord(2)).toBe(1);
    expect(members.filter((m) => m.nextSet(0) >= 0)).toEqual([members[3]]);
  });

  it('reuses the slot of collected bits only after zeroing it', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const bits = 98_765; // a size no other test uses
    const layout = new SharedBits(bits).layout;
    const totalWords = layout.levelOffsets.at(-1)! + layout.levelWords.at(-1)!;
    const keep = SharedBits.grouped(bits);
    keep.setRange(0, 10);
    (() => {
      const gone = SharedBits.grouped(bits);
      gone.setRange(0, bits - 1);
    })();
    expect(groupShapes(totalWords)).toEqual([2]);
    for (let i = 0; i < 5; i++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    // the collected member's slot is taken again (the group does not grow) and reads empty
    const fresh = SharedBits.grouped(bits);
    expect(groupShapes(totalWords)).toEqual([2]);
    expect(fresh.nextSet(0)).toBe(-1);
    expect(fresh.peekWord(5)).toBe(0);
    expect([...keep.runs()]).toEqual([[0, 11]]);
  });
});
