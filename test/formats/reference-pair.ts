import { join } from 'node:path';
import { expect } from 'vitest';
import { createImage, openImage } from '../../src-main/engine/formats/open.js';
import type { BlockDriver } from '../../src-main/engine/formats/types.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { expectCheckClean, expectSameContents } from '../helpers/qemu-tools.js';

/**
 * A qcow2 image under test plus a raw reference file that gets the same guest-visible
 * operations. At the end the qcow2 must pass `qemu-img check` and equal the reference.
 */
export class ReferencePair {
  private constructor(
    readonly qcowPath: string,
    readonly rawPath: string,
    readonly qcow: BlockDriver,
    readonly raw: BlockDriver,
  ) {}

  static async create(
    dir: string,
    name: string,
    size: number,
    options: { clusterSize?: number; version?: 2 | 3; compressionType?: 'zlib' | 'zstd' } = {},
  ): Promise<ReferencePair> {
    const qcowPath = join(dir, `${name}.qcow2`);
    const rawPath = join(dir, `${name}.raw`);
    await createImage(qcowPath, { format: 'qcow2', virtualSize: size, opener: fsOpener, ...options });
    await createImage(rawPath, { format: 'raw', virtualSize: size, opener: fsOpener });
    const qcow = await openImage(qcowPath, { readOnly: false, opener: fsOpener });
    const raw = await openImage(rawPath, { readOnly: false, opener: fsOpener });
    return new ReferencePair(qcowPath, rawPath, qcow, raw);
  }

  get clusterSize(): number {
    return this.qcow.clusterSize ?? 65536;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await Promise.all([this.qcow.write(offset, data), this.raw.write(offset, data)]);
  }

  async writeZeroes(offset: number, length: number, mayUnmap = false): Promise<void> {
    await Promise.all([this.qcow.writeZeroes(offset, length, { mayUnmap }), this.raw.writeZeroes(offset, length)]);
  }

  /** qcow2 discard without a backing file: whole clusters read as zeros afterwards, the rest is kept. */
  async discard(offset: number, length: number): Promise<void> {
    const cs = this.clusterSize;
    const end = offset + length;
    const a = Math.ceil(offset / cs) * cs;
    const b = end === this.qcow.virtualSize ? end : Math.floor(end / cs) * cs;
    await this.qcow.discard(offset, length);
    if (b > a) await this.raw.writeZeroes(a, b - a);
  }

  async expectSameRead(offset: number, length: number): Promise<void> {
    const [q, r] = await Promise.all([this.qcow.read(offset, length), this.raw.read(offset, length)]);
    expect(Buffer.compare(Buffer.from(q), Buffer.from(r))).toBe(0);
  }

  /** Closes both, then asks QEMU: check clean, contents equal. */
  async verify(): Promise<void> {
    await this.qcow.close();
    await this.raw.close();
    await expectCheckClean(this.qcowPath);
    await expectSameContents(this.qcowPath, 'qcow2', this.rawPath, 'raw');
  }
}
