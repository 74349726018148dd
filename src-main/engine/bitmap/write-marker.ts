import type { DirtyBitmap } from './dirty-bitmap.js';
import { markBitmaps } from './mark-bitmaps.js';
import { addSettler } from './pending-marks.js';

/** What the marker needs of the I/O pool: the main thread's spare time. */
export interface MarkHost {
  /** `fn` runs in the main thread's spare time while requests are in flight (one hook; undefined removes it) */
  onSpareTime(fn: (() => void) | undefined): void;
}

/** Marks held back at most; beyond this a write is marked at once. */
const DEFERRED_MAX = 64;
/**
 * The longest marks stay held when no request follows and nothing reads the bits (ms). Nothing
 * can tell held marks from set ones (see below), so this only bounds how stale the memory gets.
 */
const SETTLE_LATEST_MS = 5;

/**
 * Deferred write marking, on the main thread. A guest write that completes does not set its
 * bits there and then: they are set right after the next request has been handed to an I/O
 * worker — while the worker performs it, in time the main thread would otherwise spend waiting
 * — or within SETTLE_LATEST_MS if no request follows. Marking is a cache miss or two
 * per row of bits, anywhere in up to 64 MiB per bitmap; set at completion it delays the next
 * request by all of it. Measured on the 2-core VM (`npm run bench`, 4 KiB random writes at qd1
 * over 2 TiB, time with 8 recording bitmaps / time with none): set at completion 1.20-1.31
 * (64 KiB granules) and 1.45-1.50 (4 KiB); handed to the idle I/O worker, which then served the
 * next request only after them, 1.13-1.33; deferred this way (with plain stores,
 * SharedBits.setOwned) 1.04-1.10 and 1.06-1.12; with the bitmaps' words interleaved
 * (bits-group.ts), one pass per group (mark-bitmaps.ts) and the held marks in fixed arrays,
 * 1.05-1.06 and 1.03-1.08 (three runs); and with the I/O pool watching a lone request's
 * completion within its poll turn (pool.ts, spinFor), 0.92-1.03 and 0.89-1.04 (six runs —
 * below 1 the passes with bitmaps came out faster, by timing interplay of the marking with the
 * polling that is not worked out; with one bitmap the same). The setImmediate that each
 * held-back mark scheduled, to apply it on the next turn, cost ~5% of a 3 µs write by itself
 * (measured with a pool variant that made writes that fast, reverted: see git log 5d873a8);
 * one 5 ms timer at most does the same job. Tried and dropped: marking one bitmap at a time
 * and stopping when a completion is waiting (the misses no longer overlap: worse), batches of 8-32 writes, summary bits set in batches, the words fetched while the
 * write runs, or fetched by the idle I/O worker from hints (none better; the last worse:
 * 1.07-1.10); rows aligned to cache lines (no difference measured).
 *
 * Nothing can observe the difference: every read or clear of bits first applies the marks held
 * back (SharedBits calls settleMarks(), pending-marks.ts). The set a mark applies to is the
 * node's recording bitmaps when the write completed, as QEMU marks them then: a bitmap disabled
 * or added afterwards does not change it.
 */
export class WriteMarker {
  /**
   * The marks held back, in fixed arrays (emptying a JS array with length = 0 drops its storage,
   * and every write would allocate it again): per mark, the recording bitmaps at completion (an
   * array never changed later) and its range
   */
  private readonly sets = new Array<readonly DirtyBitmap[] | undefined>(DEFERRED_MAX).fill(undefined);
  private readonly offsets = new Float64Array(DEFERRED_MAX);
  private readonly lengths = new Float64Array(DEFERRED_MAX);
  private held = 0;
  /** applies what is still held if nothing else has within SETTLE_LATEST_MS */
  private latest: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly removeSettler: () => void;

  /** writes marked deferred and at once so far (diagnostics, tests) */
  readonly stats = { deferred: 0, inline: 0 };

  constructor(private readonly host: MarkHost) {
    this.removeSettler = addSettler(this.settle);
    host.onSpareTime(this.settle);
  }

  /**
   * Marks [offset, +length) in `bitmaps` (the node's recording bitmaps at completion; the caller
   * never changes the array afterwards) — soon, or now when many are held back already.
   */
  mark(bitmaps: readonly DirtyBitmap[], offset: number, length: number): void {
    if (this.closed || this.held >= DEFERRED_MAX) {
      this.stats.inline++;
      markBitmaps(bitmaps, offset, length);
      return;
    }
    this.stats.deferred++;
    const k = this.held++;
    this.sets[k] = bitmaps;
    this.offsets[k] = offset;
    this.lengths[k] = length;
    // one timer for many marks: a setImmediate per mark cost 5% of a 3 µs write
    if (!this.latest) this.latest = setTimeout(this.onLatest, SETTLE_LATEST_MS).unref();
  }

  /** Applies every mark held back. With none, one comparison. */
  readonly settle = (): void => {
    const n = this.held;
    if (n === 0) return;
    const sets = this.sets;
    // marks are idempotent: should one throw, all stay held and are applied again, none lost
    for (let k = 0; k < n; k++) markBitmaps(sets[k]!, this.offsets[k], this.lengths[k]);
    this.held = 0;
    sets.fill(undefined, 0, n);
  };

  /** Applies what is held back and marks at once from now on (before the I/O pool goes). */
  close(): void {
    this.host.onSpareTime(undefined);
    clearTimeout(this.latest);
    this.latest = undefined;
    this.settle();
    this.closed = true;
    this.removeSettler();
  }

  private readonly onLatest = (): void => {
    this.latest = undefined;
    this.settle();
  };
}
