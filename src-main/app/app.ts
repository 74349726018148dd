import { mkdirSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { BlockEngine } from '../engine/engine.js';
import { Catalog } from './catalog/catalog.js';
import { InstanceLock } from './instance-lock.js';
import { EventBus, Router } from './router/router.js';
import { DrivesService } from './services/drives.js';
import { BitmapsService } from './services/bitmaps.js';
import { APP_VERSION } from './version.js';

export interface AppOptions {
  dataDir: string;
  host: 'electron' | 'web';
  ioWorkers?: number;
  log?: (message: string) => void;
}

/**
 * The application: engine + catalog + services behind one router. Every host (Electron,
 * web console, CLI) builds exactly this and differs only in transport.
 */
export class TidemarkApp {
  readonly engine: BlockEngine;
  readonly catalog: Catalog;
  readonly bus = new EventBus();
  readonly drives: DrivesService;
  readonly bitmaps: BitmapsService;
  readonly router: Router;
  readonly lock: InstanceLock;
  private closed: Promise<void> | undefined;

  private constructor(readonly options: AppOptions) {
    mkdirSync(options.dataDir, { recursive: true, mode: 0o700 });
    this.lock = InstanceLock.acquire(options.dataDir);
    try {
      this.catalog = new Catalog(join(options.dataDir, 'catalog.sqlite'));
      chmodSync(join(options.dataDir, 'catalog.sqlite'), 0o600);
    } catch (err) {
      this.lock.release();
      throw err;
    }
    this.engine = new BlockEngine({ ioWorkers: options.ioWorkers });
    this.drives = new DrivesService(this.engine, this.catalog, this.bus);
    this.bitmaps = new BitmapsService(this.engine, this.bus, options.dataDir);
    this.engine.onAttach((d) => this.bitmaps.attachSidecar(d));
    this.engine.onDetach((d) => this.bitmaps.detachSidecar(d));
    this.router = new Router(
      {
        'app.info': async () => ({
          version: APP_VERSION,
          host: options.host,
          dataDir: options.dataDir,
          engine: { ioWorkers: this.engine.pool.size },
        }),
        'drives.list': () => this.drives.list(),
        'drives.create': (p) => this.drives.create(p),
        'drives.add': (p) => this.drives.add(p),
        'drives.remove': async (p) => {
          await this.drives.remove(p.id);
          return {};
        },
        'bitmaps.list': async (p) => this.bitmaps.list(p.driveId),
        'bitmaps.add': (p) => this.bitmaps.add(p),
        'bitmaps.remove': async (p) => {
          await this.bitmaps.remove(p);
          return {};
        },
        'bitmaps.clear': async (p) => this.bitmaps.clear(p),
        'bitmaps.enable': async (p) => this.bitmaps.enable(p),
        'bitmaps.disable': async (p) => this.bitmaps.disable(p),
        'bitmaps.merge': async (p) => this.bitmaps.merge(p),
      },
      options.log,
    );
  }

  static async start(options: AppOptions): Promise<TidemarkApp> {
    const app = new TidemarkApp(options);
    await app.drives.openAll();
    return app;
  }

  /** Flushes and closes every image, the catalog, and releases the data-dir lock. Idempotent. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      try {
        await this.engine.close();
      } finally {
        this.catalog.close();
        this.lock.release();
      }
    })();
    return this.closed;
  }
}
