import { unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { BlockEngine } from '../engine.js';
import type { Drive } from '../drive.js';
import { createImage, openImage } from '../formats/open.js';
import type { ImageFormat } from '../formats/types.js';
import { CHECK_ALLOW_RO, CHECK_DEFAULT, checkBitmap } from '../bitmap/node-bitmaps.js';
import { BackupJob, type BitmapMode, type SyncMode } from './backup-job.js';
import { DriveTarget, ImageTarget, type BackupTarget } from './backup-target.js';
import type { ErrorAction } from './job.js';
import { JobError } from './manager.js';

export type BackupTargetSpec =
  | { kind: 'file'; path: string; format?: ImageFormat; mode: 'existing' | 'absolute-paths' }
  | { kind: 'node'; node: string };

export interface BackupParams {
  jobId?: string;
  device: string;
  target: BackupTargetSpec;
  sync: SyncMode | 'incremental';
  bitmap?: string;
  bitmapMode?: BitmapMode;
  speed?: number;
  compress?: boolean;
  onSourceError?: ErrorAction;
  onTargetError?: ErrorAction;
  autoFinalize?: boolean;
  autoDismiss?: boolean;
}

const MIN_BACKUP_CLUSTER = 65536;

/** QEMU's op-blocker refusal for a drive a live job is using. */
function checkNotBusy(engine: BlockEngine, drive: Drive): void {
  const job = engine.jobs.jobUsing(drive);
  if (job) throw new JobError(`Node '${drive.id}' is busy: block device is in use by block job: ${job.type}`);
}

/**
 * Creates a backup job — validated in QEMU's order, with QEMU's messages — without starting it.
 * Unlike QEMU, a refusal leaves nothing behind: a target file this call created is removed again.
 */
export async function createBackupJob(engine: BlockEngine, p: BackupParams): Promise<BackupJob> {
  const source = engine.lookup(p.device);
  if (!source) throw new JobError(`Cannot find device='${p.device}' nor node-name='${p.device}'`);

  // bitmap rules (do_backup_common)
  let sync = p.sync;
  let mode = p.bitmapMode;
  if ((sync === 'bitmap' || sync === 'incremental') && !p.bitmap) throw new JobError(`must provide a valid bitmap name for '${sync}' sync mode`);
  if (sync === 'incremental') {
    if (mode !== undefined && mode !== 'on-success') throw new JobError("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'");
    sync = 'bitmap';
    mode = 'on-success';
  }
  const bitmap = p.bitmap !== undefined ? source.bitmaps.find(p.bitmap) : undefined;
  if (p.bitmap !== undefined) {
    if (!bitmap) throw new JobError(`Bitmap '${p.bitmap}' could not be found`);
    if (mode === undefined) throw new JobError('Bitmap sync mode must be given when providing a bitmap');
    checkBitmap(bitmap, CHECK_ALLOW_RO);
    if (sync === 'none') throw new JobError("sync mode 'none' does not produce meaningful bitmap outputs");
    if (mode === 'never' && sync !== 'bitmap') throw new JobError(`Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '${sync}'`);
  } else if (mode !== undefined) {
    throw new JobError('Cannot specify bitmap sync mode without a bitmap');
  }

  // backup_job_create
  checkNotBusy(engine, source);
  if (bitmap && mode !== 'never') checkBitmap(bitmap, CHECK_DEFAULT);
  const jobId = p.jobId ?? source.id;
  engine.jobs.checkId(jobId);
  const speed = p.speed ?? 0;
  if (speed < 0) throw new JobError("Parameter 'speed' expects a non-negative value");

  const { target, created } = await openTarget(engine, source, p.target, sync);
  try {
    if (target instanceof DriveTarget && target.name === source.id) throw new JobError('Source and target cannot be the same');
    if (p.compress && !target.supportsCompression) throw new JobError(`Compression is not supported for this drive ${target.name}`);
    if (target.virtualSize !== source.virtualSize) throw new JobError('Source and target image have different sizes');
    // the target may have been taken by a job while we opened it
    engine.jobs.checkId(jobId);
    if (bitmap && (bitmap.busy || bitmap.successor)) checkBitmap(bitmap, CHECK_DEFAULT);
    const clusterSize = Math.max(MIN_BACKUP_CLUSTER, target.clusterSize ?? 0);
    if (bitmap) source.bitmaps.createSuccessor(bitmap);
    const job = new BackupJob(
      {
        id: jobId,
        autoFinalize: p.autoFinalize ?? true,
        autoDismiss: p.autoDismiss ?? true,
        speed,
        source,
        target,
        sync: sync as SyncMode,
        bitmap,
        bitmapMode: mode,
        compress: p.compress ?? false,
        onSourceError: p.onSourceError ?? 'report',
        onTargetError: p.onTargetError ?? 'report',
        clusterSize,
        targetStartsZeroed: created !== undefined && !target.hasBacking,
      },
      engine.jobs.sink,
      engine.jobs.onNull,
    );
    engine.jobs.add(job);
    return job;
  } catch (err) {
    await target.release().catch(() => {});
    if (created) await unlink(created).catch(() => {});
    throw err;
  }
}

/** drive-backup opens (mode existing) or creates (absolute-paths) a file; blockdev-backup names an attached drive. */
async function openTarget(engine: BlockEngine, source: Drive, spec: BackupTargetSpec, sync: string): Promise<{ target: BackupTarget; created?: string }> {
  if (spec.kind === 'node') {
    const drive = engine.lookup(spec.node);
    if (!drive) throw new JobError(`Cannot find device='${spec.node}' nor node-name='${spec.node}'`);
    if (drive !== source) checkNotBusy(engine, drive);
    return { target: new DriveTarget(drive) };
  }
  const path = resolve(spec.path);
  if (spec.mode === 'existing') {
    const open = () => openImage(path, { readOnly: false, format: spec.format ?? 'auto', opener: engine.opener });
    const driver = await open();
    return { target: new ImageTarget(driver, (await driver.info()).backingChain.length > 0, open) };
  }
  const format = spec.format ?? source.driver.format;
  const info = await source.driver.info();
  // QEMU: sync=top keeps the source's backing file under the copy; sync=none puts the source itself there
  let backingFile: string | undefined;
  let backingFormat: ImageFormat | undefined;
  if (format === 'qcow2' && sync === 'top' && info.backingFilename) {
    backingFile = info.backingFilename;
    backingFormat = info.backingFormat;
  } else if (format === 'qcow2' && sync === 'none') {
    backingFile = info.path;
    backingFormat = info.format;
    // the new image reads the source through its own open of the file: metadata the source
    // still holds in its write-back cache must be on disk first, or it would read the past
    await source.flush();
  }
  await createImage(path, { format, virtualSize: source.virtualSize, backingFile, backingFormat, opener: engine.opener });
  try {
    const open = () => openImage(path, { readOnly: false, format, opener: engine.opener });
    const driver = await open();
    return { target: new ImageTarget(driver, backingFile !== undefined, open), created: path };
  } catch (err) {
    await unlink(path).catch(() => {});
    throw err;
  }
}
