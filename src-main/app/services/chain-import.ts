import { readdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { BlockEngine } from '../../engine/engine.js';
import { openImage } from '../../engine/formats/open.js';
import type { Catalog } from '../catalog/catalog.js';
import type { ChainsRepo, PointKind } from '../catalog/chains-repo.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import { readManifest } from './manifest.js';
import { idFromPath } from './drive-rules.js';

/**
 * Imports chain folders into the catalog: a Tidemark chain folder (its manifest says everything),
 * or any folder of qcow2 files linked by backing files (made by qemu-img by hand, say), which
 * becomes a closed chain whose points are its images from the base up.
 */
export async function importChains(engine: BlockEngine, catalog: Catalog, chains: ChainsRepo, folder: string, driveId?: string): Promise<string[]> {
  const root = resolve(folder);
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new TidemarkError('FILE_NOT_FOUND', `'${root}' is not a folder.`);
  const imported: string[] = [];
  for (const dir of await candidateFolders(root, 3)) {
    const ids = (await importManifestFolder(catalog, chains, dir, driveId)) ?? (await importPlainFolder(engine, catalog, chains, dir, driveId ?? idFromPath(root)));
    imported.push(...ids);
  }
  if (imported.length === 0) throw new TidemarkError('NOT_FOUND', `No backup chains found in '${root}' (looked for chain.json manifests and qcow2 files linked by backing files).`);
  return imported;
}

async function candidateFolders(dir: string, depth: number): Promise<string[]> {
  const out = [dir];
  if (depth === 0) return out;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (e.isDirectory()) out.push(...(await candidateFolders(join(dir, e.name), depth - 1)));
  }
  return out;
}

async function importManifestFolder(catalog: Catalog, chains: ChainsRepo, dir: string, driveId: string | undefined): Promise<string[] | undefined> {
  const m = await readManifest(dir).catch((err: unknown) => {
    throw new TidemarkError('CORRUPT_IMAGE', `The manifest in '${dir}' cannot be read: ${err instanceof Error ? err.message : String(err)}`);
  });
  if (!m) return undefined;
  if (chains.chain(m.chain.id)) return [];
  const drive = driveId ?? m.drive.id;
  catalog.transaction(() => {
    chains.insertChain({ id: m.chain.id, driveId: drive, folder: dir, bitmap: m.chain.bitmap, mode: m.chain.mode, virtualSize: m.drive.virtualSize, createdAt: m.chain.createdAt });
    if (m.chain.closedAt) chains.closeChain(m.chain.id, m.chain.closedAt);
    const idOfSeq = new Map<number, number>();
    for (const p of m.points) {
      if (p.status === 'running') continue;
      const id = chains.insertPoint({
        chainId: m.chain.id,
        seq: p.seq,
        kind: p.kind,
        parentId: p.parentSeq === null ? null : (idOfSeq.get(p.parentSeq) ?? null),
        pointInTime: p.time,
        file: join(dir, p.file),
        virtualSize: p.virtualSize,
        status: p.status,
        jobId: null,
      });
      idOfSeq.set(p.seq, id);
      if (p.status === 'complete' && p.sha256) chains.completePoint(id, { fileSize: p.fileSize ?? 0, bytesCopied: p.fileSize ?? 0, durationMs: 0, sha256: p.sha256 });
    }
  });
  return [m.chain.id];
}

async function importPlainFolder(engine: BlockEngine, catalog: Catalog, chains: ChainsRepo, dir: string, driveId: string): Promise<string[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.qcow2')).map((f) => join(dir, f));
  const backingOf = new Map<string, string | undefined>();
  const sizeOf = new Map<string, number>();
  for (const f of files) {
    try {
      const d = await openImage(f, { readOnly: true, format: 'qcow2', opener: engine.opener });
      const info = await d.info();
      await d.close();
      backingOf.set(f, info.backingFilename ? resolve(info.backingFilename) : undefined);
      sizeOf.set(f, info.virtualSize);
    } catch {
      // not a usable image: not part of any chain
    }
  }
  const ids: string[] = [];
  // a chain per base image (no backing), followed through the files backed by it
  for (const [base, backing] of backingOf) {
    if (backing !== undefined) continue;
    const ordered = [base];
    for (let next = findChild(backingOf, base); next; next = findChild(backingOf, next)) ordered.push(next);
    const times = await Promise.all(ordered.map(async (f) => (await stat(f)).mtime.toISOString()));
    const chainId = `${driveId}-import-${basename(base, '.qcow2')}`.slice(0, 100);
    if (chains.chain(chainId)) continue;
    const sums = await Promise.all(ordered.map((f) => engine.pool.hashFile(f)));
    const sizes = await Promise.all(ordered.map(async (f) => (await stat(f)).size));
    catalog.transaction(() => {
      chains.insertChain({ id: chainId, driveId, folder: dir, bitmap: '', mode: 'incremental', virtualSize: sizeOf.get(base)!, createdAt: times[0] });
      chains.closeChain(chainId, new Date().toISOString());
      let parent: number | null = null;
      ordered.forEach((f, i) => {
        const kind: PointKind = i === 0 ? 'full' : 'inc';
        const id: number = chains.insertPoint({ chainId, seq: i + 1, kind, parentId: parent, pointInTime: times[i], file: f, virtualSize: sizeOf.get(f)!, status: 'running', jobId: null });
        chains.completePoint(id, { fileSize: sizes[i], bytesCopied: sizes[i], durationMs: 0, sha256: sums[i] });
        parent = id;
      });
    });
    ids.push(chainId);
  }
  return ids;
}

function findChild(backingOf: Map<string, string | undefined>, parent: string): string | undefined {
  for (const [f, b] of backingOf) if (b === parent) return f;
  return undefined;
}
