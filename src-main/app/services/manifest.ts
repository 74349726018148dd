import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { z } from 'zod';
import type { ChainRow, PointRow } from '../catalog/chains-repo.js';
import { writeFileAtomic } from '../util/files.js';

export const MANIFEST_NAME = 'chain.json';

/**
 * The manifest beside each chain restates the catalog, so a chain folder carried to another
 * machine (or found after the catalog was lost) can be imported as it was. File names are
 * relative to the folder.
 */
export const ManifestSchema = z.object({
  format: z.literal('tidemark-chain'),
  version: z.literal(1),
  drive: z.object({ id: z.string(), virtualSize: z.number().int().nonnegative() }),
  chain: z.object({ id: z.string(), mode: z.enum(['incremental', 'differential']), bitmap: z.string(), createdAt: z.string(), closedAt: z.string().nullable() }),
  points: z.array(
    z.object({
      seq: z.number().int().positive(),
      kind: z.enum(['full', 'inc', 'diff']),
      parentSeq: z.number().int().positive().nullable(),
      file: z.string(),
      time: z.string(),
      virtualSize: z.number().int().nonnegative(),
      fileSize: z.number().int().nonnegative().nullable(),
      sha256: z.string().nullable(),
      status: z.enum(['running', 'complete', 'failed', 'missing', 'corrupt']),
    }),
  ),
});
export type Manifest = z.infer<typeof ManifestSchema>;

export async function writeManifest(chain: ChainRow, points: PointRow[]): Promise<void> {
  const seqOf = new Map(points.map((p) => [p.id, p.seq]));
  const manifest: Manifest = {
    format: 'tidemark-chain',
    version: 1,
    drive: { id: chain.driveId, virtualSize: chain.virtualSize },
    chain: { id: chain.id, mode: chain.mode, bitmap: chain.bitmap, createdAt: chain.createdAt, closedAt: chain.closedAt },
    // failed attempts have no file: the manifest lists what a restore can use, plus their history
    points: points.map((p) => ({
      seq: p.seq,
      kind: p.kind,
      parentSeq: p.parentId === null ? null : (seqOf.get(p.parentId) ?? null),
      file: basename(p.file),
      time: p.pointInTime,
      virtualSize: p.virtualSize,
      fileSize: p.fileSize,
      sha256: p.sha256,
      status: p.status,
    })),
  };
  await writeFileAtomic(join(chain.folder, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`);
}

export async function readManifest(folder: string): Promise<Manifest | undefined> {
  let text: string;
  try {
    text = await readFile(join(folder, MANIFEST_NAME), 'utf8');
  } catch {
    return undefined;
  }
  return ManifestSchema.parse(JSON.parse(text));
}
