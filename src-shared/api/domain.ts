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
