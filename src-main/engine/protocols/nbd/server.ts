import { createServer, type Server, type Socket } from 'node:net';
import { chmod, unlink } from 'node:fs/promises';
import type { BlockEngine } from '../../engine.js';
import type { Drive } from '../../drive.js';
import type { DirtyBitmap } from '../../bitmap/dirty-bitmap.js';
import { CHECK_ALLOW_RO, checkBitmap } from '../../bitmap/node-bitmaps.js';
import { TidemarkError } from '../../../../src-shared/errors.js';
import { NBD_MAX_STRING_SIZE } from './constants.js';
import { DEFAULT_LIMITS, NbdClient, type ClientHost, type ClientLimits, type ClientStats } from './client.js';
import { DriveBackend, NbdExport, type ExportConfig } from './export.js';
import type { PskServerCredentials } from './tls-psk.js';

/** The only addresses the TCP listener binds: the exports must not be reachable from the network. */
export const LOOPBACK_HOSTS: readonly string[] = ['127.0.0.1', '::1', 'localhost'];

/** A bitmap to export: a name on the exported drive, or any drive's bitmap as {node, name}. */
export type ExportBitmapSpec = string | { node: string; name: string };

export interface AddExportOptions {
  /** the name clients connect to */
  name: string;
  /** drive id or node name */
  driveId: string;
  /** default false */
  writable?: boolean;
  bitmaps?: ExportBitmapSpec[];
  description?: string;
  /** offer the qemu:allocation-depth context */
  allocationDepth?: boolean;
  /** flush after every write */
  writethrough?: boolean;
  /** the block-export id (QMP); default the name */
  id?: string;
}

export interface NbdServerOptions {
  log?: (message: string) => void;
  /**
   * Export every attached drive (now and later) under its id, writable unless the drive is
   * read-only, without bitmaps; detached drives leave. Default true.
   */
  exportAllDrives?: boolean;
  /** connections beyond this many are refused (0: no limit, the default) */
  maxConnections?: number;
  limits?: Partial<ClientLimits>;
}

export interface ListenOptions {
  /** require TLS with these pre-shared keys on this listener (off by default) */
  tls?: PskServerCredentials;
}

/** An export was deleted (QMP's BLOCK_EXPORT_DELETED). */
export type ExportDeletedListener = (exp: NbdExport) => void;

// ---------------------------------------------------------------- per-engine registry

/** Every NBD server of an engine: a drive leaving takes its exports with them. */
const engines = new WeakMap<BlockEngine, Set<NbdServer>>();

function serversOf(engine: BlockEngine): Set<NbdServer> {
  let servers = engines.get(engine);
  if (!servers) {
    const all = new Set<NbdServer>();
    servers = all;
    engines.set(engine, all);
    // once per engine: a drive leaving takes its exports with it, before its image closes
    engine.onDetach(async (drive) => {
      for (const s of [...all]) await s.dropDrive(drive);
    });
  }
  return servers;
}

/**
 * Tidemark's NBD server: fixed-newstyle handshake, structured replies, metadata contexts
 * (`base:allocation`, `qemu:allocation-depth`, `qemu:dirty-bitmap:NAME`), many requests in flight
 * per connection, many connections. Exports are drives (writes go through the Drive, so they mark
 * dirty bitmaps and trigger copy-before-write) or other backends (point-in-time exports).
 *
 * Transport: unix sockets (created owner-only) and TCP on loopback only. Any listener can require
 * TLS with pre-shared keys (NBD_OPT_STARTTLS; see tls-psk.ts): then nothing but STARTTLS is served
 * until the client has proved it holds a key. Without TLS, anyone who can reach the listener can
 * read and write the exported disks: for a unix socket that is its owner; for a TCP port, every
 * local user, which is why TLS-PSK exists for it.
 */
export class NbdServer {
  private readonly listeners: { server: Server; path?: string; tls: boolean }[] = [];
  private readonly exportMap = new Map<string, NbdExport>();
  /** exports made by exportAllDrives, by drive */
  private readonly autoExports = new Map<Drive, NbdExport>();
  private readonly clients = new Set<NbdClient>();
  private readonly deletedListeners = new Set<ExportDeletedListener>();
  private readonly limits: ClientLimits;
  private closing: Promise<void> | undefined;
  private readonly host: ClientHost;

  constructor(
    readonly engine: BlockEngine,
    private readonly options: NbdServerOptions = {},
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...options.limits };
    const isClosing = () => this.closing !== undefined;
    this.host = {
      findExport: (name) => this.exportMap.get(name),
      listExports: () => [...this.exportMap.values()],
      get shuttingDown() {
        return isClosing();
      },
      log: (m) => this.log(m),
    };
    serversOf(engine).add(this);
    if (options.exportAllDrives ?? true) {
      for (const d of engine.list()) this.autoExport(d);
      engine.on('attached', this.onAttached);
    }
  }

  get running(): boolean {
    return this.closing === undefined;
  }

  /** Each listener's address (`unix:PATH`, `host:port`, `[v6]:port`) and whether it requires TLS. */
  listenerInfo(): { address: string; tls: boolean }[] {
    return this.listeners.map((l) => {
      if (l.path) return { address: `unix:${l.path}`, tls: l.tls };
      const a = l.server.address();
      if (!a || typeof a !== 'object') return { address: String(a), tls: l.tls };
      return { address: a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`, tls: l.tls };
    });
  }

  /** Listens on a unix socket that only the owner can open (it never exists with looser permissions). */
  async listenUnix(path: string, options: ListenOptions = {}): Promise<void> {
    this.checkOpen();
    await unlink(path).catch(() => {});
    const server = this.makeServer(options.tls);
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(old);
    }
    await chmod(path, 0o600);
    this.listeners.push({ server, path, tls: options.tls !== undefined });
  }

  /**
   * Listens on TCP, loopback only (127.0.0.1, ::1 or localhost), with TLS-PSK if `options.tls` is
   * given. Port 0 picks a free port. Resolves with the port.
   */
  async listenTcp(port = 10809, host = '127.0.0.1', options: ListenOptions = {}): Promise<number> {
    this.checkOpen();
    if (!LOOPBACK_HOSTS.includes(host)) {
      throw new TidemarkError('INVALID_INPUT', `The NBD server listens on loopback addresses only (127.0.0.1, ::1, localhost), not '${host}'.`);
    }
    const server = this.makeServer(options.tls);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.listeners.push({ server, tls: options.tls !== undefined });
    const a = server.address();
    return a && typeof a === 'object' ? a.port : port;
  }

  onExportDeleted(listener: ExportDeletedListener): () => void {
    this.deletedListeners.add(listener);
    return () => this.deletedListeners.delete(listener);
  }

  findExport(name: string): NbdExport | undefined {
    return this.exportMap.get(name);
  }

  findExportById(id: string): NbdExport | undefined {
    return [...this.exportMap.values()].find((e) => e.id === id);
  }

  listExports(): NbdExport[] {
    return [...this.exportMap.values()];
  }

  /** Number of connected clients (in handshake or transmission). */
  get clientCount(): number {
    return this.clients.size;
  }

  /** Each connection's phase, export and backlog. */
  connections(): ClientStats[] {
    return [...this.clients].map((c) => c.stats());
  }

  /**
   * Exports a drive, with QEMU's rules and messages (nbd_export_create): exported bitmaps must
   * exist, be usable (not busy, not inconsistent) and, on a read-only export of a writable drive,
   * be disabled; they are busy while exported.
   */
  addExport(o: AddExportOptions): NbdExport {
    this.checkOpen();
    const drive = this.engine.lookup(o.driveId);
    if (!drive) throw new TidemarkError('NOT_FOUND', `Cannot find device='${o.driveId}' nor node-name='${o.driveId}'`);
    const writable = o.writable ?? false;
    if (writable && drive.driver.readOnly) throw new TidemarkError('PERMISSION_DENIED', 'Cannot export read-only node as writable');
    this.checkNames(o.name, o.description);
    const bitmaps = this.resolveBitmaps(drive, o.bitmaps ?? [], !writable);
    return this.install({
      name: o.name,
      id: o.id,
      description: o.description,
      backend: new DriveBackend(drive),
      readOnly: !writable,
      bitmaps,
      allocationDepth: o.allocationDepth ?? false,
      writethrough: o.writethrough ?? false,
    });
  }

  /** Exports another backend (point-in-time exports use this). The bitmaps must already be checked. */
  addBackendExport(config: ExportConfig): NbdExport {
    this.checkOpen();
    this.checkNames(config.name, config.description);
    return this.install(config);
  }

  /**
   * Removes an export. 'hard' (the default) lets requests in flight finish, then disconnects its
   * clients; 'safe' refuses while clients are connected (QEMU's block-export-del modes).
   * Resolves once the export is gone and its bitmaps are free again.
   */
  async removeExport(name: string, mode: 'safe' | 'hard' = 'hard'): Promise<void> {
    const exp = this.exportMap.get(name);
    if (!exp) throw new TidemarkError('NOT_FOUND', `Export '${name}' is not found`);
    if (mode === 'safe' && exp.users.size > 0) throw new TidemarkError('BUSY', `export '${exp.id}' still in use`);
    await this.deleteExport(exp);
  }

  /** Every export of this drive goes (the drive is being detached). */
  async dropDrive(drive: Drive): Promise<void> {
    for (const exp of [...this.exportMap.values()]) {
      if (exp.backend.drive === drive) await this.deleteExport(exp);
    }
    this.autoExports.delete(drive);
  }

  /** Stops listening, removes every export (clients are answered what is in flight, then disconnected). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.engine.off('attached', this.onAttached);
      const stops = this.listeners.map(
        (l) =>
          new Promise<void>((resolve) => {
            l.server.close(() => resolve());
          }),
      );
      for (const exp of [...this.exportMap.values()]) await this.deleteExport(exp);
      for (const c of [...this.clients]) c.destroy();
      await Promise.all(stops);
      for (const l of this.listeners) if (l.path) await unlink(l.path).catch(() => {});
      serversOf(this.engine).delete(this);
    })();
    return this.closing;
  }

  private log(message: string): void {
    this.options.log?.(message);
  }

  private checkOpen(): void {
    if (this.closing) throw new TidemarkError('BUSY', 'NBD server not running');
  }


  private checkNames(name: string, description: string | undefined): void {
    if (Buffer.byteLength(name, 'utf8') > NBD_MAX_STRING_SIZE) throw new TidemarkError('INVALID_INPUT', `export name '${name}' too long`);
    if (description !== undefined && Buffer.byteLength(description, 'utf8') > NBD_MAX_STRING_SIZE) {
      throw new TidemarkError('INVALID_INPUT', `description '${description}' too long`);
    }
    if (this.exportMap.has(name)) throw new TidemarkError('ALREADY_EXISTS', `NBD server already has export named '${name}'`);
  }

  private resolveBitmaps(drive: Drive, specs: ExportBitmapSpec[], readOnly: boolean): DirtyBitmap[] {
    const out: DirtyBitmap[] = [];
    for (const spec of specs) {
      let owner: Drive;
      let bitmap: DirtyBitmap | undefined;
      let label: string;
      if (typeof spec === 'string') {
        owner = drive;
        label = spec;
        bitmap = drive.bitmaps.find(spec);
        if (!bitmap) throw new TidemarkError('NOT_FOUND', `Bitmap '${spec}' is not found`);
      } else {
        const d = this.engine.lookup(spec.node);
        if (!d) throw new TidemarkError('NOT_FOUND', `Node '${spec.node}' not found`);
        owner = d;
        label = spec.name;
        bitmap = d.bitmaps.find(spec.name);
        if (!bitmap) throw new TidemarkError('NOT_FOUND', `Dirty bitmap '${spec.name}' not found`);
        if (bitmap.size !== drive.virtualSize) throw new TidemarkError('INVALID_INPUT', `Bitmap '${spec.name}' covers ${bitmap.size} bytes, the export ${drive.virtualSize}`);
      }
      checkBitmap(bitmap, CHECK_ALLOW_RO);
      if (readOnly && !owner.driver.readOnly && !bitmap.disabled) {
        throw new TidemarkError('INVALID_INPUT', `Enabled bitmap '${label}' incompatible with readonly export`);
      }
      out.push(bitmap);
    }
    return out;
  }

  private install(config: ExportConfig): NbdExport {
    if (config.id !== undefined && this.findExportById(config.id)) throw new TidemarkError('ALREADY_EXISTS', `Block export id '${config.id}' is already in use`);
    const exp = new NbdExport(config);
    this.exportMap.set(exp.name, exp);
    return exp;
  }

  private async deleteExport(exp: NbdExport): Promise<void> {
    if (this.exportMap.get(exp.name) === exp) this.exportMap.delete(exp.name);
    const first = exp.live;
    await exp.remove();
    if (!first) return;
    for (const [d, e] of this.autoExports) if (e === exp) this.autoExports.delete(d);
    for (const l of this.deletedListeners) {
      try {
        l(exp);
      } catch (err) {
        this.log(`nbd: export-deleted listener failed: ${String(err)}`);
      }
    }
  }

  private readonly onAttached = (drive: Drive): void => {
    if (!this.closing) this.autoExport(drive);
  };

  private autoExport(drive: Drive): void {
    if (this.exportMap.has(drive.id)) {
      this.log(`nbd: drive '${drive.id}' is not exported automatically: an export of that name exists`);
      return;
    }
    const exp = this.install({
      name: drive.id,
      backend: new DriveBackend(drive),
      readOnly: drive.driver.readOnly,
      bitmaps: [],
      allocationDepth: false,
      writethrough: false,
    });
    this.autoExports.set(drive, exp);
  }

  private makeServer(tls: PskServerCredentials | undefined): Server {
    const server = createServer((socket: Socket) => this.accept(socket, tls));
    server.on('error', (err) => this.log(`nbd: listener error: ${err.message}`));
    return server;
  }

  private accept(socket: Socket, tls: PskServerCredentials | undefined): void {
    const max = this.options.maxConnections ?? 0;
    if (this.closing || (max > 0 && this.clients.size >= max)) {
      socket.destroy();
      return;
    }
    const client = new NbdClient(socket, this.host, this.limits, tls);
    this.clients.add(client);
    void client.closed.then(() => this.clients.delete(client));
    client.start();
  }
}
