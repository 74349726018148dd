import { readFile, readdir, readlink, stat } from 'node:fs/promises';
import { TidemarkError } from '../../src-shared/errors.js';

/**
 * QEMU guards its images with OFD byte-range locks (bytes 100+ for the permissions it uses,
 * 200+ for those it refuses to share). Node cannot take OFD locks, but Linux lists every lock
 * in /proc/locks as `MAJ:MIN:INODE`; any lock on the image's inode held by someone else means a
 * QEMU (or qemu-nbd, qemu-img) is using it, and opening it read-write would corrupt it.
 */
export interface LockHolder {
  pid?: number;
  command?: string;
}

function devParts(dev: number): { major: number; minor: number } {
  // glibc's gnu_dev_major/minor for the 64-bit dev_t Node reports
  const big = BigInt(dev);
  const major = Number(((big >> 8n) & 0xfffn) | ((big >> 32n) & ~0xfffn));
  const minor = Number((big & 0xffn) | ((big >> 12n) & ~0xffn));
  return { major, minor };
}

/** Lock lines from /proc/locks on the file's inode; [] where /proc/locks is not available. */
export async function locksOn(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  const st = await stat(path);
  const { major, minor } = devParts(st.dev);
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  const key = `${hex(major)}:${hex(minor)}:${st.ino}`;
  return text.split('\n').filter((line) => line.split(/\s+/).includes(key));
}

/** Processes (other than us) that have the file open: a best-effort name for the lock holder. */
export async function openersOf(path: string): Promise<LockHolder[]> {
  const found: LockHolder[] = [];
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return found;
  }
  const target = await stat(path);
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const link = await readlink(`/proc/${pid}/fd/${fd}`);
        if (!link.startsWith('/')) continue;
        const st = await stat(link);
        if (st.ino === target.ino && st.dev === target.dev) {
          const command = (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
          found.push({ pid: Number(pid), command });
          break;
        }
      } catch {
        // the process or fd went away while we looked
      }
    }
  }
  return found;
}

/** Refuses a read-write open of an image another process holds a lock on. */
export async function assertNotLockedByOthers(path: string): Promise<void> {
  const locks = await locksOn(path);
  // POSIX locks of our own pid would show our pid; OFD locks show -1. We take none ourselves.
  const foreign = locks.filter((l) => !l.includes(` ${process.pid} `));
  if (foreign.length === 0) return;
  const holders = await openersOf(path);
  const who = holders.length ? holders.map((h) => `${h.command ?? 'a process'} (pid ${h.pid})`).join(', ') : 'another process';
  throw new TidemarkError(
    'LOCKED',
    `Failed to get "write" lock: '${path}' is in use by ${who}. Stop it or detach the image there first; opening it read-write now would corrupt it.`,
  );
}
