import { describe, expect, it } from 'vitest';
import { ArenaAllocator } from './arena.js';

describe('ArenaAllocator', () => {
  it('serves blocks of the next power of two that never overlap, and merges everything back', () => {
    const a = new ArenaAllocator(1 << 20, 4096);
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const held: { at: number; order: number; length: number }[] = [];
    for (let step = 0; step < 5000; step++) {
      if (held.length > 0 && rnd() < 0.45) {
        const [b] = held.splice(Math.floor(rnd() * held.length), 1);
        a.release(b.at, b.order);
        continue;
      }
      const length = 1 + Math.floor(rnd() * 200_000);
      const b = a.alloc(length);
      if (!b) continue;
      expect(4096 << b.order).toBeGreaterThanOrEqual(length);
      expect(b.at % (4096 << b.order)).toBe(0);
      expect(b.at + (4096 << b.order)).toBeLessThanOrEqual(1 << 20);
      for (const h of held) expect(b.at + (4096 << b.order) <= h.at || h.at + (4096 << h.order) <= b.at).toBe(true);
      held.push({ ...b, length });
    }
    const inUse = held.reduce((n, h) => n + (4096 << h.order), 0);
    expect(a.freeBytes()).toBe((1 << 20) - inUse);
    for (const h of held) a.release(h.at, h.order);
    expect(a.freeBytes()).toBe(1 << 20);
    // fully merged again: the whole arena is one block
    expect(a.alloc(1 << 20)).toEqual({ at: 0, order: 8 });
  });

  it('refuses what it cannot serve instead of overlapping', () => {
    const a = new ArenaAllocator(64 << 10, 4096);
    expect(a.alloc(0)).toBeUndefined();
    expect(a.alloc((64 << 10) + 1)).toBeUndefined();
    const big = a.alloc(40 << 10)!;
    expect(big.order).toBe(4);
    expect(a.alloc(4096)).toBeUndefined();
    a.release(big.at, big.order);
    expect(a.alloc(4096)).toEqual({ at: 0, order: 0 });
  });
});
