import type { Job } from './job.js';

/**
 * A grouped transaction's jobs (QEMU's JobTxn): none completes until all have finished; when one
 * fails or is cancelled, the others are cancelled too — even those already waiting — and every
 * job ends through abort, so every bitmap is reclaimed.
 */
export class JobTxn {
  private readonly jobs: Job[] = [];
  private aborting = false;

  add(job: Job): void {
    this.jobs.push(job);
    job.txn = this;
  }

  /** A member finished its work: when all have, they go to pending together. */
  succeeded(_job: Job): void {
    if (this.aborting) return;
    if (!this.jobs.every((j) => j.finished && j.status === 'waiting')) return;
    void (async () => {
      for (const j of this.jobs) j.transition('pending');
      if (this.jobs.every((j) => j.autoFinalize)) await this.finalizeAll();
      else for (const j of this.jobs) j.announcePending();
    })();
  }

  /** job-finalize on any member finalizes the whole group. */
  async finalizeAll(): Promise<void> {
    for (const j of this.jobs) await j.finalize();
  }

  /** A member failed or was cancelled: cancel the rest and abort everyone. */
  async failed(job: Job): Promise<void> {
    if (this.aborting) {
      // a sibling we cancelled has stopped: the abort below waits for it
      return;
    }
    this.aborting = true;
    const others = this.jobs.filter((j) => j !== job);
    for (const j of others) {
      j.cancelled = true;
      if (!j.finished) await j.cancel();
    }
    for (const j of others) await j.settled();
    await job.conclude(false);
    for (const j of others) if (j.status !== 'null' && j.status !== 'concluded') await j.conclude(false);
  }
}
