/**
 * A bit array in a SharedArrayBuffer with summary levels, usable from any thread.
 *
 * Level 0 holds one bit per granule. Each level above holds one bit per 32-bit word of the level
 * below ("that word is not zero"), so finding the next set bit in a mostly empty 2 TiB bitmap
 * touches a few words per level instead of millions (the idea of QEMU's hbitmap, written anew).
 * Threads: sets from threads other than the process's main thread use Atomics and may run at
 * once; the main thread sets with plain loads and stores (see setOwned), so it must never set
 * bits of a bitmap that another thread is setting at the same time — in the engine only the
 * main thread sets bits, where guest writes complete (bitmap/write-marker.ts). The population
 * count is kept exact in two parts: what the main thread added or removed, in a float64 only it
 * writes, and what other threads added, in a 64-bit counter they add to with Atomics. Clears
 * come from one thread at a time (the engine's), and re-check the word after clearing its
 * summary bit so a concurrent set is never hidden from the summary. Every read and clear first
 * applies the guest-write marks still held back (pending-marks.ts), so deferred marking never
 * shows.
 */
import { isMainThread } from 'node:worker_threads';
import { joinGroup, type GroupMember } from './bits-group.js';
import { settleMarks } from './pending-marks.js';

export interface SharedBitsLayout {
  /** number of bits at level 0 */
  bits: number;
  /** word offsets (in 32-bit words) of each level in `words`, level 0 first */
  levelOffsets: number[];
  levelWords: number[];
}

const WORD = 32;
/** bytes before the words: the other threads' counter (BigInt64), then the main thread's (float64) */
const HEADER = 16;
const ON_MAIN_THREAD = isMainThread;
/** SharedBits.grouped's request to the constructor */
const GROUPED = Symbol('grouped');

export function layoutFor(bits: number): SharedBitsLayout {
  const levelWords: number[] = [];
  let n = Math.max(1, Math.ceil(bits / WORD));
  levelWords.push(n);
  while (n > 1) {
    n = Math.ceil(n / WORD);
    levelWords.push(n);
  }
  const levelOffsets: number[] = [];
  let at = 0;
  for (const w of levelWords) {
    levelOffsets.push(at);
    at += w;
  }
  return { bits, levelOffsets, levelWords };
}

function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x);
}

export class SharedBits implements GroupMember {
  readonly layout: SharedBitsLayout;
  /** all levels, one after another — interleaved with other members' when grouped (ix) */
  private words: Int32Array;
  /** members of this one's group (1 when alone) and its slot: word i is words[i × stride + slot] */
  private stride = 1;
  private slot = 0;
  /** its group (bits-group.ts), when grouped: an identity for setOwnedInGroup's callers */
  readonly group: object | undefined;
  /** bits set at level 0 by threads other than the main thread (Atomics only) */
  private readonly counter: BigInt64Array;
  /** bits set at level 0 minus bits cleared, by the main thread (written by it alone) */
  private readonly mainCount: Float64Array;
  /** counts and words, for views on other threads (not for grouped bits, which can move) */
  readonly buffer: SharedArrayBuffer | undefined;
  /** where level 1 starts in `words` (level 0 itself for a one-word bitmap) */
  private readonly summaryAt: number;

  /**
   * Bits whose words are interleaved with other grouped bits of the same size (bits-group.ts),
   * so that marking the same offset in several of them touches one cache line. For the main
   * thread only: the words move when the group grows.
   */
  static grouped(bits: number): SharedBits {
    return new SharedBits(bits, GROUPED);
  }

  /** A new, all-clear bit array; or a view over `buffer` made by another thread's SharedBits. */
  constructor(bits: number, buffer?: SharedArrayBuffer | typeof GROUPED) {
    if (!Number.isSafeInteger(bits) || bits < 0) throw new RangeError(`invalid bit count ${bits}`);
    this.layout = layoutFor(bits);
    const totalWords = this.layout.levelOffsets.at(-1)! + this.layout.levelWords.at(-1)!;
    this.summaryAt = this.layout.levelOffsets[1] ?? 0;
    if (buffer === GROUPED) {
      const counts = new SharedArrayBuffer(HEADER);
      this.counter = new BigInt64Array(counts, 0, 1);
      this.mainCount = new Float64Array(counts, 8, 1);
      ({ group: this.group, words: this.words, stride: this.stride, slot: this.slot } = joinGroup(totalWords, this));
      return;
    }
    const bytes = HEADER + totalWords * 4;
    this.buffer = buffer ?? new SharedArrayBuffer(bytes);
    if (this.buffer.byteLength !== bytes) throw new RangeError('shared buffer does not match the bit count');
    this.counter = new BigInt64Array(this.buffer, 0, 1);
    this.mainCount = new Float64Array(this.buffer, 8, 1);
    this.words = new Int32Array(this.buffer, HEADER, totalWords);
  }

  /** Where word `i` (of any level) is in `words`. */
  private ix(i: number): number {
    return i * this.stride + this.slot;
  }

  /** Level-0 word `w` as it is in memory now, without applying held-back marks (tests). */
  peekWord(w: number): number {
    return Atomics.load(this.words, this.ix(w));
  }

  /** Copies every non-zero word to `words` at (index × stride + slot) and moves there (BitsGroup.grow). */
  moveTo(words: Int32Array, stride: number, slot: number): void {
    settleMarks();
    const { levelOffsets, levelWords } = this.layout;
    const copy = (i: number): void => {
      words[i * stride + slot] = this.words[this.ix(i)];
    };
    // level 0 through the summary, so a sparse bitmap copies in proportion to its dirty words
    for (let bit = this.findSet(0, 0); bit >= 0; ) {
      const w = bit >>> 5;
      copy(w);
      bit = w + 1 < levelWords[0] ? this.findSet(0, (w + 1) * WORD) : -1;
    }
    for (let i = levelOffsets[1] ?? levelWords[0]; i < levelOffsets.at(-1)! + levelWords.at(-1)!; i++) copy(i);
    this.words = words;
    this.stride = stride;
    this.slot = slot;
  }

  get size(): number {
    return this.layout.bits;
  }

  /** number of set bits, exact (on the main thread, or on a thread that is the only one using the bits) */
  count(): number {
    settleMarks();
    return Number(Atomics.load(this.counter, 0)) + this.mainCount[0];
  }

  /** Counts bits set (n > 0) or cleared (n < 0) by this thread. */
  private addCount(n: number): void {
    if (ON_MAIN_THREAD) this.mainCount[0] += n;
    else Atomics.add(this.counter, 0, BigInt(n));
  }

  get(bit: number): boolean {
    settleMarks();
    return (Atomics.load(this.words, this.ix(bit >>> 5)) & (1 << (bit & 31))) !== 0;
  }

  /**
   * Reads (without ordering) the words setRange(bit, …) will touch first: its level-0 word and
   * the summary word above it. Several bitmaps touched one after another overlap their cache
   * misses, which the sets that follow would otherwise take one by one (each waits on its load).
   */
  touch(bit: number): number {
    return this.words[this.ix(bit >>> 5)] | this.words[this.ix(this.summaryAt + (bit >>> 10))];
  }

  /** Sets bits [first, last] (inclusive). */
  setRange(first: number, last: number): void {
    if (last < first) return;
    this.check(first, last);
    if (ON_MAIN_THREAD) this.setOwned(first, last);
    else this.setShared(first, last);
  }

  /**
   * setRange on the main thread, which in the engine is the one thread that marks bits: plain
   * loads and stores. A locked instruction costs ~25 ns on the 2-core VM, and marking a fresh
   * bit takes two or three (its word, the summary words above it) — per recording bitmap, on
   * every guest write.
   */
  private setOwned(first: number, last: number): void {
    if (last < 2 ** 32 && first >>> 5 === last >>> 5) {
      // the write path's common case (a write within one word of granules), kept lean
      this.mainCount[0] += this.orOwned(first >>> 5, oneWordMask(first, last));
      return;
    }
    let added = 0;
    for (let w = Math.floor(first / WORD), end = Math.floor(last / WORD); w <= end; w++) added += this.orOwned(w, maskFor(w, first, last));
    this.mainCount[0] += added;
  }

  /**
   * setRange(first, last) in each of `members` — grouped bits of one group, so one row of words
   * holds all of theirs — on the main thread. A write's marks in a node's bitmaps of one
   * granularity: each member costs a load and a store in the same row.
   */
  static setOwnedInGroup(members: readonly SharedBits[], first: number, last: number): void {
    if (!ON_MAIN_THREAD || last < first || last >= 2 ** 32 || first >>> 5 !== last >>> 5) {
      for (const m of members) m.setRange(first, last);
      return;
    }
    members[0].check(first, last);
    const w = first >>> 5;
    const mask = oneWordMask(first, last);
    for (let k = 0; k < members.length; k++) members[k].mainCount[0] += members[k].orOwned(w, mask);
  }

  /** ORs `mask` into level-0 word `w` with plain loads and stores (its summary too); returns the bits it set. */
  private orOwned(w: number, mask: number): number {
    const words = this.words;
    const at = this.ix(w);
    const old = words[at];
    // the common case for hot regions: already dirty, nothing to write
    if ((old & mask) === mask) return 0;
    words[at] = old | mask;
    if (old === 0) this.summarizeOwned(w);
    return popcount32(mask & ~old);
  }

  /** markSummary with plain loads and stores (the main thread's sets). */
  private summarizeOwned(word: number): void {
    const { levelOffsets } = this.layout;
    const words = this.words;
    let w = word;
    for (let level = 1; level < levelOffsets.length; level++) {
      const bit = 1 << (w & 31);
      const at = this.ix(levelOffsets[level] + (w >>> 5));
      const old = words[at];
      if (old & bit) return;
      words[at] = old | bit;
      if (old !== 0) return; // the levels above already know
      w >>>= 5;
    }
  }

  /** setRange on any other thread: with Atomics, so that several can set bits at once. */
  private setShared(first: number, last: number): void {
    let added = 0;
    for (let w = Math.floor(first / WORD), end = Math.floor(last / WORD); w <= end; w++) {
      const mask = maskFor(w, first, last);
      if ((Atomics.load(this.words, this.ix(w)) & mask) === mask) continue;
      const old = Atomics.or(this.words, this.ix(w), mask);
      const fresh = mask & ~old;
      if (fresh !== 0) added += popcount32(fresh);
      if (old === 0) this.markSummary(w);
    }
    if (added) this.addCount(added);
  }

  /** Clears bits [first, last] (inclusive). One clearing thread at a time. */
  clearRange(first: number, last: number): void {
    settleMarks();
    if (last < first) return;
    this.check(first, last);
    let removed = 0;
    for (let w = Math.floor(first / WORD); w <= Math.floor(last / WORD); w++) {
      const mask = maskFor(w, first, last);
      const old = Atomics.and(this.words, this.ix(w), ~mask);
      const gone = old & mask;
      if (gone !== 0) {
        removed += popcount32(gone);
        if ((old & ~mask) === 0) this.clearSummary(0, w);
      }
    }
    if (removed) this.addCount(-removed);
  }

  clearAll(): void {
    if (this.count() === 0) return;
    this.clearRange(0, this.size - 1);
  }

  /** ORs `other` (same size) into this one, word by word over the source's non-empty words. */
  or(other: SharedBits): void {
    if (other.size !== this.size) throw new RangeError('bitmaps differ in size');
    settleMarks();
    let added = 0;
    for (let bit = other.nextSet(0); bit >= 0; ) {
      const w = bit >>> 5;
      const src = Atomics.load(other.words, other.ix(w));
      const old = Atomics.or(this.words, this.ix(w), src);
      const fresh = src & ~old;
      if (fresh) added += popcount32(fresh);
      if (old === 0 && src !== 0) this.markSummary(w);
      bit = (w + 1) * WORD < this.size ? other.nextSet((w + 1) * WORD) : -1;
    }
    if (added) this.addCount(added);
  }

  /** Copies `other` (same size) into this one exactly. */
  copyFrom(other: SharedBits): void {
    this.clearAll();
    this.or(other);
  }

  /** The first set bit at or after `from`, or -1. */
  nextSet(from: number): number {
    settleMarks();
    if (from >= this.size) return -1;
    const found = this.findSet(0, Math.max(0, from));
    return found >= 0 && found < this.size ? found : -1;
  }

  /** The first clear bit at or after `from`, or -1 when all bits from there are set. */
  nextClear(from: number): number {
    settleMarks();
    const { levelOffsets } = this.layout;
    for (let bit = Math.max(0, from); bit < this.size; ) {
      const w = bit >>> 5;
      const inv = ~Atomics.load(this.words, this.ix(levelOffsets[0] + w)) & (-1 << (bit & 31));
      if (inv !== 0) {
        const found = w * WORD + ctz32(inv);
        return found < this.size ? found : -1;
      }
      bit = (w + 1) * WORD;
    }
    return -1;
  }

  /** Set runs as [firstBit, bitCount] pairs, in order, starting at `from`. */
  *runs(from = 0, to = this.size): Generator<[number, number]> {
    for (let bit = this.nextSet(from); bit >= 0 && bit < to; ) {
      const clear = this.nextClear(bit);
      const end = Math.min(clear < 0 ? this.size : clear, to);
      yield [bit, end - bit];
      bit = end < to ? this.nextSet(end) : -1;
    }
  }

  /** Set bits in [first, last], counted word by word. */
  countRange(first: number, last: number): number {
    let n = 0;
    for (const [, len] of this.runs(first, last + 1)) n += len;
    return n;
  }

  /** Raw level-0 bytes, bit i at byte i>>3, bit i&7 (LSB first), as qcow2 stores bitmaps. */
  toBytes(firstBit: number, bitCount: number): Uint8Array {
    settleMarks();
    const out = new Uint8Array(Math.ceil(bitCount / 8));
    if (firstBit % WORD === 0) {
      // word-aligned: copy whole words, little-endian, skipping empty stretches via the summary
      const view = new DataView(out.buffer);
      for (let bit = this.nextSet(firstBit); bit >= 0 && bit < firstBit + bitCount; ) {
        const w = bit >>> 5;
        const rel = w * WORD - firstBit;
        const word = Atomics.load(this.words, this.ix(w));
        const byteAt = rel >>> 3;
        if (byteAt + 4 <= out.length) view.setInt32(byteAt, word, true);
        else for (let k = 0; byteAt + k < out.length; k++) out[byteAt + k] = (word >>> (8 * k)) & 0xff;
        bit = this.nextSet((w + 1) * WORD);
      }
      const tail = bitCount % 8;
      if (tail) out[out.length - 1] &= (1 << tail) - 1;
      return out;
    }
    for (const [start, len] of this.runs(firstBit, firstBit + bitCount)) {
      for (let b = start; b < start + len; b++) {
        const rel = b - firstBit;
        out[rel >>> 3] |= 1 << (rel & 7);
      }
    }
    return out;
  }

  /** Sets the bits given as LSB-first bytes starting at `firstBit` (bits past the end are ignored). */
  setFromBytes(firstBit: number, bytes: Uint8Array): void {
    if (firstBit % WORD === 0) {
      let added = 0;
      for (let i = 0; i < bytes.length; i += 4) {
        let word = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24);
        if (word === 0) continue;
        const bit = firstBit + i * 8;
        if (bit >= this.size) break;
        const over = bit + WORD - this.size;
        if (over > 0) word &= over >= WORD ? 0 : -1 >>> over;
        const w = bit >>> 5;
        const old = Atomics.or(this.words, this.ix(w), word);
        const fresh = word & ~old;
        if (fresh) added += popcount32(fresh);
        if (old === 0 && word !== 0) this.markSummary(w);
      }
      if (added) this.addCount(added);
      return;
    }
    for (let i = 0; i < bytes.length; i++) {
      const byte = bytes[i];
      if (byte === 0) continue;
      for (let j = 0; j < 8; j++) {
        if (byte & (1 << j)) {
          const b = firstBit + i * 8 + j;
          if (b < this.size) this.setRange(b, b);
        }
      }
    }
  }

  private findSet(level: number, from: number): number {
    // from: bit index at `level`; returns the first set level-0 bit under any set bit ≥ from, or -1
    const { levelOffsets, levelWords } = this.layout;
    let bit = from;
    while (true) {
      const w = bit >>> 5;
      if (w >= levelWords[level]) return -1;
      const word = Atomics.load(this.words, this.ix(levelOffsets[level] + w)) & (-1 << (bit & 31));
      if (word !== 0) {
        const found = w * WORD + ctz32(word);
        if (level === 0) return found;
        // descend: bit `found` at this level is word `found` of the level below
        const below = this.findSet(level - 1, found * WORD);
        if (below >= 0) return below;
        // the summary said non-zero but the word was cleared meanwhile: keep looking
        bit = found + 1;
        continue;
      }
      if (level + 1 < levelOffsets.length) {
        // nothing more in this word: ask the level above where the next non-zero word is
        const nextWord = this.findSetWordAbove(level + 1, w + 1);
        if (nextWord < 0) return -1;
        bit = nextWord * WORD;
      } else {
        bit = (w + 1) * WORD;
      }
    }
  }

  /** The first bit ≥ from at `level` that is set (a non-zero word index for level-1), or -1. */
  private findSetWordAbove(level: number, from: number): number {
    const { levelOffsets, levelWords } = this.layout;
    let bit = from;
    while (true) {
      const w = bit >>> 5;
      if (w >= levelWords[level]) return -1;
      const word = Atomics.load(this.words, this.ix(levelOffsets[level] + w)) & (-1 << (bit & 31));
      if (word !== 0) return w * WORD + ctz32(word);
      if (level + 1 < levelOffsets.length) {
        const next = this.findSetWordAbove(level + 1, w + 1);
        if (next < 0) return -1;
        bit = next * WORD;
      } else bit = (w + 1) * WORD;
    }
  }

  private markSummary(word: number): void {
    const { levelOffsets } = this.layout;
    let w = word;
    for (let level = 1; level < levelOffsets.length; level++) {
      const bit = 1 << (w & 31);
      const at = this.ix(levelOffsets[level] + (w >>> 5));
      // a plain load first: the bit is usually set already, and a locked or costs more
      if (Atomics.load(this.words, at) & bit) return;
      const old = Atomics.or(this.words, at, bit);
      if (old !== 0) return; // the levels above already know
      w >>>= 5;
    }
  }

  private clearSummary(level: number, word: number): void {
    const { levelOffsets } = this.layout;
    if (level + 1 >= levelOffsets.length) return;
    const idx = word >>> 5;
    const above = this.ix(levelOffsets[level + 1] + idx);
    const old = Atomics.and(this.words, above, ~(1 << (word & 31)));
    // a set raced us after we saw the word empty: put the summary bit back
    if (Atomics.load(this.words, this.ix(levelOffsets[level] + word)) !== 0) {
      Atomics.or(this.words, above, 1 << (word & 31));
      return;
    }
    if ((old & ~(1 << (word & 31))) === 0) this.clearSummary(level + 1, idx);
  }

  private check(first: number, last: number): void {
    if (first < 0 || last >= this.size) throw new RangeError(`bits ${first}..${last} outside 0..${this.size - 1}`);
  }
}

/** maskFor when [first, last] lies in one word. */
function oneWordMask(first: number, last: number): number {
  const width = last - first + 1;
  return width === 32 ? -1 : ((1 << width) - 1) << (first & 31);
}

function maskFor(word: number, first: number, last: number): number {
  const lo = Math.max(first, word * WORD) - word * WORD;
  const hi = Math.min(last, word * WORD + 31) - word * WORD;
  const width = hi - lo + 1;
  return width === 32 ? -1 : ((1 << width) - 1) << lo;
}
