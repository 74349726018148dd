import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test as base, expect, type Page } from '@playwright/test';

export { expect };

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));
export const artifactsDir = join(repoRoot, 'e2e-artifacts');

const URL_LINE = /(http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]+)/;
const START_TIMEOUT_MS = 45_000;
const STOP_TIMEOUT_MS = 10_000;

export interface ConsoleOptions {
  /** also open a QMP socket (`serve --qmp unix:PATH`), so tests can write to drives through the engine */
  qmp?: boolean;
}

/**
 * One `node bin/tidemark.mjs --data-dir DIR serve --web 127.0.0.1:0` process. It can be stopped
 * and started again on the same data folder; each start is a new run with a new token and port.
 */
export class TidemarkConsole {
  constructor(readonly options: ConsoleOptions = {}) {}

  /** a scratch folder for this spec file: data/ is the data dir, images/ holds test images */
  private workDir: string | undefined;
  private child: ChildProcess | undefined;
  private output = '';
  /** the URL the console printed, with its token */
  url = '';

  get root(): string {
    this.workDir ??= mkdtempSync(join(tmpdir(), 'tidemark-e2e-'));
    return this.workDir;
  }

  get dataDir(): string {
    return join(this.root, 'data');
  }

  /** `http://127.0.0.1:PORT` */
  get origin(): string {
    return new URL(this.url).origin;
  }

  get token(): string {
    return new URL(this.url).searchParams.get('token') ?? '';
  }

  /** the QMP socket of a console started with `{ qmp: true }` */
  get qmpPath(): string {
    if (!this.options.qmp) throw new Error('this console was started without a QMP socket: useTidemarkConsole({ qmp: true })');
    return join(this.root, 'qmp.sock');
  }

  /** A new, negotiated QMP connection to the running console. Close it when done. */
  qmp(): Promise<QmpClient> {
    return QmpClient.connect(this.qmpPath);
  }

  /** Writes to a drive through the engine, like a guest would: qemu-io's `write -P PATTERN OFFSET LENGTH`. */
  async write(driveId: string, offset: string | number, length: string | number, pattern = 0x11): Promise<void> {
    const qmp = await this.qmp();
    try {
      await qmp.qemuIo(driveId, `write -P 0x${pattern.toString(16)} ${offset} ${length}`);
    } finally {
      qmp.close();
    }
  }

  /** A path for a test image; the folder exists, the file does not. */
  imagePath(name: string): string {
    const dir = join(this.root, 'images');
    mkdirSync(dir, { recursive: true });
    return join(dir, name);
  }

  async start(): Promise<string> {
    if (this.child) throw new Error('the console is already running');
    mkdirSync(this.dataDir, { recursive: true });
    this.output = '';
    const args = ['bin/tidemark.mjs', '--data-dir', this.dataDir, 'serve', '--web', '127.0.0.1:0'];
    if (this.options.qmp) args.push('--qmp', `unix:${this.qmpPath}`);
    const child = spawn(
      process.execPath,
      args,
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
    );
    this.child = child;
    this.url = await new Promise<string>((resolve, reject) => {
      let stdout = '';
      const fail = (why: string) => {
        clearTimeout(timer);
        reject(new Error(`tidemark serve ${why}.\n--- its output ---\n${this.output}`));
      };
      const timer = setTimeout(() => fail(`printed no URL within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      child.stdout?.setEncoding('utf8');
      child.stderr?.setEncoding('utf8');
      child.stdout?.on('data', (chunk: string) => {
        this.output += chunk;
        stdout += chunk;
        const m = URL_LINE.exec(stdout);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.stderr?.on('data', (chunk: string) => {
        this.output += chunk;
      });
      child.once('error', (err) => fail(`could not be started (${err.message})`));
      child.once('exit', (code, signal) => fail(`exited early (code ${code}, signal ${signal})`));
    });
    return this.url;
  }

  /** Stops the console the way a person would (SIGTERM), then insists if it hangs. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
      }, STOP_TIMEOUT_MS);
      child.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      child.kill('SIGTERM');
    });
  }

  /** Kills the console without letting it save anything (SIGKILL), like a crash or a power cut. */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  }

  async restart(): Promise<string> {
    await this.stop();
    return this.start();
  }

  /** Stops the console and removes the scratch folder. */
  async dispose(): Promise<void> {
    await this.stop();
    if (this.workDir) rmSync(this.workDir, { recursive: true, force: true });
    this.workDir = undefined;
  }

  /** what the process printed so far (for failure messages) */
  log(): string {
    return this.output;
  }
}

/**
 * Starts a console for the calling spec file (before its first test) and disposes of it after
 * its last. Call once, at the top level of the spec file.
 */
export function useTidemarkConsole(options: ConsoleOptions = {}): TidemarkConsole {
  const tm = new TidemarkConsole(options);
  test.beforeAll(async () => {
    test.setTimeout(90_000);
    await tm.start();
  });
  test.afterAll(async () => {
    await tm.dispose();
  });
  return tm;
}

type QmpReply = { return?: unknown; error?: { class: string; desc: string }; id?: unknown; event?: string; QMP?: unknown };

/**
 * A tiny QMP client: JSON lines over the console's unix socket. `connect` reads the greeting and
 * negotiates capabilities; `execute` sends one command and resolves with its `return` (rejects
 * with the error's `desc`). Events are ignored.
 */
export class QmpClient {
  private buffer = '';
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (r: QmpReply) => void; reject: (e: Error) => void }>();
  private greeting: ((r: QmpReply) => void) | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    const fail = (err: Error) => {
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('the QMP connection closed')));
  }

  static async connect(path: string): Promise<QmpClient> {
    const socket = createConnection(path);
    const client = new QmpClient(socket);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no QMP greeting on ${path}`)), 10_000);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      client.greeting = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as QmpReply;
      if (msg.QMP !== undefined) {
        this.greeting?.(msg);
        this.greeting = undefined;
      } else if (msg.event === undefined && typeof msg.id === 'number') {
        const w = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        w?.resolve(msg);
      }
    }
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const id = this.nextId++;
    const reply = await new Promise<QmpReply>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.socket.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    });
    if (reply.error) throw new Error(`QMP ${command}: ${reply.error.desc}`);
    return reply.return;
  }

  /** `human-monitor-command`: resolves with the monitor's output text. */
  async hmp(commandLine: string): Promise<string> {
    return String(await this.execute('human-monitor-command', { 'command-line': commandLine }));
  }

  /** Runs a qemu-io command on a drive through HMP; fails the test when qemu-io reports a failure. */
  async qemuIo(driveId: string, command: string): Promise<string> {
    const out = await this.hmp(`qemu-io ${driveId} "${command}"`);
    if (/^(Error:|unknown command)|failed:/m.test(out)) throw new Error(`qemu-io ${driveId} "${command}": ${out.trim()}`);
    return out;
  }

  close(): void {
    this.socket.end();
  }
}

/**
 * `page` that fails the test on uncaught errors or Content-Security-Policy violations: the
 * renderer must run under the strict CSP the hosts send.
 */
export const test = base.extend({
  page: async ({ page }, use) => {
    const problems: string[] = [];
    page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error' && /Content Security Policy|Refused to (load|apply|execute|evaluate|connect)/i.test(msg.text())) {
        problems.push(`CSP: ${msg.text()}`);
      }
    });
    await use(page);
    expect(problems, 'the page logged errors').toEqual([]);
  },
});

/** Opens the console (trading the token for the cookie) and waits for the drive list. */
export async function openConsole(page: Page, tm: TidemarkConsole): Promise<void> {
  await page.goto(tm.url);
  await expect(page.getByTestId('drives-empty').or(page.getByTestId('drives-table'))).toBeVisible();
}

/** Saves a screenshot into e2e-artifacts/. */
export async function snap(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(artifactsDir, `${name}.png`) });
}

export interface NewDrive {
  path: string;
  id?: string;
  format: 'raw' | 'qcow2';
  size?: string;
  clusterSize?: number;
  backing?: string;
}

/** Fills and submits the "New drive" dialog; waits for the row to appear when an id is given. */
export async function createDrive(page: Page, d: NewDrive): Promise<void> {
  await page.getByTestId('new-drive').click();
  await page.getByTestId('field-path').fill(d.path);
  if (d.id) await page.getByTestId('field-id').fill(d.id);
  await page.getByTestId('field-format').selectOption(d.format);
  if (d.size) await page.getByTestId('field-size').fill(d.size);
  if (d.clusterSize) await page.getByTestId('field-cluster-size').selectOption(String(d.clusterSize));
  if (d.backing) await page.getByTestId('field-backing').fill(d.backing);
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  if (d.id) await expect(page.getByTestId(`drive-row-${d.id}`)).toBeVisible();
}

/** Closes every toast, so screenshots and later assertions start clean. */
export async function dismissToasts(page: Page): Promise<void> {
  const close = page.getByTestId('toast').getByRole('button', { name: 'Dismiss notification' });
  for (let i = 0; i < 20 && (await close.count()) > 0; i++) {
    // a success toast may leave on its own between count() and click(); that is fine
    await close
      .first()
      .click({ timeout: 500 })
      .catch(() => {});
  }
  await expect(page.getByTestId('toast')).toHaveCount(0);
}
