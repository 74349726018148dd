import type { Drive } from '../drive.js';
import { bitmapBytes, defaultGranularity, isValidGranularity, type DirtyBitmap } from './dirty-bitmap.js';
import { BitmapError, CHECK_ALLOW_RO, CHECK_BUSY, CHECK_DEFAULT, CHECK_RO, checkBitmap } from './node-bitmaps.js';

/** Finds drives by id or node name. */
export type DriveLookup = (idOrNode: string) => Drive | undefined;

export type MergeSource = string | { node: string; name: string };

export interface AddOptions {
  granularity?: number;
  persistent?: boolean;
  disabled?: boolean;
}

/**
 * The bitmap commands with QEMU's rules and wording, shared by QMP, the app API and
 * transactions. Each either changes exactly what it says or throws and changes nothing.
 */
export class BitmapCommands {
  constructor(private readonly lookup: DriveLookup) {}

  /** `block-dirty-bitmap-add` */
  add(node: string, name: string, options: AddOptions = {}): DirtyBitmap {
    if (!name) throw new BitmapError('Bitmap name cannot be empty');
    const drive = this.lookup(node);
    if (!drive) throw new BitmapError(`Cannot find device='${node}' nor node-name='${node}'`);
    let granularity = options.granularity;
    if (granularity === undefined) granularity = defaultGranularity(drive.driver.clusterSize);
    else if (!isValidGranularity(granularity)) throw new BitmapError('Granularity must be power of 2 and at least 512');
    if (options.persistent) {
      const store = drive.bitmapStore;
      if (!store) throw new BitmapError(`Can't store persistent bitmaps to ${drive.id}: Operation not supported`);
      store.checkCanStore(name, granularity, drive.bitmaps.all());
    }
    return drive.bitmaps.create({ name, granularity, disabled: options.disabled, persistent: options.persistent });
  }

  /** `block-dirty-bitmap-remove`: inconsistent bitmaps may be removed; a persistent one leaves the image at once. */
  async remove(node: string, name: string): Promise<void> {
    const { drive, bitmap } = this.find(node, name);
    checkBitmap(bitmap, CHECK_BUSY | CHECK_RO);
    if (bitmap.persistent && drive.bitmapStore) {
      // busy while the image is rewritten, so nothing else grabs it half-removed
      bitmap.busy = true;
      try {
        await drive.bitmapStore.remove(name);
      } finally {
        bitmap.busy = false;
      }
    }
    drive.bitmaps.release(bitmap);
  }

  /** `block-dirty-bitmap-clear` */
  clear(node: string, name: string): void {
    const { bitmap } = this.find(node, name);
    checkBitmap(bitmap, CHECK_DEFAULT);
    bitmap.clear();
  }

  /** `block-dirty-bitmap-enable` */
  enable(node: string, name: string): void {
    const { bitmap } = this.find(node, name);
    checkBitmap(bitmap, CHECK_ALLOW_RO);
    bitmap.disabled = false;
  }

  /** `block-dirty-bitmap-disable` */
  disable(node: string, name: string): void {
    const { bitmap } = this.find(node, name);
    checkBitmap(bitmap, CHECK_ALLOW_RO);
    bitmap.disabled = true;
  }

  /**
   * `block-dirty-bitmap-merge`: ORs the sources into the target without clearing it first.
   * Granularities may differ (sources round outward to the target's); sizes must match. All
   * checks run before the first bit changes, so a refused merge changes nothing. An empty
   * source list is refused (QEMU 7.2 crashes on it).
   */
  merge(node: string, target: string, sources: MergeSource[]): void {
    const t = this.find(node, target).bitmap;
    if (sources.length === 0) throw new BitmapError(`Merging into bitmap '${target}' needs at least one source bitmap`);
    checkBitmap(t, CHECK_DEFAULT);
    const resolved = sources.map((s) => (typeof s === 'string' ? this.find(node, s).bitmap : this.find(s.node, s.name).bitmap));
    for (const src of resolved) {
      checkBitmap(src, CHECK_ALLOW_RO);
      if (src.size !== t.size) {
        throw new BitmapError(`Bitmaps are of different sizes (destination size is ${t.size}, source size is ${src.size}) and can't be merged`);
      }
    }
    for (const src of resolved) if (src !== t) t.mergeFrom(src);
  }

  /** Lookup with QEMU's errors: the node first, then the bitmap. */
  find(node: string, name: string): { drive: Drive; bitmap: DirtyBitmap } {
    const drive = this.lookup(node);
    if (!drive) throw new BitmapError(`Node '${node}' not found`);
    const bitmap = drive.bitmaps.find(name);
    if (!bitmap) throw new BitmapError(`Dirty bitmap '${name}' not found`);
    return { drive, bitmap };
  }
}

/** Bytes of memory a bitmap of this geometry takes (what the UI shows when choosing granularity). */
export { bitmapBytes };
