import type { DirtyBitmap } from './dirty-bitmap.js';
import { SharedBits } from './shared-bits.js';

/** Bitmaps of one granularity and size whose bits share a group: marked together. */
interface MarkStep {
  granularity: number;
  size: number;
  bits: SharedBits[];
}

/**
 * Per set of bitmaps (a node's recording set, an array kept until the set changes): its steps.
 * Valid for the array's lifetime, as a bitmap's granularity, size, bits and group never change.
 */
const plans = new WeakMap<readonly DirtyBitmap[], MarkStep[]>();

function planFor(bitmaps: readonly DirtyBitmap[]): MarkStep[] {
  const steps: MarkStep[] = [];
  for (const b of bitmaps) {
    const same = b.bits.group && steps.find((s) => s.granularity === b.granularity && s.size === b.size && s.bits[0].group === b.bits.group);
    if (same) same.bits.push(b.bits);
    else steps.push({ granularity: b.granularity, size: b.size, bits: [b.bits] });
  }
  plans.set(bitmaps, steps);
  return steps;
}

/** Where the touches below go, so that they are not optimized away. */
const sink = { touched: 0 };

/**
 * Marks [offset, +length) in every bitmap given (DirtyBitmap.mark's rounding). Bitmaps whose
 * bits share a group and granularity are marked in one pass over their shared row
 * (SharedBits.setOwnedInGroup). With several groups, every group's first words are read before
 * any is written: their cache misses overlap instead of adding up.
 */
export function markBitmaps(bitmaps: readonly DirtyBitmap[], offset: number, length: number): void {
  if (length <= 0) return;
  const steps = plans.get(bitmaps) ?? planFor(bitmaps);
  if (steps.length > 1) {
    let touched = 0;
    for (const s of steps) if (offset < s.size) touched |= s.bits[0].touch(Math.floor(offset / s.granularity));
    sink.touched = touched;
  }
  for (const s of steps) {
    if (offset >= s.size) continue;
    const first = Math.floor(offset / s.granularity);
    const last = Math.floor((Math.min(s.size, offset + length) - 1) / s.granularity);
    if (s.bits.length === 1) s.bits[0].setRange(first, last);
    else SharedBits.setOwnedInGroup(s.bits, first, last);
  }
}
