/**
 * Write marking handed to the I/O workers (see write-marker.ts): the shared layout.
 *
 * `ctrl` (Int32Array): PRODUCED entries pushed (by the main thread), CLAIMED entries taken (by
 * whoever wins the compare-and-swap: an I/O worker, or the main thread settling), DONE entries
 * fully applied. Counters wrap as int32, compared by difference.
 * Entry k lives at slot k mod RING: guest offset and length in `ranges` (Float64Array, 2 per
 * slot), the bitmap set it applies to in `sets` (Int32Array, 1 per slot).
 */
export const RING = 4096;
export const C_PRODUCED = 0;
export const C_CLAIMED = 1;
export const C_DONE = 2;
export const CTRL_WORDS = 3;

export interface MarkRingBuffers {
  ctrl: SharedArrayBuffer;
  ranges: SharedArrayBuffer;
  sets: SharedArrayBuffer;
}

/** One bitmap as the marker sees it: its shared bits and geometry. */
export interface MarkedBitmap {
  buffer: SharedArrayBuffer;
  bits: number;
  granularity: number;
  size: number;
}

/**
 * A set of bitmaps that entries refer to by id: the recording bitmaps of one node when a write
 * completed. Ids only grow; a newer set of the same node supersedes the older ones once an entry
 * with it is reached (everything pushed before it has been taken by then).
 */
export interface SetMessage {
  id: number;
  node: number;
  bitmaps: MarkedBitmap[];
}
