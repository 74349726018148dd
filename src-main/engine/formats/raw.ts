import { preadPassing, type FileHandle, type FileOpener, type Lent } from '../io/file-handle.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { actualSize } from './actual-size.js';
import { checkRequest, closedImage, readOnlyImage } from './image-errors.js';
import type { BlockDriver, BlockExtent, ImageInfo } from './types.js';

/** zeros are written in pieces of this size (one shared, never-modified buffer) */
const ZERO_CHUNK = 1024 * 1024;
const ZEROS = new Uint8Array(ZERO_CHUNK);

/**
 * Raw images: the guest disk is the file. The virtual size is the file size at open; reads past
 * the physical end (a file shrunk underneath us) come back as zeros.
 */
export class RawDriver implements BlockDriver {
  readonly format = 'raw' as const;
  readonly clusterSize = undefined;
  readonly path: string;
  readonly readOnly: boolean;
  private closing: Promise<void> | undefined;

  private constructor(
    readonly file: FileHandle,
    readonly virtualSize: number,
  ) {
    this.path = file.path;
    this.readOnly = file.readOnly;
  }

  static async open(file: FileHandle): Promise<RawDriver> {
    return new RawDriver(file, await file.size());
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.checkOpen();
    checkRequest(this.path, 'read', offset, length, this.virtualSize);
    // guest data, passed on by the caller
    return preadPassing(this.file, offset, length);
  }

  async readLent(ranges: readonly { offset: number; length: number }[]): Promise<Lent | undefined> {
    this.checkOpen();
    if (!this.file.preadLent || ranges.length === 0) return undefined;
    for (const r of ranges) checkRequest(this.path, 'read', r.offset, r.length, this.virtualSize);
    const base = ranges[0].offset;
    const last = ranges[ranges.length - 1];
    return this.file.preadLent(
      ranges.map((r) => ({ position: r.offset, length: r.length, at: r.offset - base })),
      last.offset + last.length - base,
    );
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkWritable();
    checkRequest(this.path, 'write', offset, data.length, this.virtualSize);
    if (data.length) await this.file.pwrite(offset, data);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRequest(this.path, 'write zeroes', offset, length, this.virtualSize);
    if (length === 0) return;
    if (offset + length === this.virtualSize && (await this.file.size()) === this.virtualSize) {
      // a range reaching EOF can be dropped and re-extended: the new tail is a hole reading zeros
      await this.file.truncate(offset);
      await this.file.truncate(this.virtualSize);
      return;
    }
    for (let pos = offset; pos < offset + length; pos += ZERO_CHUNK) {
      const n = Math.min(ZERO_CHUNK, offset + length - pos);
      await this.file.pwrite(pos, n === ZERO_CHUNK ? ZEROS : ZEROS.subarray(0, n));
    }
  }

  /** A hint only: raw files keep their data (FileHandle has no hole punching). */
  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    checkRequest(this.path, 'discard', offset, length, this.virtualSize);
  }

  async flush(): Promise<void> {
    this.checkOpen();
    if (!this.readOnly) await this.file.sync();
  }

  async blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    this.checkOpen();
    checkRequest(this.path, 'block status', offset, length, this.virtualSize);
    if (length === 0) return [];
    const out: BlockExtent[] = [];
    const push = (start: number, len: number, data: boolean) => {
      if (len <= 0) return;
      const last = out.at(-1);
      if (last && last.data === data && last.offset + last.length === start) last.length += len;
      else out.push({ offset: start, length: len, zero: !data, data, allocatedHere: true, depth: 0 });
    };
    let pos = offset;
    const end = offset + length;
    for (const e of await this.file.allocation(offset, length)) {
      const s = Math.max(e.offset, pos);
      const t = Math.min(e.offset + e.length, end);
      if (s > pos) push(pos, s - pos, false); // gaps in the host report are holes
      push(s, t - s, e.data);
      pos = Math.max(pos, t);
    }
    push(pos, end - pos, false);
    return out;
  }

  async info(): Promise<ImageInfo> {
    return {
      format: 'raw',
      path: this.path,
      virtualSize: this.virtualSize,
      actualSize: await actualSize(this.path),
      backingChain: [],
      readOnly: this.readOnly,
    };
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      let failure: unknown;
      if (!this.readOnly) await this.file.sync().catch((err: unknown) => (failure = err));
      await this.file.close();
      if (failure) throw failure;
    })();
    return this.closing;
  }

  private checkOpen(): void {
    if (this.closing) throw closedImage(this.path);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnly) throw readOnlyImage(this.path);
  }
}

/** Creates (or truncates) a sparse raw file of `size` bytes. */
export async function createRaw(path: string, size: number, opener: FileOpener): Promise<void> {
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': invalid size ${size}`);
  }
  const file = await opener.open(path, { readOnly: false, create: true });
  try {
    await file.truncate(0);
    await file.truncate(size);
  } finally {
    await file.close();
  }
}
