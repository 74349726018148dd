import type { BlockDriver, BlockExtent, ImageInfo } from '../../src-main/engine/formats/types.js';
import type { FileHandle } from '../../src-main/engine/io/file-handle.js';

/** A test double: a disk in memory, for unit tests of layers above the formats. */
export class MemoryDriver implements BlockDriver {
  readonly format = 'raw' as const;
  readonly readOnly = false;
  readonly data: Uint8Array;
  /** set to make the next writes fail */
  failWrites = false;

  constructor(
    readonly virtualSize: number,
    readonly clusterSize: number | undefined = undefined,
    readonly path = '/memory',
  ) {
    this.data = new Uint8Array(virtualSize);
  }

  get file(): FileHandle {
    throw new Error('memory driver has no file');
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.data.slice(offset, offset + length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.failWrites) throw new Error('injected write failure');
    this.data.set(data, offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }

  async flush(): Promise<void> {}

  async blockStatus(offset: number, length: number): Promise<BlockExtent[]> {
    return [{ offset, length, zero: false, data: true, allocatedHere: true, depth: 0 }];
  }

  async info(): Promise<ImageInfo> {
    return { format: 'raw', path: this.path, virtualSize: this.virtualSize, actualSize: this.virtualSize, backingChain: [], readOnly: false };
  }

  async close(): Promise<void> {}
}
