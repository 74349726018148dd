import { expect, test } from 'vitest';
import { Mutex, RangeLock } from '../../src-main/engine/formats/async-lock.js';
import { MetadataCache } from '../../src-main/engine/formats/metadata-cache.js';

const tick = () => new Promise((r) => setImmediate(r));

test('RangeLock: overlapping exclusive claims run in arrival order, disjoint ones in parallel', async () => {
  const lock = new RangeLock();
  const log: string[] = [];
  const a = await lock.acquire(0, 10, true);
  const b = lock.acquire(5, 6, true).then((release) => (log.push('b'), release));
  const c = lock.acquire(20, 30, true).then((release) => (log.push('c'), release));
  const d = lock.acquire(0, 1, false).then((release) => (log.push('d'), release));
  await tick();
  expect(log).toEqual(['c']); // disjoint: granted at once
  a();
  const [rb, rc, rd] = await Promise.all([b, c, d]);
  expect(log).toEqual(['c', 'b', 'd']);
  rb();
  rc();
  rd();
});

test('RangeLock: shared claims coexist; a waiting writer is not overtaken by later readers', async () => {
  const lock = new RangeLock();
  const log: string[] = [];
  const r1 = await lock.acquire(0, 4, false);
  const r2 = await lock.acquire(2, 8, false);
  const w = lock.acquire(3, 4, true).then((release) => (log.push('w'), release));
  const r3 = lock.acquire(0, 4, false).then((release) => (log.push('r3'), release));
  await tick();
  expect(log).toEqual([]);
  r1();
  r2();
  (await w)();
  (await r3)();
  expect(log).toEqual(['w', 'r3']);
});

test('RangeLock.tryAcquire: granted only when neither a holder nor a waiter conflicts; a refusal takes nothing', async () => {
  const lock = new RangeLock();
  const w = await lock.acquire(0, 4, true);
  expect(lock.tryAcquire(2, 3, false)).toBeUndefined();
  const disjoint = lock.tryAcquire(4, 8, false);
  expect(disjoint).toBeDefined();
  // a writer waiting behind a reader: a later reader of its range may not overtake it
  const r = lock.tryAcquire(10, 12, false)!;
  const waiting = lock.acquire(11, 12, true);
  const beside = lock.tryAcquire(10, 11, false);
  expect(beside).toBeDefined();
  expect(lock.tryAcquire(11, 12, false)).toBeUndefined();
  beside!();
  r();
  (await waiting)();
  w();
  disjoint!();
  // refusals left nothing behind: everything is free again
  const all = lock.tryAcquire(0, 100, true);
  expect(all).toBeDefined();
  all!();
});

test('Mutex: FIFO', async () => {
  const m = new Mutex();
  const log: number[] = [];
  await Promise.all([1, 2, 3].map((i) => m.run(async () => (await tick(), log.push(i)))));
  expect(log).toEqual([1, 2, 3]);
});

test('MetadataCache: bounded, pinned entries survive, concurrent misses share one load', async () => {
  const cache = new MetadataCache(2);
  let loads = 0;
  const load = (v: number) => async () => (loads++, await tick(), new Uint8Array([v]));
  const [x, y] = await Promise.all([cache.get(1, load(1)), cache.get(1, load(1))]);
  expect(x).toBe(y);
  expect(loads).toBe(1);
  await cache.getPinned(2, load(2));
  await cache.get(3, load(3));
  await cache.get(4, load(4));
  expect(cache.size).toBe(2);
  // 2 is pinned: still cached, no reload
  const before = loads;
  await cache.get(2, load(2));
  expect(loads).toBe(before);
  cache.unpin(2);
});

test('MetadataCache.lookup: a hit refreshes recency, a miss loads nothing', async () => {
  const cache = new MetadataCache(2);
  const load = (v: number) => async () => new Uint8Array([v]);
  await cache.get(1, load(1));
  await cache.get(2, load(2));
  expect(cache.lookup(1)?.[0]).toBe(1);
  expect(cache.lookup(9)).toBeUndefined();
  // 1 was used last: 2 is the one evicted
  await cache.get(3, load(3));
  expect(cache.lookup(2)).toBeUndefined();
  expect(cache.lookup(1)?.[0]).toBe(1);
  expect(cache.size).toBe(2);
});
