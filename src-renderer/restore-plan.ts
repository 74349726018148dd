import { DriveIdSchema, type BackupPoint, type ChainSummary, type Group, type ImageFormat, type Preflight, type RestoreTarget } from '../src-shared/api/domain';
import { formatTime, kindName } from './format';

/**
 * What the restore wizard works out from the catalog before it asks the engine anything: which
 * points can be restored and why not, what a machine group's points in time are, sensible target
 * names, and which points are still good when a pre-flight finds a damaged link. No I/O here.
 */

/** One point of a drive's catalog, with its chain, the files a restore of it reads, and whether it can be restored. */
export interface PointChoice {
  driveId: string;
  chain: ChainSummary;
  point: BackupPoint;
  /** the backup files a restore of this point reads, oldest first (the point itself last) */
  links: readonly BackupPoint[];
  /** why it cannot be restored (a failed attempt, a damaged link…); undefined when it can */
  unavailable?: string;
}

/** Files a pre-flight in this window found damaged (the catalog only learns it on the next verify): file → why. */
export type KnownBad = ReadonlyMap<string, string>;

/** "Incremental #2"; a failed attempt has no number */
export function pointName(p: BackupPoint): string {
  return p.n !== null ? `${kindName(p.kind)} #${p.n}` : `${kindName(p.kind)} attempt`;
}

export function fileName(path: string): string {
  return path.slice(Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\')) + 1);
}

/** "/var/lib/a.img" → "/var/lib" */
export function folderOf(path: string): string {
  const cut = Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\'));
  if (cut < 0) return '.';
  return cut === 0 ? path.slice(0, 1) : path.slice(0, cut);
}

/**
 * The links a restore of `point` reads, the way its chain was built: a full stands alone, a
 * differential sits on the chain's full, an incremental on every earlier backup of its chain
 * (failed attempts are no links: nothing was kept of them).
 */
export function linksOf(chain: ChainSummary, point: BackupPoint): BackupPoint[] {
  if (point.kind === 'full') return [point];
  const kept = chain.points.filter((p) => p.n !== null).sort((a, b) => a.seq - b.seq);
  if (point.kind === 'diff') {
    const full = kept.find((p) => p.kind === 'full');
    return full ? [full, point] : [point];
  }
  return kept.filter((p) => p.seq <= point.seq);
}

function damaged(p: BackupPoint, knownBad: KnownBad): string | undefined {
  const found = knownBad.get(p.file);
  if (found) return found;
  if (p.status === 'missing') return p.error ?? `The file ${fileName(p.file)} is missing.`;
  if (p.status === 'corrupt') return p.error ?? `The file ${fileName(p.file)} is damaged.`;
  return undefined;
}

function unavailableReason(p: BackupPoint, links: readonly BackupPoint[], knownBad: KnownBad): string | undefined {
  if (p.status === 'failed') return `This backup failed${p.error ? `: ${p.error}` : '.'}`;
  if (p.status === 'running') return 'Still being backed up.';
  const own = damaged(p, knownBad);
  if (own) return own;
  for (const link of links) {
    if (link === p) continue;
    const why = damaged(link, knownBad);
    if (why) return `Needs ${pointName(link).toLowerCase()} of ${formatTime(link.time)}, which is damaged or missing: ${why}`;
  }
  return undefined;
}

/** Every point of a drive (failed attempts too), newest first, each with whether it can be restored. */
export function driveChoices(driveId: string, chains: readonly ChainSummary[], knownBad: KnownBad = new Map()): PointChoice[] {
  const out: PointChoice[] = [];
  for (const chain of chains) {
    for (const point of chain.points) {
      const links = point.n !== null ? linksOf(chain, point) : [];
      out.push({ driveId, chain, point, links, unavailable: unavailableReason(point, links, knownBad) });
    }
  }
  return out.sort((a, b) => b.point.time.localeCompare(a.point.time) || b.point.id - a.point.id);
}

/** The newest point that can be restored. */
export function newestRestorable<T extends { unavailable?: string }>(choices: readonly T[]): T | undefined {
  return choices.find((c) => !c.unavailable);
}

/** A machine group's point in time: every drive of the group was backed up in one transaction at `time`. */
export interface GroupChoice {
  time: string;
  members: readonly PointChoice[];
  unavailable?: string;
}

/**
 * The group's points in time: the times at which every drive of the group has a backup (a group
 * backup gives all of them the same time). Backups of a single drive are not group points.
 */
export function groupChoices(group: Group, choicesByDrive: ReadonlyMap<string, readonly PointChoice[]>): GroupChoice[] {
  if (group.drives.length === 0) return [];
  const [first, ...rest] = group.drives;
  const out: GroupChoice[] = [];
  for (const lead of choicesByDrive.get(first) ?? []) {
    const members = [lead];
    for (const id of rest) {
      const match = (choicesByDrive.get(id) ?? []).find((c) => c.point.time === lead.point.time);
      if (!match) break;
      members.push(match);
    }
    if (members.length !== group.drives.length) continue;
    const bad = members.find((m) => m.unavailable);
    out.push({ time: lead.point.time, members, unavailable: bad ? `${bad.driveId}: ${bad.unavailable}` : undefined });
  }
  return out;
}

const pad = (n: number) => String(n).padStart(2, '0');

/** ISO time → the reader's local date as "2026-03-05" */
export function localDate(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return 'undated';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** "<folder>/<drive>-point<n>-<date>.<format>": next to the drive, named after what it holds */
export function defaultTargetPath(folder: string, driveId: string, n: number, time: string, format: ImageFormat): string {
  const sep = folder.includes('\\') && !folder.includes('/') ? '\\' : '/';
  const base = folder.endsWith(sep) ? folder : `${folder}${sep}`;
  return `${base}${driveId}-point${n}-${localDate(time)}.${format}`;
}

/** "root-p1", unique among `taken`, within QEMU's 31 characters */
export function defaultAttachId(driveId: string, n: number, taken: ReadonlySet<string>): string {
  const stem = (suffix: string) => `${driveId.slice(0, 31 - suffix.length)}${suffix}`;
  let id = stem(`-p${n}`);
  for (let k = 2; taken.has(id); k++) id = stem(`-p${n}-${k}`);
  return id;
}

/** Where the app serves a drive over NBD. */
export function nbdUrl(socket: string, driveId: string): string {
  return `nbd+unix:///${driveId}?socket=${socket}`;
}

/** a sha256 for the eye: its first 12 digits */
export function shortHash(hash: string): string {
  return hash.length > 16 ? `${hash.slice(0, 12)}…` : hash;
}

/** The target as the wizard's form holds it, for one drive or every drive of a group. */
export interface TargetDraft {
  kind: 'file' | 'in-place';
  format: ImageFormat;
  compress: boolean;
  force: boolean;
  attach: boolean;
  /** per drive id */
  paths: Readonly<Record<string, string>>;
  /** per drive id */
  attachIds: Readonly<Record<string, string>>;
  /** the speed limit as typed, in MiB/s; empty = none */
  speedText: string;
}

export function targetFor(draft: TargetDraft, driveId: string): RestoreTarget {
  if (draft.kind === 'in-place') return { kind: 'in-place' };
  return {
    kind: 'file',
    path: (draft.paths[driveId] ?? '').trim(),
    format: draft.format,
    ...(draft.force ? { force: true } : {}),
    ...(draft.format === 'qcow2' && draft.compress ? { compress: true } : {}),
    ...(draft.attach ? { attachAs: (draft.attachIds[driveId] ?? '').trim() } : {}),
  };
}

/** Why a typed target path cannot be used as it is ('' when it can). */
export function targetPathError(path: string): string {
  const p = path.trim();
  if (!p) return 'Type where the restored image goes.';
  if (!/^(\/|[A-Za-z]:[\\/]|\\\\)/.test(p)) return 'Type a full path, from the root of the file system (it starts with /).';
  if (/[/\\]$/.test(p)) return 'This is a folder: add a file name for the restored image.';
  return '';
}

/** Why an id for attaching the restored image cannot be used ('' when it can). */
export function attachIdError(id: string, taken: ReadonlySet<string>, others: readonly string[] = []): string {
  const parsed = DriveIdSchema.safeParse(id.trim());
  if (!parsed.success) return parsed.error.issues[0]?.message ?? 'This is not a valid drive id.';
  if (taken.has(parsed.data)) return `Tidemark already has a drive called ${parsed.data}: choose another id.`;
  if (others.includes(parsed.data)) return 'Each restored drive needs an id of its own.';
  return '';
}

/** The failed chain check's text without the engine's "Link 2 of 3 (/path/file): " lead-in. */
export function chainProblem(detail: string): string {
  const m = /^Link \d+ of \d+ \(.*\): (.*)$/s.exec(detail);
  return m ? m[1] : detail;
}

/** The link a failed chain check names (it quotes the file's path). */
export function failingLink(preflight: Preflight, links: readonly BackupPoint[]): BackupPoint | undefined {
  const check = preflight.checks.find((c) => c.id === 'chain');
  if (!check || check.ok) return undefined;
  // the longest path first: one file's path can be the start of another's
  return [...links].sort((a, b) => b.file.length - a.file.length).find((l) => check.detail.includes(l.file));
}

/**
 * Earlier points that can still be restored when the chain check of `choice` failed: the
 * engine's `restorable` (a quick look at the catalog and the files' presence), less every point
 * that reads the link the check found damaged. Oldest first.
 */
export function stillRestorable(preflight: Preflight, choice: PointChoice, all: readonly PointChoice[]): number[] {
  const n = choice.point.n;
  if (n === null) return [];
  const bad = failingLink(preflight, choice.links);
  return preflight.restorable
    .filter((k) => k < n)
    .filter((k) => {
      const c = all.find((x) => x.point.n === k);
      if (!c) return true;
      if (c.unavailable) return false;
      return !bad || !c.links.some((l) => l.file === bad.file);
    })
    .sort((a, b) => a - b);
}

export type RestorePhase = 'starting' | 'copying' | 'verifying' | 'applying';

/**
 * Which part of the restore is running, read from the job's byte counts. The engine counts the
 * point's data copied, then the virtual size once more while it hashes both sides to verify, and
 * in place a further virtual size while it writes what differs into the drive. The contract has
 * no phase field, so this is an estimate made from that accounting.
 */
export function restorePhase(
  job: { bytesDone: number; bytesTotal: number } | undefined,
  dataBytes: number,
  inPlace: boolean,
): RestorePhase {
  if (!job || job.bytesTotal <= 0) return 'starting';
  const size = inPlace ? (job.bytesTotal - dataBytes) / 2 : job.bytesTotal - dataBytes;
  if (job.bytesDone < dataBytes) return 'copying';
  if (!inPlace || job.bytesDone < dataBytes + size) return 'verifying';
  return 'applying';
}

export const PHASE_TEXT: Record<RestorePhase, string> = {
  starting: 'Opening the backup chain…',
  copying: 'Copying the backup’s data',
  verifying: 'Verifying: reading back both sides and comparing their hashes',
  applying: 'Writing what differs into the drive',
};
