import { DirtyBitmap, MAX_NAME_BYTES, recordingChanged, recordingEpoch, type BitmapInfo } from './dirty-bitmap.js';
import { markBitmaps } from './mark-bitmaps.js';
import type { WriteMarker } from './write-marker.js';
import { TidemarkError } from '../../../src-shared/errors.js';

/** QEMU's bdrv_dirty_bitmap_check flags, evaluated in this order. */
export const CHECK_BUSY = 1;
export const CHECK_RO = 2;
export const CHECK_INCONSISTENT = 4;
export const CHECK_DEFAULT = CHECK_BUSY | CHECK_RO | CHECK_INCONSISTENT;
export const CHECK_ALLOW_RO = CHECK_BUSY | CHECK_INCONSISTENT;

/** A refusal about a bitmap: one sentence naming it and why (QEMU's wording). */
export class BitmapError extends TidemarkError {
  constructor(message: string) {
    super('INVALID_INPUT', message);
    this.name = 'BitmapError';
  }
}

export function checkBitmap(b: DirtyBitmap, flags: number): void {
  const name = b.name ?? '';
  if (flags & CHECK_BUSY && b.busy) {
    throw new BitmapError(`Bitmap '${name}' is currently in use by another operation and cannot be used`);
  }
  if (flags & CHECK_RO && b.readonly) throw new BitmapError(`Bitmap '${name}' is readonly and cannot be modified`);
  if (flags & CHECK_INCONSISTENT && b.inconsistent) {
    throw new BitmapError(`Bitmap '${name}' is inconsistent and cannot be used. Try block-dirty-bitmap-remove to delete this bitmap from disk`);
  }
}

/**
 * The bitmaps of one block node. New bitmaps go first (QEMU lists newest first). Anonymous
 * bitmaps (a backup's successor) are tracked for writes but never listed.
 */
export class NodeBitmaps {
  private list: DirtyBitmap[] = [];

  constructor(readonly nodeSize: () => number) {}

  all(): readonly DirtyBitmap[] {
    return this.list;
  }

  named(): DirtyBitmap[] {
    return this.list.filter((b) => b.name !== undefined);
  }

  find(name: string): DirtyBitmap | undefined {
    return this.list.find((b) => b.name === name);
  }

  get(name: string): DirtyBitmap {
    const b = this.find(name);
    if (!b) throw new BitmapError(`Dirty bitmap '${name}' not found`);
    return b;
  }

  /** Creates and inserts a named bitmap (name rules checked here; persistence rules by the caller). */
  create(options: { name: string; granularity: number; disabled?: boolean; persistent?: boolean }): DirtyBitmap {
    if (Buffer.byteLength(options.name, 'utf8') > MAX_NAME_BYTES) throw new BitmapError(`Bitmap name too long: ${options.name}`);
    if (this.find(options.name)) throw new BitmapError(`Bitmap already exists: ${options.name}`);
    const b = new DirtyBitmap({ ...options, size: this.nodeSize() });
    this.insert(b);
    return b;
  }

  insert(b: DirtyBitmap): void {
    this.list.unshift(b);
    recordingChanged();
  }

  /** Takes a bitmap out of the list (its memory goes with the last reference). */
  release(b: DirtyBitmap): void {
    this.list = this.list.filter((x) => x !== b);
    recordingChanged();
  }

  /** Guest write tracking: every enabled bitmap on the node, successors included, marks the range. */
  markWrite(offset: number, length: number): void {
    const recording = this.recordingNow();
    if (recording.length === 0) return;
    if (this.marker) this.marker.mark(recording, offset, length);
    else markBitmaps(recording, offset, length);
  }

  /**
   * The bitmaps recording now. A new array whenever that changed, never modified afterwards: a
   * write marked later (write-marker.ts) keeps the set it completed with.
   */
  private recordingNow(): readonly DirtyBitmap[] {
    if (this.recordingAt !== recordingEpoch.value) {
      this.recording = this.list.filter((b) => !b.disabled);
      this.recordingAt = recordingEpoch.value;
    }
    return this.recording;
  }

  private recording: readonly DirtyBitmap[] = [];
  private recordingAt = -1;

  /** Where marking is handed off (the engine's WriteMarker: deferred); marked at once without one. */
  private marker: WriteMarker | undefined;

  useMarker(marker: WriteMarker | undefined): void {
    this.marker = marker;
  }

  hasReadonly(): boolean {
    return this.list.some((b) => b.readonly);
  }

  infos(): BitmapInfo[] {
    return this.named().map((b) => b.info());
  }

  /**
   * Backup support (QEMU's create_successor): freezes `b` and sends new writes to an anonymous
   * successor that records exactly when `b` did.
   */
  createSuccessor(b: DirtyBitmap): DirtyBitmap {
    checkBitmap(b, CHECK_BUSY);
    if (b.successor) throw new BitmapError(`Cannot create a successor for a bitmap that already has one: ${b.name ?? ''}`);
    const s = b.cloneEmpty();
    s.disabled = b.disabled;
    b.disabled = true;
    b.successor = s;
    b.busy = true;
    this.list.push(s);
    recordingChanged();
    return s;
  }

  /** "sync" outcome: the successor takes the bitmap's name and place; the old bits are dropped. */
  abdicate(b: DirtyBitmap): DirtyBitmap {
    const s = b.successor;
    if (!s) throw new Error(`bitmap ${b.name ?? ''} has no successor`);
    s.name = b.name;
    s.persistent = b.persistent;
    s.sidecar = b.sidecar;
    b.successor = undefined;
    const at = this.list.indexOf(b);
    this.list = this.list.filter((x) => x !== s);
    this.list.splice(at, 1, s);
    recordingChanged();
    return s;
  }

  /** "don't sync" outcome: the bitmap gets back its bits plus every write made meanwhile. */
  reclaim(b: DirtyBitmap): DirtyBitmap {
    const s = b.successor;
    if (!s) throw new Error(`bitmap ${b.name ?? ''} has no successor`);
    b.mergeFrom(s);
    b.disabled = s.disabled;
    b.busy = false;
    b.successor = undefined;
    this.release(s);
    return b;
  }
}
