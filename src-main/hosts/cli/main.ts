import { TidemarkApp } from '../../app/app.js';
import { defaultDataDir } from '../../app/data-dir.js';
import { APP_VERSION } from '../../app/version.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { parseArgs, UsageError, type OptionSpec } from './args.js';
import { serve } from './serve.js';

const USAGE = `Usage: tidemark [--data-dir DIR] <command> [options]

Commands:
  serve [--web 127.0.0.1:PORT] [--no-web] [--qmp unix:PATH] [--drive id=ID,file=PATH,format=raw|qcow2]...
        Run the engine headless with the web console (and a QMP socket); prints the console URL.
  version   Print the version.
  help      Print this help.

Global options (before or after the command):
  --data-dir DIR   Where the catalog lives (default: ${defaultDataDir()}; or $TIDEMARK_DATA_DIR).
`;

const GLOBAL: Record<string, OptionSpec> = { 'data-dir': { value: true }, help: {} };
const COMMANDS: Record<string, Record<string, OptionSpec>> = {
  serve: { web: { value: true }, 'no-web': {}, qmp: { value: true }, drive: { value: true, repeat: true } },
  version: {},
  help: {},
};

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
    if (args.positional.length) throw new UsageError(`unexpected argument '${args.positional[0]}'`);
    const dataDir = args.options.get('data-dir')?.[0] ?? defaultDataDir();
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
