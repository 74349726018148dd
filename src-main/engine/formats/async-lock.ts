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

interface Waiter extends RangeClaim {
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
    const blocked = this.waiting.some((w) => conflicts(w, claim)) || [...this.held].some((h) => conflicts(h, claim));
    if (!blocked) {
      this.held.add(claim);
    } else {
      await new Promise<void>((resolve) => this.waiting.push({ ...claim, grant: resolve }));
      // grantWaiters added our claim object's twin; find it by identity below
    }
    const mine = blocked ? this.lastGranted : claim;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.held.delete(mine as RangeClaim);
      this.grantWaiters();
    };
  }

  private lastGranted: RangeClaim | undefined;

  private grantWaiters(): void {
    const still: Waiter[] = [];
    const grants: { claim: RangeClaim; grant: () => void }[] = [];
    for (const w of this.waiting) {
      const blocked = still.some((s) => conflicts(s, w)) || [...this.held].some((h) => conflicts(h, w));
      if (blocked) {
        still.push(w);
      } else {
        const claim: RangeClaim = { start: w.start, end: w.end, exclusive: w.exclusive };
        this.held.add(claim);
        grants.push({ claim, grant: w.grant });
      }
    }
    this.waiting = still;
    for (const g of grants) {
      this.lastGranted = g.claim;
      g.grant();
    }
  }
}
