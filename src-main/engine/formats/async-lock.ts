/**
 * Small async locks. The drivers keep many guest requests in flight; these serialize only what
 * must be serialized (metadata updates, and requests touching the same clusters).
 */

/** FIFO mutex. */
export class Mutex {
  private locked = false;
  private readonly waiters: (() => void)[] = [];

  async acquire(): Promise<void> {
    if (!this.locked) {
      this.locked = true;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    // hand the lock straight to the next waiter so nobody can barge in between
    if (next) next();
    else this.locked = false;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}

interface RangeClaim {
  start: number;
  end: number;
  exclusive: boolean;
}

interface Waiter {
  claim: RangeClaim;
  grant: () => void;
}

function conflicts(a: RangeClaim, b: RangeClaim): boolean {
  return a.start < b.end && b.start < a.end && (a.exclusive || b.exclusive);
}

/**
 * Shared/exclusive locks over half-open integer ranges (guest cluster indices). A waiter is granted
 * only when it conflicts neither with a holder nor with an earlier waiter, so overlapping requests
 * complete in arrival order and nobody starves.
 */
export class RangeLock {
  private readonly held = new Set<RangeClaim>();
  private waiting: Waiter[] = [];

  async acquire(start: number, end: number, exclusive: boolean): Promise<() => void> {
    const claim: RangeClaim = { start, end, exclusive };
    if (this.isBlocked(claim, this.waiting)) {
      // grantWaiters moves this very claim object into `held` before resolving
      await new Promise<void>((resolve) => this.waiting.push({ claim, grant: resolve }));
    } else {
      this.held.add(claim);
    }
    return this.releaser(claim);
  }

  /** The lock at once when nothing holds or waits for a conflicting range, else undefined (nothing taken). */
  tryAcquire(start: number, end: number, exclusive: boolean): (() => void) | undefined {
    const claim: RangeClaim = { start, end, exclusive };
    if (this.isBlocked(claim, this.waiting)) return undefined;
    this.held.add(claim);
    return this.releaser(claim);
  }

  private releaser(claim: RangeClaim): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held.delete(claim);
      this.grantWaiters();
    };
  }

  private isBlocked(claim: RangeClaim, earlier: readonly Waiter[]): boolean {
    for (const w of earlier) if (conflicts(w.claim, claim)) return true;
    for (const h of this.held) if (conflicts(h, claim)) return true;
    return false;
  }

  private grantWaiters(): void {
    const still: Waiter[] = [];
    for (const w of this.waiting) {
      if (this.isBlocked(w.claim, still)) {
        still.push(w);
      } else {
        this.held.add(w.claim);
        w.grant();
      }
    }
    this.waiting = still;
  }
}
