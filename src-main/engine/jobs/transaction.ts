import type { BlockEngine } from '../engine.js';
import type { DirtyBitmap } from '../bitmap/dirty-bitmap.js';
import { SharedBits } from '../bitmap/shared-bits.js';
import { CHECK_ALLOW_RO, CHECK_BUSY, CHECK_DEFAULT, CHECK_RO, checkBitmap } from '../bitmap/node-bitmaps.js';
import type { AddOptions, MergeSource } from '../bitmap/bitmap-ops.js';
import { createBackupJob, type BackupParams } from './backup-create.js';
import type { BackupJob } from './backup-job.js';
import { JobTxn } from './job-txn.js';
import { JobError } from './manager.js';

export type TransactionAction =
  | { type: 'abort' }
  | { type: 'block-dirty-bitmap-add'; node: string; name: string; options: AddOptions }
  | { type: 'block-dirty-bitmap-remove' | 'block-dirty-bitmap-clear' | 'block-dirty-bitmap-enable' | 'block-dirty-bitmap-disable'; node: string; name: string }
  | { type: 'block-dirty-bitmap-merge'; node: string; target: string; sources: MergeSource[] }
  | { type: 'drive-backup' | 'blockdev-backup'; params: BackupParams };

/** One prepared action: prepare already had its effects; commit settles them, abort undoes them. */
interface Prepared {
  commit(): void | Promise<void>;
  abort(): void | Promise<void>;
}

function snapshot(b: DirtyBitmap): SharedBits {
  const copy = new SharedBits(b.bits.size);
  copy.copyFrom(b.bits);
  return copy;
}

/**
 * QEMU's `transaction`: every action prepares in list order (with immediate effects, so order
 * matters), then all commit, or — at the first failure — all prepared ones abort in reverse, and
 * nothing is left changed. Guest writes are held for the whole transaction, so every backup in it
 * starts at the same point in time. Grouped completion accepts backup actions only.
 */
export async function runTransaction(engine: BlockEngine, actions: TransactionAction[], completionMode: 'individual' | 'grouped' = 'individual'): Promise<BackupJob[]> {
  if (completionMode === 'grouped') {
    const bad = actions.find((a) => a.type !== 'drive-backup' && a.type !== 'blockdev-backup');
    if (bad) throw new JobError(`Action '${bad.type}' does not support Transaction property completion-mode = grouped`);
  }
  if (actions.length === 0) return [];
  const releases = await Promise.all(engine.list().map((d) => d.quiesce()));
  const prepared: Prepared[] = [];
  const jobs: BackupJob[] = [];
  const txn = completionMode === 'grouped' ? new JobTxn() : undefined;
  try {
    try {
      for (const action of actions) prepared.push(await prepare(engine, action, jobs));
    } catch (err) {
      for (const p of prepared.reverse()) await p.abort();
      throw err;
    }
    if (txn) for (const j of jobs) txn.add(j);
    // commit in reverse registration order, as QEMU's Transaction API does; jobs start here
    for (const p of [...prepared].reverse()) await p.commit();
    return jobs;
  } finally {
    for (const release of releases) release();
  }
}

async function prepare(engine: BlockEngine, action: TransactionAction, jobs: BackupJob[]): Promise<Prepared> {
  const cmds = engine.bitmapCommands;
  switch (action.type) {
    case 'abort':
      throw new JobError('Transaction aborted using Abort action');
    case 'block-dirty-bitmap-add': {
      const b = cmds.add(action.node, action.name, action.options);
      const drive = cmds.find(action.node, action.name).drive;
      return { commit() {}, abort: () => drive.bitmaps.release(b) };
    }
    case 'block-dirty-bitmap-clear': {
      const { bitmap } = cmds.find(action.node, action.name);
      checkBitmap(bitmap, CHECK_DEFAULT);
      const old = snapshot(bitmap);
      bitmap.clear();
      return { commit() {}, abort: () => bitmap.bits.copyFrom(old) };
    }
    case 'block-dirty-bitmap-enable':
    case 'block-dirty-bitmap-disable': {
      const { bitmap } = cmds.find(action.node, action.name);
      checkBitmap(bitmap, CHECK_ALLOW_RO);
      const was = bitmap.disabled;
      bitmap.disabled = action.type === 'block-dirty-bitmap-disable';
      return { commit() {}, abort: () => void (bitmap.disabled = was) };
    }
    case 'block-dirty-bitmap-merge': {
      const { bitmap } = cmds.find(action.node, action.target);
      const old = snapshot(bitmap);
      cmds.merge(action.node, action.target, action.sources);
      return { commit() {}, abort: () => bitmap.bits.copyFrom(old) };
    }
    case 'block-dirty-bitmap-remove': {
      const { drive, bitmap } = cmds.find(action.node, action.name);
      checkBitmap(bitmap, CHECK_BUSY | CHECK_RO);
      // QEMU deletes a persistent bitmap from the image at prepare time and marks it busy meanwhile
      if (bitmap.persistent && drive.bitmapStore) await drive.bitmapStore.remove(action.name);
      bitmap.busy = true;
      return {
        commit: () => {
          bitmap.busy = false;
          drive.bitmaps.release(bitmap);
        },
        abort: () => {
          // still persistent: it is written back at close
          bitmap.busy = false;
        },
      };
    }
    case 'drive-backup':
    case 'blockdev-backup': {
      const job = await createBackupJob(engine, action.params);
      jobs.push(job);
      return {
        commit: () => job.start(),
        abort: () => job.cancel(),
      };
    }
  }
}
