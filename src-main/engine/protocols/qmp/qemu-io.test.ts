import { describe, expect, it } from 'vitest';
import { parseQemuIoNumber, splitWords } from './qemu-io.js';

describe('qemu-io numbers', () => {
  it.each([
    ['0', 0],
    ['512', 512],
    ['64k', 65536],
    ['1M', 1 << 20],
    ['1m', 1 << 20],
    ['2G', 2 ** 31],
    ['0x10', 16],
    ['1.5k', 1536],
  ])('%s → %d', (t, v) => expect(parseQemuIoNumber(t)).toBe(v));
  it.each(['', 'x', '1.5', '-1', '1Q'])('refuses %j', (t) => expect(() => parseQemuIoNumber(t)).toThrow());
});

describe('splitWords', () => {
  it('honours quotes', () => expect(splitWords(`write -P 0x11 "0" '1M'`)).toEqual(['write', '-P', '0x11', '0', '1M']));
});
