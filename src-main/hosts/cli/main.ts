import { TidemarkApp } from '../../app/app.js';
import { defaultDataDir } from '../../app/data-dir.js';
import { APP_VERSION } from '../../app/version.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { parseArgs, UsageError, type OptionSpec } from './args.js';
import { serve } from './serve.js';
import { InProcessClient, RemoteClient, runningEndpoint, type ApiClient } from './client.js';
import { backupCommand, bitmapsCommand, chainsCommand, drivesCommand, jobsCommand, restoreCommand, verifyCommand, type Command, type Output } from './commands.js';

const USAGE = `Usage: tidemark [--data-dir DIR] <command> [options]

Commands:
  serve [--web 127.0.0.1:PORT] [--no-web] [--qmp unix:PATH] [--nbd unix:PATH] [--drive id=ID,file=PATH,format=raw|qcow2]...
        [--nbd tcp:127.0.0.1:PORT [--nbd-tls-psk KEYS]]
        Run the engine headless with the web console (and a QMP socket, and an NBD socket exporting
        every drive under its id); prints the console URL. The optional TCP listener is loopback
        only; --nbd-tls-psk makes it require TLS with a key from KEYS (lines of username:hexkey,
        or a directory holding keys.psk, as QEMU's tls-creds-psk).
  drives list | drives add PATH [--id ID] | drives remove ID
  bitmaps --drive ID
  backup (--drive ID | --group NAME) [--dest FOLDER] [--full | --diff]
        Back up now: a full backup starts a chain, later ones are incremental (or differential).
        Waits for the backup; exit 0 only when every drive's backup completed.
  chains [--drive ID] [--json]     Backup chains and their points (n = a drive's points, oldest = 1).
  verify --drive ID                Check every point of the drive's chains; exit 1 naming any that fails.
  jobs                             Running jobs and recent history.
  restore --drive ID --point N|ISO-TIME (--to PATH [--format raw|qcow2] [--force] | --in-place --yes)
        Flattens the chain up to that point into a new image (raw by default), verifies it, and
        only then gives it its name; --in-place writes it over the drive (needs --yes).
  version   Print the version.
  help      Print this help.

Global options (before or after the command):
  --data-dir DIR   Where the catalog lives (default: ${defaultDataDir()}; or $TIDEMARK_DATA_DIR).
  --json           Machine-readable output on stdout.
When another Tidemark is running on the same data dir, commands are sent to it.
`;

const GLOBAL: Record<string, OptionSpec> = { 'data-dir': { value: true }, help: {}, json: {} };
const COMMANDS: Record<string, Record<string, OptionSpec>> = {
  serve: { web: { value: true }, 'no-web': {}, qmp: { value: true }, nbd: { value: true, repeat: true }, 'nbd-tls-psk': { value: true }, drive: { value: true, repeat: true } },
  drives: { id: { value: true } },
  bitmaps: { drive: { value: true } },
  backup: { drive: { value: true }, group: { value: true }, dest: { value: true }, full: {}, diff: {} },
  chains: { drive: { value: true } },
  verify: { drive: { value: true } },
  jobs: {},
  restore: { drive: { value: true }, point: { value: true }, to: { value: true }, format: { value: true }, 'in-place': {}, yes: {}, force: {} },
  version: {},
  help: {},
};

const CLIENT_COMMANDS: Record<string, Command> = {
  drives: drivesCommand,
  bitmaps: bitmapsCommand,
  backup: backupCommand,
  chains: chainsCommand,
  verify: verifyCommand,
  jobs: jobsCommand,
  restore: restoreCommand,
};

/** The Tidemark that owns the data dir if one runs; otherwise the app, opened here for this command. */
async function clientFor(dataDir: string): Promise<ApiClient> {
  const endpoint = runningEndpoint(dataDir);
  if (endpoint) return RemoteClient.connect(endpoint);
  return new InProcessClient(await TidemarkApp.start({ dataDir, host: 'web', log: (m) => process.stderr.write(`${m}\n`) }));
}

function output(json: boolean): Output {
  return {
    json,
    print: (text) => process.stdout.write(`${text}\n`),
    data: (value) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
    error: (text) => process.stderr.write(`${text}\n`),
  };
}

/** Runs one CLI invocation; resolves with the exit code. Errors go to stderr, results to stdout. */
export async function main(argv: string[]): Promise<number> {
  try {
    const verbIndex = argv.findIndex((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1] === '--data-dir'));
    const verb = verbIndex >= 0 ? argv[verbIndex] : undefined;
    if (!verb || argv.includes('--help') || verb === 'help') {
      process.stdout.write(USAGE);
      return verb && verb !== 'help' && !COMMANDS[verb] ? 2 : 0;
    }
    const spec = COMMANDS[verb];
    if (!spec) throw new UsageError(`unknown command '${verb}'`);
    const args = parseArgs([...argv.slice(0, verbIndex), ...argv.slice(verbIndex + 1)], { ...GLOBAL, ...spec });
    if (args.positional.length && verb !== 'drives') throw new UsageError(`unexpected argument '${args.positional[0]}'`);
    const dataDir = args.options.get('data-dir')?.[0] ?? defaultDataDir();
    const command = CLIENT_COMMANDS[verb];
    if (command) {
      const client = await clientFor(dataDir);
      try {
        return await command(client, args, output(args.flags.has('json')));
      } finally {
        await client.close();
      }
    }
    switch (verb) {
      case 'version':
        process.stdout.write(`tidemark ${APP_VERSION}\n`);
        return 0;
      case 'serve':
        return await serve(args, dataDir, (opts) => TidemarkApp.start(opts));
      default:
        throw new UsageError(`unknown command '${verb}'`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`tidemark: ${err.message}\n\n${USAGE}`);
      return 2;
    }
    process.stderr.write(`tidemark: ${err instanceof TidemarkError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    return 1;
  }
}
