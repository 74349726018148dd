import { describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, mkdtempSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostDataRanges, parseFilefrag, rangesWithin } from './host-extents.js';

const SAMPLE = `Filesystem type is: ef53
File size of /tmp/exp/sp.raw is 67108864 (67108864 blocks of 1 bytes)
 ext:     logical_offset:        physical_offset: length:   expected: flags:
   0:   327680..  524287:          0..         0:      0:             unknown_loc,delalloc
   1:   524288..  528383:    1234567..   1238662:   4096:             unwritten
   2: 16384000..16388095:          0..         0:      0:             last,unknown_loc,delalloc
/tmp/exp/sp.raw: 3 extents found
`;

describe('host data ranges', () => {
  it('reads filefrag’s byte-unit extents, merged where they touch, clipped to the file', () => {
    expect(parseFilefrag(SAMPLE, 67108864)).toEqual([
      { offset: 327680, length: 200704 },
      { offset: 16384000, length: 4096 },
    ]);
    expect(parseFilefrag(SAMPLE, 16386000)).toEqual([
      { offset: 327680, length: 200704 },
      { offset: 16384000, length: 2000 },
    ]);
    expect(parseFilefrag('Filesystem type is: ef53\nFile size of x is 0 (0 blocks of 1 bytes)\nx: 0 extents found\n', 0)).toEqual([]);
  });

  it('refuses what it does not understand (the caller then reads everything)', () => {
    expect(parseFilefrag('', 100)).toBeUndefined();
    expect(parseFilefrag('filefrag: Operation not supported\n', 100)).toBeUndefined();
    expect(parseFilefrag(SAMPLE.replace('blocks of 1 bytes', 'blocks of 4096 bytes'), 67108864)).toBeUndefined();
    expect(parseFilefrag(SAMPLE.replace('16384000..16388095', '1000..2000'), 67108864)).toBeUndefined();
  });

  it('cuts ranges to a window', () => {
    const r = [
      { offset: 0, length: 100 },
      { offset: 200, length: 100 },
      { offset: 1000, length: 5000 },
    ];
    expect(rangesWithin(r, 50, 200)).toEqual([
      { offset: 50, length: 50 },
      { offset: 200, length: 50 },
    ]);
    expect(rangesWithin(r, 300, 700)).toEqual([]);
    expect(rangesWithin(r, 2000, 100)).toEqual([{ offset: 2000, length: 100 }]);
  });

  it('finds the data of a real sparse file (ext4 here: FIEMAP through filefrag)', async () => {
    const path = join(mkdtempSync(join(tmpdir(), 'tm-extents-')), 'sparse.raw');
    const fd = openSync(path, 'w');
    ftruncateSync(fd, 64 << 20);
    writeSync(fd, new Uint8Array(65536).fill(1), 0, 65536, 5 << 20);
    writeSync(fd, new Uint8Array(4096).fill(2), 0, 4096, 40 << 20);
    closeSync(fd);
    const ranges = await hostDataRanges(path, 64 << 20);
    expect(ranges).toEqual([
      { offset: 5 << 20, length: 65536 },
      { offset: 40 << 20, length: 4096 },
    ]);
  });
});
