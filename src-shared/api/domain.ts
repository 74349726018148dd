import { z } from 'zod';

/** Domain shapes shared by main and renderer. Schemas first; types are derived from them. */

export const ImageFormatSchema = z.enum(['raw', 'qcow2']);
export type ImageFormat = z.infer<typeof ImageFormatSchema>;

/** Drive ids double as QMP device names and NBD export names: QEMU's id syntax. */
export const DriveIdSchema = z
  .string()
  .min(1, 'A drive id cannot be empty.')
  .max(31, 'A drive id is at most 31 characters.')
  .regex(/^[A-Za-z][A-Za-z0-9._-]*$/, 'A drive id starts with a letter and uses only letters, digits, ".", "_" and "-".');

export const BackingLinkSchema = z.object({
  path: z.string(),
  format: ImageFormatSchema,
  virtualSize: z.number().int().nonnegative(),
});

export const DriveInfoSchema = z.object({
  id: DriveIdSchema,
  path: z.string(),
  format: ImageFormatSchema,
  virtualSize: z.number().int().nonnegative(),
  actualSize: z.number().int().nonnegative(),
  clusterSize: z.number().int().positive().optional(),
  backingFile: z.string().optional(),
  backingChain: z.array(BackingLinkSchema),
  readOnly: z.boolean(),
  /** online: opened by the engine; offline: listed in the catalog but could not be opened (see problem) */
  state: z.enum(['online', 'offline']),
  problem: z.string().optional(),
});
export type DriveInfo = z.infer<typeof DriveInfoSchema>;

/** A size typed by a person ("10G", "512M", "1.5T", "4096") or a byte count. */
export const SizeInputSchema = z.union([z.number().int().nonnegative(), z.string().min(1).max(32)]);

export const AppInfoSchema = z.object({
  version: z.string(),
  host: z.enum(['electron', 'web']),
  dataDir: z.string(),
  engine: z.object({ ioWorkers: z.number().int().positive() }),
  /** every drive is exported over NBD here as nbd+unix:///<drive id>?socket=<path> (null: not serving) */
  nbdSocket: z.string().nullable(),
  /** the optional TCP listener (loopback only): nbd://<address>/<drive id>, or nbds:// when it requires TLS-PSK */
  nbdTcp: z.object({ address: z.string(), tls: z.boolean() }).nullable(),
});
export type AppInfo = z.infer<typeof AppInfoSchema>;

export const BitmapNameSchema = z
  .string()
  .min(1, 'A bitmap name cannot be empty.')
  .refine((s) => new TextEncoder().encode(s).length <= 1023, 'A bitmap name is at most 1023 bytes.');

/** One dirty bitmap as the UI sees it: QEMU's flags, plus a downsampled map of where the dirty data is. */
export const BitmapSummarySchema = z.object({
  driveId: DriveIdSchema,
  name: z.string(),
  granularity: z.number().int().positive(),
  /** dirty bytes: set bits × granularity (as QEMU counts) */
  count: z.number().int().nonnegative(),
  /** bytes of disk the bitmap covers */
  size: z.number().int().nonnegative(),
  recording: z.boolean(),
  busy: z.boolean(),
  persistent: z.boolean(),
  inconsistent: z.boolean(),
  /** raw drives: kept in a sidecar file in the data dir (Tidemark's extension) */
  sidecar: z.boolean(),
  /** memory the bitmap takes, bytes */
  memoryBytes: z.number().int().nonnegative(),
  /** fraction dirty (0..1) in equal buckets across the disk, for the dirty-map strip */
  map: z.array(z.number().min(0).max(1)),
});
export type BitmapSummary = z.infer<typeof BitmapSummarySchema>;

export const GranularitySchema = z
  .number()
  .int()
  .min(512, 'Granularity is at least 512 bytes.')
  .max(2 ** 31, 'Granularity is at most 2 GiB.')
  .refine((g) => (g & (g - 1)) === 0, 'Granularity must be a power of two.');

export const PointKindSchema = z.enum(['full', 'inc', 'diff']);
export const PointStatusSchema = z.enum(['running', 'complete', 'failed', 'missing', 'corrupt']);
export const ChainModeSchema = z.enum(['incremental', 'differential']);

/**
 * One backup (a point in time) in a chain. `n` numbers a drive's points across all its chains,
 * oldest = 1; failed attempts are listed (with their error) but get no number: nothing to restore.
 */
export const BackupPointSchema = z.object({
  id: z.number().int(),
  n: z.number().int().positive().nullable(),
  seq: z.number().int().positive(),
  kind: PointKindSchema,
  file: z.string(),
  /** ISO-8601 UTC: the backup's point in time (its job's start) */
  time: z.string(),
  status: PointStatusSchema,
  virtualSize: z.number().int().nonnegative(),
  fileSize: z.number().int().nonnegative().nullable(),
  bytesCopied: z.number().int().nonnegative().nullable(),
  durationMs: z.number().int().nonnegative().nullable(),
  sha256: z.string().nullable(),
  error: z.string().nullable(),
});
export type BackupPoint = z.infer<typeof BackupPointSchema>;

export const ChainSummarySchema = z.object({
  driveId: z.string(),
  chainId: z.string(),
  folder: z.string(),
  mode: ChainModeSchema,
  bitmap: z.string(),
  createdAt: z.string(),
  closedAt: z.string().nullable(),
  /** the chain new backups of the drive extend */
  active: z.boolean(),
  points: z.array(BackupPointSchema),
});
export type ChainSummary = z.infer<typeof ChainSummarySchema>;

export const BackupSettingsSchema = z.object({
  driveId: DriveIdSchema,
  /** folder backups go to (each drive gets a sub-folder); null until chosen */
  backupDir: z.string().nullable(),
  backupMode: ChainModeSchema,
});
export type BackupSettings = z.infer<typeof BackupSettingsSchema>;

export const GroupSchema = z.object({ name: z.string(), drives: z.array(z.string()) });
export type Group = z.infer<typeof GroupSchema>;

export const JobSummarySchema = z.object({
  id: z.string(),
  kind: z.enum(['backup', 'restore']),
  driveId: z.string(),
  /** what the job makes: 'full' | 'inc' | 'diff' for backups, 'restore' for restores */
  label: z.string(),
  status: z.string(),
  bytesDone: z.number().nonnegative(),
  bytesTotal: z.number().nonnegative(),
  /** bytes per second over the last few seconds */
  rate: z.number().nonnegative(),
  etaSeconds: z.number().nonnegative().nullable(),
  speedLimit: z.number().nonnegative(),
  paused: z.boolean(),
  startedAt: z.string(),
  error: z.string().nullable(),
});
export type JobSummary = z.infer<typeof JobSummarySchema>;

export const JobHistorySchema = z.object({
  id: z.number().int(),
  jobId: z.string(),
  kind: z.string(),
  /** full, inc, diff or restore */
  label: z.string(),
  driveId: z.string(),
  startedAt: z.string(),
  endedAt: z.string().nullable(),
  outcome: z.enum(['running', 'completed', 'failed', 'cancelled']),
  bytes: z.number().int().nonnegative(),
  error: z.string().nullable(),
});
export type JobHistory = z.infer<typeof JobHistorySchema>;

export const VerifyReportSchema = z.object({
  chainId: z.string(),
  ok: z.boolean(),
  checked: z.number().int().nonnegative(),
  problems: z.array(z.object({ n: z.number().int().positive(), file: z.string(), problem: z.string() })),
});
export type VerifyReport = z.infer<typeof VerifyReportSchema>;

export const RestoreTargetSchema = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.literal('file'),
      path: z.string().min(1).max(4096),
      format: ImageFormatSchema,
      /** overwrite an existing file (never the default) */
      force: z.boolean().optional(),
      /** qcow2 only: compressed clusters */
      compress: z.boolean().optional(),
      /** attach the restored image as a new drive afterwards (to inspect or boot it before committing) */
      attachAs: DriveIdSchema.optional(),
    })
    .strict(),
  z.object({ kind: z.literal('in-place') }).strict(),
]);
export type RestoreTarget = z.infer<typeof RestoreTargetSchema>;

export const PreflightCheckSchema = z.object({
  id: z.enum(['chain', 'space', 'target', 'idle']),
  label: z.string(),
  ok: z.boolean(),
  detail: z.string(),
});

export const PreflightSchema = z.object({
  ok: z.boolean(),
  checks: z.array(PreflightCheckSchema),
  /** bytes the restored image will hold (data of the chain at that point) */
  dataBytes: z.number().int().nonnegative(),
  /** n of the drive's points that are still restorable (their whole chain is intact) */
  restorable: z.array(z.number().int().positive()),
});
export type Preflight = z.infer<typeof PreflightSchema>;

export const RestoreReportSchema = z.object({
  jobId: z.string(),
  driveId: z.string(),
  n: z.number().int().positive(),
  pointTime: z.string(),
  outcome: z.enum(['running', 'completed', 'failed', 'cancelled']),
  target: z.string(),
  format: ImageFormatSchema,
  verified: z.boolean(),
  sourceHash: z.string().nullable(),
  restoredHash: z.string().nullable(),
  dataBytes: z.number().int().nonnegative(),
  changedBytes: z.number().int().nonnegative().nullable(),
  durationMs: z.number().int().nonnegative().nullable(),
  attachedAs: z.string().nullable(),
  error: z.string().nullable(),
});
export type RestoreReport = z.infer<typeof RestoreReportSchema>;
