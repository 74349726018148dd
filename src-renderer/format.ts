import { formatSize } from '../src-shared/size';

/** Display helpers shared by the screens. Sizes use binary units, like qemu-img. */

export { formatSize };

/** 12345678 → "12,345,678 bytes", for titles next to a rounded size */
export function exactBytes(n: number): string {
  return `${n.toLocaleString('en-US')} bytes`;
}

/** 0.1234 → "12.34%"; tiny but non-zero fractions do not round to a misleading "0%" */
export function formatPercent(fraction: number): string {
  if (!Number.isFinite(fraction) || fraction <= 0) return '0%';
  if (fraction >= 1) return '100%';
  const pct = fraction * 100;
  if (pct < 0.01) return '< 0.01%';
  if (pct > 99.99) return '> 99.99%';
  return `${pct < 10 ? pct.toFixed(2) : pct.toFixed(1)}%`.replace(/\.?0+%$/, '%');
}

/** What a speed field says when what is typed is not a speed. */
export const SPEED_ERROR = 'Type a speed above zero in MiB/s, such as 50, or leave it empty for no limit.';

/**
 * A speed typed in MiB/s (decimals allowed) as bytes per second: 0 when left empty (no limit),
 * undefined when it is not a number above zero.
 */
export function parseMiBps(text: string): number | undefined {
  const t = text.trim();
  if (!t) return 0;
  const n = Number(t);
  return Number.isFinite(n) && n > 0 ? Math.round(n * 2 ** 20) : undefined;
}

/** bytes per second → "12.5 MiB/s" */
export function formatRate(bytesPerSecond: number): string {
  return `${formatSize(Math.round(bytesPerSecond))}/s`;
}

/** 125000 ms → "2 min 5 s" */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return s % 60 ? `${m} min ${s % 60} s` : `${m} min`;
  const h = Math.floor(m / 60);
  return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
}

/** A time estimate without fake precision. */
export function formatEta(seconds: number): string {
  if (seconds < 10) return 'a few seconds';
  if (seconds < 60) return `about ${Math.round(seconds / 5) * 5} s`;
  if (seconds < 90) return 'about a minute';
  if (seconds < 3600) return `about ${Math.round(seconds / 60)} min`;
  const h = Math.floor(seconds / 3600);
  const m = Math.round((seconds % 3600) / 60);
  return m ? `about ${h} h ${m} min` : `about ${h} h`;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const shortDateTime = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });

/** ISO time → the reader's local date and time, with seconds (two backups can be a minute apart) */
export function formatTime(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateTime.format(d);
}

const timeOfDay = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });
const longDay = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });

/** ISO time → "14:02:11" in the reader's zone, for lists already grouped by day */
export function formatTimeOfDay(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : timeOfDay.format(d);
}

/** ISO time → "Today", "Yesterday" or "Thursday, March 5, 2026" */
export function formatDay(iso: string, now: Date = new Date()): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const day = (x: Date) => new Date(x.getFullYear(), x.getMonth(), x.getDate()).getTime();
  const diff = Math.round((day(now) - day(d)) / 86_400_000);
  if (diff === 0) return 'Today';
  if (diff === 1) return 'Yesterday';
  return longDay.format(d);
}

/** Items grouped by the reader's local day, in the order given (so newest first stays newest first). */
export function groupByDay<T>(items: readonly T[], timeOf: (item: T) => string, now: Date = new Date()): { key: string; label: string; items: T[] }[] {
  const out: { key: string; label: string; items: T[] }[] = [];
  for (const item of items) {
    const d = new Date(timeOf(item));
    const key = Number.isNaN(d.getTime()) ? 'undated' : `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
    let group = out.find((g) => g.key === key);
    if (!group) out.push((group = { key, label: key === 'undated' ? 'Undated' : formatDay(timeOf(item), now), items: [] }));
    group.items.push(item);
  }
  return out;
}

const clock = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

/** ms since epoch → "14:02", for chart axes over a short span */
export function formatClock(ms: number): string {
  return clock.format(new Date(ms));
}

/** ms since epoch → "Mar 5, 14:02", for chart axes */
export function formatShortTime(ms: number): string {
  return shortDateTime.format(new Date(ms));
}

/** 'full' | 'inc' | 'diff' → what people call them */
export function kindName(kind: string): string {
  switch (kind) {
    case 'full':
      return 'Full';
    case 'inc':
      return 'Incremental';
    case 'diff':
      return 'Differential';
    case 'restore':
      return 'Restore';
    default:
      return kind;
  }
}

/** "/var/lib/a.img" → ["/", "var/", "lib/", "a.img"], so long paths wrap after a slash */
export function pathParts(path: string): string[] {
  return path.split(/(?<=[/\\])/);
}

/** A job's summary line: "Full backup of alpha" */
export function jobTitle(job: { kind: string; label: string; driveId: string }): string {
  if (job.kind === 'restore') return `Restore of ${job.driveId}`;
  const known = job.label === 'full' || job.label === 'inc' || job.label === 'diff';
  return known ? `${kindName(job.label)} backup of ${job.driveId}` : `Backup of ${job.driveId}`;
}

/** "Full backup of Web01" → "full backup of Web01", for the middle of a sentence */
export function lowerFirst(text: string): string {
  return text ? `${text[0].toLowerCase()}${text.slice(1)}` : text;
}
