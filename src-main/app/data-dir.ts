import { homedir, platform } from 'node:os';
import { join } from 'node:path';

/** The platform's app-data folder for Tidemark; shared by the desktop app, the web console and the CLI. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TIDEMARK_DATA_DIR) return env.TIDEMARK_DATA_DIR;
  switch (platform()) {
    case 'darwin':
      return join(homedir(), 'Library', 'Application Support', 'Tidemark');
    case 'win32':
      return join(env.APPDATA ?? join(homedir(), 'AppData', 'Roaming'), 'Tidemark');
    default:
      return join(env.XDG_DATA_HOME || join(homedir(), '.local', 'share'), 'tidemark');
  }
}
