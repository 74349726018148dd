import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { DirtyBitmap, isValidGranularity } from '../../engine/bitmap/dirty-bitmap.js';
import { BitmapError } from '../../engine/bitmap/node-bitmaps.js';
import type { BitmapStore } from '../../engine/bitmap/bitmap-store.js';

/**
 * Sidecar bitmaps for raw drives — Tidemark's extension (QEMU keeps raw drives' bitmaps in
 * memory only). One file per drive in the data dir: a JSON header line, then each bitmap's
 * bits (LSB first, as qcow2 stores them). Same discipline as qcow2's IN_USE flag: the file says
 * "in use" while the drive is open, and only a clean close clears it, so a crash shows up as
 * inconsistent bitmaps instead of silently missing writes.
 */
interface SidecarHeader {
  format: 'tidemark-sidecar-bitmaps';
  version: 1;
  imageSize: number;
  /** inUse per bitmap, like qcow2's IN_USE flag: set while open read-write, cleared by a clean store */
  bitmaps: { name: string; granularity: number; disabled: boolean; inUse: boolean; bytes: number }[];
}

const MAGIC = 'tidemark-sidecar-bitmaps';

export class SidecarBitmapStore implements BitmapStore {
  readonly kind = 'sidecar' as const;

  constructor(
    private readonly file: string,
    private readonly readOnly: boolean,
    /** the drive's current bitmaps, for rewriting the file when the set changes */
    private readonly current: () => readonly DirtyBitmap[],
  ) {}

  checkCanStore(name: string, granularity: number, existing: readonly DirtyBitmap[]): void {
    if (!isValidGranularity(granularity)) throw new BitmapError('Granularity must be power of 2 and at least 512');
    if (existing.some((b) => b.name === name)) throw new BitmapError(`Bitmap already exists: ${name}`);
    if (this.readOnly) throw new BitmapError(`Can't keep bitmap '${name}' in a sidecar file: the drive is read-only`);
  }

  async load(size: number): Promise<DirtyBitmap[]> {
    let raw: Buffer;
    try {
      raw = await readFile(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const nl = raw.indexOf(10);
    const header = JSON.parse(raw.subarray(0, nl < 0 ? raw.length : nl).toString('utf8')) as SidecarHeader;
    if (header.format !== MAGIC || header.version !== 1) throw new Error(`'${this.file}' is not a Tidemark sidecar bitmap file`);
    const out: DirtyBitmap[] = [];
    let at = nl + 1;
    for (const h of header.bitmaps) {
      const b = new DirtyBitmap({ name: h.name, size, granularity: h.granularity, disabled: h.disabled });
      b.sidecar = true;
      if (h.inUse || header.imageSize !== size) {
        // the last run did not close cleanly (or the disk was resized behind our back): the bits cannot be trusted
        b.inconsistent = true;
        b.disabled = true;
      } else {
        b.bits.setFromBytes(0, raw.subarray(at, at + h.bytes));
      }
      at += h.bytes;
      out.push(b);
    }
    if (!this.readOnly && out.length) {
      await this.write({ ...header, bitmaps: header.bitmaps.map((h) => ({ ...h, inUse: true })) }, [raw.subarray(nl + 1)]);
    }
    return out;
  }

  async remove(name: string): Promise<void> {
    await this.markInUse(this.current().filter((b) => b.name !== name));
  }

  /** Records the current set of sidecar bitmaps as in use (after one is added or removed). */
  async markInUse(bitmaps: readonly DirtyBitmap[] = this.current()): Promise<void> {
    await this.save(bitmaps, true);
  }

  async store(bitmaps: readonly DirtyBitmap[]): Promise<void> {
    await this.save(bitmaps, false);
  }

  private async save(bitmaps: readonly DirtyBitmap[], inUse: boolean): Promise<void> {
    const kept = bitmaps.filter((b) => b.sidecar && b.name !== undefined && !b.inconsistent);
    const inconsistent = bitmaps.filter((b) => b.sidecar && b.inconsistent);
    if (kept.length === 0 && inconsistent.length === 0) {
      await unlink(this.file).catch(() => {});
      return;
    }
    // inconsistent bitmaps stay recorded (as in qcow2, they stay in use until removed)
    // while in use the bits on disk are not trusted anyway: only the names and geometry matter
    const chunks = kept.map((b) => (inUse ? new Uint8Array(0) : b.bits.toBytes(0, b.bits.size)));
    const header: SidecarHeader = {
      format: MAGIC,
      version: 1,
      imageSize: kept[0]?.size ?? inconsistent[0].size,
      bitmaps: [
        ...kept.map((b, i) => ({ name: b.name!, granularity: b.granularity, disabled: b.disabled, inUse, bytes: chunks[i].length })),
        ...inconsistent.map((b) => ({ name: b.name!, granularity: b.granularity, disabled: true, inUse: true, bytes: 0 })),
      ],
    };
    await this.write(header, chunks);
  }

  /** Write-then-rename with fsync: the old file stays whole until the new one is. */
  private async write(header: SidecarHeader, chunks: Uint8Array[]): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.tmp-${process.pid}`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.write(`${JSON.stringify(header)}\n`);
      for (const c of chunks) await fh.write(c);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
    const dir = await open(dirname(this.file), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
