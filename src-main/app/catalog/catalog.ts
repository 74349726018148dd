import { DatabaseSync } from 'node:sqlite';
import { MIGRATIONS } from './migrations.js';
import type { ImageFormat } from '../../../src-shared/api/domain.js';

export interface DriveRow {
  id: string;
  path: string;
  format: ImageFormat;
  addedAt: string;
}

/**
 * The catalog: what Tidemark remembers between runs (QEMU remembers none of it). SQLite through
 * node:sqlite — built into Node 24 and Electron 45, so nothing to rebuild per runtime.
 */
export class Catalog {
  readonly db: DatabaseSync;

  constructor(file: string) {
    this.db = new DatabaseSync(file);
    this.db.exec('PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;');
    this.migrate();
  }

  /** Schema version after start-up (the highest migration applied). */
  get schemaVersion(): number {
    const row = this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
    return row.v ?? 0;
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT');
    const applied = this.schemaVersion;
    const known = MIGRATIONS.at(-1)?.version ?? 0;
    if (applied > known) {
      throw new Error(`The catalog was written by a newer Tidemark (schema ${applied}, this one knows ${known}); refusing to touch it.`);
    }
    const pending = MIGRATIONS.filter((m) => m.version > applied);
    if (pending.length === 0) return;
    this.transaction(() => {
      const mark = this.db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)');
      for (const m of pending) {
        this.db.exec(m.sql);
        mark.run(m.version, m.name, new Date().toISOString());
      }
    });
  }

  /** Runs `fn` in one transaction: all of it lands, or none of it. */
  transaction<T>(fn: () => T): T {
    this.db.exec('BEGIN IMMEDIATE');
    try {
      const result = fn();
      this.db.exec('COMMIT');
      return result;
    } catch (err) {
      this.db.exec('ROLLBACK');
      throw err;
    }
  }

  listDrives(): DriveRow[] {
    const rows = this.db.prepare('SELECT id, path, format, added_at FROM drives ORDER BY added_at, id').all() as {
      id: string;
      path: string;
      format: ImageFormat;
      added_at: string;
    }[];
    return rows.map((r) => ({ id: r.id, path: r.path, format: r.format, addedAt: r.added_at }));
  }

  insertDrive(row: DriveRow): void {
    this.db.prepare('INSERT INTO drives (id, path, format, added_at) VALUES (?, ?, ?, ?)').run(row.id, row.path, row.format, row.addedAt);
  }

  driveSettings(id: string): { backupDir: string | null; backupMode: 'incremental' | 'differential' } | undefined {
    const row = this.db.prepare('SELECT backup_dir, backup_mode FROM drives WHERE id = ?').get(id) as { backup_dir: string | null; backup_mode: 'incremental' | 'differential' } | undefined;
    return row && { backupDir: row.backup_dir, backupMode: row.backup_mode };
  }

  setDriveSettings(id: string, settings: { backupDir?: string; backupMode?: 'incremental' | 'differential' }): void {
    if (settings.backupDir !== undefined) this.db.prepare('UPDATE drives SET backup_dir = ? WHERE id = ?').run(settings.backupDir, id);
    if (settings.backupMode !== undefined) this.db.prepare('UPDATE drives SET backup_mode = ? WHERE id = ?').run(settings.backupMode, id);
  }

  deleteDrive(id: string): boolean {
    return Number(this.db.prepare('DELETE FROM drives WHERE id = ?').run(id).changes) > 0;
  }

  close(): void {
    if (this.db.isOpen) this.db.close();
  }
}
