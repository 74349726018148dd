import type { DatabaseSync } from 'node:sqlite';

export type PointKind = 'full' | 'inc' | 'diff';
export type PointStatus = 'running' | 'complete' | 'failed' | 'missing' | 'corrupt';
export type ChainMode = 'incremental' | 'differential';

export interface ChainRow {
  id: string;
  driveId: string;
  folder: string;
  bitmap: string;
  mode: ChainMode;
  virtualSize: number;
  createdAt: string;
  closedAt: string | null;
}

export interface PointRow {
  id: number;
  chainId: string;
  seq: number;
  kind: PointKind;
  parentId: number | null;
  pointInTime: string;
  file: string;
  virtualSize: number;
  fileSize: number | null;
  bytesCopied: number | null;
  durationMs: number | null;
  sha256: string | null;
  status: PointStatus;
  error: string | null;
  jobId: string | null;
}

type Raw = Record<string, string | number | null>;

function chainOf(r: Raw): ChainRow {
  return {
    id: r.id as string,
    driveId: r.drive_id as string,
    folder: r.folder as string,
    bitmap: r.bitmap as string,
    mode: r.mode as ChainMode,
    virtualSize: r.virtual_size as number,
    createdAt: r.created_at as string,
    closedAt: r.closed_at as string | null,
  };
}

function pointOf(r: Raw): PointRow {
  return {
    id: r.id as number,
    chainId: r.chain_id as string,
    seq: r.seq as number,
    kind: r.kind as PointKind,
    parentId: r.parent_id as number | null,
    pointInTime: r.point_in_time as string,
    file: r.file as string,
    virtualSize: r.virtual_size as number,
    fileSize: r.file_size as number | null,
    bytesCopied: r.bytes_copied as number | null,
    durationMs: r.duration_ms as number | null,
    sha256: r.sha256 as string | null,
    status: r.status as PointStatus,
    error: r.error as string | null,
    jobId: r.job_id as string | null,
  };
}

/** Chains of backups and their points, as the catalog records them. */
export class ChainsRepo {
  constructor(private readonly db: DatabaseSync) {}

  chains(driveId?: string): ChainRow[] {
    const rows = (driveId
      ? this.db.prepare('SELECT * FROM chains WHERE drive_id = ? ORDER BY created_at, id').all(driveId)
      : this.db.prepare('SELECT * FROM chains ORDER BY drive_id, created_at, id').all()) as Raw[];
    return rows.map(chainOf);
  }

  chain(id: string): ChainRow | undefined {
    const r = this.db.prepare('SELECT * FROM chains WHERE id = ?').get(id) as Raw | undefined;
    return r && chainOf(r);
  }

  /** The chain new backups of the drive extend (the newest one not closed). */
  activeChain(driveId: string): ChainRow | undefined {
    const r = this.db.prepare('SELECT * FROM chains WHERE drive_id = ? AND closed_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 1').get(driveId) as Raw | undefined;
    return r && chainOf(r);
  }

  insertChain(c: Omit<ChainRow, 'closedAt'>): void {
    this.db
      .prepare('INSERT INTO chains (id, drive_id, folder, bitmap, mode, virtual_size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
      .run(c.id, c.driveId, c.folder, c.bitmap, c.mode, c.virtualSize, c.createdAt);
  }

  closeChain(id: string, at: string): void {
    this.db.prepare('UPDATE chains SET closed_at = ? WHERE id = ? AND closed_at IS NULL').run(at, id);
  }

  deleteChain(id: string): void {
    this.db.prepare('DELETE FROM chains WHERE id = ?').run(id);
  }

  points(chainId: string): PointRow[] {
    return (this.db.prepare('SELECT * FROM backups WHERE chain_id = ? ORDER BY seq').all(chainId) as Raw[]).map(pointOf);
  }

  point(id: number): PointRow | undefined {
    const r = this.db.prepare('SELECT * FROM backups WHERE id = ?').get(id) as Raw | undefined;
    return r && pointOf(r);
  }

  /** Points of a drive across all its chains, oldest first (what `n` numbers). */
  drivePoints(driveId: string): PointRow[] {
    return (
      this.db
        .prepare('SELECT b.* FROM backups b JOIN chains c ON c.id = b.chain_id WHERE c.drive_id = ? ORDER BY b.point_in_time, b.id')
        .all(driveId) as Raw[]
    ).map(pointOf);
  }

  running(): PointRow[] {
    return (this.db.prepare("SELECT * FROM backups WHERE status = 'running'").all() as Raw[]).map(pointOf);
  }

  insertPoint(p: Omit<PointRow, 'id' | 'fileSize' | 'bytesCopied' | 'durationMs' | 'sha256' | 'error'>): number {
    const r = this.db
      .prepare('INSERT INTO backups (chain_id, seq, kind, parent_id, point_in_time, file, virtual_size, status, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
      .run(p.chainId, p.seq, p.kind, p.parentId, p.pointInTime, p.file, p.virtualSize, p.status, p.jobId);
    return Number(r.lastInsertRowid);
  }

  completePoint(id: number, v: { fileSize: number; bytesCopied: number; durationMs: number; sha256: string }): void {
    this.db
      .prepare("UPDATE backups SET status = 'complete', file_size = ?, bytes_copied = ?, duration_ms = ?, sha256 = ?, error = NULL WHERE id = ?")
      .run(v.fileSize, v.bytesCopied, v.durationMs, v.sha256, id);
  }

  setPointStatus(id: number, status: PointStatus, error: string | null = null): void {
    this.db.prepare('UPDATE backups SET status = ?, error = ? WHERE id = ?').run(status, error, id);
  }

  /** The last complete point of a chain: the parent of the next incremental. */
  lastComplete(chainId: string): PointRow | undefined {
    const r = this.db.prepare("SELECT * FROM backups WHERE chain_id = ? AND status = 'complete' ORDER BY seq DESC LIMIT 1").get(chainId) as Raw | undefined;
    return r && pointOf(r);
  }

  nextSeq(chainId: string): number {
    const r = this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM backups WHERE chain_id = ?').get(chainId) as { n: number };
    return r.n;
  }
}
