import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from './dirty-bitmap.js';
import { WriteMarker, type MarkHost } from './write-marker.js';

/** A host whose spare time the test plays: `submit()` is a request handed to a worker. */
function host(): MarkHost & { submit(): void } {
  let hook: (() => void) | undefined;
  return {
    onSpareTime: (fn) => {
      hook = fn;
    },
    submit: () => hook?.(),
  };
}

/** The level-0 words, read without settling (what is really in memory right now). */
function rawDirty(b: DirtyBitmap): boolean {
  for (let w = 0; w < b.bits.layout.levelWords[0]; w++) if (b.bits.peekWord(w) !== 0) return true;
  return false;
}

describe('WriteMarker', () => {
  it('holds marks back until the next submit, with the set each write completed with', () => {
    const h = host();
    const marker = new WriteMarker(h);
    try {
      const a = new DirtyBitmap({ name: 'a', size: 1 << 20, granularity: 4096 });
      const b = new DirtyBitmap({ name: 'b', size: 1 << 20, granularity: 65536 });
      marker.mark([a, b], 0, 10);
      marker.mark([a], 200_000, 5000); // b was disabled before this write completed
      expect(marker.stats.deferred).toBe(2);
      expect(rawDirty(a) || rawDirty(b)).toBe(false);
      h.submit();
      expect(rawDirty(a) && rawDirty(b)).toBe(true);
      // granule 0, and 48–50 (bytes 200 000 … 204 999)
      expect(a.dirtyExtents()).toEqual([
        { offset: 0, length: 4096 },
        { offset: 48 * 4096, length: 3 * 4096 },
      ]);
      expect(b.dirtyExtents()).toEqual([{ offset: 0, length: 65536 }]);
    } finally {
      marker.close();
    }
  });

  it('any read or clear of bits applies what is held back first', () => {
    const marker = new WriteMarker(host());
    try {
      const a = new DirtyBitmap({ name: 'a', size: 1 << 20, granularity: 4096 });
      marker.mark([a], 8192, 1);
      expect(rawDirty(a)).toBe(false);
      expect(a.count).toBe(4096);
      marker.mark([a], 16384, 1);
      expect(a.isDirty(16384)).toBe(true);
      // a clear must not be overtaken by a mark of a write that completed before it
      marker.mark([a], 32768, 1);
      a.reset(32768, 4096);
      expect(a.isDirty(32768)).toBe(false);
      marker.mark([a], 65536, 1);
      a.clear();
      expect(a.count).toBe(0);
      expect(a.isDirty(65536)).toBe(false);
    } finally {
      marker.close();
    }
  });

  it('applies held-back marks within a few ms when no request follows, and marks at once beyond a bound', async () => {
    const marker = new WriteMarker(host());
    try {
      const a = new DirtyBitmap({ name: 'a', size: 1 << 30, granularity: 4096 });
      marker.mark([a], 0, 1);
      expect(rawDirty(a)).toBe(false);
      await new Promise((r) => setTimeout(r, 20));
      expect(rawDirty(a)).toBe(true);
      for (let k = 0; k < 1000; k++) marker.mark([a], (k + 1) * 4096, 1);
      expect(marker.stats.inline).toBeGreaterThan(0);
      expect(marker.stats.deferred + marker.stats.inline).toBe(1001);
      expect(a.count).toBe(1001 * 4096);
    } finally {
      marker.close();
    }
  });

  it('after close, marks at once', () => {
    const marker = new WriteMarker(host());
    const a = new DirtyBitmap({ name: 'a', size: 1 << 20, granularity: 4096 });
    marker.mark([a], 0, 1);
    marker.close();
    expect(rawDirty(a)).toBe(true);
    marker.mark([a], 8192, 1);
    expect(a.bits.peekWord(0)).toBe(0b101);
  });
});
