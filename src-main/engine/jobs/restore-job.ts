import { rename, unlink, open as openFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Drive } from '../drive.js';
import type { BlockDriver, ImageFormat } from '../formats/types.js';
import { createImage, openImage } from '../formats/open.js';
import type { FileOpener } from '../io/file-handle.js';
import { readLent } from '../formats/lend.js';
import { hostDataRanges, rangesWithin, type DataRange } from '../io/host-extents.js';
import { Job, JobIoError, type JobEventSink } from './job.js';
import { RateLimit } from './rate-limit.js';
import { WINDOW, chainLayers, digestHere, diskDigest, forEachParallel, planWindows, readWindow, zeroWindowDigest, type Digest, type WindowPlan, type WindowRead } from './flatten.js';

/** A restore writes its file under this suffix and renames it into place only once verified. */
export const PARTIAL_SUFFIX = '.tidemark-partial';
const CHUNK = 1 << 20;
/** windows in flight (copy and verify): enough to keep both the reads and the writes busy */
const PARALLEL = 8;

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
  /** content digests of lent bytes on an I/O worker (IoPool.contentDigest); on this thread without it */
  digest?: Digest;
}

export interface RestoreReport {
  target: string;
  format: ImageFormat;
  virtualSize: number;
  dataBytes: number;
  /**
   * Digest of the guest-visible contents, the same on both sides when verified: sha256 over the
   * disk's size and the content digest of each 1 MiB of it in order (see flatten.ts diskDigest
   * and io/content-digest.ts). The backup's is taken over the bytes as they were copied, the
   * restored image's from reading it back.
   */
  sourceHash: string;
  restoredHash: string;
  verified: boolean;
  /** how long copying (up to a flushed image) and verifying took */
  copyMs: number;
  verifyMs: number;
  /** in place: bytes of the drive that differed and were rewritten */
  changedBytes?: number;
}

/**
 * Flattens a backup chain up to one point into a standalone image — raw or qcow2, sparse (zero
 * and unallocated areas are not written), copied window by window in parallel, each window's
 * data read from the chain layer that holds it — then verifies it: every window of the restored
 * image, read back, must hash the same as the bytes copied into it. The file appears under its name only
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
  private readonly digest: Digest;
  private readonly timings = { copyMs: 0, verifyMs: 0 };
  private readonly limit = new RateLimit();

  constructor(
    private readonly config: RestoreJobConfig,
    emit: JobEventSink,
    onNull: (job: Job) => void,
  ) {
    super({ id: config.id, autoFinalize: true, autoDismiss: true, speed: config.speed ?? 0 }, emit, onNull);
    this.partial = `${config.targetPath}${PARTIAL_SUFFIX}`;
    this.digest = config.digest ?? digestHere;
  }

  override usesDrive(drive: Drive): boolean {
    return drive === this.config.inPlace;
  }

  protected async run(): Promise<void> {
    const c = this.config;
    this.source = await openImage(c.pointFile, { readOnly: true, format: 'qcow2', opener: c.opener });
    const size = this.source.virtualSize;
    if (c.inPlace && c.inPlace.virtualSize !== size) throw new Error(`The drive is ${c.inPlace.virtualSize} bytes and the backup ${size}: an in-place restore needs the same size.`);
    const windows = planWindows(await this.source.blockStatus(0, size), size);
    const dataBytes = windows.reduce((n, w) => n + w.data.reduce((m, p) => m + p.length, 0), 0);
    // progress: copy the data, read the restored image back, and (in place) compare the whole drive
    this.total = dataBytes + size + (c.inPlace ? size : 0);
    await unlink(this.partial).catch(() => {});
    await createImage(this.partial, { format: c.format, virtualSize: size, opener: c.opener });
    this.target = await openImage(this.partial, { readOnly: false, format: c.format, opener: c.opener });
    const copyStart = performance.now();
    const sourceDigests = await this.copy(windows);
    await this.target.flush();
    await this.target.close();
    this.timings.copyMs = performance.now() - copyStart;
    const verifyStart = performance.now();
    this.target = await openImage(this.partial, { readOnly: true, format: c.format, opener: c.opener });
    const restoredDigests = await this.digestImage(this.target, windows);
    this.timings.verifyMs = performance.now() - verifyStart;
    const bad = restoredDigests.findIndex((d, i) => d !== sourceDigests[i]);
    if (bad >= 0) {
      const w = windows[bad];
      throw new Error(`Verification failed: the restored image does not read the same as the backup (first difference in the ${formatWindow(w)}).`);
    }
    await this.target.close();
    this.target = undefined;
    const report: RestoreReport = {
      target: c.inPlace ? c.inPlace.driver.path : c.targetPath,
      format: c.format,
      virtualSize: size,
      dataBytes,
      sourceHash: diskDigest(size, sourceDigests),
      restoredHash: diskDigest(size, restoredDigests),
      verified: true,
      copyMs: this.timings.copyMs,
      verifyMs: this.timings.verifyMs,
    };
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

  /**
   * Copies every window's data, several windows in flight, straight from the chain layer that
   * holds it; zero areas are never written (the new image reads zeros there). Returns each
   * window's digest, taken over the very bytes written (on an I/O worker, beside the writes).
   */
  private async copy(windows: WindowPlan[]): Promise<string[]> {
    const layers = chainLayers(this.source!);
    const digests: string[] = new Array<string>(windows.length);
    const compress = this.config.compress && this.config.format === 'qcow2';
    await forEachParallel(windows.length, PARALLEL, async (i) => {
      const w = windows[i];
      if (w.data.length === 0) {
        digests[i] = zeroWindowDigest(w);
        return;
      }
      await this.pausePoint();
      await this.throttle(w.data.reduce((n, p) => n + p.length, 0));
      let read: WindowRead;
      try {
        read = await readWindow(layers, w);
      } catch (err) {
        throw new JobIoError('read', err);
      }
      try {
        const digest = this.digest(w.offset, read.parts);
        // a window's pieces are written together: the format serializes only what must be
        // (cluster allocation), the data writes overlap
        const writes = await Promise.allSettled(
          read.pieces.map(async (p) => {
            if (compress) await this.writeCompressed(p.offset, p.bytes);
            else await this.target!.write(p.offset, p.bytes);
            this.current += p.bytes.length;
          }),
        );
        const failed = writes.find((r) => r.status === 'rejected');
        if (failed) {
          await digest.catch(() => undefined);
          throw new JobIoError('write', failed.reason);
        }
        digests[i] = await digest;
      } finally {
        read.release();
      }
    });
    return digests;
  }

  /**
   * The window digests of the restored image, from an independent reading of it: its own map of
   * where data is (zero windows cost nothing), its own reads. A raw image's file is its guest
   * view: it is digested where it is read (an I/O worker), and its holes are the file system's
   * to report (hostDataRanges, as SEEK_DATA tells qemu-img compare) — reading them would only
   * fill the page cache with zeros.
   */
  private async digestImage(image: BlockDriver, windows: WindowPlan[]): Promise<string[]> {
    const size = image.virtualSize;
    const digests: string[] = new Array<string>(windows.length);
    const fileDigest = image.format === 'raw' ? image.file.contentDigest?.bind(image.file) : undefined;
    // per window: the data ranges to read (undefined: all of it), or [] for nothing
    let dataOf: (w: WindowPlan) => DataRange[] | undefined;
    if (fileDigest) {
      const host = await hostDataRanges(image.path, size);
      dataOf = (w) => (host ? rangesWithin(host, w.offset, w.length) : undefined);
    } else {
      const data: DataRange[] = (await image.blockStatus(0, size)).filter((e) => !e.zero);
      dataOf = (w) => (rangesWithin(data, w.offset, w.length).length > 0 ? undefined : []);
    }
    await forEachParallel(windows.length, PARALLEL, async (i) => {
      const w = windows[i];
      await this.pausePoint();
      const ranges = dataOf(w);
      try {
        if (ranges?.length === 0) {
          digests[i] = zeroWindowDigest(w);
        } else {
          await this.throttle(ranges ? ranges.reduce((n, r) => n + r.length, 0) : w.length);
          if (fileDigest) {
            digests[i] = await fileDigest(w.offset, w.length, ranges);
          } else {
            const lent = await readLent(image, w.offset, w.length);
            try {
              digests[i] = await this.digest(w.offset, [{ bytes: lent.bytes, length: w.length }]);
            } finally {
              lent.release();
            }
          }
        }
      } catch (err) {
        throw new JobIoError('read', err);
      }
      this.current += w.length;
      // zero windows settle at once: give the event loop (requests, progress, cancel) a turn now and then
      if (i % 64 === 63) await new Promise((r) => setImmediate(r));
    });
    return digests;
  }

  /**
   * Rate limiting (the job's speed, set at start or later with set-speed), QEMU's way: `bytes`
   * go when the current slice has quota left, else after the wait their share needs. The bytes
   * are counted before the wait, so the lanes running in parallel queue up behind each other
   * instead of all waking into the same slice.
   */
  private async throttle(bytes: number): Promise<void> {
    this.limit.setSpeed(this.speed);
    const wait = this.limit.delay();
    this.limit.account(bytes);
    if (wait > 0) await this.sleep(wait);
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

  /** Writes into the drive only what differs from the verified image; returns the bytes rewritten. */
  private async apply(drive: Drive): Promise<number> {
    const restored = await openImage(this.partial, { readOnly: true, format: this.config.format, opener: this.config.opener });
    let changed = 0;
    try {
      const cs = 65536;
      for (let at = 0; at < drive.virtualSize; at += CHUNK) {
        await this.pausePoint();
        const n = Math.min(CHUNK, drive.virtualSize - at);
        await this.throttle(n);
        const [want, have] = await Promise.all([readLent(restored, at, n), drive.readLent(at, n)]);
        try {
          for (let o = 0; o < n; o += cs) {
            const len = Math.min(cs, n - o);
            const w = want.bytes.subarray(o, o + len);
            if (Buffer.compare(w, have.bytes.subarray(o, o + len)) === 0) continue;
            if (w.every((v) => v === 0)) await drive.writeZeroes(at + o, len);
            else await drive.write(at + o, w);
            changed += len;
          }
        } finally {
          // the writes from `want` have settled (each was awaited)
          want.release();
          have.release();
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

function formatWindow(w: WindowPlan): string {
  const mib = (n: number) => `${(n / WINDOW).toLocaleString('en-US', { maximumFractionDigits: 3 })} MiB`;
  return `range ${mib(w.offset)} – ${mib(w.offset + w.length)} of the disk`;
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
