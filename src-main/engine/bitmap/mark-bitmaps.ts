import type { DirtyBitmap } from './dirty-bitmap.js';

/** Where the touches below go, so that they are not optimized away. */
const sink = { touched: 0 };

/**
 * Marks [offset, +length) in every bitmap given. With several, every bitmap's first words are
 * read before any is written: their cache misses overlap instead of adding up. Measured on the
 * 2-core VM, 8 bitmaps of 4 KiB granules, random 4 KiB writes over 2 TiB: +4.2 µs per write →
 * +2.2 µs (with atomic sets, when marking still ran at completion).
 */
export function markBitmaps(bitmaps: readonly DirtyBitmap[], offset: number, length: number): void {
  if (bitmaps.length > 1) {
    let touched = 0;
    for (const b of bitmaps) touched |= b.touch(offset);
    sink.touched = touched;
  }
  for (const b of bitmaps) b.mark(offset, length);
}
