import { canTransition, type JobStatus } from './job-states.js';
import type { JobTxn } from './job-txn.js';
import { FileError } from '../io/file-errors.js';
import type { Drive } from '../drive.js';

export type JobType = 'backup' | 'restore';
export type ErrorAction = 'report' | 'ignore' | 'stop' | 'enospc' | 'auto';
export type IoStatus = 'ok' | 'failed' | 'nospace';

/** How a job tells the world: QMP events by name, with QEMU's payloads. */
export type JobEventSink = (event: string, data: Record<string, unknown>) => void;

/** The job was cancelled: not an error to report, an outcome. */
export class JobCancelled extends Error {
  constructor() {
    super('Operation canceled');
  }
}

/** An I/O failure inside a job, remembering which side failed. */
export class JobIoError extends Error {
  constructor(
    readonly operation: 'read' | 'write',
    readonly failure: unknown,
  ) {
    super(describeError(failure));
  }

  get errno(): string | undefined {
    return this.failure instanceof FileError ? this.failure.errno : undefined;
  }
}

/** QEMU reports a job's failure as strerror text ("No space left on device"). */
export function describeError(err: unknown): string {
  if (err instanceof JobIoError) return err.message;
  if (err instanceof FileError) return err.strerror;
  return err instanceof Error ? err.message : String(err);
}

export interface JobOptions {
  id: string;
  autoFinalize: boolean;
  autoDismiss: boolean;
  speed: number;
}

/**
 * QEMU's job lifecycle: created → running (⇄ paused) → waiting → pending → concluded → null on
 * success; → aborting → concluded → null on failure or cancel. Subclasses do the work in `run`,
 * calling `pausePoint` between units of work, and settle their side effects in commit / abort
 * (QEMU's finalize callbacks) and clean.
 */
export abstract class Job {
  abstract readonly type: JobType;
  readonly id: string;
  status: JobStatus = 'undefined';
  autoFinalize: boolean;
  autoDismiss: boolean;
  speed: number;
  /** progress in bytes: offset / len in QEMU's words */
  current = 0;
  total = 0;
  userPaused = false;
  busy = false;
  ioStatus: IoStatus = 'ok';
  /** set when the job failed: QEMU's strerror-style text */
  error: string | undefined;
  cancelled = false;
  txn: JobTxn | undefined;
  /** the run finished (successfully, with an error, or cancelled) */
  finished = false;
  /** resolves when the job reaches null */
  readonly gone: Promise<void>;
  private goneResolve!: () => void;
  private resumeWaiters: (() => void)[] = [];
  private wakeSleeper: (() => void) | undefined;
  private runResult: Promise<void> | undefined;

  constructor(
    options: JobOptions,
    protected readonly emit: JobEventSink,
    private readonly onNull: (job: Job) => void,
  ) {
    this.id = options.id;
    this.autoFinalize = options.autoFinalize;
    this.autoDismiss = options.autoDismiss;
    this.speed = options.speed;
    this.gone = new Promise((r) => (this.goneResolve = r));
    this.transition('created');
  }

  /** Does this job read or write the drive (so other jobs and destructive commands must wait)? */
  usesDrive(_drive: Drive): boolean {
    return false;
  }

  /** the work; throws JobCancelled when cancelled, any other error when failed */
  protected abstract run(): Promise<void>;
  /** success: settle side effects (e.g. sync the bitmap) */
  protected abstract commit(): void;
  /** failure or cancel: undo side effects (e.g. reclaim the bitmap) */
  protected abstract abort(): void;
  /** release resources (close the target) whatever the outcome */
  protected abstract clean(): Promise<void>;

  get paused(): boolean {
    return this.userPaused;
  }

  transition(to: JobStatus): void {
    if (to === this.status) return;
    if (!canTransition(this.status, to)) throw new Error(`job ${this.id}: illegal transition ${this.status} → ${to}`);
    this.status = to;
    this.emit('JOB_STATUS_CHANGE', { id: this.id, status: to });
  }

  /** created → running, then runs in the background. */
  start(): void {
    this.transition('running');
    this.runResult = this.execute();
  }

  /** Waits (for tests and shutdown) until the work is over. */
  async settled(): Promise<void> {
    await this.runResult;
  }

  private async execute(): Promise<void> {
    let failure: unknown;
    try {
      this.busy = true;
      // a cancel that arrives after the work is done does not undo it (QEMU: it still completes)
      await this.run();
    } catch (err) {
      failure = err;
    } finally {
      this.busy = false;
      this.finished = true;
    }
    if (failure === undefined) {
      this.transition('waiting');
      if (this.txn) this.txn.succeeded(this);
      else await this.toPending();
      return;
    }
    if (!(failure instanceof JobCancelled)) this.error = describeError(failure);
    if (this.txn) await this.txn.failed(this);
    else await this.conclude(false);
  }

  /** waiting → pending; finalizes now when auto-finalize is on. */
  async toPending(): Promise<void> {
    this.transition('pending');
    if (this.autoFinalize) await this.finalize();
    else this.announcePending();
  }

  /** BLOCK_JOB_PENDING: the job waits for job-finalize (auto-finalize off). */
  announcePending(): void {
    this.emit('BLOCK_JOB_PENDING', { type: this.type, id: this.id });
  }

  /** pending → commit → BLOCK_JOB_COMPLETED → concluded (→ null). */
  async finalize(): Promise<void> {
    this.commit();
    await this.conclude(true);
  }

  /**
   * Ends the job: on success after commit; otherwise through aborting with the abort callback.
   * `neverStarted` jobs (rolled back in a transaction) emit no BLOCK_JOB event, as in QEMU.
   */
  async conclude(success: boolean, neverStarted = false): Promise<void> {
    if (!success) {
      this.transition('aborting');
      this.abort();
    }
    try {
      await this.clean();
    } catch (err) {
      // the outcome stands; a failed close is reported with it
      if (success) this.error ??= describeError(err);
    }
    if (!neverStarted) {
      const data = { type: this.type, device: this.id, len: this.total, offset: this.current, speed: this.speed };
      if (success || this.error !== undefined) {
        this.emit('BLOCK_JOB_COMPLETED', this.error !== undefined && !success ? { ...data, error: this.error } : data);
      } else {
        this.emit('BLOCK_JOB_CANCELLED', data);
      }
    }
    this.transition('concluded');
    if (this.autoDismiss) this.dismiss();
  }

  dismiss(): void {
    this.transition('null');
    this.onNull(this);
    this.goneResolve();
  }

  /** Cancels: a running job stops at its next pause point; a never-started one is rolled back. */
  async cancel(): Promise<void> {
    this.cancelled = true;
    if (this.status === 'created') {
      await this.conclude(false, true);
      return;
    }
    this.resume();
    this.wakeSleeper?.();
    if (this.status === 'pending' || (this.status === 'waiting' && !this.txn)) {
      await this.conclude(false);
    }
  }

  pause(): void {
    this.userPaused = true;
  }

  resume(): void {
    this.userPaused = false;
    if (this.ioStatus !== 'ok') this.ioStatus = 'ok';
    const waiters = this.resumeWaiters;
    this.resumeWaiters = [];
    for (const w of waiters) w();
  }

  setSpeed(speed: number): void {
    this.speed = speed;
    this.wakeSleeper?.();
  }

  /** Between units of work: honours pause and cancel. */
  protected async pausePoint(): Promise<void> {
    if (this.cancelled) throw new JobCancelled();
    if (!this.userPaused) return;
    this.transition('paused');
    this.busy = false;
    await new Promise<void>((resolve) => this.resumeWaiters.push(resolve));
    this.busy = true;
    this.transition('running');
    if (this.cancelled) throw new JobCancelled();
  }

  /** Sleeps for rate limiting; set-speed and cancel cut it short. */
  protected sleep(ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.wakeSleeper === done) this.wakeSleeper = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeSleeper = done;
    });
  }

  /**
   * QEMU's error policy for background I/O: report (fail), ignore (retry), stop (pause until the
   * user resumes, then retry); enospc/auto stop on ENOSPC and report otherwise. Emits
   * BLOCK_JOB_ERROR. Returns normally when the failed unit should be retried.
   */
  protected async onIoError(err: JobIoError, policy: ErrorAction): Promise<void> {
    let action: 'report' | 'ignore' | 'stop';
    if (policy === 'enospc' || policy === 'auto') action = err.errno === 'ENOSPC' ? 'stop' : 'report';
    else action = policy;
    this.emit('BLOCK_JOB_ERROR', { device: this.id, operation: err.operation, action });
    if (action === 'report') throw err;
    if (action === 'stop') {
      this.ioStatus = err.errno === 'ENOSPC' ? 'nospace' : 'failed';
      this.userPaused = true;
      await this.pausePoint();
    }
  }

  info(): Record<string, unknown> {
    const out: Record<string, unknown> = {
      id: this.id,
      type: this.type,
      status: this.status,
      'current-progress': this.current,
      'total-progress': this.total,
    };
    if (this.error !== undefined) out.error = this.error;
    return out;
  }

  blockInfo(): Record<string, unknown> {
    const out: Record<string, unknown> = {
      type: this.type,
      device: this.id,
      len: this.total,
      offset: this.current,
      busy: this.busy,
      paused: this.paused,
      speed: this.speed,
      'io-status': this.ioStatus,
      ready: false,
      status: this.status,
      'auto-finalize': this.autoFinalize,
      'auto-dismiss': this.autoDismiss,
    };
    if (this.error !== undefined) out.error = this.error;
    return out;
  }
}
