import { describe, expect, it, beforeEach } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Catalog } from './catalog.js';
import { MIGRATIONS } from './migrations.js';

let file: string;
beforeEach(() => {
  file = join(mkdtempSync(join(tmpdir(), 'tm-catalog-')), 'catalog.sqlite');
});

describe('Catalog', () => {
  it('applies every migration once, in a transaction, and survives a reopen', () => {
    const c = new Catalog(file);
    expect(c.schemaVersion).toBe(MIGRATIONS.at(-1)!.version);
    c.insertDrive({ id: 'd0', path: '/x/d0.raw', format: 'raw', addedAt: '2026-01-01T00:00:00Z' });
    c.close();
    const again = new Catalog(file);
    expect(again.listDrives()).toEqual([{ id: 'd0', path: '/x/d0.raw', format: 'raw', addedAt: '2026-01-01T00:00:00Z' }]);
    const db = new DatabaseSync(file);
    expect((db.prepare('SELECT COUNT(*) AS n FROM schema_migrations').get() as { n: number }).n).toBe(MIGRATIONS.length);
    expect((db.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode).toBe('wal');
    db.close();
    again.close();
  });

  it('refuses a catalog from a newer schema without touching it', () => {
    new Catalog(file).close();
    const db = new DatabaseSync(file);
    db.prepare('INSERT INTO schema_migrations VALUES (999, ?, ?)').run('future', 'x');
    db.close();
    expect(() => new Catalog(file)).toThrow(/newer Tidemark/);
  });

  it('rolls a failed transaction back completely', () => {
    const c = new Catalog(file);
    expect(() =>
      c.transaction(() => {
        c.insertDrive({ id: 'a', path: '/a', format: 'raw', addedAt: 'now' });
        c.insertDrive({ id: 'b', path: '/a', format: 'raw', addedAt: 'now' }); // same path: UNIQUE
      }),
    ).toThrow();
    expect(c.listDrives()).toEqual([]);
    c.close();
  });

  it('enforces the format column', () => {
    const c = new Catalog(file);
    expect(() => c.insertDrive({ id: 'a', path: '/a', format: 'vmdk' as 'raw', addedAt: 'now' })).toThrow();
    c.close();
  });
});
