import { join, resolve } from 'node:path';
import type { TidemarkApp, AppOptions } from '../../app/app.js';
import { WebHost } from '../web/web-host.js';
import { rendererDir } from '../web/static-files.js';
import { QmpServer } from '../../engine/protocols/qmp/server.js';
import { parseKeyValues, UsageError, type ParsedArgs } from './args.js';
import { TidemarkError } from '../../../src-shared/errors.js';

function parseWeb(text: string): { host: string; port: number } {
  const m = /^(127\.0\.0\.1|localhost):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) > 65535) throw new UsageError(`--web takes 127.0.0.1:PORT (port 0 picks one); got '${text}'`);
  return { host: m[1], port: Number(m[2]) };
}

function parseUnix(text: string, option: string): string {
  if (!text.startsWith('unix:') || text.length <= 5) throw new UsageError(`--${option} takes unix:PATH; got '${text}'`);
  return resolve(text.slice(5));
}

/**
 * `--nbd unix:PATH` and/or `--nbd tcp:127.0.0.1:PORT` (loopback only; port 0 picks one), and
 * `--nbd-tls-psk KEYS` to require TLS-PSK on the TCP listener.
 */
function parseNbd(values: string[], tlsPskKeys: string | undefined): { unix?: string; tcp?: NonNullable<AppOptions['nbdTcp']> } {
  const out: ReturnType<typeof parseNbd> = {};
  for (const text of values) {
    if (text.startsWith('tcp:')) {
      const m = /^tcp:(127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})$/.exec(text);
      if (!m || Number(m[2]) > 65535) throw new UsageError(`--nbd tcp: takes a loopback address, tcp:127.0.0.1:PORT or tcp:[::1]:PORT; got '${text}'`);
      if (out.tcp) throw new UsageError('--nbd tcp:... may be given once');
      out.tcp = { host: m[1] === '[::1]' ? '::1' : m[1], port: Number(m[2]) };
    } else {
      if (!text.startsWith('unix:') || text.length <= 5) throw new UsageError(`--nbd takes unix:PATH or tcp:127.0.0.1:PORT; got '${text}'`);
      if (out.unix) throw new UsageError('--nbd unix:... may be given once');
      out.unix = resolve(text.slice(5));
    }
  }
  if (tlsPskKeys !== undefined) {
    if (!out.tcp) throw new UsageError('--nbd-tls-psk applies to the TCP listener: give --nbd tcp:127.0.0.1:PORT too');
    out.tcp.tlsPskKeys = resolve(tlsPskKeys);
  }
  return out;
}

/**
 * `tidemark serve`: the engine headless, with the web console and optionally a QMP socket and an
 * NBD socket (every drive exported read-write under its id).
 * Runs until SIGINT/SIGTERM or QMP `quit`, then closes every image cleanly.
 */
export async function serve(args: ParsedArgs, dataDir: string, start: (o: AppOptions) => Promise<TidemarkApp>): Promise<number> {
  const web = args.flags.has('no-web') ? undefined : parseWeb(args.options.get('web')?.[0] ?? '127.0.0.1:0');
  const qmpPath = args.options.has('qmp') ? parseUnix(args.options.get('qmp')![0], 'qmp') : undefined;
  const nbd = parseNbd(args.options.get('nbd') ?? [], args.options.get('nbd-tls-psk')?.[0]);
  const nbdPath = nbd.unix;
  const drives = (args.options.get('drive') ?? []).map((text) => {
    const kv = parseKeyValues(text);
    if (!kv.id || !kv.file) throw new UsageError(`--drive needs id=ID,file=PATH (and optionally format=raw|qcow2); got '${text}'`);
    const format = kv.format ?? 'auto';
    if (format !== 'raw' && format !== 'qcow2' && format !== 'auto') throw new UsageError(`--drive format must be raw or qcow2; got '${format}'`);
    const discard = kv.discard ?? 'ignore';
    if (discard !== 'ignore' && discard !== 'unmap') throw new UsageError(`--drive discard must be ignore or unmap; got '${discard}'`);
    return { id: kv.id, file: kv.file, format: format as 'raw' | 'qcow2' | 'auto', discard: discard as 'ignore' | 'unmap' };
  });

  const log = (m: string) => process.stderr.write(`${m}\n`);
  // every drive is served over NBD: on --nbd's socket, or on the app's own in the data dir
  const app = await start({ dataDir: resolve(dataDir), host: 'web', log, nbdSocket: nbdPath ?? join(resolve(dataDir), 'nbd.sock'), nbdTcp: nbd.tcp });
  let host: WebHost | undefined;
  let qmp: QmpServer | undefined;
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await qmp?.close();
      await host?.stop();
      await app.close();
    })());

  try {
    const listening = app.nbd?.listenerInfo().map((l) => l.address) ?? [];
    if (nbdPath && !listening.includes(`unix:${nbdPath}`)) throw new TidemarkError('IO_ERROR', `Could not listen for NBD on '${nbdPath}' (see the message above).`);
    const tcpAddress = listening.find((a) => !a.startsWith('unix:'));
    if (nbd.tcp && !tcpAddress) throw new TidemarkError('IO_ERROR', `Could not listen for NBD on ${nbd.tcp.host}:${nbd.tcp.port} (see the message above).`);
    for (const d of drives) await app.drives.attachSessionDrive(d.id, d.file, d.format, d.discard);
    // said once the drives are exported, so a client that reads it finds them
    if (tcpAddress && !nbd.tcp?.tlsPskKeys) log(`Warning: NBD on TCP ${tcpAddress} without TLS: every local user can read and write the drives. Add --nbd-tls-psk KEYS to require a key.`);
    if (tcpAddress) process.stdout.write(`Tidemark NBD on TCP: ${nbd.tcp?.tlsPskKeys ? 'nbds' : 'nbd'}://${tcpAddress}/<drive id>${nbd.tcp?.tlsPskKeys ? ' (TLS-PSK required)' : ''}\n`);
    if (qmpPath) {
      qmp = new QmpServer(app.engine, { path: qmpPath, log, onQuit: () => stop() });
      await qmp.listen();
    }
    if (web) {
      host = new WebHost({ router: app.router, bus: app.bus, staticDir: rendererDir(), port: web.port, host: web.host, log });
      const url = await host.start();
      app.lock.setEndpoint(url);
      process.stdout.write(`Tidemark web console: ${url}\n`);
    }
  } catch (err) {
    await stop();
    throw err;
  }

  await new Promise<void>((resolveDone) => {
    const onSignal = () => void stop().then(resolveDone, resolveDone);
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    void qmp?.quitRequested.then(() => stop().then(resolveDone, resolveDone));
  });
  return 0;
}
