import { execFileSync, spawnSync } from 'node:child_process';

/** Runs a QEMU tool and returns stdout; throws with its stderr on failure. */
export function qemu(tool: string, args: string[]): string {
  const r = spawnSync(tool, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

export function qemuImgCheck(path: string): { ok: boolean; out: string } {
  const r = spawnSync('qemu-img', ['check', '-U', path], { encoding: 'utf8' });
  return { ok: r.status === 0, out: r.stdout + r.stderr };
}

/** Guest-visible equality as qemu-img sees it. */
export function qemuImgCompare(a: string, b: string, fa?: string, fb?: string): { same: boolean; out: string } {
  const args = ['compare', '-U'];
  if (fa) args.push('-f', fa);
  if (fb) args.push('-F', fb);
  const r = spawnSync('qemu-img', [...args, a, b], { encoding: 'utf8' });
  return { same: r.status === 0, out: r.stdout + r.stderr };
}

export function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
}

export function umount(dir: string): void {
  spawnSync('umount', ['-l', dir]);
}
