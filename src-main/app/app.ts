import { mkdirSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { BlockEngine } from '../engine/engine.js';
import { Catalog } from './catalog/catalog.js';
import { InstanceLock } from './instance-lock.js';
import { EventBus, Router } from './router/router.js';
import { DrivesService } from './services/drives.js';
import { BitmapsService } from './services/bitmaps.js';
import { BackupService } from './services/backups.js';
import { JobsService } from './services/jobs.js';
import { importChains } from './services/chain-import.js';
import { RestoreService } from './services/restore.js';
import { ChainsRepo } from './catalog/chains-repo.js';
import { GroupsRepo } from './catalog/groups-repo.js';
import { JobsRepo } from './catalog/jobs-repo.js';
import { TidemarkError } from '../../src-shared/errors.js';
import { NbdServer } from '../engine/protocols/nbd/server.js';
import { PskServerCredentials, resolvePskKeysPath } from '../engine/protocols/nbd/tls-psk.js';
import { errorText } from '../engine/protocols/nbd/errors.js';
import { runTransaction, type TransactionAction } from '../engine/jobs/transaction.js';
import type { RequestParams } from '../../src-shared/api/contract.js';
import { APP_VERSION } from './version.js';

type AppAction = RequestParams<'jobs.transaction'>['actions'][number];

/** App transaction actions (by drive id) → the engine's (QMP's) actions. */
function toEngineAction(a: AppAction): TransactionAction {
  switch (a.type) {
    case 'bitmap-add':
      return { type: 'block-dirty-bitmap-add', node: a.driveId, name: a.name, options: { granularity: a.granularity, persistent: a.persistent, disabled: a.disabled } };
    case 'bitmap-merge':
      return { type: 'block-dirty-bitmap-merge', node: a.driveId, target: a.target, sources: a.sources };
    case 'backup':
      return {
        type: 'drive-backup',
        params: {
          device: a.driveId,
          sync: a.sync,
          bitmap: a.bitmap,
          bitmapMode: a.bitmapMode,
          speed: a.speed,
          target: { kind: 'file', path: a.target, format: a.format, mode: a.mode ?? 'absolute-paths' },
        },
      };
    default:
      return { type: `block-dirty-${a.type}` as 'block-dirty-bitmap-clear', node: a.driveId, name: a.name };
  }
}

export interface AppOptions {
  dataDir: string;
  host: 'electron' | 'web';
  ioWorkers?: number;
  log?: (message: string) => void;
  /** export every drive over NBD on this unix socket (owner-only), for VMs and tools */
  nbdSocket?: string;
  /**
   * also export them on TCP (loopback only; port 0 picks one). Any local user can reach a TCP
   * port, so `tlsPskKeys` (a keys file, or a directory holding keys.psk) makes clients prove a
   * pre-shared key first. Off unless given.
   */
  nbdTcp?: { host: string; port: number; tlsPskKeys?: string };
}

/**
 * The app's NBD server, exporting every drive: on the unix socket and/or the TCP port asked for.
 * Either listener failing is logged and the app goes on without it (e.g. a socket path beyond the
 * 107-byte limit); undefined when neither could listen.
 */
async function startNbd(engine: BlockEngine, options: AppOptions): Promise<NbdServer | undefined> {
  const nbd = new NbdServer(engine, { log: options.log });
  const log = options.log ?? (() => {});
  if (options.nbdSocket) {
    await nbd.listenUnix(options.nbdSocket).catch((err: unknown) => log(`NBD export socket '${options.nbdSocket}' unavailable: ${errorText(err)}`));
  }
  const tcp = options.nbdTcp;
  if (tcp) {
    try {
      let tls: PskServerCredentials | undefined;
      if (tcp.tlsPskKeys) {
        tls = new PskServerCredentials(await resolvePskKeysPath(tcp.tlsPskKeys));
        // a key file that cannot be used is said at start, not at the first client
        await tls.load();
      }
      await nbd.listenTcp(tcp.port, tcp.host, { tls });
    } catch (err) {
      log(`NBD TCP listener on ${tcp.host}:${tcp.port} unavailable: ${errorText(err)}`);
    }
  }
  if (nbd.listenerInfo().length > 0) return nbd;
  await nbd.close().catch(() => {});
  return undefined;
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
  readonly jobs: JobsService;
  readonly backups: BackupService;
  readonly groups: GroupsRepo;
  readonly restore: RestoreService;
  nbd: NbdServer | undefined;
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
    const chains = new ChainsRepo(this.catalog.db);
    this.groups = new GroupsRepo(this.catalog.db);
    this.jobs = new JobsService(this.engine, new JobsRepo(this.catalog.db), this.bus, options.log);
    this.backups = new BackupService(this.engine, this.catalog, chains, this.groups, this.bitmaps, this.jobs, this.bus);
    this.restore = new RestoreService(this.engine, chains, this.backups, this.drives, this.jobs, this.bus);
    this.router = new Router(
      {
        'app.info': async () => {
          const listeners = this.nbd?.listenerInfo() ?? [];
          return {
            version: APP_VERSION,
            host: options.host,
            dataDir: options.dataDir,
            engine: { ioWorkers: this.engine.pool.size },
            nbdSocket: listeners.find((l) => l.address.startsWith('unix:'))?.address.slice(5) ?? null,
            nbdTcp: listeners.find((l) => !l.address.startsWith('unix:')) ?? null,
          };
        },
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
        'backups.list': async (p) => this.backups.list(p.driveId),
        'backups.getSettings': async (p) => this.backups.settings(p.driveId),
        'backups.setSettings': async (p) => {
          const settings = this.backups.setSettings(p.driveId, p);
          this.bus.emit('backups.changed', { driveId: p.driveId });
          return settings;
        },
        'backups.run': (p) => this.backups.run(p),
        'backups.verify': (p) => this.backups.verify(p.chainId),
        'backups.deleteChain': async (p) => {
          await this.backups.deleteChain(p.chainId);
          return {};
        },
        'backups.import': async (p) => {
          const ids = await importChains(this.engine, this.catalog, chains, p.folder, p.driveId);
          for (const id of ids) this.bus.emit('backups.changed', { driveId: chains.chain(id)!.driveId });
          return this.backups.list().filter((c) => ids.includes(c.chainId));
        },
        'groups.list': async () => this.groups.list(),
        'groups.set': async (p) => {
          const known = new Set(this.catalog.listDrives().map((d) => d.id));
          const unknown = p.drives.filter((d) => !known.has(d));
          if (unknown.length) throw new TidemarkError('NOT_FOUND', `No drive ${unknown.map((d) => `'${d}'`).join(', ')} in the catalog.`);
          this.catalog.transaction(() => this.groups.set(p.name, [...new Set(p.drives)], new Date().toISOString()));
          this.bus.emit('groups.changed', { groups: this.groups.list() });
          return { name: p.name, drives: this.groups.members(p.name) };
        },
        'groups.remove': async (p) => {
          if (!this.catalog.transaction(() => this.groups.remove(p.name))) throw new TidemarkError('NOT_FOUND', `No machine group '${p.name}'.`);
          this.bus.emit('groups.changed', { groups: this.groups.list() });
          return {};
        },
        'jobs.list': async () => this.jobs.list(),
        'jobs.history': async (p) => this.jobs.history(p.limit),
        'jobs.pause': async (p) => (this.jobs.pause(p.id), {}),
        'jobs.resume': async (p) => (this.jobs.resume(p.id), {}),
        'jobs.cancel': async (p) => (await this.jobs.cancel(p.id), {}),
        'restore.preflight': (p) => this.restore.preflight(p.driveId, p.n, p.target),
        'restore.start': (p) => this.restore.start(p.driveId, p.n, p.target, p.confirm, p.speed),
        'restore.report': async (p) => this.restore.report(p.jobId),
        'jobs.transaction': async (p) => {
          const jobs = await runTransaction(this.engine, p.actions.map(toEngineAction), p.completionMode ?? 'individual');
          for (const j of jobs) this.jobs.track(j, { driveId: j.source.id, label: 'backup', kind: 'backup' });
          return { jobs: jobs.map((j) => j.id) };
        },
        'jobs.setSpeed': async (p) => (this.jobs.setSpeed(p.id, p.speed), {}),
      },
      options.log,
    );
  }

  static async start(options: AppOptions): Promise<TidemarkApp> {
    const app = new TidemarkApp(options);
    // a previous run that died mid-job: its attempts failed, their partial files go
    const recovered = (await app.backups.recover()) + (await app.jobs.recover());
    if (recovered) options.log?.(`Recovered from an unclean stop: ${recovered} interrupted job(s) marked failed.`);
    await app.drives.openAll();
    if (options.nbdSocket || options.nbdTcp) app.nbd = await startNbd(app.engine, options);
    return app;
  }

  /** Flushes and closes every image, the catalog, and releases the data-dir lock. Idempotent. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      try {
        await this.nbd?.close();
        await this.engine.close();
      } finally {
        this.catalog.close();
        this.lock.release();
      }
    })();
    return this.closed;
  }
}
