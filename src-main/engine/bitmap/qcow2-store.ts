import type { Qcow2Driver } from '../formats/qcow2/driver.js';
import { AUTOCLEAR_BITMAPS, EXT_BITMAPS } from '../formats/qcow2/constants.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import type { BitmapStore } from './bitmap-store.js';
import { DirtyBitmap, MAX_NAME_BYTES, isValidGranularity } from './dirty-bitmap.js';
import { BitmapError } from './node-bitmaps.js';
import {
  BitmapFormatError,
  FLAG_AUTO,
  FLAG_IN_USE,
  MAX_BITMAPS,
  MAX_BITMAP_DATA,
  MAX_DIRECTORY_SIZE,
  entrySize,
  parseDirectory,
  parseExtension,
  parseTable,
  serializeDirectory,
  serializeExtension,
  tableSizeFor,
  type DirEntry,
} from './qcow2-bitmaps-format.js';

/**
 * Persistent bitmaps in a qcow2 image, byte-compatible with QEMU (block/qcow2-bitmap.c's rules,
 * written anew): loaded at open, marked IN_USE on disk at once when the image is writable, stored
 * at clean close (new tables and directory written first, header switched, old clusters freed —
 * so a crash at any point leaks at worst), and left IN_USE by a crash so the next open reports
 * them inconsistent.
 */
export class Qcow2BitmapStore implements BitmapStore {
  readonly kind = 'qcow2' as const;
  /** the directory as on disk */
  private entries: DirEntry[] = [];
  private dirOffset = 0;
  private dirSize = 0;

  constructor(
    private readonly driver: Qcow2Driver,
    private readonly nodeName: string,
  ) {}

  private get cs(): number {
    return this.driver.clusterSize;
  }

  private fail(message: string): never {
    throw new TidemarkError('CORRUPT_IMAGE', `Image '${this.driver.path}': ${message}`);
  }

  checkCanStore(name: string, granularity: number, existing: readonly DirtyBitmap[]): void {
    const prefix = `Can't make bitmap '${name}' persistent in '${this.nodeName}': `;
    if (this.driver.headerFields.version < 3) throw new BitmapError('Cannot store dirty bitmaps in qcow2 v2 files');
    if (this.driver.readOnly) throw new BitmapError(`${prefix}the image is read-only`);
    if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) throw new BitmapError(`${prefix}Name length exceeds maximum (${MAX_NAME_BYTES} characters)`);
    if (!isValidGranularity(granularity)) {
      throw new BitmapError(granularity < 512 ? `${prefix}Granularity is under minimum (512 bytes)` : `${prefix}Granularity exceeds maximum (2147483648 bytes)`);
    }
    if (tableSizeFor(this.driver.virtualSize, granularity, this.cs) * this.cs > MAX_BITMAP_DATA) {
      throw new BitmapError(`${prefix}Too much space will be occupied by the bitmap. Use larger granularity`);
    }
    const persistent = existing.filter((b) => b.persistent && b.name !== undefined);
    if (persistent.some((b) => b.name === name) || this.entries.some((e) => e.name === name)) {
      throw new BitmapError(`${prefix}Bitmap with the same name is already stored`);
    }
    if (persistent.length + 1 > MAX_BITMAPS) throw new BitmapError(`${prefix}Maximum number of persistent bitmaps is already reached`);
    const dir = persistent.reduce((n, b) => n + entrySize(Buffer.byteLength(b.name!, 'utf8')), 0) + entrySize(Buffer.byteLength(name, 'utf8'));
    if (dir > MAX_DIRECTORY_SIZE) throw new BitmapError(`${prefix}Bitmap directory size exceeds maximum`);
  }

  async load(size: number): Promise<DirtyBitmap[]> {
    const extData = this.driver.readHeaderExtension(EXT_BITMAPS);
    const autoclear = this.driver.headerFields.autoclearFeatures;
    if (!extData) {
      if (autoclear & AUTOCLEAR_BITMAPS && !this.driver.readOnly) {
        // the bit without the extension means nothing: clear it, as QEMU does on its next header update
        this.driver.setAutoclearFeatures(autoclear & ~AUTOCLEAR_BITMAPS);
        await this.driver.writeHeader();
      }
      return [];
    }
    if (!(autoclear & AUTOCLEAR_BITMAPS)) {
      // a program without bitmap support wrote the image: the bitmaps cannot be trusted (QEMU drops them; their clusters leak)
      if (!this.driver.readOnly) {
        this.driver.setHeaderExtension(EXT_BITMAPS, undefined);
        await this.driver.writeHeader();
      }
      return [];
    }
    try {
      const ext = parseExtension(extData, this.cs);
      const dir = await this.driver.file.pread(ext.directoryOffset, ext.directorySize);
      this.entries = parseDirectory(dir, ext, this.cs, size);
      this.dirOffset = ext.directoryOffset;
      this.dirSize = ext.directorySize;
    } catch (err) {
      if (err instanceof BitmapFormatError) this.fail(err.message);
      throw err;
    }
    const out: DirtyBitmap[] = [];
    for (const e of this.entries) {
      const b = new DirtyBitmap({ name: e.name, size, granularity: 2 ** e.granularityBits, persistent: true, disabled: (e.flags & FLAG_AUTO) === 0 });
      if (e.flags & FLAG_IN_USE) {
        // left in use by a process that did not close the image: the data cannot be trusted
        b.inconsistent = true;
        b.disabled = true;
      } else {
        await this.readData(e, b);
      }
      b.readonly = this.driver.readOnly && !b.inconsistent;
      out.push(b);
    }
    if (!this.driver.readOnly && this.entries.some((e) => !(e.flags & FLAG_IN_USE))) {
      for (const e of this.entries) e.flags |= FLAG_IN_USE;
      await this.rewriteDirectoryInPlace();
    }
    return out;
  }

  private async readData(e: DirEntry, b: DirtyBitmap): Promise<void> {
    const tableBytes = await this.driver.file.pread(e.tableOffset, e.tableSize * 8);
    let table;
    try {
      table = parseTable(tableBytes, e.tableSize, this.cs, e.name);
    } catch (err) {
      if (err instanceof BitmapFormatError) this.fail(err.message);
      throw err;
    }
    const bitsPerCluster = this.cs * 8;
    for (let i = 0; i < table.length; i++) {
      const first = i * bitsPerCluster;
      if (first >= b.bits.size) break;
      const t = table[i];
      if (t.kind === 'zeros') continue;
      if (t.kind === 'ones') {
        b.bits.setRange(first, Math.min(b.bits.size, first + bitsPerCluster) - 1);
        continue;
      }
      const bytes = Math.min(this.cs, Math.ceil((b.bits.size - first) / 8));
      b.bits.setFromBytes(first, await this.driver.file.pread(t.offset, bytes));
    }
  }

  /** QEMU's update_ext_header_and_dir_in_place: the autoclear bit is off while the directory changes. */
  private async rewriteDirectoryInPlace(): Promise<void> {
    const autoclear = this.driver.headerFields.autoclearFeatures;
    this.driver.setAutoclearFeatures(autoclear & ~AUTOCLEAR_BITMAPS);
    await this.driver.writeHeader();
    await this.driver.file.sync();
    await this.driver.file.pwrite(this.dirOffset, serializeDirectory(this.entries));
    await this.driver.file.sync();
    this.driver.setAutoclearFeatures(autoclear | AUTOCLEAR_BITMAPS);
    await this.driver.writeHeader();
    await this.driver.file.sync();
  }

  async remove(name: string): Promise<void> {
    const gone = this.entries.find((e) => e.name === name);
    if (!gone) return; // never stored: nothing on disk
    await this.replaceDirectory(this.entries.filter((e) => e !== gone), [gone]);
  }

  async store(bitmaps: readonly DirtyBitmap[]): Promise<void> {
    if (this.driver.readOnly) return;
    const toStore = bitmaps.filter((b) => b.persistent && b.name !== undefined && !b.inconsistent && !b.readonly);
    const storedNames = new Set(toStore.map((b) => b.name!));
    // inconsistent ones stay in the directory untouched (still in use); the stored ones are rewritten
    const keep = this.entries.filter((e) => !storedNames.has(e.name) && bitmaps.some((b) => b.name === e.name && b.inconsistent));
    const replaced = this.entries.filter((e) => !keep.includes(e));
    const fresh: DirEntry[] = [];
    try {
      for (const b of toStore) fresh.push(await this.writeBitmap(b));
    } catch (err) {
      // free what we allocated; the image keeps its old directory
      for (const e of fresh) await this.freeEntry(e).catch(() => {});
      throw err;
    }
    await this.replaceDirectory([...keep, ...fresh], replaced);
  }

  /** Writes a bitmap's data clusters and table to new clusters; returns its directory entry. */
  private async writeBitmap(b: DirtyBitmap): Promise<DirEntry> {
    const tableSize = tableSizeFor(b.size, b.granularity, this.cs);
    const table = new Uint8Array(tableSize * 8);
    const tv = new DataView(table.buffer);
    const bitsPerCluster = this.cs * 8;
    const allocated: number[] = [];
    try {
      for (let i = 0; i < tableSize; i++) {
        const first = i * bitsPerCluster;
        const count = Math.min(bitsPerCluster, b.bits.size - first);
        if (count <= 0 || b.bits.nextSet(first) < 0 || b.bits.nextSet(first) >= first + count) continue;
        const data = new Uint8Array(this.cs);
        data.set(b.bits.toBytes(first, count));
        const off = await this.driver.allocateClusters(1);
        allocated.push(off);
        await this.driver.file.pwrite(off, data);
        tv.setBigUint64(i * 8, BigInt(off));
      }
      const tableClusters = Math.ceil(table.length / this.cs);
      const tableOffset = await this.driver.allocateClusters(tableClusters);
      allocated.push(...Array.from({ length: tableClusters }, (_, k) => tableOffset + k * this.cs));
      const padded = new Uint8Array(tableClusters * this.cs);
      padded.set(table);
      await this.driver.file.pwrite(tableOffset, padded);
      return { tableOffset, tableSize, flags: b.disabled ? 0 : FLAG_AUTO, granularityBits: Math.log2(b.granularity), name: b.name! };
    } catch (err) {
      for (const off of allocated) await this.driver.freeClusters(off, 1).catch(() => {});
      throw err;
    }
  }

  /**
   * Switches the image to a new directory: written to new clusters, synced, then the header
   * points at it, then the old directory and the given entries' clusters are freed.
   */
  private async replaceDirectory(entries: DirEntry[], toFree: DirEntry[]): Promise<void> {
    const oldDir = this.dirOffset ? { offset: this.dirOffset, clusters: Math.ceil(this.dirSize / this.cs) } : undefined;
    let newOffset = 0;
    let newSize = 0;
    if (entries.length) {
      const dir = serializeDirectory(entries);
      newSize = dir.length;
      const clusters = Math.ceil(dir.length / this.cs);
      newOffset = await this.driver.allocateClusters(clusters);
      const padded = new Uint8Array(clusters * this.cs);
      padded.set(dir);
      await this.driver.file.pwrite(newOffset, padded);
    }
    await this.driver.file.sync();
    const autoclear = this.driver.headerFields.autoclearFeatures;
    if (entries.length) {
      this.driver.setHeaderExtension(EXT_BITMAPS, serializeExtension({ nbBitmaps: entries.length, directorySize: newSize, directoryOffset: newOffset }));
      this.driver.setAutoclearFeatures(autoclear | AUTOCLEAR_BITMAPS);
    } else {
      this.driver.setHeaderExtension(EXT_BITMAPS, undefined);
      this.driver.setAutoclearFeatures(autoclear & ~AUTOCLEAR_BITMAPS);
    }
    await this.driver.writeHeader();
    await this.driver.file.sync();
    this.entries = entries;
    this.dirOffset = newOffset;
    this.dirSize = newSize;
    if (oldDir) await this.driver.freeClusters(oldDir.offset, oldDir.clusters);
    for (const e of toFree) await this.freeEntry(e);
  }

  private async freeEntry(e: DirEntry): Promise<void> {
    const tableBytes = await this.driver.file.pread(e.tableOffset, e.tableSize * 8);
    for (const t of parseTable(tableBytes, e.tableSize, this.cs, e.name)) if (t.kind === 'data') await this.driver.freeClusters(t.offset, 1);
    await this.driver.freeClusters(e.tableOffset, Math.ceil((e.tableSize * 8) / this.cs));
  }
}
