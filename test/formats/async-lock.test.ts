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
