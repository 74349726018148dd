import type { DatabaseSync } from 'node:sqlite';

/** Machine groups: drives of one VM, backed up together at one point in time. */
export class GroupsRepo {
  constructor(private readonly db: DatabaseSync) {}

  list(): { name: string; drives: string[] }[] {
    const groups = this.db.prepare('SELECT name FROM groups ORDER BY name').all() as { name: string }[];
    return groups.map((g) => ({ name: g.name, drives: this.members(g.name) }));
  }

  members(name: string): string[] {
    return (this.db.prepare('SELECT drive_id FROM group_members WHERE group_name = ? ORDER BY drive_id').all(name) as { drive_id: string }[]).map((r) => r.drive_id);
  }

  exists(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM groups WHERE name = ?').get(name) !== undefined;
  }

  /** Creates or redefines a group with exactly these drives. */
  set(name: string, drives: string[], now: string): void {
    this.db.prepare('INSERT INTO groups (name, created_at) VALUES (?, ?) ON CONFLICT(name) DO NOTHING').run(name, now);
    this.db.prepare('DELETE FROM group_members WHERE group_name = ?').run(name);
    const add = this.db.prepare('INSERT INTO group_members (group_name, drive_id) VALUES (?, ?)');
    for (const d of drives) add.run(name, d);
  }

  remove(name: string): boolean {
    return Number(this.db.prepare('DELETE FROM groups WHERE name = ?').run(name).changes) > 0;
  }
}
