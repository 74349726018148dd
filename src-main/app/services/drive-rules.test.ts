import { describe, expect, it } from 'vitest';
import { checkDriveSize, idFromPath, uniqueId, MAX_DRIVE_SIZE } from './drive-rules.js';
import { TidemarkError } from '../../../src-shared/errors.js';

describe('drive size rules', () => {
  it('accepts 1 byte to 64 TiB', () => {
    expect(checkDriveSize('1')).toBe(1);
    expect(checkDriveSize('64T')).toBe(MAX_DRIVE_SIZE);
  });
  it.each(['0', '0G', '65T', '64.5T', 'lots'])('refuses %s with INVALID_SIZE', (s) => {
    expect(() => checkDriveSize(s)).toThrow(TidemarkError);
    try {
      checkDriveSize(s);
    } catch (e) {
      expect((e as TidemarkError).code).toBe('INVALID_SIZE');
    }
  });
});

describe('drive ids', () => {
  it('derives an id from the file name', () => {
    expect(idFromPath('/vm/Web Server.qcow2')).toBe('Web-Server');
    expect(idFromPath('/vm/2024-disk.raw')).toBe('disk');
    expect(idFromPath('/vm/___.img')).toBe('drive');
  });
  it('keeps ids unique', () => {
    expect(uniqueId('disk', new Set(['disk', 'disk-2']))).toBe('disk-3');
    expect(uniqueId('disk', new Set())).toBe('disk');
  });
});
