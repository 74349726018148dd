import { createHash, type Hash } from 'node:crypto';

/**
 * A digest of guest-visible contents that costs nothing for zeros.
 *
 * A disk is mostly zeros, and which of its zeros are holes depends on who looks: a backup chain
 * knows them from its metadata, a raw file only by reading them. So the digest is defined by the
 * contents alone, in 4 KiB blocks aligned to the disk: blocks of zeros are skipped (a memcmp,
 * not a hash), and every maximal run of non-zero blocks contributes its start, its end and the
 * sha256 of its bytes. Hashing thus costs what the data is, not what the disk is.
 *
 * A window (a piece of the disk hashed on its own, see jobs/flatten.ts) is given as parts in
 * order: bytes, or a length of zeros. Parts may start and end anywhere; a block that straddles
 * parts is assembled first, so the result is the same however the window was cut.
 */
export const DIGEST_BLOCK = 4096;

export interface DigestPart {
  /** the part's bytes; absent: `length` zero bytes */
  bytes?: Uint8Array;
  length: number;
}

const ZERO_BLOCK = new Uint8Array(DIGEST_BLOCK);
const ZERO_CHUNK = 64 * 1024;
const ZERO_CHUNK_BYTES = new Uint8Array(ZERO_CHUNK);

export function contentDigest(offset: number, parts: readonly DigestPart[]): string {
  const out = createHash('sha256');
  const scratch = new Uint8Array(DIGEST_BLOCK);
  const header = Buffer.alloc(16);
  let run: Hash | undefined;
  let runStart = 0;
  // a span of non-zero bytes not yet fed to the run's hash (contiguous in one part's memory)
  let spanBytes: Uint8Array | undefined;
  let spanFrom = 0;
  let spanTo = 0;

  const flushSpan = () => {
    if (spanBytes) run!.update(spanBytes.subarray(spanFrom, spanTo));
    spanBytes = undefined;
  };
  /** The run the block at `at` belongs to: the current one, or one starting there. */
  const runAt = (at: number): Hash => {
    if (!run) {
      run = createHash('sha256');
      runStart = at;
    }
    return run;
  };
  const endRun = (at: number) => {
    if (!run) return;
    flushSpan();
    header.writeBigUInt64LE(BigInt(runStart), 0);
    header.writeBigUInt64LE(BigInt(at), 8);
    out.update(header);
    out.update(run.digest());
    run = undefined;
  };

  let pos = offset;
  let k = 0; // current part
  let inPart = 0; // bytes of it consumed
  const end = offset + parts.reduce((n, p) => n + p.length, 0);
  while (pos < end) {
    const blockEnd = Math.min(end, (Math.floor(pos / DIGEST_BLOCK) + 1) * DIGEST_BLOCK);
    const len = blockEnd - pos;
    while (parts[k].length === inPart) {
      k++;
      inPart = 0;
    }
    const part = parts[k];
    // a whole chunk of zeros in one part is skipped in one compare (most of a disk is zeros)
    if (part.bytes && pos % ZERO_CHUNK === 0 && end - pos >= ZERO_CHUNK && part.length - inPart >= ZERO_CHUNK) {
      if (Buffer.compare(part.bytes.subarray(inPart, inPart + ZERO_CHUNK), ZERO_CHUNK_BYTES) === 0) {
        endRun(pos);
        pos += ZERO_CHUNK;
        inPart += ZERO_CHUNK;
        continue;
      }
    }
    let view: Uint8Array | undefined; // the block's bytes, when they sit in one part
    let viewAt = 0;
    let zero: boolean;
    if (part.length - inPart >= len) {
      if (part.bytes) {
        view = part.bytes;
        viewAt = inPart;
        zero = Buffer.compare(part.bytes.subarray(inPart, inPart + len), ZERO_BLOCK.subarray(0, len)) === 0;
      } else {
        zero = true;
      }
      inPart += len;
    } else {
      // the block straddles parts: assemble it
      let filled = 0;
      while (filled < len) {
        while (parts[k].length === inPart) {
          k++;
          inPart = 0;
        }
        const p = parts[k];
        const n = Math.min(len - filled, p.length - inPart);
        if (p.bytes) scratch.set(p.bytes.subarray(inPart, inPart + n), filled);
        else scratch.fill(0, filled, filled + n);
        filled += n;
        inPart += n;
      }
      if (Buffer.compare(scratch.subarray(0, len), ZERO_BLOCK.subarray(0, len)) === 0) {
        endRun(pos);
      } else {
        const r = runAt(pos);
        flushSpan();
        r.update(scratch.subarray(0, len));
      }
      pos = blockEnd;
      continue;
    }
    if (zero) {
      endRun(pos);
    } else {
      runAt(pos);
      if (spanBytes === view && spanTo === viewAt) {
        spanTo += len;
      } else {
        flushSpan();
        spanBytes = view;
        spanFrom = viewAt;
        spanTo = viewAt + len;
      }
    }
    pos = blockEnd;
  }
  endRun(pos);
  return out.digest('hex');
}
