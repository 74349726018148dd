import type { Lent } from '../io/file-handle.js';
import type { BlockDriver } from './types.js';

/**
 * Below this a plain read is cheaper: a small fresh buffer costs next to nothing, and lending
 * (the allocator, the scatter list, a release callback) does not. Measured over NBD, 4 KiB reads
 * at qd16: 0.65-0.73 of qemu-nbd lent, against 0.84-0.99 plain.
 */
const LEND_MIN = 64 << 10;

/**
 * Guest bytes [offset, offset+length) of `driver`, in memory lent by the I/O layer when it has
 * some free (no allocation, no copy: the worker read straight into it), else in a fresh buffer
 * wrapped as a Lent whose release does nothing. Either way the caller releases it once done with
 * the bytes (after any write from them has settled).
 *
 * Why it matters: a fresh 1 MiB buffer costs more than the read itself (the kernel maps and
 * zeroes 256 new pages; measured 380 µs against 36 µs for a read into reused memory).
 */
export function readLent(driver: BlockDriver, offset: number, length: number): Promise<Lent> {
  if (length >= LEND_MIN && driver.readLent) {
    return driver.readLent([{ offset, length }]).then((lent) => lent ?? driver.read(offset, length).then(asLent));
  }
  // not async: a small read is on the hot path, and every await is a turn of its own
  return driver.read(offset, length).then(asLent);
}

/** A fresh buffer as a Lent. */
function asLent(bytes: Uint8Array): Lent {
  return { bytes, release: releaseNothing };
}

/** A fresh buffer's release: nothing to give back (one function for all of them). */
function releaseNothing(): void {}
