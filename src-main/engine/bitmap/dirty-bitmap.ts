import { SharedBits } from './shared-bits.js';

/** What query-block reports for one bitmap (QEMU's BlockDirtyInfo). */
export interface BitmapInfo {
  name: string;
  count: number;
  granularity: number;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  /** present only when true, as in QEMU */
  inconsistent?: true;
}

export interface DirtyExtent {
  offset: number;
  length: number;
  dirty: boolean;
}

export const MIN_GRANULARITY = 512;
export const MAX_GRANULARITY = 2 ** 31;
export const MAX_NAME_BYTES = 1023;

export function isValidGranularity(g: number): boolean {
  return Number.isInteger(g) && g >= MIN_GRANULARITY && g <= MAX_GRANULARITY && (g & (g - 1)) === 0;
}

/** QEMU's default: the image's cluster size clamped to [4 KiB, 64 KiB]; 64 KiB when there is none (raw). */
export function defaultGranularity(clusterSize: number | undefined): number {
  if (!clusterSize) return 65536;
  return Math.min(65536, Math.max(4096, clusterSize));
}

/** Memory a bitmap needs: one bit per granule, rounded up to bytes. */
export function bitmapBytes(size: number, granularity: number): number {
  return Math.ceil(Math.ceil(size / granularity) / 8);
}

/**
 * A count of changes to which bitmaps record — one enabled or disabled anywhere, or a node's list
 * changed (NodeBitmaps) — so that a node can keep its list of recording bitmaps between writes
 * instead of building it on every guest write.
 */
export const recordingEpoch = { value: 0 };

export function recordingChanged(): void {
  recordingEpoch.value++;
}

/**
 * A dirty bitmap over a disk of `size` bytes: one bit per `granularity` bytes, in shared memory
 * interleaved with the other bitmaps of its size (SharedBits.grouped), so a write marks them all
 * in one cache line. Flags follow QEMU's BdrvDirtyBitmap: disabled (not recording),
 * busy (in use by a job or export), persistent (stored in the qcow2 image), inconsistent (found
 * in use after a crash: only removable), readonly (from a read-only image), and an optional
 * anonymous successor that takes the writes while a backup uses this bitmap.
 */
export class DirtyBitmap {
  name: string | undefined;
  readonly granularity: number;
  readonly size: number;
  readonly bits: SharedBits;
  private isDisabled: boolean;
  busy = false;
  persistent: boolean;
  inconsistent = false;
  readonly = false;
  successor: DirtyBitmap | undefined;
  /** raw drives: kept in a sidecar file in the data dir (Tidemark's extension; opt-in) */
  sidecar = false;

  constructor(options: { name?: string; size: number; granularity: number; disabled?: boolean; persistent?: boolean }) {
    this.name = options.name;
    this.size = options.size;
    this.granularity = options.granularity;
    this.isDisabled = options.disabled ?? false;
    this.persistent = options.persistent ?? false;
    this.bits = SharedBits.grouped(Math.ceil(options.size / options.granularity));
  }

  /** Not recording guest writes. */
  get disabled(): boolean {
    return this.isDisabled;
  }

  set disabled(value: boolean) {
    if (value === this.isDisabled) return;
    this.isDisabled = value;
    recordingChanged();
  }

  /** Recording = it (or its successor) takes guest writes. */
  get recording(): boolean {
    return !this.disabled || (this.successor !== undefined && !this.successor.disabled);
  }

  /** Dirty bytes: set bits × granularity (not clipped to the disk size, as in QEMU). */
  get count(): number {
    return this.bits.count() * this.granularity;
  }

  /** Marks every granule the byte range touches (rounds outward). */
  mark(offset: number, length: number): void {
    if (length <= 0 || offset >= this.size) return;
    const end = Math.min(this.size, offset + length);
    this.bits.setRange(Math.floor(offset / this.granularity), Math.floor((end - 1) / this.granularity));
  }

  /**
   * Clears the granules fully inside the range (rounds inward), except that a range reaching the
   * end of the disk also clears the final partial granule.
   */
  reset(offset: number, length: number): void {
    const end = Math.min(this.size, offset + length);
    const first = Math.ceil(offset / this.granularity);
    const last = end >= this.size ? this.bits.size - 1 : Math.floor(end / this.granularity) - 1;
    if (last >= first) this.bits.clearRange(first, last);
  }

  clear(): void {
    this.bits.clearAll();
  }

  isDirty(offset: number): boolean {
    return this.bits.get(Math.floor(offset / this.granularity));
  }

  /** Dirty and clean runs over [offset, offset+length), clipped to the disk size. */
  extents(offset = 0, length = this.size - offset): DirtyExtent[] {
    const out: DirtyExtent[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    for (const [bit, n] of this.bits.runs(Math.floor(offset / this.granularity), Math.ceil(end / this.granularity))) {
      const start = Math.max(offset, bit * this.granularity);
      const stop = Math.min(end, (bit + n) * this.granularity);
      if (start > at) out.push({ offset: at, length: start - at, dirty: false });
      out.push({ offset: start, length: stop - start, dirty: true });
      at = stop;
    }
    if (at < end) out.push({ offset: at, length: end - at, dirty: false });
    return out;
  }

  /** Dirty byte runs only (clipped to the range and the disk). */
  dirtyExtents(offset = 0, length = this.size - offset): { offset: number; length: number }[] {
    const out: { offset: number; length: number }[] = [];
    for (const e of this.dirtyRuns(offset, length)) out.push(e);
    return out;
  }

  /** Dirty byte runs, lazily: no array of a million extents for a huge fragmented bitmap. */
  *dirtyRuns(offset = 0, length = this.size - offset): Generator<{ offset: number; length: number }> {
    const end = Math.min(this.size, offset + length);
    for (const [bit, n] of this.bits.runs(Math.floor(offset / this.granularity), Math.ceil(end / this.granularity))) {
      const start = Math.max(offset, bit * this.granularity);
      const stop = Math.min(end, (bit + n) * this.granularity);
      if (stop > start) yield { offset: start, length: stop - start };
    }
  }

  /**
   * ORs another bitmap of the same disk size into this one. With equal granularity the bits are
   * copied run by run; otherwise each dirty byte range of the source is rounded outward to ours.
   */
  mergeFrom(source: DirtyBitmap): void {
    if (source.granularity === this.granularity) {
      this.bits.or(source.bits);
      return;
    }
    for (const e of source.dirtyRuns()) this.mark(e.offset, e.length);
  }

  /** A new anonymous bitmap with our geometry and, optionally, our bits. */
  cloneEmpty(): DirtyBitmap {
    return new DirtyBitmap({ size: this.size, granularity: this.granularity, disabled: false });
  }

  /** The dirty map downsampled to `buckets` fractions (0..1) for the UI's heat strip. */
  downsample(buckets: number): number[] {
    const out = new Array<number>(buckets).fill(0);
    if (this.size === 0 || buckets <= 0) return out;
    const per = this.size / buckets;
    for (const e of this.dirtyRuns()) {
      let at = e.offset;
      const end = e.offset + e.length;
      while (at < end) {
        const b = Math.min(buckets - 1, Math.floor(at / per));
        const bucketEnd = Math.min(end, (b + 1) * per);
        out[b] += (bucketEnd - at) / per;
        at = bucketEnd > at ? bucketEnd : end;
      }
    }
    return out.map((v) => Math.min(1, v));
  }

  info(): BitmapInfo {
    const info: BitmapInfo = {
      name: this.name ?? '',
      count: this.inconsistent ? 0 : this.count,
      granularity: this.granularity,
      recording: this.inconsistent ? false : this.recording,
      busy: this.busy,
      persistent: this.persistent,
    };
    if (this.inconsistent) info.inconsistent = true;
    return info;
  }
}
