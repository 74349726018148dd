import { z } from 'zod';
import { AppInfoSchema, DriveIdSchema, DriveInfoSchema, ImageFormatSchema, SizeInputSchema } from './domain.js';

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
} as const;

export const events = {
  /** the whole drive list, after any change (small; keeps every store a mirror, never a second truth) */
  'drives.changed': z.object({ drives: z.array(DriveInfoSchema) }),
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
