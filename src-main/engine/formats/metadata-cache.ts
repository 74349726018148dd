/**
 * Bounded LRU cache of metadata clusters (L2 tables, refcount blocks), keyed by host offset, with
 * writeback: a changed entry is marked dirty (with the byte range that changed) and written later
 * by its owner (`dirtyEntries` + `cleaned`), in the order the owner's crash-safety rules require.
 *
 * A dirty entry is never evicted (it is the only copy of its changes), nor is a pinned one: the
 * owner pins an entry while it writes it, so a reload can never race the write and read the old
 * bytes back. When dirty entries alone fill the cache it grows past its bound; the owner watches
 * `dirtyCount` and writes back. Concurrent misses of one key share one read.
 */
export interface CacheEntry {
  value: Uint8Array;
  pins: number;
  /** changed bytes [lo, hi) not yet written; lo === hi when clean */
  lo: number;
  hi: number;
}

export class MetadataCache {
  private readonly entries = new Map<number, CacheEntry>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();
  private readonly dirty = new Set<number>();

  constructor(readonly maxEntries: number) {}

  /** The cached value for `key` with its recency refreshed, as get() does; undefined when not cached (nothing loaded). */
  lookup(key: number): Uint8Array | undefined {
    const hit = this.entries.get(key);
    if (!hit) return undefined;
    // refresh recency: Map iteration order is insertion order
    this.entries.delete(key);
    this.entries.set(key, hit);
    return hit.value;
  }

  async get(key: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    const hit = this.lookup(key);
    if (hit) return hit;
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

  /** The cached value, if present (no load, no recency update). */
  peek(key: number): Uint8Array | undefined {
    return this.entries.get(key)?.value;
  }

  delete(key: number): void {
    if (this.dirty.has(key)) throw new Error(`metadata cache: dropping dirty entry 0x${key.toString(16)}`);
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

  /** Records that bytes [lo, hi) of a cached entry changed and must be written. */
  markDirty(key: number, lo: number, hi: number): void {
    const entry = this.entries.get(key);
    if (!entry) throw new Error(`metadata cache: marking a missing entry 0x${key.toString(16)} dirty`);
    if (entry.lo === entry.hi) {
      entry.lo = lo;
      entry.hi = hi;
    } else {
      entry.lo = Math.min(entry.lo, lo);
      entry.hi = Math.max(entry.hi, hi);
    }
    this.dirty.add(key);
  }

  get dirtyCount(): number {
    return this.dirty.size;
  }

  /** Dirty entries, lowest key (host offset) first. */
  dirtyEntries(): { key: number; entry: CacheEntry }[] {
    return [...this.dirty].sort((a, b) => a - b).map((key) => ({ key, entry: this.entries.get(key)! }));
  }

  /** The entry's dirty range has been taken for writing: clean until the next change. */
  cleaned(key: number): void {
    const entry = this.entries.get(key);
    if (entry) entry.lo = entry.hi = 0;
    this.dirty.delete(key);
  }

  get size(): number {
    return this.entries.size;
  }

  private insert(key: number, value: Uint8Array, pins = 0): void {
    this.entries.set(key, { value, pins, lo: 0, hi: 0 });
    this.evict();
  }

  private evict(): void {
    if (this.entries.size <= this.maxEntries) return;
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.maxEntries) break;
      if (entry.pins === 0 && !this.dirty.has(key)) this.entries.delete(key);
    }
  }
}

/**
 * Writes a cache's dirty entries (each its changed byte range, as a snapshot taken now, so later
 * changes wait for the next writeback), all in parallel, pinned while in flight.
 * Returns how many were written.
 */
export async function writeDirty(cache: MetadataCache, write: (offset: number, bytes: Uint8Array) => Promise<void>): Promise<number> {
  const dirty = cache.dirtyEntries();
  if (dirty.length === 0) return 0;
  const writes: Promise<void>[] = [];
  for (const { key, entry } of dirty) {
    const { lo, hi } = entry;
    const bytes = entry.value.slice(lo, hi);
    entry.pins++;
    cache.cleaned(key);
    writes.push(
      call(() => write(key + lo, bytes))
        // not written: still dirty (the entry is pinned, so it is still there)
        .catch((err: unknown) => {
          cache.markDirty(key, lo, hi);
          throw err;
        })
        .finally(() => cache.unpin(key)),
    );
  }
  const results = await Promise.allSettled(writes);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
  return dirty.length;
}

/** Runs `fn`, turning a synchronous throw into a rejection. */
function call(fn: () => Promise<void>): Promise<void> {
  try {
    return fn();
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}
