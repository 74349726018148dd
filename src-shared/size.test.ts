import { describe, expect, it } from 'vitest';
import { formatSize, parseSize } from './size.js';

describe('parseSize', () => {
  it.each([
    ['10G', 10 * 2 ** 30],
    ['512M', 512 * 2 ** 20],
    ['64k', 65536],
    ['1.5T', 1.5 * 2 ** 40],
    ['4096', 4096],
    ['10 GiB', 10 * 2 ** 30],
    ['2MB', 2 * 2 ** 20],
    [4096, 4096],
  ])('%s → %d', (input, bytes) => expect(parseSize(input)).toBe(bytes));

  it.each(['', 'ten', '1.5', '-1G', '1X', 'G10', '1e9'])('rejects %j', (input) => expect(parseSize(input)).toBeUndefined());
  it('rejects unsafe numbers', () => expect(parseSize('99999999E')).toBeUndefined());
});

describe('formatSize', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1 KiB'],
    [10 * 2 ** 30, '10 GiB'],
    [1.5 * 2 ** 20, '1.5 MiB'],
  ])('%d → %s', (bytes, text) => expect(formatSize(bytes)).toBe(text));
});
