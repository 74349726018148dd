// `npm start`: the desktop app when Electron's binary is installed; otherwise the same app as the
// local web console (and a browser opened on it when one is available).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('..', import.meta.url));
const require = createRequire(import.meta.url);

function electronBinary() {
  try {
    const dir = join(require.resolve('electron/package.json'), '..');
    const rel = readFileSync(join(dir, 'path.txt'), 'utf8').trim();
    const bin = join(dir, 'dist', rel);
    return existsSync(bin) ? bin : undefined;
  } catch {
    return undefined;
  }
}

const forward = (child) => {
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code) => process.exit(code ?? 0));
};

const electron = electronBinary();
if (electron && !process.env.TIDEMARK_WEB) {
  forward(spawn(electron, [root], { stdio: 'inherit' }));
} else {
  console.log("Electron's binary is not installed here, so Tidemark starts as a local web console instead.");
  const child = spawn(process.execPath, [join(root, 'bin/tidemark.mjs'), 'serve', ...process.argv.slice(2)], { stdio: ['inherit', 'pipe', 'inherit'] });
  let opened = false;
  child.stdout.on('data', (chunk) => {
    process.stdout.write(chunk);
    const url = /http:\/\/127\.0\.0\.1:\d+\/\?token=\S+/.exec(String(chunk))?.[0];
    if (url && !opened && process.env.DISPLAY) {
      opened = true;
      for (const opener of ['xdg-open', 'chromium', 'firefox']) {
        if (spawnSync('sh', ['-c', `command -v ${opener}`]).status === 0) {
          spawn(opener, [url], { stdio: 'ignore', detached: true }).unref();
          break;
        }
      }
    }
  });
  forward(child);
}
