import type { BlockDriver } from '../formats/types.js';
import type { Drive } from '../drive.js';

/** Where a backup writes: an image the job opened itself (drive-backup) or another drive (blockdev-backup). */
export interface BackupTarget {
  readonly name: string;
  readonly virtualSize: number;
  readonly clusterSize: number | undefined;
  /** whether reads of unwritten areas come from a backing file (then zeroes must be written explicitly) */
  readonly hasBacking: boolean;
  readonly supportsCompression: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  writeCompressed(offset: number, data: Uint8Array): Promise<void>;
  flush(): Promise<void>;
  /** closes what the job opened; leaves a drive alone */
  release(): Promise<void>;
  /**
   * After a failed write the job will retry (policy stop or ignore): start again from what the
   * file really holds. A qcow2 whose metadata write failed refuses further writes until reopened.
   */
  recover(): Promise<void>;
}

interface CompressingDriver extends BlockDriver {
  writeCompressed(offset: number, data: Uint8Array): Promise<void>;
}

function canCompress(d: BlockDriver): d is CompressingDriver {
  return typeof (d as Partial<CompressingDriver>).writeCompressed === 'function';
}

export class ImageTarget implements BackupTarget {
  readonly supportsCompression: boolean;
  constructor(
    private driver: BlockDriver,
    readonly hasBacking: boolean,
    private readonly reopen: () => Promise<BlockDriver>,
  ) {
    this.supportsCompression = canCompress(driver);
  }
  async recover(): Promise<void> {
    // a qcow2 keeps metadata it has not written yet in memory: a reopen would drop it (and with it
    // clusters already copied), so it is flushed first — and if that fails, so does the recovery
    await this.driver.flush();
    await this.driver.close().catch(() => {});
    this.driver = await this.reopen();
  }
  get name(): string {
    return this.driver.path;
  }
  /** the image the job writes (a point-in-time NBD export reads the fleecing image through it) */
  get image(): BlockDriver {
    return this.driver;
  }
  get virtualSize(): number {
    return this.driver.virtualSize;
  }
  get clusterSize(): number | undefined {
    return this.driver.clusterSize;
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.driver.write(offset, data);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.driver.writeZeroes(offset, length);
  }
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    if (!canCompress(this.driver)) throw new Error(`Compression is not supported for this drive ${this.name}`);
    return this.driver.writeCompressed(offset, data);
  }
  flush(): Promise<void> {
    return this.driver.flush();
  }
  release(): Promise<void> {
    return this.driver.close();
  }
}

/** blockdev-backup into an attached drive: writes go through the drive, so its own bitmaps see them. */
export class DriveTarget implements BackupTarget {
  readonly supportsCompression: boolean;
  constructor(readonly drive: Drive) {
    this.supportsCompression = canCompress(drive.driver);
  }
  get name(): string {
    return this.drive.id;
  }
  get virtualSize(): number {
    return this.drive.virtualSize;
  }
  get clusterSize(): number | undefined {
    return this.drive.driver.clusterSize;
  }
  get hasBacking(): boolean {
    return true; // unknown contents: always write zeroes explicitly
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.drive.write(offset, data);
  }
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.drive.writeZeroes(offset, length);
  }
  writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const d = this.drive.driver;
    if (!canCompress(d)) throw new Error(`Compression is not supported for this drive ${this.name}`);
    return d.writeCompressed(offset, data);
  }
  flush(): Promise<void> {
    return this.drive.flush();
  }
  async release(): Promise<void> {
    await this.drive.flush();
  }
  async recover(): Promise<void> {
    // writes go through the drive's own driver, which the drive owner manages
  }
}
