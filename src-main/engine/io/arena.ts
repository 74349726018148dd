/**
 * A buddy allocator over the byte range [0, size) of the I/O pool's shared arena: blocks are
 * powers of two from `minBlock` up, a freed block merges with its free buddy. Why a buddy
 * allocator rather than fixed 1 MiB buffers: an NBD client such as nbdcopy keeps 64 requests of
 * 256 KiB in flight, a backup lends 1 MiB runs, a small read 4 KiB; fixed buffers would waste
 * most of each lend and run out at 16 requests, and every request that finds none falls back to
 * a fresh buffer (the slow path this arena exists to avoid).
 */
export class ArenaAllocator {
  private readonly maxOrder: number;
  /** free block offsets per order (order k = minBlock << k bytes) */
  private readonly free: Set<number>[];

  constructor(
    readonly size: number,
    readonly minBlock: number,
  ) {
    if (!isPowerOfTwo(size) || !isPowerOfTwo(minBlock) || minBlock > size) throw new RangeError(`arena ${size} / block ${minBlock}: powers of two, block ≤ size`);
    this.maxOrder = Math.log2(size / minBlock);
    this.free = Array.from({ length: this.maxOrder + 1 }, () => new Set<number>());
    this.free[this.maxOrder].add(0);
  }

  /** The largest request one block can serve. */
  get maxLength(): number {
    return this.size;
  }

  /** Offset of a free block of at least `length` bytes, or undefined when none is free. */
  alloc(length: number): { at: number; order: number } | undefined {
    if (length <= 0 || length > this.size) return undefined;
    const order = this.orderFor(length);
    let k = order;
    while (k <= this.maxOrder && this.free[k].size === 0) k++;
    if (k > this.maxOrder) return undefined;
    const at = this.free[k].values().next().value as number;
    this.free[k].delete(at);
    // split down to the size asked for: the upper halves become free buddies
    while (k > order) {
      k--;
      this.free[k].add(at + (this.minBlock << k));
    }
    return { at, order };
  }

  /** Returns a block (as alloc gave it); merges it with free buddies as far as they go. */
  release(at: number, order: number): void {
    let k = order;
    let block = at;
    while (k < this.maxOrder) {
      const buddy = block ^ (this.minBlock << k);
      if (!this.free[k].delete(buddy)) break;
      block = Math.min(block, buddy);
      k++;
    }
    this.free[k].add(block);
  }

  /** Bytes in free blocks (for tests and diagnostics). */
  freeBytes(): number {
    let n = 0;
    for (let k = 0; k <= this.maxOrder; k++) n += this.free[k].size * (this.minBlock << k);
    return n;
  }

  private orderFor(length: number): number {
    let k = 0;
    while (this.minBlock << k < length) k++;
    return k;
  }
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}
