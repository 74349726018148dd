import { resolve } from 'node:path';
import { registerCommand } from './commands.js';
import { QEMU_ID, checkArgs } from './args.js';
import { generic } from './errors.js';
import type { BlockEngine } from '../../engine.js';
import { LOOPBACK_HOSTS, NbdServer, type ExportBitmapSpec } from '../nbd/server.js';
import { serverTlsCreds } from './object-commands.js';
import type { NbdExport } from '../nbd/export.js';

// QEMU's NBD export commands (qapi/block-export.json): nbd-server-start/stop, block-export-add/del,
// query-block-exports, and the deprecated nbd-server-add/remove, with QEMU's argument shapes and
// refusals.

/**
 * The NBD server these commands address: the one nbd-server-start made (QEMU has one per
 * process). Other servers of the engine (the app's all-drives one) are not QMP's.
 */
const qmpServers = new WeakMap<BlockEngine, NbdServer>();

/** The engine's NBD server as QMP sees it, while it runs. */
export function nbdServerOf(engine: BlockEngine): NbdServer | undefined {
  const s = qmpServers.get(engine);
  return s?.running ? s : undefined;
}

function running(engine: BlockEngine): NbdServer {
  const s = nbdServerOf(engine);
  if (!s) throw generic('NBD server not running');
  return s;
}

/**
 * SocketAddressLegacy (`{type, data: {...}}`) or the flat SocketAddress (`{type, path}`). Unix
 * sockets, and TCP on loopback only (with or without TLS: the exports stay off the network).
 */
function parseAddr(raw: unknown): { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } {
  const addr = checkArgs({ type: { type: 'str', enum: ['unix', 'inet', 'vsock', 'fd'] }, data: { type: 'object', optional: true }, path: { type: 'str', optional: true }, host: { type: 'str', optional: true }, port: { type: 'any', optional: true } }, raw, 'addr.');
  const body = (addr.data as Record<string, unknown> | undefined) ?? addr;
  if (addr.type === 'unix') {
    if (typeof body.path !== 'string') throw generic("Parameter 'addr.data.path' is missing");
    if (body.path === '') throw generic('Empty path is not a valid unix socket address');
    return { kind: 'unix', path: resolve(body.path) };
  }
  if (addr.type === 'inet') {
    const host = typeof body.host === 'string' ? body.host : '';
    const portText = typeof body.port === 'number' ? String(body.port) : body.port;
    if (typeof portText !== 'string' || !/^\d{1,5}$/.test(portText) || Number(portText) > 65535) throw generic(`Parameter 'addr.data.port' expects a port number`);
    if (!LOOPBACK_HOSTS.includes(host)) {
      throw generic(`The NBD server listens on loopback only (127.0.0.1, ::1, localhost), so '${host}' is refused`);
    }
    return { kind: 'tcp', host, port: Number(portText) };
  }
  throw generic(`Socket address type '${String(addr.type)}' is not supported by Tidemark's NBD server`);
}

registerCommand('nbd-server-start', {
  args: {
    addr: { type: 'object' },
    'tls-creds': { type: 'str', optional: true },
    'tls-authz': { type: 'str', optional: true },
    'max-connections': { type: 'uint32', optional: true },
  },
  async run(a, ctx) {
    const addr = parseAddr(a.addr);
    if (nbdServerOf(ctx.engine)) throw generic('NBD server already running');
    const tls = a['tls-creds'] === undefined ? undefined : serverTlsCreds(ctx.engine, a['tls-creds'] as string);
    // QEMU 7.2 takes tls-authz without tls-creds and then has nothing to apply it to; with TLS
    // it would check each client's username against an authz object, which Tidemark has none of
    if (tls && a['tls-authz'] !== undefined) throw generic("Tidemark has no authorization objects: 'tls-authz' is not supported (every username in the keys file is let in)");
    const server = new NbdServer(ctx.engine, { exportAllDrives: false, maxConnections: (a['max-connections'] as number | undefined) ?? 0, log: ctx.log });
    // BLOCK_EXPORT_DELETED (the engine's event channel reaches every QMP client); like QEMU, it
    // goes out before the reply of the command that removed the export
    server.onExportDeleted((exp) => ctx.engine.jobs.sink('BLOCK_EXPORT_DELETED', { id: exp.id }));
    try {
      if (addr.kind === 'unix') await server.listenUnix(addr.path, { tls });
      else await server.listenTcp(addr.port, addr.host, { tls });
    } catch (err) {
      await server.close();
      throw generic(`Failed to start the NBD server: ${err instanceof Error ? err.message : String(err)}`);
    }
    qmpServers.set(ctx.engine, server);
    return {};
  },
});

registerCommand('nbd-server-stop', {
  args: {},
  async run(_a, ctx) {
    await running(ctx.engine).close();
    return {};
  },
});

/** `bitmaps` entries: a name (on the export's node) or {node, name}. */
function parseBitmaps(raw: unknown): ExportBitmapSpec[] {
  if (!Array.isArray(raw)) throw generic("Parameter 'bitmaps' expects array");
  return raw.map((b, i) => {
    if (typeof b === 'string') return b;
    const o = checkArgs({ node: { type: 'str' }, name: { type: 'str' } }, b, `bitmaps[${i}].`);
    return { node: o.node as string, name: o.name as string };
  });
}

/** block-export-add's node-name is a node name only (a -drive id is not one), as in QEMU. */
function nodeByName(engine: BlockEngine, node: string): string {
  const d = engine.list().find((x) => x.nodeName === node);
  if (!d) throw generic(`Cannot find device='' nor node-name='${node}'`);
  return d.id;
}

function addExport(server: NbdServer, o: { id: string; driveId: string; name: string; description?: string; writable: boolean; writethrough?: boolean; bitmaps?: ExportBitmapSpec[]; allocationDepth?: boolean }): NbdExport {
  if (server.findExportById(o.id)) throw generic(`Block export id '${o.id}' is already in use`);
  return server.addExport({
    id: o.id,
    name: o.name,
    driveId: o.driveId,
    writable: o.writable,
    description: o.description,
    writethrough: o.writethrough,
    bitmaps: o.bitmaps,
    allocationDepth: o.allocationDepth,
  });
}

registerCommand('block-export-add', {
  args: {
    type: { type: 'str', enum: ['nbd'] },
    id: { type: 'str' },
    'node-name': { type: 'str' },
    'fixed-iothread': { type: 'bool', optional: true },
    iothread: { type: 'str', optional: true },
    writable: { type: 'bool', optional: true },
    writethrough: { type: 'bool', optional: true },
    name: { type: 'str', optional: true },
    description: { type: 'str', optional: true },
    bitmaps: { type: 'array', optional: true },
    'allocation-depth': { type: 'bool', optional: true },
  },
  async run(a, ctx) {
    // QEMU's order: the id, the node, writability, then the NBD server and the export itself
    const id = a.id as string;
    if (!QEMU_ID.test(id)) throw generic('Invalid block export id');
    if (nbdServerOf(ctx.engine)?.findExportById(id)) throw generic(`Block export id '${id}' is already in use`);
    if (a.iothread !== undefined) throw generic(`Cannot find iothread '${String(a.iothread)}'`);
    const nodeName = a['node-name'] as string;
    const driveId = nodeByName(ctx.engine, nodeName);
    const writable = (a.writable as boolean | undefined) ?? false;
    if (writable && ctx.engine.get(driveId)!.driver.readOnly) throw generic('Cannot export read-only node as writable');
    const server = running(ctx.engine);
    addExport(server, {
      id,
      driveId,
      name: (a.name as string | undefined) ?? nodeName,
      description: a.description as string | undefined,
      writable,
      writethrough: a.writethrough as boolean | undefined,
      bitmaps: a.bitmaps === undefined ? undefined : parseBitmaps(a.bitmaps),
      allocationDepth: a['allocation-depth'] as boolean | undefined,
    });
    return {};
  },
});

async function deleteExport(engine: BlockEngine, id: string, mode: 'safe' | 'hard'): Promise<void> {
  const server = nbdServerOf(engine);
  const exp = server?.running ? server.findExportById(id) : undefined;
  if (!server || !exp) throw generic(`Export '${id}' is not found`);
  if (mode === 'safe' && exp.users.size > 0) throw generic(`export '${id}' still in use`);
  await server.removeExport(exp.name, mode);
}

registerCommand('block-export-del', {
  args: { id: { type: 'str' }, mode: { type: 'str', optional: true, enum: ['safe', 'hard'] } },
  async run(a, ctx) {
    await deleteExport(ctx.engine, a.id as string, (a.mode as 'safe' | 'hard' | undefined) ?? 'safe');
    return {};
  },
});

registerCommand('query-block-exports', {
  args: {},
  async run(_a, ctx) {
    const server = nbdServerOf(ctx.engine);
    if (!server?.running) return [];
    return server.listExports().map((e) => ({
      type: 'nbd',
      id: e.id,
      'node-name': e.backend.drive?.nodeName ?? '',
      'shutting-down': !e.live,
    }));
  },
});

/** Deprecated since QEMU 5.2 but still in 7.2: exports a device (or node) under `name` (default: the device). */
registerCommand('nbd-server-add', {
  args: {
    device: { type: 'str' },
    name: { type: 'str', optional: true },
    description: { type: 'str', optional: true },
    writable: { type: 'bool', optional: true },
    bitmap: { type: 'str', optional: true },
  },
  async run(a, ctx) {
    const server = running(ctx.engine);
    const device = a.device as string;
    const drive = ctx.engine.lookup(device);
    if (!drive) throw generic(`Cannot find device='${device}' nor node-name='${device}'`);
    const name = (a.name as string | undefined) ?? device;
    // nbd-server-add quietly downgrades a writable export of a read-only device
    const writable = ((a.writable as boolean | undefined) ?? false) && !drive.driver.readOnly;
    addExport(server, {
      id: name,
      driveId: drive.id,
      name,
      description: a.description as string | undefined,
      writable,
      bitmaps: a.bitmap === undefined ? undefined : [a.bitmap as string],
    });
    return {};
  },
});

registerCommand('nbd-server-remove', {
  args: { name: { type: 'str' }, mode: { type: 'str', optional: true, enum: ['safe', 'hard'] } },
  async run(a, ctx) {
    running(ctx.engine);
    await deleteExport(ctx.engine, a.name as string, (a.mode as 'safe' | 'hard' | undefined) ?? 'safe');
    return {};
  },
});
