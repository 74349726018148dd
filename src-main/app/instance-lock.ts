import { openSync, writeSync, closeSync, readFileSync, unlinkSync, fsyncSync } from 'node:fs';
import { join } from 'node:path';
import { TidemarkError } from '../../src-shared/errors.js';

export interface LockInfo {
  pid: number;
  startedAt: string;
  /** how to reach the owner (the web console URL), when it has one */
  endpoint?: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // a killed process stays signalable as a zombie until reaped: that is not an owner
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** How long a new instance waits for a previous owner that is still shutting down. */
const TAKEOVER_WAIT_MS = 3000;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * One writer per data dir: a lock file created with O_EXCL holding the owner's pid. A lock whose
 * pid is gone is stale (the owner crashed) and is taken over.
 */
export class InstanceLock {
  private constructor(readonly file: string) {}

  static acquire(dataDir: string): InstanceLock {
    const file = join(dataDir, 'tidemark.lock');
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fd = openSync(file, 'wx', 0o600);
        const info: LockInfo = { pid: process.pid, startedAt: new Date().toISOString() };
        writeSync(fd, JSON.stringify(info));
        fsyncSync(fd);
        closeSync(fd);
        return new InstanceLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      let holder = InstanceLock.read(dataDir);
      // an owner that was just stopped may need a moment to exit and release the lock
      for (let waited = 0; holder && holder.pid !== process.pid && alive(holder.pid) && waited < TAKEOVER_WAIT_MS; waited += 100) {
        sleepSync(100);
        holder = InstanceLock.read(dataDir);
      }
      if (holder && holder.pid !== process.pid && alive(holder.pid)) {
        throw new TidemarkError(
          'LOCKED',
          `Another Tidemark (pid ${holder.pid}, started ${holder.startedAt}) is using the data folder '${dataDir}'. Use that one, or stop it first.`,
        );
      }
      // stale: its owner is gone
      try {
        unlinkSync(file);
      } catch {
        // someone else cleaned it up first; retry the exclusive create
      }
    }
    throw new TidemarkError('LOCKED', `Could not take the lock on the data folder '${dataDir}'.`);
  }

  static read(dataDir: string): LockInfo | undefined {
    try {
      const parsed = JSON.parse(readFileSync(join(dataDir, 'tidemark.lock'), 'utf8')) as Partial<LockInfo>;
      return typeof parsed.pid === 'number' ? (parsed as LockInfo) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Records how other processes can reach this instance. */
  setEndpoint(endpoint: string): void {
    const info = { ...(InstanceLock.read(join(this.file, '..')) ?? { pid: process.pid, startedAt: new Date().toISOString() }), endpoint };
    const fd = openSync(this.file, 'w', 0o600);
    writeSync(fd, JSON.stringify(info));
    fsyncSync(fd);
    closeSync(fd);
  }

  release(): void {
    try {
      const holder = JSON.parse(readFileSync(this.file, 'utf8')) as Partial<LockInfo>;
      if (holder.pid === process.pid) unlinkSync(this.file);
    } catch {
      // already gone
    }
  }
}
