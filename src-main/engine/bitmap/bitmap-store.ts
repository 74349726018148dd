import type { DirtyBitmap } from './dirty-bitmap.js';

/**
 * Where a drive's persistent bitmaps live: the qcow2 bitmaps extension, or (raw drives, opt-in)
 * a sidecar file in the data dir. Both follow QEMU's in-use discipline: marked in use while
 * open read-write, cleared on clean close; found in use at open → inconsistent.
 */
export interface BitmapStore {
  /** what users see as the place, e.g. "in the qcow2 image" */
  readonly kind: 'qcow2' | 'sidecar';
  /** Throws a sentence why a new persistent bitmap cannot be stored (QEMU's can_store_new_dirty_bitmap). */
  checkCanStore(name: string, granularity: number, existing: readonly DirtyBitmap[]): void;
  /** Loads the stored bitmaps at open (and marks them in use on disk when writable). */
  load(size: number): Promise<DirtyBitmap[]>;
  /** Removes one stored bitmap from disk now (QEMU removes at once, not at close). */
  remove(name: string): Promise<void>;
  /** Writes every persistent bitmap and clears in-use (clean close). Inconsistent ones stay as they are. */
  store(bitmaps: readonly DirtyBitmap[]): Promise<void>;
}
