import { createHash } from 'node:crypto';
import { rename, unlink, open as openFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Drive } from '../drive.js';
import type { BlockDriver, ImageFormat } from '../formats/types.js';
import { createImage, openImage } from '../formats/open.js';
import type { FileOpener } from '../io/file-handle.js';
import { Job, JobIoError, type JobEventSink } from './job.js';

/** A restore writes its file under this suffix and renames it into place only once verified. */
export const PARTIAL_SUFFIX = '.tidemark-partial';
const CHUNK = 1 << 20;
const PARALLEL = 4;

export interface RestoreJobConfig {
  id: string;
  /** the point to restore: its qcow2 file (the backing chain below it comes along) */
  pointFile: string;
  /** where the restored image goes (a new file), unless `inPlace` */
  targetPath: string;
  format: ImageFormat;
  compress: boolean;
  /** restore over this drive: the verified image is written into it through the engine */
  inPlace?: Drive;
  opener: FileOpener;
  speed?: number;
  /** sha256 of a whole file on an I/O worker (for raw targets, whose file is their guest view) */
  hashFile?: (path: string) => Promise<string>;
}

interface Piece {
  offset: number;
  length: number;
  zero: boolean;
}

export interface RestoreReport {
  target: string;
  format: ImageFormat;
  virtualSize: number;
  dataBytes: number;
  /** sha256 of the guest-visible contents, the same on both sides when verified */
  sourceHash: string;
  restoredHash: string;
  verified: boolean;
  /** in place: bytes of the drive that differed and were rewritten */
  changedBytes?: number;
}

/**
 * Flattens a backup chain up to one point into a standalone image — raw or qcow2, sparse (zero
 * and unallocated areas are not written), copied in parallel on the I/O pool — then verifies it
 * by hashing the guest-visible contents of both sides. The file appears under its name only
 * after verification; a cancelled or failed restore removes its partial file. In place, the
 * verified image is applied to the drive through the engine (only what differs is written), so
 * every recording bitmap sees the restored regions.
 */
export class RestoreJob extends Job {
  readonly type = 'restore' as const;
  report: RestoreReport | undefined;
  private source: BlockDriver | undefined;
  private target: BlockDriver | undefined;
  private readonly partial: string;

  constructor(
    private readonly config: RestoreJobConfig,
    emit: JobEventSink,
    onNull: (job: Job) => void,
  ) {
    super({ id: config.id, autoFinalize: true, autoDismiss: true, speed: config.speed ?? 0 }, emit, onNull);
    this.partial = `${config.targetPath}${PARTIAL_SUFFIX}`;
  }

  override usesDrive(drive: Drive): boolean {
    return drive === this.config.inPlace;
  }

  protected async run(): Promise<void> {
    const c = this.config;
    this.source = await openImage(c.pointFile, { readOnly: true, format: 'qcow2', opener: c.opener });
    const size = this.source.virtualSize;
    if (c.inPlace && c.inPlace.virtualSize !== size) throw new Error(`The drive is ${c.inPlace.virtualSize} bytes and the backup ${size}: an in-place restore needs the same size.`);
    const extents = (await this.source.blockStatus(0, size)).filter((e) => !e.zero);
    const dataBytes = extents.reduce((n, e) => n + e.length, 0);
    // progress: copy the data, hash both sides to verify, and (in place) compare the whole drive
    this.total = dataBytes + size + (c.inPlace ? size : 0);
    await unlink(this.partial).catch(() => {});
    await createImage(this.partial, { format: c.format, virtualSize: size, opener: c.opener });
    this.target = await openImage(this.partial, { readOnly: false, format: c.format, opener: c.opener });
    await this.copy(extents);
    await this.target.flush();
    await this.target.close();
    this.target = await openImage(this.partial, { readOnly: true, format: c.format, opener: c.opener });
    const [sourceHash, restoredHash] = await this.hashBoth(size);
    if (sourceHash !== restoredHash) throw new Error('Verification failed: the restored image does not read the same as the backup.');
    await this.target.close();
    this.target = undefined;
    const report: RestoreReport = { target: c.inPlace ? c.inPlace.driver.path : c.targetPath, format: c.format, virtualSize: size, dataBytes, sourceHash, restoredHash, verified: true };
    // the last moment a cancel can still take effect: after this the result is in place
    await this.pausePoint();
    if (c.inPlace) {
      report.changedBytes = await this.apply(c.inPlace);
      await unlink(this.partial);
    } else {
      await durableRename(this.partial, c.targetPath);
    }
    this.report = report;
  }

  /** Data extents in parallel chunks; zero areas are never written (the new image reads zeros there). */
  private async copy(extents: { offset: number; length: number }[]): Promise<void> {
    const chunks: { offset: number; length: number }[] = [];
    for (const e of extents) for (let at = e.offset; at < e.offset + e.length; at += CHUNK) chunks.push({ offset: at, length: Math.min(CHUNK, e.offset + e.length - at) });
    let next = 0;
    const compress = this.config.compress && this.config.format === 'qcow2';
    const worker = async () => {
      while (next < chunks.length) {
        await this.pausePoint();
        // another worker may have taken the last chunk while we waited
        if (next >= chunks.length) return;
        const { offset, length } = chunks[next++];
        let data: Uint8Array;
        try {
          data = await this.source!.read(offset, length);
        } catch (err) {
          throw new JobIoError('read', err);
        }
        try {
          if (compress) await this.writeCompressed(offset, data);
          else await this.target!.write(offset, data);
        } catch (err) {
          throw new JobIoError('write', err);
        }
        this.current += length;
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
  }

  private async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    const t = this.target as BlockDriver & { writeCompressed?: (o: number, d: Uint8Array) => Promise<void> };
    const cs = t.clusterSize ?? 65536;
    // compressed clusters are whole clusters: partial ones at the edges of an extent go uncompressed
    for (let at = 0; at < data.length; ) {
      const abs = offset + at;
      const clusterEnd = Math.min(data.length, at + (cs - (abs % cs)));
      const piece = data.subarray(at, clusterEnd);
      const whole = abs % cs === 0 && (piece.length === cs || abs + piece.length === t.virtualSize);
      if (whole && t.writeCompressed) await t.writeCompressed(abs, piece);
      else await t.write(abs, piece);
      at = clusterEnd;
    }
  }

  /**
   * sha256 of the guest-visible bytes of the backup and of the restored image, read
   * independently and concurrently. A raw image's guest view is its file, hashed on an I/O
   * worker; otherwise both sides stream through here, a few chunks read ahead.
   */
  private async hashBoth(size: number): Promise<[string, string]> {
    // the backup side is read extent by extent: zero areas are never read through the chain
    const source = this.hashImage(this.source!, size);
    // each side's zero areas come from its own metadata: an independent reading, not a copy of the other's
    const restored = this.config.format === 'raw' && this.config.hashFile ? this.config.hashFile(this.partial) : this.hashImage(this.target!, size);
    return Promise.all([source, restored]);
  }

  private async hashImage(image: BlockDriver, size: number): Promise<string> {
    const pieces: Piece[] = [];
    for (const e of await image.blockStatus(0, size)) {
      for (let at = e.offset; at < e.offset + e.length; at += CHUNK) pieces.push({ offset: at, length: Math.min(CHUNK, e.offset + e.length - at), zero: e.zero });
    }
    return this.hashPieces(pieces, (p) => (p.zero ? Promise.resolve(undefined) : image.read(p.offset, p.length)));
  }

  /** Hashes the pieces in order, keeping a few reads in flight; `undefined` data means zeros. */
  private async hashPieces(pieces: Piece[], read: (p: Piece) => Promise<Uint8Array | undefined>): Promise<string> {
    const hash = createHash('sha256');
    const zeros = new Uint8Array(CHUNK);
    const ahead: Promise<Uint8Array | undefined>[] = [];
    let next = 0;
    const fill = () => {
      while (ahead.length < PARALLEL * 2 && next < pieces.length) ahead.push(read(pieces[next++]));
    };
    fill();
    let sinceYield = 0;
    for (const p of pieces) {
      await this.pausePoint();
      const data = await ahead.shift()!;
      fill();
      hash.update(data ?? zeros.subarray(0, p.length));
      this.current += p.length / 2;
      // zero pieces resolve at once: give the event loop (requests, progress, cancel) a turn now and then
      if ((sinceYield += p.length) >= 16 * CHUNK) {
        sinceYield = 0;
        await new Promise((r) => setImmediate(r));
      }
    }
    return hash.digest('hex');
  }

  /** Writes into the drive only what differs from the verified image; returns the bytes rewritten. */
  private async apply(drive: Drive): Promise<number> {
    const restored = await openImage(this.partial, { readOnly: true, format: this.config.format, opener: this.config.opener });
    let changed = 0;
    try {
      const cs = 65536;
      for (let at = 0; at < drive.virtualSize; at += CHUNK) {
        await this.pausePoint();
        const n = Math.min(CHUNK, drive.virtualSize - at);
        const [want, have] = await Promise.all([restored.read(at, n), drive.read(at, n)]);
        for (let o = 0; o < n; o += cs) {
          const len = Math.min(cs, n - o);
          const w = want.subarray(o, o + len);
          if (Buffer.compare(w, have.subarray(o, o + len)) === 0) continue;
          if (w.every((v) => v === 0)) await drive.writeZeroes(at + o, len);
          else await drive.write(at + o, w);
          changed += len;
        }
        this.current += n;
      }
      await drive.flush();
    } finally {
      await restored.close();
    }
    return changed;
  }

  protected commit(): void {}

  protected abort(): void {}

  protected async clean(): Promise<void> {
    await this.target?.close().catch(() => {});
    await this.source?.close().catch(() => {});
    // a failed or cancelled restore leaves nothing behind
    if (!this.report) await unlink(this.partial).catch(() => {});
  }
}

async function durableRename(from: string, to: string): Promise<void> {
  const fh = await openFile(from, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(from, to);
  const dir = await openFile(dirname(to), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}
