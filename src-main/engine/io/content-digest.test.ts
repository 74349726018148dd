import { describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { DIGEST_BLOCK, contentDigest, type DigestPart } from './content-digest.js';

/** The definition, read off a contiguous buffer: runs of non-zero 4 KiB blocks with their bounds. */
function reference(offset: number, bytes: Uint8Array): string {
  const out = createHash('sha256');
  const isZero = (b: Uint8Array) => b.every((x) => x === 0);
  let pos = offset;
  const end = offset + bytes.length;
  let runStart = -1;
  const close = (at: number) => {
    if (runStart < 0) return;
    const head = Buffer.alloc(16);
    head.writeBigUInt64LE(BigInt(runStart), 0);
    head.writeBigUInt64LE(BigInt(at), 8);
    out.update(head);
    out.update(createHash('sha256').update(bytes.subarray(runStart - offset, at - offset)).digest());
    runStart = -1;
  };
  while (pos < end) {
    const blockEnd = Math.min(end, (Math.floor(pos / DIGEST_BLOCK) + 1) * DIGEST_BLOCK);
    if (isZero(bytes.subarray(pos - offset, blockEnd - offset))) close(pos);
    else if (runStart < 0) runStart = pos;
    pos = blockEnd;
  }
  close(end);
  return out.digest('hex');
}

function rng(seed: number) {
  let x = seed;
  return (n: number) => (x = (x * 1103515245 + 12345) >>> 0) % n;
}

/** Cuts `bytes` into parts at random places; all-zero parts lose their bytes half of the time. */
function cut(bytes: Uint8Array, rnd: (n: number) => number): DigestPart[] {
  const parts: DigestPart[] = [];
  for (let at = 0; at < bytes.length; ) {
    const n = Math.min(bytes.length - at, 1 + rnd(rnd(2) ? 700 : 20000));
    const piece = bytes.subarray(at, at + n);
    parts.push(piece.every((x) => x === 0) && rnd(2) ? { length: n } : { bytes: piece, length: n });
    at += n;
  }
  return parts;
}

describe('contentDigest', () => {
  it('equals its definition however the window is cut, holes or zero bytes alike', () => {
    const rnd = rng(11);
    for (let round = 0; round < 40; round++) {
      const len = 1 + rnd(300_000);
      const bytes = new Uint8Array(len);
      // data in scattered stretches, some a single byte, some straddling block edges
      for (let k = rnd(8); k > 0; k--) {
        const at = rnd(len);
        bytes.fill(1 + rnd(255), at, Math.min(len, at + 1 + rnd(rnd(2) ? 3 : 40_000)));
      }
      const offset = rnd(4) * (1 << 20) + (round % 3 === 0 ? rnd(DIGEST_BLOCK) : 0);
      const want = reference(offset, bytes);
      expect(contentDigest(offset, [{ bytes, length: len }])).toBe(want);
      expect(contentDigest(offset, cut(bytes, rnd))).toBe(want);
    }
  });

  it('tells apart one changed byte, data moved by a block, and a longer window of zeros', () => {
    const a = new Uint8Array(1 << 20);
    a.fill(7, 100_000, 140_000);
    const base = contentDigest(0, [{ bytes: a, length: a.length }]);
    const b = a.slice();
    b[123_456] ^= 1;
    expect(contentDigest(0, [{ bytes: b, length: b.length }])).not.toBe(base);
    const moved = new Uint8Array(1 << 20);
    moved.fill(7, 100_000 + DIGEST_BLOCK, 140_000 + DIGEST_BLOCK);
    expect(contentDigest(0, [{ bytes: moved, length: moved.length }])).not.toBe(base);
    // zeros do not count, but where the data sits does: the same window elsewhere differs
    expect(contentDigest(1 << 20, [{ bytes: a, length: a.length }])).not.toBe(base);
    expect(contentDigest(0, [{ length: 1 << 20 }])).toBe(contentDigest(0, [{ bytes: new Uint8Array(1 << 20), length: 1 << 20 }]));
  });
});
