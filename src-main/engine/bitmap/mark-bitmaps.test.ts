import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DirtyBitmap } from './dirty-bitmap.js';
import { markBitmaps } from './mark-bitmaps.js';

/** The granules a write dirties, by DirtyBitmap.mark's rule (rounded outward, clipped to the disk). */
function granules(size: number, granularity: number, offset: number, length: number): [number, number] | undefined {
  if (length <= 0 || offset >= size) return undefined;
  return [Math.floor(offset / granularity), Math.floor((Math.min(size, offset + length) - 1) / granularity)];
}

describe('markBitmaps', () => {
  it('marks each bitmap of a set exactly as marking it alone would, grouped or not', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 2 ** 22 }),
        fc.array(fc.constantFrom(512, 4096, 65536), { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(fc.nat({ max: 2 ** 22 }), fc.nat({ max: 300_000 })), { maxLength: 80 }),
        (size, grans, writes) => {
          const set = grans.map((granularity, i) => new DirtyBitmap({ name: `b${i}`, size, granularity }));
          const refs = set.map(() => new Set<number>());
          for (const [offset, length] of writes) {
            markBitmaps(set, offset, length);
            set.forEach((b, i) => {
              const range = granules(size, b.granularity, offset, length);
              if (range) for (let g = range[0]; g <= range[1]; g++) refs[i].add(g);
            });
          }
          set.forEach((b, i) => {
            const expected = [...refs[i]].sort((x, y) => x - y);
            const got: number[] = [];
            // runs() walks the summary levels: a mark that skipped them would not show here
            for (const [first, n] of b.bits.runs()) for (let g = first; g < first + n; g++) got.push(g);
            expect(got).toEqual(expected);
            expect(b.bits.count()).toBe(expected.length);
          });
        },
      ),
      { numRuns: 200 },
    );
  });
});
