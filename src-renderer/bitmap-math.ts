/** QEMU's bitmap arithmetic, for showing costs before anything is created. */

/** Granularities QEMU accepts: powers of two from 512 B to 2 GiB. */
export const GRANULARITIES: readonly number[] = Array.from({ length: 23 }, (_, i) => 512 * 2 ** i);
export const DEFAULT_GRANULARITY = 64 * 1024;

/** Memory a bitmap takes: one bit per granule, `ceil(ceil(size / granularity) / 8)` bytes. */
export function bitmapMemory(size: number, granularity: number): number {
  return Math.ceil(Math.ceil(size / granularity) / 8);
}

/** How many granules (bits) cover a disk of this size. */
export function bitmapBits(size: number, granularity: number): number {
  return Math.ceil(size / granularity);
}
