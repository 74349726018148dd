/**
 * QEMU's rate limiter: a quota of bytes per 100 ms slice. A request is always let through when
 * the current slice still has quota left (so the first chunk goes at once, however low the
 * speed); after that, the caller waits for as many slices as the overdraft needs.
 */
export const SLICE_MS = 100;

export class RateLimit {
  private sliceStart = 0;
  private sliceEnd = -Infinity;
  private dispatched = 0;
  private speed = 0;

  setSpeed(bytesPerSecond: number): void {
    this.speed = bytesPerSecond;
  }

  /** Milliseconds to wait before the next request (0 = go now). */
  delay(now = performance.now()): number {
    if (this.speed <= 0) return 0;
    const quota = (this.speed * SLICE_MS) / 1000;
    if (now >= this.sliceEnd) {
      this.sliceStart = now;
      this.sliceEnd = now + SLICE_MS;
      this.dispatched = 0;
    }
    if (this.dispatched < quota) return 0;
    // the slice stretches to exactly the time the bytes sent in it are worth (no rounding up to whole slices)
    this.sliceEnd = this.sliceStart + (this.dispatched / this.speed) * 1000;
    return this.sliceEnd - now;
  }

  account(bytes: number): void {
    this.dispatched += bytes;
  }
}
