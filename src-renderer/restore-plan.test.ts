import { describe, expect, it } from 'vitest';
import type { BackupPoint, ChainSummary, Preflight } from '../src-shared/api/domain';
import {
  attachIdError,
  chainProblem,
  defaultAttachId,
  defaultTargetPath,
  driveChoices,
  failingLink,
  folderOf,
  groupChoices,
  linksOf,
  localDate,
  newestRestorable,
  restorePhase,
  stillRestorable,
  targetFor,
  targetPathError,
  type TargetDraft,
} from './restore-plan';

let nextId = 1;

function point(seq: number, kind: BackupPoint['kind'], n: number | null, extra: Partial<BackupPoint> = {}): BackupPoint {
  return {
    id: nextId++,
    n,
    seq,
    kind,
    file: `/b/root/c1/${seq}-${kind}.qcow2`,
    time: `2026-03-05T10:0${seq}:00.000Z`,
    status: n === null ? 'failed' : 'complete',
    virtualSize: 64 << 20,
    fileSize: 1 << 20,
    bytesCopied: 1 << 20,
    durationMs: 100,
    sha256: 'ab'.repeat(32),
    error: n === null ? 'No space left on device' : null,
    ...extra,
  };
}

function chain(points: BackupPoint[], extra: Partial<ChainSummary> = {}): ChainSummary {
  return {
    driveId: 'root',
    chainId: 'root-c1',
    folder: '/b/root/c1',
    mode: 'incremental',
    bitmap: 'tidemark-root-c1',
    createdAt: points[0]?.time ?? '2026-03-05T10:00:00.000Z',
    closedAt: null,
    active: true,
    points,
    ...extra,
  };
}

function preflight(chainDetail: string | null, restorable: number[]): Preflight {
  return {
    ok: chainDetail === null,
    checks: [
      { id: 'chain', label: 'Backup chain verified', ok: chainDetail === null, detail: chainDetail ?? '3 file(s) present.' },
      { id: 'space', label: 'Free space at the target', ok: true, detail: 'plenty' },
    ],
    dataBytes: 0,
    restorable,
  };
}

describe('chains and links', () => {
  it('an incremental reads every earlier kept backup of its chain; failed attempts are no links', () => {
    const full = point(1, 'full', 1);
    const failed = point(2, 'inc', null);
    const inc2 = point(3, 'inc', 2);
    const inc3 = point(4, 'inc', 3);
    const c = chain([full, failed, inc2, inc3]);
    expect(linksOf(c, full)).toEqual([full]);
    expect(linksOf(c, inc3)).toEqual([full, inc2, inc3]);
  });

  it('a differential reads only the full backup and itself', () => {
    const full = point(1, 'full', 1);
    const d2 = point(2, 'diff', 2);
    const d3 = point(3, 'diff', 3);
    expect(linksOf(chain([full, d2, d3], { mode: 'differential' }), d3)).toEqual([full, d3]);
  });

  it('says why a point cannot be restored, including a damaged earlier link', () => {
    const full = point(1, 'full', 1);
    const failed = point(2, 'inc', null);
    const inc2 = point(3, 'inc', 2, { status: 'corrupt', error: 'checksum mismatch' });
    const inc3 = point(4, 'inc', 3);
    const choices = driveChoices('root', [chain([full, failed, inc2, inc3])]);
    // newest first
    expect(choices.map((c) => c.point.seq)).toEqual([4, 3, 2, 1]);
    const by = (seq: number) => choices.find((c) => c.point.seq === seq)!;
    expect(by(1).unavailable).toBeUndefined();
    expect(by(2).unavailable).toBe('This backup failed: No space left on device');
    expect(by(3).unavailable).toBe('checksum mismatch');
    expect(by(4).unavailable).toMatch(/^Needs incremental #2 of .*, which is damaged or missing: checksum mismatch$/);
    expect(newestRestorable(choices)?.point).toBe(full);
  });

  it('a file a pre-flight found damaged takes its dependants out, before any verify', () => {
    const full = point(1, 'full', 1);
    const inc2 = point(2, 'inc', 2);
    const inc3 = point(3, 'inc', 3);
    const choices = driveChoices('root', [chain([full, inc2, inc3])], new Map([[inc2.file, 'its checksum no longer matches']]));
    expect(choices.filter((c) => !c.unavailable).map((c) => c.point.n)).toEqual([1]);
  });
});

describe('group points in time', () => {
  it('are the times every drive of the group shares', () => {
    const rootFull = point(1, 'full', 1, { time: '2026-03-05T10:00:00.000Z' });
    const rootInc = point(2, 'inc', 2, { time: '2026-03-05T11:00:00.000Z' });
    const rootAlone = point(3, 'inc', 3, { time: '2026-03-05T12:00:00.000Z' });
    const dataFull = point(1, 'full', 1, { time: '2026-03-05T10:00:00.000Z', file: '/b/data/1.qcow2' });
    const dataFailed = point(2, 'inc', null, { time: '2026-03-05T11:00:00.000Z', file: '/b/data/2.qcow2' });
    const byDrive = new Map([
      ['root', driveChoices('root', [chain([rootFull, rootInc, rootAlone])])],
      ['data', driveChoices('data', [chain([dataFull, dataFailed], { driveId: 'data', chainId: 'data-c1' })])],
    ]);
    const got = groupChoices({ name: 'vm1', drives: ['root', 'data'] }, byDrive);
    expect(got.map((g) => g.time)).toEqual(['2026-03-05T11:00:00.000Z', '2026-03-05T10:00:00.000Z']);
    expect(got[0].unavailable).toBe('data: This backup failed: No space left on device');
    expect(got[1].unavailable).toBeUndefined();
    expect(got[1].members.map((m) => m.driveId)).toEqual(['root', 'data']);
  });
});

describe('targets', () => {
  it('suggests a file next to the drive named after the point', () => {
    const t = '2026-03-05T10:00:00.000Z';
    expect(defaultTargetPath('/var/lib/images', 'root', 3, t, 'raw')).toBe(`/var/lib/images/root-point3-${localDate(t)}.raw`);
    expect(defaultTargetPath('/', 'root', 1, t, 'qcow2')).toBe(`/root-point1-${localDate(t)}.qcow2`);
    expect(defaultTargetPath('C:\\vm', 'root', 1, t, 'raw')).toBe(`C:\\vm\\root-point1-${localDate(t)}.raw`);
    expect(folderOf('/var/lib/a.img')).toBe('/var/lib');
    expect(folderOf('/a.img')).toBe('/');
  });

  it('suggests an attach id that is free and fits QEMU’s 31 characters', () => {
    expect(defaultAttachId('root', 1, new Set())).toBe('root-p1');
    expect(defaultAttachId('root', 1, new Set(['root-p1', 'root-p1-2']))).toBe('root-p1-3');
    const long = 'a'.repeat(31);
    expect(defaultAttachId(long, 12, new Set())).toHaveLength(31);
    expect(defaultAttachId(long, 12, new Set())).toMatch(/-p12$/);
  });

  it('checks paths and ids the way the engine will', () => {
    expect(targetPathError('')).toMatch(/Type where/);
    expect(targetPathError('restored.raw')).toMatch(/full path/);
    expect(targetPathError('/tmp/')).toMatch(/folder/);
    expect(targetPathError('/tmp/x.raw')).toBe('');
    expect(attachIdError('root-p1', new Set())).toBe('');
    expect(attachIdError('1abc', new Set())).toMatch(/starts with a letter/);
    expect(attachIdError('root', new Set(['root']))).toMatch(/already has a drive called root/);
    expect(attachIdError('x', new Set(), ['x'])).toMatch(/own/);
  });

  it('builds the contract’s target from the form', () => {
    const draft: TargetDraft = {
      kind: 'file',
      format: 'raw',
      compress: true,
      force: false,
      attach: false,
      paths: { root: ' /tmp/r.raw ' },
      attachIds: { root: 'root-p1' },
      speedText: '',
    };
    // compress is for qcow2 only; force and attach only when asked for
    expect(targetFor(draft, 'root')).toEqual({ kind: 'file', path: '/tmp/r.raw', format: 'raw' });
    expect(targetFor({ ...draft, format: 'qcow2', force: true, attach: true }, 'root')).toEqual({
      kind: 'file',
      path: '/tmp/r.raw',
      format: 'qcow2',
      compress: true,
      force: true,
      attachAs: 'root-p1',
    });
    expect(targetFor({ ...draft, kind: 'in-place' }, 'root')).toEqual({ kind: 'in-place' });
  });
});

describe('a failed chain check', () => {
  const full = point(1, 'full', 1);
  const inc2 = point(2, 'inc', 2);
  const inc3 = point(3, 'inc', 3);
  const all = driveChoices('root', [chain([full, inc2, inc3])]);
  const third = all.find((c) => c.point.n === 3)!;
  const detail = `Link 2 of 3 (${inc2.file}): The file '2-inc.qcow2' changed after the backup (its checksum no longer matches).`;

  it('names the damaged link and reads as a plain sentence', () => {
    expect(failingLink(preflight(detail, [1, 2, 3]), third.links)).toBe(inc2);
    expect(chainProblem(detail)).toBe("The file '2-inc.qcow2' changed after the backup (its checksum no longer matches).");
    expect(failingLink(preflight(null, [1, 2, 3]), third.links)).toBeUndefined();
  });

  it('leaves out of the engine’s restorable points those that read the damaged link', () => {
    // the engine's quick list still has #2: only a verify marks it corrupt in the catalog
    expect(stillRestorable(preflight(detail, [1, 2, 3]), third, all)).toEqual([1]);
    // a detail that names no file we know: fall back to the engine's list, earlier points only
    expect(stillRestorable(preflight('Something else.', [1, 2, 3]), third, all)).toEqual([1, 2]);
  });
});

describe('restore phase', () => {
  it('follows the engine’s accounting: data copied, then both sides hashed, then (in place) applied', () => {
    const data = 10;
    const size = 100;
    expect(restorePhase(undefined, data, false)).toBe('starting');
    expect(restorePhase({ bytesDone: 5, bytesTotal: data + size }, data, false)).toBe('copying');
    expect(restorePhase({ bytesDone: 50, bytesTotal: data + size }, data, false)).toBe('verifying');
    expect(restorePhase({ bytesDone: 50, bytesTotal: data + 2 * size }, data, true)).toBe('verifying');
    expect(restorePhase({ bytesDone: 150, bytesTotal: data + 2 * size }, data, true)).toBe('applying');
  });
});
