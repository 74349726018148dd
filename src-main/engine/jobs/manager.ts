import { EventEmitter } from 'node:events';
import type { Job } from './job.js';
import { verbAllowed, type JobVerb } from './job-states.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import type { Drive } from '../drive.js';

/** A refused job command. `deviceNotActive` marks QEMU's DeviceNotActive class (block-job-* on unknown ids). */
export class JobError extends TidemarkError {
  constructor(
    message: string,
    readonly deviceNotActive = false,
  ) {
    super(deviceNotActive ? 'NOT_FOUND' : 'INVALID_INPUT', message);
    this.name = 'JobError';
  }
}

const JOB_ID = /^[A-Za-z][A-Za-z0-9._-]*$/;

interface ManagerEvents {
  /** QMP-shaped job events: JOB_STATUS_CHANGE, BLOCK_JOB_* */
  event: [string, Record<string, unknown>];
  /** a job reached null and left the list */
  gone: [Job];
}

/** Every job of the engine, QEMU's verbs on them, and their events. */
export class JobManager extends EventEmitter<ManagerEvents> {
  private readonly jobs = new Map<string, Job>();

  readonly sink = (event: string, data: Record<string, unknown>): void => {
    this.emit('event', event, data);
  };

  readonly onNull = (job: Job): void => {
    if (this.jobs.get(job.id) === job) this.jobs.delete(job.id);
    this.emit('gone', job);
  };

  list(): Job[] {
    return [...this.jobs.values()];
  }

  /** Checks a new job id: QEMU's id syntax, unique among live jobs. */
  checkId(id: string): void {
    if (!JOB_ID.test(id)) throw new JobError(`Invalid job ID '${id}'`);
    if (this.jobs.has(id)) throw new JobError(`Job ID '${id}' already in use`);
  }

  add(job: Job): void {
    this.checkId(job.id);
    this.jobs.set(job.id, job);
  }

  /** job-* lookups: "Job not found"; block-job-* lookups: DeviceNotActive. */
  get(id: string, legacy = false): Job {
    const job = this.jobs.get(id);
    if (!job) throw legacy ? new JobError(`Block job '${id}' not found`, true) : new JobError('Job not found');
    return job;
  }

  checkVerb(job: Job, verb: JobVerb): void {
    if (!verbAllowed(verb, job.status)) throw new JobError(`Job '${job.id}' in state '${job.status}' cannot accept command verb '${verb}'`);
  }

  pause(id: string, legacy = false): void {
    const job = this.get(id, legacy);
    this.checkVerb(job, 'pause');
    if (job.userPaused) throw new JobError('Job is already paused');
    job.pause();
  }

  resume(id: string, legacy = false): void {
    const job = this.get(id, legacy);
    // QEMU checks this before the verb table
    if (!job.userPaused) throw new JobError("Can't resume a job that was not paused");
    this.checkVerb(job, 'resume');
    job.resume();
  }

  /**
   * Checks a cancel now (throwing QEMU's refusals synchronously) and returns the cancellation
   * in progress; QMP answers at once and lets events tell the outcome.
   */
  cancel(id: string, options: { legacy?: boolean; force?: boolean } = {}): Promise<void> {
    const job = this.get(id, options.legacy);
    this.checkVerb(job, 'cancel');
    if (options.legacy && !options.force && job.userPaused) {
      throw new JobError(`The block job for device '${id}' is currently paused`);
    }
    return job.cancel();
  }

  /** The live job using this drive, if any. */
  jobUsing(drive: Drive): Job | undefined {
    return this.list().find((j) => j.status !== 'null' && j.status !== 'concluded' && j.usesDrive(drive));
  }

  /** Cancels every live job and waits until each is gone (engine shutdown). */
  async cancelAll(): Promise<void> {
    const live = this.list();
    for (const j of live) {
      if (j.status === 'concluded') j.dismiss();
      else if (j.status !== 'null' && j.status !== 'aborting') await j.cancel().catch(() => {});
    }
    await Promise.all(live.map((j) => j.settled()));
  }

  complete(id: string, legacy = false): void {
    const job = this.get(id, legacy);
    this.checkVerb(job, 'complete');
    throw new JobError(`The active block job '${id}' cannot be completed`);
  }

  async finalize(id: string, legacy = false): Promise<void> {
    const job = this.get(id, legacy);
    this.checkVerb(job, 'finalize');
    if (job.txn) await job.txn.finalizeAll();
    else await job.finalize();
  }

  dismiss(id: string, legacy = false): void {
    const job = this.get(id, legacy);
    this.checkVerb(job, 'dismiss');
    job.dismiss();
  }

  setSpeed(id: string, speed: number): void {
    const job = this.get(id, true);
    this.checkVerb(job, 'set-speed');
    if (speed < 0) throw new JobError("Parameter 'speed' expects a non-negative value");
    job.setSpeed(speed);
  }
}
