import { z } from 'zod';
import {
  AppInfoSchema,
  BackupSettingsSchema,
  BitmapNameSchema,
  ChainModeSchema,
  ChainSummarySchema,
  GroupSchema,
  JobHistorySchema,
  JobSummarySchema,
  VerifyReportSchema,
  PreflightSchema,
  RestoreReportSchema,
  RestoreTargetSchema,
  BitmapSummarySchema,
  DriveIdSchema,
  DriveInfoSchema,
  GranularitySchema,
  ImageFormatSchema,
  SizeInputSchema,
} from './domain.js';

const BitmapRef = z.object({ driveId: DriveIdSchema, name: z.string().min(1) }).strict();

/** One action of an app-level transaction (QEMU's transaction actions, addressed by drive id). */
const TransactionActionSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('bitmap-add'), driveId: DriveIdSchema, name: BitmapNameSchema, granularity: GranularitySchema.optional(), persistent: z.boolean().optional(), disabled: z.boolean().optional() }).strict(),
  z.object({ type: z.enum(['bitmap-remove', 'bitmap-clear', 'bitmap-enable', 'bitmap-disable']), driveId: DriveIdSchema, name: z.string().min(1) }).strict(),
  z.object({ type: z.literal('bitmap-merge'), driveId: DriveIdSchema, target: z.string().min(1), sources: z.array(z.string().min(1)).min(1) }).strict(),
  z
    .object({
      type: z.literal('backup'),
      driveId: DriveIdSchema,
      target: z.string().min(1).max(4096),
      format: ImageFormatSchema.optional(),
      mode: z.enum(['existing', 'absolute-paths']).optional(),
      sync: z.enum(['full', 'top', 'none', 'incremental', 'bitmap']),
      bitmap: z.string().min(1).optional(),
      bitmapMode: z.enum(['on-success', 'never', 'always']).optional(),
      speed: z.number().int().nonnegative().optional(),
    })
    .strict(),
]);

/**
 * The one API contract between the renderer and the main process, whichever host carries it
 * (Electron IPC or the web console's WebSocket). Each request: name → input schema → output
 * schema. Each event: name → payload schema. Both sides validate what they receive.
 */
export const requests = {
  'app.info': { input: z.object({}).strict(), output: AppInfoSchema },

  'drives.list': { input: z.object({}).strict(), output: z.array(DriveInfoSchema) },
  'drives.create': {
    input: z
      .object({
        id: DriveIdSchema.optional(),
        path: z.string().min(1, 'Choose where the new image file goes.').max(4096),
        format: ImageFormatSchema,
        size: SizeInputSchema.optional(),
        clusterSize: z.number().int().positive().optional(),
        backingFile: z.string().min(1).max(1023).optional(),
      })
      .strict(),
    output: DriveInfoSchema,
  },
  'drives.add': {
    input: z
      .object({
        path: z.string().min(1, 'Choose an image file to add.').max(4096),
        id: DriveIdSchema.optional(),
      })
      .strict(),
    output: DriveInfoSchema,
  },
  'drives.remove': { input: z.object({ id: DriveIdSchema }).strict(), output: z.object({}) },

  'bitmaps.list': { input: z.object({ driveId: DriveIdSchema.optional() }).strict(), output: z.array(BitmapSummarySchema) },
  'bitmaps.add': {
    input: z
      .object({
        driveId: DriveIdSchema,
        name: BitmapNameSchema,
        granularity: GranularitySchema.optional(),
        /** qcow2: stored in the image (QEMU-compatible) */
        persistent: z.boolean().optional(),
        /** raw: kept in a sidecar file in the data dir */
        sidecar: z.boolean().optional(),
        disabled: z.boolean().optional(),
      })
      .strict(),
    output: BitmapSummarySchema,
  },
  'bitmaps.remove': { input: BitmapRef, output: z.object({}) },
  'bitmaps.clear': { input: BitmapRef, output: BitmapSummarySchema },
  'bitmaps.enable': { input: BitmapRef, output: BitmapSummarySchema },
  'bitmaps.disable': { input: BitmapRef, output: BitmapSummarySchema },
  'bitmaps.merge': {
    input: z.object({ driveId: DriveIdSchema, target: z.string().min(1), sources: z.array(z.string().min(1)).min(1, 'Pick at least one bitmap to merge.') }).strict(),
    output: BitmapSummarySchema,
  },

  'backups.list': { input: z.object({ driveId: DriveIdSchema.optional() }).strict(), output: z.array(ChainSummarySchema) },
  'backups.getSettings': { input: z.object({ driveId: DriveIdSchema }).strict(), output: BackupSettingsSchema },
  'backups.setSettings': {
    input: z.object({ driveId: DriveIdSchema, backupDir: z.string().min(1).max(4096).optional(), backupMode: ChainModeSchema.optional() }).strict(),
    output: BackupSettingsSchema,
  },
  /** "Back up now": full or incremental/differential decided from the catalog; returns the jobs started */
  'backups.run': {
    input: z
      .object({
        driveId: DriveIdSchema.optional(),
        group: z.string().min(1).optional(),
        /** sets (and remembers) the drive's backup folder */
        dest: z.string().min(1).max(4096).optional(),
        /** force a new chain (full) or a differential */
        force: z.enum(['full', 'diff']).optional(),
        /** bytes per second; 0 = unlimited */
        speed: z.number().int().nonnegative().optional(),
      })
      .strict()
      .refine((v) => (v.driveId === undefined) !== (v.group === undefined), 'Give either a drive or a group.'),
    output: z.array(z.object({ jobId: z.string(), driveId: z.string(), kind: z.enum(['full', 'inc', 'diff']), reason: z.string() })),
  },
  'backups.verify': { input: z.object({ chainId: z.string().min(1) }).strict(), output: VerifyReportSchema },
  'backups.deleteChain': { input: z.object({ chainId: z.string().min(1) }).strict(), output: z.object({}) },
  'backups.import': { input: z.object({ folder: z.string().min(1).max(4096), driveId: DriveIdSchema.optional() }).strict(), output: z.array(ChainSummarySchema) },

  'groups.list': { input: z.object({}).strict(), output: z.array(GroupSchema) },
  'groups.set': { input: z.object({ name: z.string().min(1).max(64), drives: z.array(DriveIdSchema).min(1, 'A group needs at least one drive.') }).strict(), output: GroupSchema },
  'groups.remove': { input: z.object({ name: z.string().min(1) }).strict(), output: z.object({}) },

  'jobs.list': { input: z.object({}).strict(), output: z.array(JobSummarySchema) },
  'jobs.history': { input: z.object({ limit: z.number().int().positive().max(1000).optional() }).strict(), output: z.array(JobHistorySchema) },
  'jobs.pause': { input: z.object({ id: z.string().min(1) }).strict(), output: z.object({}) },
  'jobs.resume': { input: z.object({ id: z.string().min(1) }).strict(), output: z.object({}) },
  'jobs.cancel': { input: z.object({ id: z.string().min(1) }).strict(), output: z.object({}) },
  /** Pre-flight for a restore: chain verified, free space, target writable, drive idle — each with a reason */
  'restore.preflight': {
    input: z.object({ driveId: z.string().min(1), n: z.number().int().positive(), target: RestoreTargetSchema }).strict(),
    output: PreflightSchema,
  },
  /** Starts a restore (after the same checks); in place needs `confirm` = the drive id, typed by the user */
  'restore.start': {
    input: z
      .object({
        driveId: z.string().min(1),
        n: z.number().int().positive(),
        target: RestoreTargetSchema,
        confirm: z.string().optional(),
        /** bytes per second; 0 or absent = no limit (changeable later with jobs.setSpeed) */
        speed: z.number().int().nonnegative().optional(),
      })
      .strict(),
    output: RestoreReportSchema,
  },
  'restore.report': { input: z.object({ jobId: z.string().min(1) }).strict(), output: RestoreReportSchema },
  /** QEMU's transaction: every action or none; all backups in it share one point in time */
  'jobs.transaction': {
    input: z.object({ actions: z.array(TransactionActionSchema), completionMode: z.enum(['individual', 'grouped']).optional() }).strict(),
    output: z.object({ jobs: z.array(z.string()) }),
  },
  'jobs.setSpeed': { input: z.object({ id: z.string().min(1), speed: z.number().int().nonnegative() }).strict(), output: z.object({}) },
} as const;

export const events = {
  /** the whole drive list, after any change (small; keeps every store a mirror, never a second truth) */
  'drives.changed': z.object({ drives: z.array(DriveInfoSchema) }),
  /** a drive's bitmaps after any change, throttled to a few per second while writes stream in */
  'bitmaps.changed': z.object({ driveId: DriveIdSchema, bitmaps: z.array(BitmapSummarySchema) }),
  /** a running job's progress, at most 4 per second per job */
  'jobs.progress': z.object({ job: JobSummarySchema }),
  /** a job ended: its last state, with the outcome */
  'jobs.finished': z.object({ job: JobSummarySchema, outcome: z.enum(['completed', 'failed', 'cancelled']) }),
  /** a restore ended: the final report (verified or why not) */
  'restore.finished': z.object({ report: RestoreReportSchema }),
  /** machine groups after any change */
  'groups.changed': z.object({ groups: z.array(GroupSchema) }),
  /** a drive's chains changed (a point was added, completed, failed, verified or deleted) */
  'backups.changed': z.object({ driveId: z.string() }),
} as const;

export type RequestName = keyof typeof requests;
export type EventName = keyof typeof events;
export type RequestInput<N extends RequestName> = z.input<(typeof requests)[N]['input']>;
export type RequestParams<N extends RequestName> = z.output<(typeof requests)[N]['input']>;
export type RequestOutput<N extends RequestName> = z.output<(typeof requests)[N]['output']>;
export type EventPayload<N extends EventName> = z.output<(typeof events)[N]>;

export function isRequestName(name: unknown): name is RequestName {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(requests, name);
}
export function isEventName(name: unknown): name is EventName {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(events, name);
}
