// A small QMP client, and launchers for the two QMP servers compared: QEMU and `tidemark serve`.
import { connect } from 'node:net';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { track, now } from './util.mjs';

const root = fileURLToPath(new URL('../..', import.meta.url));

export class QmpClient {
  constructor(socket) {
    this.socket = socket;
    this.buffer = '';
    this.pending = [];
    this.events = [];
    this.eventWaiters = [];
    this.closed = false;
    this.greeting = new Promise((resolve) => (this.onGreeting = resolve));
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('close', () => {
      this.closed = true;
      const err = new Error('QMP connection closed');
      for (const p of this.pending.splice(0)) p.reject(err);
      for (const w of this.eventWaiters.splice(0)) w.reject(err);
    });
    socket.on('error', () => {});
  }

  static async connect(path, { timeoutMs = 30000, proc } = {}) {
    const deadline = now() + timeoutMs;
    for (;;) {
      if (proc && proc.exitCode !== null) throw new Error(`the server exited (${proc.exitCode}) before its QMP socket was ready`);
      if (existsSync(path)) {
        try {
          const socket = await new Promise((resolve, reject) => {
            const s = connect(path);
            s.once('connect', () => resolve(s));
            s.once('error', reject);
          });
          const c = new QmpClient(socket);
          await c.greeting;
          await c.execute('qmp_capabilities');
          return c;
        } catch {
          /* not listening yet */
        }
      }
      if (now() > deadline) throw new Error(`no QMP server on ${path} after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  onData(chunk) {
    this.buffer += chunk;
    let nl;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line);
      if (msg.QMP) this.onGreeting(msg);
      else if (msg.event) {
        this.events.push(msg);
        for (const w of [...this.eventWaiters]) {
          if (w.match(msg)) {
            this.eventWaiters.splice(this.eventWaiters.indexOf(w), 1);
            w.resolve(msg);
          }
        }
      } else {
        const p = this.pending.shift();
        if (!p) continue;
        if (msg.error) p.reject(Object.assign(new Error(`${p.name}: ${msg.error.desc}`), { qmp: msg.error }));
        else p.resolve(msg.return);
      }
    }
  }

  /** Sends a command; resolves with its `return`, rejects with its error. Commands are answered in order. */
  execute(name, args) {
    if (this.closed) return Promise.reject(new Error('QMP connection closed'));
    return new Promise((resolve, reject) => {
      this.pending.push({ name, resolve, reject });
      this.socket.write(`${JSON.stringify(args === undefined ? { execute: name } : { execute: name, arguments: args })}\n`);
    });
  }

  /** The next event (after this call) for which match(msg) holds. */
  nextEvent(match, timeoutMs = 600000) {
    return new Promise((resolve, reject) => {
      const w = { match, resolve, reject };
      this.eventWaiters.push(w);
      const t = setTimeout(() => {
        const i = this.eventWaiters.indexOf(w);
        if (i >= 0) this.eventWaiters.splice(i, 1);
        reject(new Error('timed out waiting for a QMP event'));
      }, timeoutMs);
      t.unref();
    });
  }

  /** `qemu-io DEVICE "CMD"` through human-monitor-command; throws when qemu-io reports a failure. */
  async qemuIo(device, cmd) {
    const out = await this.execute('human-monitor-command', { 'command-line': `qemu-io ${device} "${cmd}"` });
    if (/failed|error/i.test(out)) throw new Error(`qemu-io ${device} "${cmd}": ${out.trim()}`);
    return out;
  }

  close() {
    this.socket.destroy();
  }
}

/**
 * Starts a backup job with `command`/`args` and waits for its BLOCK_JOB_COMPLETED.
 * Returns the milliseconds from sending the command to receiving the event.
 */
export async function timedJob(qmp, jobId, command, args) {
  const done = qmp.nextEvent((m) => (m.event === 'BLOCK_JOB_COMPLETED' || m.event === 'BLOCK_JOB_CANCELLED') && m.data?.device === jobId);
  const t = now();
  await qmp.execute(command, args);
  const ev = await done;
  const ms = now() - t;
  if (ev.event !== 'BLOCK_JOB_COMPLETED' || ev.data.error) throw new Error(`job ${jobId} did not complete: ${JSON.stringify(ev)}`);
  return { ms, event: ev };
}

function collect(child) {
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d) => (out = (out + d).slice(-4000)));
  child.stderr?.setEncoding('utf8').on('data', (d) => (out = (out + d).slice(-4000)));
  return () => out;
}

async function startServer(cmd, args, sock, name) {
  const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root }));
  const output = collect(child);
  let qmp;
  try {
    qmp = await QmpClient.connect(sock, { proc: child });
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`${name}: ${err.message}\n${output()}`, { cause: err });
  }
  return {
    name,
    qmp,
    child,
    async stop() {
      const exited = new Promise((r) => (child.exitCode !== null ? r() : child.once('exit', r)));
      try {
        await qmp.execute('quit');
      } catch {
        /* it may close the connection before replying */
      }
      const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
      await exited;
      clearTimeout(timer);
      qmp.close();
    },
  };
}

/** qemu-system-x86_64 with no guest, one qcow2 drive `drive0`, QMP on a unix socket. */
export function startQemu(image, sock) {
  return startServer(
    'qemu-system-x86_64',
    ['-nodefaults', '-display', 'none', '-machine', 'none', '-qmp', `unix:${sock},server=on,wait=off`, '-drive', `if=none,id=drive0,file=${image},format=qcow2`],
    sock,
    'qemu',
  );
}

/** `tidemark serve` (headless, no web console) with one qcow2 drive `drive0`, QMP on a unix socket. */
export function startTidemark(image, sock, dataDir) {
  return startServer(
    process.execPath,
    [`${root}bin/tidemark.mjs`, '--data-dir', dataDir, 'serve', '--no-web', '--qmp', `unix:${sock}`, '--drive', `id=drive0,file=${image},format=qcow2`],
    sock,
    'tidemark',
  );
}
