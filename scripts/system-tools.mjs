// The system tools the tests use as oracles and browsers, and how to get them.
import { execFileSync, spawnSync } from 'node:child_process';

export const TOOLS = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  'qemu-system-x86_64': 'qemu-system-x86',
  nbdinfo: 'libnbd-bin',
  nbdkit: 'nbdkit',
  chromium: 'chromium',
  'xvfb-run': 'xvfb',
};
export const APT_LINE = 'apt-get install -y qemu-utils qemu-system-x86 libnbd-bin nbdkit chromium xvfb';

function has(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Installs what is missing when we are root; otherwise says exactly what to run. Returns true when all are there. */
export function ensureSystemTools() {
  const missing = Object.keys(TOOLS).filter((t) => !has(t));
  if (missing.length === 0) return true;
  const packages = [...new Set(missing.map((t) => TOOLS[t]))];
  if (process.getuid?.() === 0 && has('apt-get')) {
    console.log(`Installing the test tools that are missing (${missing.join(', ')}): apt-get install -y ${packages.join(' ')}`);
    try {
      execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit' });
      execFileSync('apt-get', ['install', '-y', '-qq', ...packages], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    } catch {
      console.error(`Installing failed. Run as root:\n  apt-get update && ${APT_LINE}`);
      return false;
    }
    return Object.keys(TOOLS).every(has);
  }
  console.error(`The tests need ${missing.join(', ')}. Install them as root:\n  apt-get update && ${APT_LINE}`);
  return false;
}
