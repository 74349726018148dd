/**
 * Numbered schema migrations, applied in order, each exactly once, all pending ones in one
 * transaction at start. Never edit a released migration: add the next number.
 */
export const MIGRATIONS: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'drives',
    sql: `
      CREATE TABLE drives (
        id         TEXT PRIMARY KEY,
        path       TEXT NOT NULL UNIQUE,
        format     TEXT NOT NULL CHECK (format IN ('raw', 'qcow2')),
        added_at   TEXT NOT NULL
      ) STRICT;
    `,
  },
  {
    version: 2,
    name: 'chains, backups, groups, job history',
    sql: `
      ALTER TABLE drives ADD COLUMN backup_dir TEXT;
      ALTER TABLE drives ADD COLUMN backup_mode TEXT NOT NULL DEFAULT 'incremental' CHECK (backup_mode IN ('incremental', 'differential'));
      CREATE TABLE groups (
        name       TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE group_members (
        group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
        drive_id   TEXT NOT NULL REFERENCES drives(id) ON DELETE CASCADE,
        PRIMARY KEY (group_name, drive_id)
      ) STRICT;
      -- chains outlive their drive's attachment: backups are the point of the app
      CREATE TABLE chains (
        id          TEXT PRIMARY KEY,
        drive_id    TEXT NOT NULL,
        folder      TEXT NOT NULL,
        bitmap      TEXT NOT NULL,
        mode        TEXT NOT NULL CHECK (mode IN ('incremental', 'differential')),
        virtual_size INTEGER NOT NULL,
        created_at  TEXT NOT NULL,
        closed_at   TEXT
      ) STRICT;
      CREATE INDEX chains_by_drive ON chains(drive_id, created_at);
      CREATE TABLE backups (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        chain_id      TEXT NOT NULL REFERENCES chains(id) ON DELETE CASCADE,
        seq           INTEGER NOT NULL,
        kind          TEXT NOT NULL CHECK (kind IN ('full', 'inc', 'diff')),
        parent_id     INTEGER REFERENCES backups(id),
        point_in_time TEXT NOT NULL,
        file          TEXT NOT NULL,
        virtual_size  INTEGER NOT NULL,
        file_size     INTEGER,
        bytes_copied  INTEGER,
        duration_ms   INTEGER,
        sha256        TEXT,
        status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'missing', 'corrupt')),
        error         TEXT,
        job_id        TEXT,
        UNIQUE (chain_id, seq)
      ) STRICT;
      CREATE TABLE job_history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        drive_id    TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        ended_at    TEXT,
        outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'completed', 'failed', 'cancelled')),
        bytes       INTEGER NOT NULL DEFAULT 0,
        error       TEXT
      ) STRICT;
    `,
  },
  {
    version: 3,
    name: 'job history labels',
    sql: `ALTER TABLE job_history ADD COLUMN label TEXT NOT NULL DEFAULT '';`,
  },
  {
    version: 4,
    name: 'job scratch files',
    // a file the job writes and renames (or deletes) when it ends: one left by a dead process is swept
    sql: `ALTER TABLE job_history ADD COLUMN scratch_file TEXT;`,
  },
];
