import { registerCommand } from './commands.js';
import { generic, QmpError } from './errors.js';
import { checkArgs, type ArgSpec } from './args.js';
import { JobError } from '../../jobs/manager.js';
import { runTransaction, type TransactionAction } from '../../jobs/transaction.js';
import type { BackupParams } from '../../jobs/backup-create.js';
import { parseMergeSources } from './bitmap-commands.js';
import type { BlockEngine } from '../../engine.js';

// Backups, jobs and transactions over QMP, with QEMU's argument names.

const ON_ERROR = ['report', 'ignore', 'enospc', 'stop', 'auto'] as const;

const BACKUP_COMMON: ArgSpec = {
  'job-id': { type: 'str', optional: true },
  device: { type: 'str' },
  sync: { type: 'str', enum: ['full', 'top', 'none', 'incremental', 'bitmap'] },
  speed: { type: 'int', optional: true },
  bitmap: { type: 'str', optional: true },
  'bitmap-mode': { type: 'str', optional: true, enum: ['on-success', 'never', 'always'] },
  compress: { type: 'bool', optional: true },
  'on-source-error': { type: 'str', optional: true, enum: ON_ERROR },
  'on-target-error': { type: 'str', optional: true, enum: ON_ERROR },
  'auto-finalize': { type: 'bool', optional: true },
  'auto-dismiss': { type: 'bool', optional: true },
  'filter-node-name': { type: 'str', optional: true },
  'discard-source': { type: 'bool', optional: true },
  'x-perf': { type: 'object', optional: true },
};

const DRIVE_BACKUP: ArgSpec = {
  ...BACKUP_COMMON,
  target: { type: 'str' },
  format: { type: 'str', optional: true, enum: ['raw', 'qcow2'] },
  mode: { type: 'str', optional: true, enum: ['existing', 'absolute-paths'] },
};

const BLOCKDEV_BACKUP: ArgSpec = { ...BACKUP_COMMON, target: { type: 'str' } };

function common(a: Record<string, unknown>): Omit<BackupParams, 'target'> {
  return {
    jobId: a['job-id'] as string | undefined,
    device: a.device as string,
    sync: a.sync as BackupParams['sync'],
    speed: a.speed as number | undefined,
    bitmap: a.bitmap as string | undefined,
    bitmapMode: a['bitmap-mode'] as BackupParams['bitmapMode'],
    compress: a.compress as boolean | undefined,
    onSourceError: a['on-source-error'] as BackupParams['onSourceError'],
    onTargetError: a['on-target-error'] as BackupParams['onTargetError'],
    autoFinalize: a['auto-finalize'] as boolean | undefined,
    autoDismiss: a['auto-dismiss'] as boolean | undefined,
  };
}

function driveBackupParams(a: Record<string, unknown>): BackupParams {
  return {
    ...common(a),
    target: { kind: 'file', path: a.target as string, format: a.format as 'raw' | 'qcow2' | undefined, mode: (a.mode as 'existing' | 'absolute-paths' | undefined) ?? 'absolute-paths' },
  };
}

function blockdevBackupParams(a: Record<string, unknown>): BackupParams {
  return { ...common(a), target: { kind: 'node', node: a.target as string } };
}

/** JobError → QMP error class (DeviceNotActive for unknown block-job ids). */
function qmpJobError(err: unknown): never {
  if (err instanceof JobError && err.deviceNotActive) throw new QmpError('DeviceNotActive', err.message);
  throw err;
}

async function startBackup(engine: BlockEngine, type: 'drive-backup' | 'blockdev-backup', params: BackupParams): Promise<Record<string, never>> {
  await runTransaction(engine, [{ type, params }]);
  return {};
}

registerCommand('drive-backup', { args: DRIVE_BACKUP, run: (a, ctx) => startBackup(ctx.engine, 'drive-backup', driveBackupParams(a)) });
registerCommand('blockdev-backup', { args: BLOCKDEV_BACKUP, run: (a, ctx) => startBackup(ctx.engine, 'blockdev-backup', blockdevBackupParams(a)) });

registerCommand('query-jobs', { args: {}, run: async (_a, ctx) => ctx.engine.jobs.list().map((j) => j.info()) });
registerCommand('query-block-jobs', {
  args: {},
  run: async (_a, ctx) => ctx.engine.jobs.list().filter((j) => j.status !== 'concluded' || !j.autoDismiss).map((j) => j.blockInfo()),
});

const ID = { id: { type: 'str' } } as const;
const DEVICE = { device: { type: 'str' } } as const;

registerCommand('job-pause', { args: ID, run: async (a, ctx) => (ctx.engine.jobs.pause(a.id as string), {}) });
registerCommand('job-resume', { args: ID, run: async (a, ctx) => (ctx.engine.jobs.resume(a.id as string), {}) });
registerCommand('job-cancel', {
  args: ID,
  async run(a, ctx) {
    const cancelling = ctx.engine.jobs.cancel(a.id as string, { force: true });
    cancelling.catch((err: unknown) => ctx.log?.(`job-cancel ${String(a.id)}: ${String(err)}`));
    return {};
  },
});
registerCommand('job-complete', { args: ID, run: async (a, ctx) => (ctx.engine.jobs.complete(a.id as string), {}) });
registerCommand('job-finalize', { args: ID, run: async (a, ctx) => (await ctx.engine.jobs.finalize(a.id as string), {}) });
registerCommand('job-dismiss', { args: ID, run: async (a, ctx) => (ctx.engine.jobs.dismiss(a.id as string), {}) });

registerCommand('block-job-pause', { args: DEVICE, run: async (a, ctx) => (tryLegacy(() => ctx.engine.jobs.pause(a.device as string, true)), {}) });
registerCommand('block-job-resume', { args: DEVICE, run: async (a, ctx) => (tryLegacy(() => ctx.engine.jobs.resume(a.device as string, true)), {}) });
registerCommand('block-job-complete', { args: DEVICE, run: async (a, ctx) => (tryLegacy(() => ctx.engine.jobs.complete(a.device as string, true)), {}) });
registerCommand('block-job-cancel', {
  args: { ...DEVICE, force: { type: 'bool', optional: true } },
  async run(a, ctx) {
    const jobs = ctx.engine.jobs;
    // checks run now; the cancel itself completes in the background, signalled by events
    const cancelling = tryLegacy(() => jobs.cancel(a.device as string, { legacy: true, force: a.force as boolean | undefined }));
    cancelling.catch((err: unknown) => ctx.log?.(`block-job-cancel ${String(a.device)}: ${String(err)}`));
    return {};
  },
});
registerCommand('block-job-finalize', { args: ID, run: async (a, ctx) => (await tryLegacyAsync(() => ctx.engine.jobs.finalize(a.id as string, true)), {}) });
registerCommand('block-job-dismiss', { args: ID, run: async (a, ctx) => (tryLegacy(() => ctx.engine.jobs.dismiss(a.id as string, true)), {}) });
registerCommand('block-job-set-speed', {
  args: { ...DEVICE, speed: { type: 'int' } },
  run: async (a, ctx) => (tryLegacy(() => ctx.engine.jobs.setSpeed(a.device as string, a.speed as number)), {}),
});

function tryLegacy<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    return qmpJobError(err);
  }
}

async function tryLegacyAsync(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    qmpJobError(err);
  }
}

/** One transaction action from the wire: {type, data}. */
function parseAction(raw: unknown, i: number): TransactionAction {
  if (typeof raw !== 'object' || raw === null) throw generic(`Invalid parameter type for 'actions[${i}]', expected: TransactionAction`);
  const { type, data } = raw as { type?: unknown; data?: unknown };
  const at = `actions[${i}].data.`;
  switch (type) {
    case 'abort':
      checkArgs({}, data ?? {}, at);
      return { type };
    case 'block-dirty-bitmap-add': {
      const a = checkArgs(
        { node: { type: 'str' }, name: { type: 'str' }, granularity: { type: 'uint32', optional: true }, persistent: { type: 'bool', optional: true }, disabled: { type: 'bool', optional: true } },
        data,
        at,
      );
      return { type, node: a.node as string, name: a.name as string, options: { granularity: a.granularity as number | undefined, persistent: a.persistent as boolean | undefined, disabled: a.disabled as boolean | undefined } };
    }
    case 'block-dirty-bitmap-remove':
    case 'block-dirty-bitmap-clear':
    case 'block-dirty-bitmap-enable':
    case 'block-dirty-bitmap-disable': {
      const a = checkArgs({ node: { type: 'str' }, name: { type: 'str' } }, data, at);
      return { type, node: a.node as string, name: a.name as string };
    }
    case 'block-dirty-bitmap-merge': {
      const a = checkArgs({ node: { type: 'str' }, target: { type: 'str' }, bitmaps: { type: 'array' } }, data, at);
      return { type, node: a.node as string, target: a.target as string, sources: parseMergeSources(a.bitmaps) };
    }
    case 'drive-backup':
      return { type, params: driveBackupParams(checkArgs(DRIVE_BACKUP, data, at)) };
    case 'blockdev-backup':
      return { type, params: blockdevBackupParams(checkArgs(BLOCKDEV_BACKUP, data, at)) };
    default:
      throw generic(`Parameter 'actions[${i}].type' does not accept value '${String(type)}'`);
  }
}

registerCommand('transaction', {
  args: { actions: { type: 'array' }, properties: { type: 'object', optional: true } },
  async run(a, ctx) {
    const props = checkArgs({ 'completion-mode': { type: 'str', optional: true, enum: ['individual', 'grouped'] } }, a.properties ?? {}, 'properties.');
    const actions = (a.actions as unknown[]).map(parseAction);
    await runTransaction(ctx.engine, actions, (props['completion-mode'] as 'individual' | 'grouped' | undefined) ?? 'individual');
    return {};
  },
});
