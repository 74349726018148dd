import { describe, expect, it } from 'vitest';
import { DirtyBitmap } from './dirty-bitmap.js';
import { CTRL_WORDS, C_CLAIMED, RING } from './mark-protocol.js';
import { WriteMarker, type MarkHost } from './write-marker.js';

/** A host with no workers: entries stay queued until a settle takes them (or a test plays the worker). */
function host(): MarkHost & { ctrl: Int32Array } {
  const markRing = { ctrl: new SharedArrayBuffer(CTRL_WORDS * 4), ranges: new SharedArrayBuffer(RING * 16), sets: new SharedArrayBuffer(RING * 4) };
  return { markRing, ctrl: new Int32Array(markRing.ctrl), postMarkSet: () => undefined, anyWorkerIdle: () => true };
}

describe('WriteMarker', () => {
  it('queues marks and applies them before any read of the bits, with the set each write completed with', () => {
    const h = host();
    const marker = new WriteMarker(h);
    try {
      const node = marker.node();
      const a = new DirtyBitmap({ name: 'a', size: 1 << 20, granularity: 4096 });
      const b = new DirtyBitmap({ name: 'b', size: 1 << 20, granularity: 65536 });
      marker.mark(node, [a, b], 0, 10);
      marker.mark(node, [a], 200_000, 5000); // b was disabled before this write completed
      expect(marker.stats.queued).toBe(2);
      // nothing applied yet (no worker here) — but any look settles first
      // granule 0, and 48–50 (bytes 200 000 … 204 999)
      expect(a.count).toBe(4 * 4096);
      expect(b.dirtyExtents()).toEqual([{ offset: 0, length: 65536 }]);
      // a ring that fills up is settled by the producer itself
      for (let k = 0; k < RING + 10; k++) marker.mark(node, [a], 512 * 1024, 1);
      expect(marker.stats.queued).toBe(RING + 12);
      expect(a.isDirty(512 * 1024)).toBe(true);
      expect(a.count).toBe(5 * 4096);
    } finally {
      marker.close();
    }
  });

  it('a worker that stalls in the middle of an entry: the settle applies it itself after a bound, then marks inline', () => {
    const h = host();
    const marker = new WriteMarker(h);
    try {
      const node = marker.node();
      const a = new DirtyBitmap({ name: 'a', size: 1 << 20, granularity: 4096 });
      marker.mark(node, [a], 8192, 1);
      // a "worker" takes the entry and never finishes it
      Atomics.store(h.ctrl, C_CLAIMED, 1);
      const t = performance.now();
      expect(a.count).toBe(4096);
      expect(performance.now() - t).toBeGreaterThanOrEqual(90);
      marker.mark(node, [a], 16384, 1);
      expect(marker.stats.inline).toBe(1);
      const t2 = performance.now();
      expect(a.count).toBe(2 * 4096);
      expect(performance.now() - t2).toBeLessThan(50);
    } finally {
      marker.close();
    }
  });
});
