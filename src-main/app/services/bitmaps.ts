import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { BlockEngine } from '../../engine/engine.js';
import type { Drive } from '../../engine/drive.js';
import { bitmapBytes, type DirtyBitmap } from '../../engine/bitmap/dirty-bitmap.js';
import { BitmapError } from '../../engine/bitmap/node-bitmaps.js';
import type { EventBus } from '../router/router.js';
import type { BitmapSummary } from '../../../src-shared/api/domain.js';
import type { RequestParams } from '../../../src-shared/api/contract.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { SidecarBitmapStore } from './sidecar-store.js';

/** Buckets in the dirty-map strip: enough to see where the data is, small enough to send often. */
export const MAP_BUCKETS = 256;
/** At most this many bitmaps.changed events per drive per second while writes stream in. */
const EVENTS_PER_SECOND = 4;

export function summarize(driveId: string, b: DirtyBitmap): BitmapSummary {
  const info = b.info();
  return {
    driveId,
    name: info.name,
    granularity: b.granularity,
    count: info.count,
    size: b.size,
    recording: info.recording,
    busy: info.busy,
    persistent: b.persistent,
    inconsistent: b.inconsistent,
    sidecar: b.sidecar,
    memoryBytes: bitmapBytes(b.size, b.granularity),
    map: b.inconsistent ? new Array<number>(MAP_BUCKETS).fill(0) : b.downsample(MAP_BUCKETS),
  };
}

/**
 * Bitmaps for the UI: the engine's commands (QEMU's rules) plus Tidemark's sidecar persistence
 * for raw drives, and live `bitmaps.changed` events, throttled, while the drive is written.
 */
export class BitmapsService {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly lastSent = new Map<string, number>();
  private readonly sidecars = new Map<string, SidecarBitmapStore>();

  constructor(
    private readonly engine: BlockEngine,
    private readonly bus: EventBus,
    private readonly dataDir: string,
  ) {
    engine.on('write', (d) => this.changed(d.id));
    // jobs freeze and release bitmaps (busy): tell the UI when a job changes state
    engine.jobs.on('event', (name) => {
      if (name !== 'JOB_STATUS_CHANGE') return;
      for (const d of engine.list()) this.changed(d.id);
    });
  }

  /** Where a raw drive's sidecar bitmaps live: one file per image, named by its path. */
  sidecarFile(drive: Drive): string {
    const key = createHash('sha256').update(drive.driver.path).digest('hex').slice(0, 32);
    return join(this.dataDir, 'bitmaps', `${key}.bitmaps`);
  }

  /** Loads a raw drive's sidecar bitmaps when it is attached. */
  async attachSidecar(drive: Drive): Promise<void> {
    if (drive.driver.format !== 'raw') return;
    const store = new SidecarBitmapStore(this.sidecarFile(drive), drive.driver.readOnly, () => drive.bitmaps.all());
    this.sidecars.set(drive.id, store);
    for (const b of await store.load(drive.virtualSize)) drive.bitmaps.insert(b);
  }

  /** Saves a raw drive's sidecar bitmaps cleanly (before the drive closes). */
  async detachSidecar(drive: Drive): Promise<void> {
    const store = this.sidecars.get(drive.id);
    this.sidecars.delete(drive.id);
    await store?.store(drive.bitmaps.all());
  }

  list(driveId?: string): BitmapSummary[] {
    const drives = driveId ? [this.drive(driveId)] : this.engine.list();
    return drives.flatMap((d) => d.bitmaps.named().map((b) => summarize(d.id, b)));
  }

  async add(p: RequestParams<'bitmaps.add'>): Promise<BitmapSummary> {
    const drive = this.drive(p.driveId);
    if (p.sidecar) {
      const store = this.sidecars.get(drive.id);
      if (!store) throw new BitmapError(`Sidecar bitmaps are for raw drives; '${drive.id}' is ${drive.driver.format}: make the bitmap persistent instead, it is stored in the image.`);
      if (p.persistent) throw new BitmapError('A bitmap is either persistent (qcow2) or kept in a sidecar (raw), not both.');
      store.checkCanStore(p.name, p.granularity ?? 65536, drive.bitmaps.all());
    }
    const b = this.engine.bitmapCommands.add(drive.id, p.name, { granularity: p.granularity, persistent: p.persistent, disabled: p.disabled });
    if (p.sidecar) {
      b.sidecar = true;
      try {
        await this.sidecars.get(drive.id)!.markInUse();
      } catch (err) {
        drive.bitmaps.release(b);
        throw err;
      }
    }
    this.changed(drive.id, true);
    return summarize(drive.id, b);
  }

  async remove(p: RequestParams<'bitmaps.remove'>): Promise<void> {
    const drive = this.drive(p.driveId);
    const b = this.engine.bitmapCommands.find(drive.id, p.name).bitmap;
    await this.engine.bitmapCommands.remove(drive.id, p.name);
    if (b.sidecar) await this.sidecars.get(drive.id)?.remove(p.name);
    this.changed(drive.id, true);
  }

  clear(p: RequestParams<'bitmaps.clear'>): BitmapSummary {
    this.engine.bitmapCommands.clear(p.driveId, p.name);
    return this.after(p.driveId, p.name);
  }

  enable(p: RequestParams<'bitmaps.enable'>): BitmapSummary {
    this.engine.bitmapCommands.enable(p.driveId, p.name);
    return this.after(p.driveId, p.name);
  }

  disable(p: RequestParams<'bitmaps.disable'>): BitmapSummary {
    this.engine.bitmapCommands.disable(p.driveId, p.name);
    return this.after(p.driveId, p.name);
  }

  merge(p: RequestParams<'bitmaps.merge'>): BitmapSummary {
    this.engine.bitmapCommands.merge(p.driveId, p.target, p.sources);
    return this.after(p.driveId, p.target);
  }

  private after(driveId: string, name: string): BitmapSummary {
    this.changed(driveId, true);
    return summarize(driveId, this.engine.bitmapCommands.find(driveId, name).bitmap);
  }

  private drive(id: string): Drive {
    const d = this.engine.get(id);
    if (!d) throw new TidemarkError('NOT_FOUND', `No drive with id '${id}'.`);
    return d;
  }

  /** Sends the drive's bitmaps now (after a command) or at the next slot (during a stream of writes). */
  private changed(driveId: string, now = false): void {
    const send = () => {
      this.pending.delete(driveId);
      this.lastSent.set(driveId, Date.now());
      const drive = this.engine.get(driveId);
      if (drive) this.bus.emit('bitmaps.changed', { driveId, bitmaps: drive.bitmaps.named().map((b) => summarize(driveId, b)) });
    };
    if (now) {
      clearTimeout(this.pending.get(driveId));
      send();
      return;
    }
    if (this.pending.has(driveId)) return;
    const wait = Math.max(0, (this.lastSent.get(driveId) ?? 0) + 1000 / EVENTS_PER_SECOND - Date.now());
    const timer = setTimeout(send, wait);
    timer.unref();
    this.pending.set(driveId, timer);
  }
}
