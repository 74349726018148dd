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
