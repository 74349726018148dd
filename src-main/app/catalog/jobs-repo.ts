import type { DatabaseSync } from 'node:sqlite';

export type JobOutcome = 'running' | 'completed' | 'failed' | 'cancelled';

export interface JobHistoryRow {
  id: number;
  jobId: string;
  kind: string;
  /** what the job made: full, inc, diff, restore */
  label: string;
  driveId: string;
  startedAt: string;
  endedAt: string | null;
  outcome: JobOutcome;
  bytes: number;
  error: string | null;
}

/** Past and running jobs, for the Jobs screen's history and the size/duration charts. */
export class JobsRepo {
  constructor(private readonly db: DatabaseSync) {}

  start(row: { jobId: string; kind: string; label: string; driveId: string; startedAt: string; scratchFile?: string }): number {
    return Number(
      this.db
        .prepare("INSERT INTO job_history (job_id, kind, label, drive_id, started_at, outcome, scratch_file) VALUES (?, ?, ?, ?, ?, 'running', ?)")
        .run(row.jobId, row.kind, row.label, row.driveId, row.startedAt, row.scratchFile ?? null).lastInsertRowid,
    );
  }

  /** The scratch files of jobs still marked running (by a process that died, at start-up). */
  runningScratchFiles(): string[] {
    const rows = this.db.prepare("SELECT scratch_file FROM job_history WHERE outcome = 'running' AND scratch_file IS NOT NULL").all() as { scratch_file: string }[];
    return rows.map((r) => r.scratch_file);
  }

  finish(id: number, v: { endedAt: string; outcome: Exclude<JobOutcome, 'running'>; bytes: number; error?: string }): void {
    this.db.prepare('UPDATE job_history SET ended_at = ?, outcome = ?, bytes = ?, error = ? WHERE id = ?').run(v.endedAt, v.outcome, v.bytes, v.error ?? null, id);
  }

  /** Jobs left 'running' by a process that died: they failed. */
  failRunning(endedAt: string, error: string): number {
    return Number(this.db.prepare("UPDATE job_history SET ended_at = ?, outcome = 'failed', error = ? WHERE outcome = 'running'").run(endedAt, error).changes);
  }

  recent(limit = 200): JobHistoryRow[] {
    const rows = this.db.prepare('SELECT * FROM job_history ORDER BY id DESC LIMIT ?').all(limit) as Record<string, string | number | null>[];
    return rows.map((r) => ({
      id: r.id as number,
      jobId: r.job_id as string,
      kind: r.kind as string,
      label: r.label as string,
      driveId: r.drive_id as string,
      startedAt: r.started_at as string,
      endedAt: r.ended_at as string | null,
      outcome: r.outcome as JobOutcome,
      bytes: r.bytes as number,
      error: r.error as string | null,
    }));
  }
}
