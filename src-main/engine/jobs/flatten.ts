import { createHash } from 'node:crypto';
import type { BlockDriver, BlockExtent } from '../formats/types.js';
import type { Lent } from '../io/file-handle.js';
import { contentDigest, type DigestPart } from '../io/content-digest.js';

/**
 * Restores copy and verify a disk in aligned windows of this size: big enough that a window's
 * reads are few large requests, small enough that eight in flight stay within the I/O pool's
 * lending arena.
 */
export const WINDOW = 1 << 20;

/** The content digest of a window from its parts (IoPool.contentDigest, or digestHere). */
export type Digest = (offset: number, parts: readonly DigestPart[]) => Promise<string>;

/** Data of a window that one layer of the chain holds (depth 0 = the top image). */
interface DataPiece {
  offset: number;
  length: number;
  depth: number;
}

export interface WindowPlan {
  offset: number;
  length: number;
  /** the window's data, in guest order; everything else in it reads as zeros */
  data: DataPiece[];
}

/** The image and its backing chain, top first: index = the depth block status reports. */
export function chainLayers(top: BlockDriver): BlockDriver[] {
  const layers: BlockDriver[] = [];
  for (let d: BlockDriver | null = top; d && layers.length < 1024; d = 'backing' in d ? (d.backing as BlockDriver | null) : null) layers.push(d);
  return layers;
}

/** Cuts the disk into windows and the (non-zero) extents of block status into their pieces. */
export function planWindows(extents: readonly BlockExtent[], size: number): WindowPlan[] {
  const windows: WindowPlan[] = [];
  for (let at = 0; at < size; at += WINDOW) windows.push({ offset: at, length: Math.min(WINDOW, size - at), data: [] });
  for (const e of extents) {
    if (e.zero) continue;
    for (let at = e.offset; at < e.offset + e.length; ) {
      const w = windows[Math.floor(at / WINDOW)];
      const stop = Math.min(e.offset + e.length, w.offset + w.length);
      // data that no layer claims (cannot happen for qcow2) is read through the top image
      w.data.push({ offset: at, length: stop - at, depth: e.depth ?? 0 });
      at = stop;
    }
  }
  return windows;
}

export interface WindowRead {
  /** the data pieces, each with its bytes (guest order) */
  pieces: { offset: number; bytes: Uint8Array }[];
  /** the whole window in order, zero runs without bytes: what its digest is taken over */
  parts: DigestPart[];
  release(): void;
}

/**
 * Reads a window's data straight from the layers that hold it: one request per layer (a lent
 * buffer, the file's data runs in one scatter read), rather than each read descending the chain
 * and being copied up through every overlay on the way.
 */
export async function readWindow(layers: readonly BlockDriver[], w: WindowPlan): Promise<WindowRead> {
  const byDepth = new Map<number, DataPiece[]>();
  for (const p of w.data) {
    const depth = p.depth < layers.length ? p.depth : 0;
    let list = byDepth.get(depth);
    if (!list) byDepth.set(depth, (list = []));
    list.push(p);
  }
  const lents: Lent[] = [];
  const bytesOf = new Map<DataPiece, Uint8Array>();
  const release = () => {
    for (const l of lents.splice(0)) l.release();
  };
  try {
    await Promise.all(
      [...byDepth].map(async ([depth, list]) => {
        const layer = layers[depth];
        const lent = layer.readLent ? await layer.readLent(list) : undefined;
        if (lent) {
          lents.push(lent);
          const base = list[0].offset;
          for (const p of list) bytesOf.set(p, lent.bytes.subarray(p.offset - base, p.offset - base + p.length));
          return;
        }
        for (const p of list) bytesOf.set(p, await layer.read(p.offset, p.length));
      }),
    );
  } catch (err) {
    release();
    throw err;
  }
  const pieces: WindowRead['pieces'] = [];
  const parts: WindowRead['parts'] = [];
  let at = w.offset;
  for (const p of w.data) {
    if (p.offset > at) parts.push({ length: p.offset - at });
    const bytes = bytesOf.get(p)!;
    pieces.push({ offset: p.offset, bytes });
    parts.push({ bytes, length: p.length });
    at = p.offset + p.length;
  }
  if (at < w.offset + w.length) parts.push({ length: w.offset + w.length - at });
  return { pieces, parts, release };
}

/** The content digest on the calling thread (where no I/O pool is at hand). */
export const digestHere: Digest = (offset, parts) => Promise.resolve(contentDigest(offset, parts));

/** The digest of a window of zeros (nothing is hashed for zeros, so this is cheap anywhere). */
export function zeroWindowDigest(w: { offset: number; length: number }): string {
  return contentDigest(w.offset, [{ length: w.length }]);
}

/**
 * The digest of a whole disk: sha256 over its size (8 bytes, little-endian) and its windows'
 * content digests in disk order. Both sides of a restore are reduced the same way, so they
 * match exactly when every window does, and a mismatch can name the window.
 */
export function diskDigest(size: number, windowDigests: readonly string[]): string {
  const hash = createHash('sha256');
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(size));
  hash.update(head);
  for (const d of windowDigests) hash.update(Buffer.from(d, 'hex'));
  return hash.digest('hex');
}

/**
 * Runs `fn` over `count` items with at most `parallel` in flight, in order of start; the first
 * failure stops new starts and is rethrown once the running ones have settled.
 */
export async function forEachParallel(count: number, parallel: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const lane = async () => {
    while (!failed && next < count) {
      const i = next++;
      try {
        await fn(i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(parallel, count) }, lane));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
