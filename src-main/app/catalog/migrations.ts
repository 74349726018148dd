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
];
