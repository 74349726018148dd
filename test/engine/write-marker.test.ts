import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, mkdtempSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockEngine } from '../../src-main/engine/engine.js';
import type { DirtyBitmap } from '../../src-main/engine/bitmap/dirty-bitmap.js';

const engines: BlockEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
});

/** Dirty granules as a reference keeps them: a set of granule indexes per bitmap. */
class Reference {
  readonly bits = new Map<DirtyBitmap, Set<number>>();
  mark(b: DirtyBitmap, offset: number, length: number): void {
    let set = this.bits.get(b);
    if (!set) this.bits.set(b, (set = new Set()));
    const end = Math.min(b.size, offset + length);
    for (let g = Math.floor(offset / b.granularity); g <= Math.floor((end - 1) / b.granularity); g++) set.add(g);
  }
  clear(b: DirtyBitmap): void {
    this.bits.get(b)?.clear();
  }
  extents(b: DirtyBitmap): [number, number][] {
    const gs = [...(this.bits.get(b) ?? [])].sort((x, y) => x - y);
    const out: [number, number][] = [];
    for (const g of gs) {
      const last = out.at(-1);
      if (last && last[0] + last[1] === g * b.granularity) last[1] += b.granularity;
      else out.push([g * b.granularity, b.granularity]);
    }
    return out.map(([o, l]) => [o, Math.min(l, b.size - o)]);
  }
}

describe('deferred write marking', () => {
  it('bitmaps read exactly as if marked at each completion, through clears, disables, adds and removes mid-stream', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-marker-'));
    const path = join(dir, 'disk.raw');
    const size = 64 << 20;
    const fd = openSync(path, 'w');
    ftruncateSync(fd, size);
    closeSync(fd);
    const engine = new BlockEngine();
    engines.push(engine);
    const drive = await engine.attach({ id: 'd', path, format: 'raw' });
    const cmds = engine.bitmapCommands;
    const ref = new Reference();
    // the reference marks at the moment the drive reports the write done: every bitmap that
    // records then, as QEMU marks at completion
    drive.onWrite((_d, offset, length) => {
      for (const b of drive.bitmaps.all()) if (!b.disabled) ref.mark(b, offset, length);
    });
    const names = ['a', 'b', 'c', 'd', 'e'];
    cmds.add('d', 'a', { granularity: 512 });
    cmds.add('d', 'b', { granularity: 4096 });
    cmds.add('d', 'c', { granularity: 65536 });
    let x = 7;
    const rnd = (n: number) => (x = (x * 1103515245 + 12345) >>> 0) % n;
    const data = new Uint8Array(70_000).fill(3);
    let next = 0;
    let stop = 1500;
    const writer = async () => {
      while (next < stop) {
        const k = next++;
        const length = 1 + rnd(k % 7 === 0 ? 70_000 : 4096);
        const offset = rnd(size - length);
        await drive.write(offset, data.subarray(0, length));
        // now and then, between writes (others in flight): change the bitmaps and look at them
        if (k % 97 === 13) {
          const name = names[rnd(names.length)];
          const b = drive.bitmaps.find(name);
          const op = rnd(5);
          if (!b) {
            cmds.add('d', name, { granularity: 512 << rnd(8) });
          } else if (op === 0) {
            cmds.clear('d', name);
            ref.clear(b);
          } else if (op === 1) {
            if (b.disabled) cmds.enable('d', name);
            else cmds.disable('d', name);
          } else if (op === 2 && drive.bitmaps.all().length > 2) {
            cmds.remove('d', name);
            ref.bits.delete(b);
          } else {
            // a look in the middle of the stream must already see every completed write
            expect(b.dirtyExtents().map((e) => [e.offset, e.length])).toEqual(ref.extents(b));
          }
        }
      }
    };
    // many writes in flight, then one at a time: marks held back until the next request starts
    await Promise.all(Array.from({ length: 6 }, writer));
    stop = 3000;
    await writer();
    expect(engine.marker!.stats.deferred).toBeGreaterThan(2000);
    for (const b of drive.bitmaps.all()) {
      expect(b.dirtyExtents().map((e) => [e.offset, e.length])).toEqual(ref.extents(b));
      expect(b.count).toBe(ref.extents(b).reduce((n, [, l]) => n + Math.ceil(l / b.granularity), 0) * b.granularity);
    }
  });
});
