/**
 * Bounded LRU cache of metadata clusters (L2 tables, refcount blocks), keyed by host offset.
 *
 * The drivers write metadata through (every change is written before the lock that made it is
 * released), so eviction never loses data. What eviction could break is a reload racing an
 * in-flight write of the same table: a pinned entry is therefore never evicted, and a caller pins
 * an entry for as long as it mutates and writes it. Concurrent misses of one key share one read.
 */
export class MetadataCache {
  private readonly entries = new Map<number, { value: Uint8Array; pins: number }>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();

  constructor(private readonly maxEntries: number) {}

  async get(key: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    const hit = this.entries.get(key);
    if (hit) {
      // refresh recency: Map iteration order is insertion order
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit.value;
    }
    const pending = this.loading.get(key);
    if (pending) return pending;
    const promise = load().then(
      (value) => {
        this.loading.delete(key);
        // a set() may have raced the load (a freshly allocated table): the set wins
        const raced = this.entries.get(key);
        if (raced) return raced.value;
        this.insert(key, value);
        return value;
      },
      (err: unknown) => {
        this.loading.delete(key);
        throw err;
      },
    );
    this.loading.set(key, promise);
    return promise;
  }

  /** Puts a table the caller just created (a new L2 table or refcount block). */
  set(key: number, value: Uint8Array): void {
    const old = this.entries.get(key);
    if (old) {
      old.value = value;
      return;
    }
    this.insert(key, value);
  }

  delete(key: number): void {
    this.entries.delete(key);
  }

  /** Gets (loading if needed) and pins; the caller must unpin. */
  async getPinned(key: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    const value = await this.get(key, load);
    const entry = this.entries.get(key);
    if (entry && entry.value === value) entry.pins++;
    else this.insert(key, value, 1);
    return value;
  }

  unpin(key: number): void {
    const entry = this.entries.get(key);
    if (entry && entry.pins > 0) entry.pins--;
    this.evict();
  }

  get size(): number {
    return this.entries.size;
  }

  private insert(key: number, value: Uint8Array, pins = 0): void {
    this.entries.set(key, { value, pins });
    this.evict();
  }

  private evict(): void {
    if (this.entries.size <= this.maxEntries) return;
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.maxEntries) break;
      if (entry.pins === 0) this.entries.delete(key);
    }
  }
}
