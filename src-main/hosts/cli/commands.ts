import type { ApiClient } from './client.js';
import type { ParsedArgs } from './args.js';
import { UsageError } from './args.js';
import { formatSize } from '../../../src-shared/size.js';
import { TidemarkError } from '../../../src-shared/errors.js';

/** One CLI verb: uses the API client, writes results to stdout, returns the exit code. */
export type Command = (client: ApiClient, args: ParsedArgs, out: Output) => Promise<number>;

export interface Output {
  json: boolean;
  print(text: string): void;
  data(value: unknown): void;
  error(text: string): void;
}

function one(args: ParsedArgs, name: string): string | undefined {
  return args.options.get(name)?.[0];
}

function required(args: ParsedArgs, name: string): string {
  const v = one(args, name);
  if (v === undefined) throw new UsageError(`--${name} is required`);
  return v;
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

export const drivesCommand: Command = async (client, args, out) => {
  const [sub, arg] = args.positional;
  if (sub === 'list' || sub === undefined) {
    const drives = await client.request('drives.list', {});
    if (out.json) out.data(drives);
    else if (drives.length === 0) out.print('No drives yet. Add one: tidemark drives add PATH');
    else
      out.print(
        table([
          ['ID', 'FORMAT', 'SIZE', 'ALLOCATED', 'STATE', 'PATH'],
          ...drives.map((d) => [d.id, d.format, formatSize(d.virtualSize), formatSize(d.actualSize), d.state, d.path]),
        ]),
      );
    return 0;
  }
  if (sub === 'add') {
    if (!arg) throw new UsageError('drives add needs a PATH');
    const d = await client.request('drives.add', { path: arg, id: one(args, 'id') });
    if (out.json) out.data(d);
    else out.print(`Added drive ${d.id}: ${d.path} (${d.format}, ${formatSize(d.virtualSize)})`);
    return 0;
  }
  if (sub === 'remove') {
    if (!arg) throw new UsageError('drives remove needs an ID');
    await client.request('drives.remove', { id: arg });
    if (out.json) out.data({});
    else out.print(`Removed drive ${arg} from Tidemark (the image file was not touched).`);
    return 0;
  }
  throw new UsageError(`unknown drives command '${sub}' (list, add, remove)`);
};

export const bitmapsCommand: Command = async (client, args, out) => {
  const bitmaps = await client.request('bitmaps.list', { driveId: required(args, 'drive') });
  if (out.json) out.data(bitmaps.map(({ map: _map, ...b }) => b));
  else if (bitmaps.length === 0) out.print('No bitmaps on this drive.');
  else
    out.print(
      table([
        ['NAME', 'GRANULARITY', 'DIRTY', 'FLAGS'],
        ...bitmaps.map((b) => [
          b.name,
          formatSize(b.granularity),
          formatSize(b.count),
          [b.recording && 'recording', b.busy && 'busy', b.persistent && 'persistent', b.inconsistent && 'inconsistent', b.sidecar && 'sidecar'].filter(Boolean).join(','),
        ]),
      ]),
    );
  return 0;
};

/** Waits until the jobs are no longer running; returns each one's outcome from the job history. */
async function waitForJobs(client: ApiClient, ids: string[]): Promise<Map<string, { outcome: string; error: string | null }>> {
  while ((await client.request('jobs.list', {})).some((j) => ids.includes(j.id))) await new Promise((r) => setTimeout(r, 200));
  const history = await client.request('jobs.history', { limit: 1000 });
  const out = new Map<string, { outcome: string; error: string | null }>();
  for (const id of ids) {
    const h = history.find((r) => r.jobId === id);
    out.set(id, { outcome: h?.outcome ?? 'failed', error: h?.error ?? (h ? null : 'the job left no record') });
  }
  return out;
}

export const backupCommand: Command = async (client, args, out) => {
  const driveId = one(args, 'drive');
  const group = one(args, 'group');
  if ((driveId === undefined) === (group === undefined)) throw new UsageError('give either --drive ID or --group NAME');
  if (args.flags.has('full') && args.flags.has('diff')) throw new UsageError('--full and --diff exclude each other');
  const force = args.flags.has('full') ? 'full' : args.flags.has('diff') ? 'diff' : undefined;
  if (force === 'diff' && driveId) await client.request('backups.setSettings', { driveId, backupMode: 'differential' });
  const started = await client.request('backups.run', { driveId, group, dest: one(args, 'dest'), force: force === 'full' ? 'full' : undefined });
  if (!out.json) for (const s of started) out.print(`${s.driveId}: ${s.kind} backup started. ${s.reason}`);
  const outcomes = await waitForJobs(
    client,
    started.map((s) => s.jobId),
  );
  let failed = 0;
  const results = started.map((s) => {
    const o = outcomes.get(s.jobId)!;
    if (o.outcome !== 'completed') failed++;
    return { drive: s.driveId, kind: s.kind, outcome: o.outcome, error: o.error };
  });
  if (out.json) out.data(results);
  else for (const r of results) (r.outcome === 'completed' ? out.print : out.error)(`${r.drive}: ${r.kind} backup ${r.outcome}${r.error ? `: ${r.error}` : ''}`);
  return failed ? 1 : 0;
};

export const chainsCommand: Command = async (client, args, out) => {
  const chains = await client.request('backups.list', { driveId: one(args, 'drive') });
  if (out.json) {
    out.data(
      chains.map((c) => ({
        drive: c.driveId,
        chain: c.chainId,
        points: c.points.filter((p) => p.n !== null).map((p) => ({ n: p.n, kind: p.kind, file: p.file, time: p.time, status: p.status })),
      })),
    );
    return 0;
  }
  if (chains.length === 0) out.print('No backups yet. Run: tidemark backup --drive ID --dest FOLDER');
  for (const c of chains) {
    out.print(`${c.driveId} · chain ${c.chainId}${c.active ? ' (active)' : ''} · ${c.mode} · ${c.folder}`);
    out.print(
      table([
        ['N', 'KIND', 'TIME', 'STATUS', 'SIZE', 'FILE'],
        ...c.points.map((p) => [p.n === null ? '-' : String(p.n), p.kind, p.time, p.status, p.fileSize === null ? '-' : formatSize(p.fileSize), p.error ?? p.file.split('/').pop()!]),
      ]),
    );
  }
  return 0;
};

export const verifyCommand: Command = async (client, args, out) => {
  const driveId = required(args, 'drive');
  const chains = await client.request('backups.list', { driveId });
  if (chains.length === 0) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' has no backups to verify.`);
  const reports = [];
  for (const c of chains) reports.push(await client.request('backups.verify', { chainId: c.chainId }));
  const problems = reports.flatMap((r) => r.problems);
  if (out.json) out.data(reports);
  else {
    for (const r of reports) out.print(`chain ${r.chainId}: ${r.ok ? 'ok' : 'PROBLEMS'} (${r.checked} point(s) checked)`);
    for (const p of problems) out.error(`point ${p.n} (${p.file}): ${p.problem}`);
  }
  return problems.length ? 1 : 0;
};

export const jobsCommand: Command = async (client, _args, out) => {
  const running = await client.request('jobs.list', {});
  const history = await client.request('jobs.history', { limit: 20 });
  if (out.json) {
    out.data({ running, history });
    return 0;
  }
  out.print(running.length ? table([['JOB', 'DRIVE', 'KIND', 'PROGRESS', 'STATUS'], ...running.map((j) => [j.id, j.driveId, j.label, `${formatSize(j.bytesDone)}/${formatSize(j.bytesTotal)}`, j.status])]) : 'No jobs running.');
  if (history.length) out.print(`\n${table([['JOB', 'DRIVE', 'OUTCOME', 'STARTED', 'BYTES', 'ERROR'], ...history.map((h) => [h.jobId, h.driveId, h.outcome, h.startedAt, formatSize(h.bytes), h.error ?? ''])])}`);
  return 0;
};

/** N, or the latest point at or before an ISO time, from the drive's numbered points. */
async function resolvePoint(client: ApiClient, driveId: string, which: string): Promise<number> {
  if (/^\d+$/.test(which)) return Number(which);
  const t = Date.parse(which);
  if (Number.isNaN(t)) throw new UsageError(`--point takes a number or an ISO-8601 time; got '${which}'`);
  const points = (await client.request('backups.list', { driveId })).flatMap((c) => c.points).filter((p) => p.n !== null);
  const found = points.filter((p) => Date.parse(p.time) <= t).sort((a, b) => a.n! - b.n!).at(-1);
  if (!found) throw new TidemarkError('NOT_FOUND', `Drive '${driveId}' has no point at or before ${which}.`);
  return found.n!;
}

export const restoreCommand: Command = async (client, args, out) => {
  const driveId = required(args, 'drive');
  const n = await resolvePoint(client, driveId, required(args, 'point'));
  const inPlace = args.flags.has('in-place');
  const to = one(args, 'to');
  if (inPlace === (to !== undefined)) throw new UsageError('give either --to PATH or --in-place');
  if (inPlace && !args.flags.has('yes')) throw new UsageError(`--in-place overwrites drive '${driveId}': add --yes to confirm`);
  const format = one(args, 'format') ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') throw new UsageError(`--format is raw or qcow2; got '${format}'`);
  const target = inPlace ? ({ kind: 'in-place' } as const) : ({ kind: 'file', path: to!, format, force: args.flags.has('force') || undefined } as const);
  const started = await client.request('restore.start', { driveId, n, target, confirm: inPlace ? driveId : undefined });
  if (!out.json) out.print(`Restoring point ${n} of ${driveId} (${started.pointTime}) to ${started.target}…`);
  let report = started;
  while (report.outcome === 'running') {
    await new Promise((r) => setTimeout(r, 200));
    report = await client.request('restore.report', { jobId: started.jobId });
  }
  if (out.json) out.data(report);
  else if (report.outcome === 'completed') out.print(`Restored and verified: ${report.target} (content digest ${report.restoredHash}).`);
  else out.error(`Restore ${report.outcome}: ${report.error ?? 'no reason given'}. The original is untouched.`);
  return report.outcome === 'completed' && report.verified ? 0 : 1;
};
