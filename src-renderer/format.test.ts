import { describe, expect, it } from 'vitest';
import { bitmapBits, bitmapMemory, GRANULARITIES } from './bitmap-math';
import { formatDay, formatDuration, formatEta, formatPercent, groupByDay, jobTitle, kindName, lowerFirst, parseMiBps, pathParts } from './format';

describe('bitmap memory', () => {
  it('is one bit per granule, rounded up to whole bytes (QEMU)', () => {
    // 2 TiB at 64 KiB: 4 MiB, the figure in QEMU's docs
    expect(bitmapMemory(2 * 2 ** 40, 64 * 1024)).toBe(4 * 2 ** 20);
    expect(bitmapMemory(64 * 2 ** 20, 64 * 1024)).toBe(128);
    expect(bitmapBits(64 * 2 ** 20 + 1, 64 * 1024)).toBe(1025);
    expect(bitmapMemory(64 * 2 ** 20 + 1, 64 * 1024)).toBe(129);
    expect(bitmapMemory(0, 512)).toBe(0);
  });

  it('offers every granularity QEMU accepts', () => {
    expect(GRANULARITIES[0]).toBe(512);
    expect(GRANULARITIES[GRANULARITIES.length - 1]).toBe(2 ** 31);
    expect(GRANULARITIES).toHaveLength(23);
  });
});

describe('format', () => {
  it('percentages never round something to a misleading 0% or 100%', () => {
    expect(formatPercent(0)).toBe('0%');
    expect(formatPercent(1 / 64)).toBe('1.56%');
    expect(formatPercent(0.5)).toBe('50%');
    expect(formatPercent(0.125)).toBe('12.5%');
    expect(formatPercent(0.00001)).toBe('< 0.01%');
    expect(formatPercent(0.999999)).toBe('> 99.99%');
    expect(formatPercent(1)).toBe('100%');
  });

  it('durations and estimates read like a person would say them', () => {
    expect(formatDuration(420)).toBe('420 ms');
    expect(formatDuration(8_000)).toBe('8 s');
    expect(formatDuration(125_000)).toBe('2 min 5 s');
    expect(formatDuration(3_720_000)).toBe('1 h 2 min');
    expect(formatEta(4)).toBe('a few seconds');
    expect(formatEta(23)).toBe('about 25 s');
    expect(formatEta(70)).toBe('about a minute');
    expect(formatEta(600)).toBe('about 10 min');
    expect(formatEta(3 * 3600 + 600)).toBe('about 3 h 10 min');
  });

  it('names jobs and kinds', () => {
    expect(kindName('inc')).toBe('Incremental');
    expect(jobTitle({ kind: 'backup', label: 'full', driveId: 'Web01' })).toBe('Full backup of Web01');
    expect(jobTitle({ kind: 'backup', label: 'other', driveId: 'd' })).toBe('Backup of d');
    expect(jobTitle({ kind: 'restore', label: 'restore', driveId: 'd' })).toBe('Restore of d');
    expect(lowerFirst('Full backup of Web01')).toBe('full backup of Web01');
  });

  it('splits paths after each separator so they wrap there', () => {
    expect(pathParts('/var/lib/a.img')).toEqual(['/', 'var/', 'lib/', 'a.img']);
  });
});

describe('days', () => {
  const now = new Date(2026, 2, 5, 15, 0, 0);
  const at = (day: number, hour: number) => new Date(2026, 2, day, hour, 0, 0).toISOString();

  it('names today and yesterday, and spells out other days', () => {
    expect(formatDay(at(5, 1), now)).toBe('Today');
    expect(formatDay(at(4, 23), now)).toBe('Yesterday');
    expect(formatDay(at(1, 12), now)).toMatch(/2026/);
  });

  it('groups by the local day and keeps the order it was given', () => {
    const items = [at(5, 14), at(5, 9), at(4, 22), at(1, 8)];
    const days = groupByDay(items, (t) => t, now);
    expect(days.map((d) => d.label.slice(0, 9))).toEqual(['Today', 'Yesterday', formatDay(at(1, 8), now).slice(0, 9)]);
    expect(days[0].items).toEqual([at(5, 14), at(5, 9)]);
  });
});

describe('speed fields', () => {
  it('read MiB/s as bytes per second; empty is no limit; anything else is refused', () => {
    expect(parseMiBps('')).toBe(0);
    expect(parseMiBps('  ')).toBe(0);
    expect(parseMiBps('50')).toBe(50 * 2 ** 20);
    expect(parseMiBps(' 0.5 ')).toBe(2 ** 19);
    expect(parseMiBps('0')).toBeUndefined();
    expect(parseMiBps('-3')).toBeUndefined();
    expect(parseMiBps('fast')).toBeUndefined();
  });
});
