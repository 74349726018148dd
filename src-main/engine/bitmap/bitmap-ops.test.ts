import { describe, expect, it } from 'vitest';
import { Drive } from '../drive.js';
import { BitmapCommands } from './bitmap-ops.js';
import { MemoryDriver } from '../../../test/helpers/memory-driver.js';
import { defaultGranularity, bitmapBytes } from './dirty-bitmap.js';

const MiB = 1 << 20;

function setup(size = 64 * MiB, clusterSize?: number) {
  const drive = new Drive('drive0', '#block131', new MemoryDriver(size, clusterSize));
  const other = new Drive('drive1', '#block231', new MemoryDriver(size));
  const small = new Drive('small', '#block331', new MemoryDriver(size / 2));
  const all = [drive, other, small];
  const cmds = new BitmapCommands((n) => all.find((d) => d.id === n || d.nodeName === n));
  return { drive, other, small, cmds };
}

describe('granularity', () => {
  it('defaults to the cluster size clamped to [4 KiB, 64 KiB], 64 KiB for raw', () => {
    expect(defaultGranularity(512)).toBe(4096);
    expect(defaultGranularity(16384)).toBe(16384);
    expect(defaultGranularity(2 * MiB)).toBe(65536);
    expect(defaultGranularity(undefined)).toBe(65536);
  });
  it('refuses non-powers of two, < 512 and > 2^31', () => {
    const { cmds } = setup();
    for (const g of [0, 256, 3000, 12288, 2 ** 32]) expect(() => cmds.add('drive0', `g${g}`, { granularity: g })).toThrow(/power of 2/);
    expect(cmds.add('drive0', 'min', { granularity: 512 }).granularity).toBe(512);
    expect(cmds.add('drive0', 'max', { granularity: 2 ** 31 }).granularity).toBe(2 ** 31);
  });
  it('computes the memory cost rounding up', () => {
    expect(bitmapBytes(100 * 1024, 65536)).toBe(1);
    expect(bitmapBytes(2 * 2 ** 40, 65536)).toBe(4 * MiB);
  });
});

describe('names', () => {
  it('refuses empty, duplicate and over-long names; allows 1023 bytes', () => {
    const { cmds } = setup();
    expect(() => cmds.add('drive0', '')).toThrow('Bitmap name cannot be empty');
    cmds.add('drive0', 'b');
    expect(() => cmds.add('drive0', 'b')).toThrow('Bitmap already exists: b');
    expect(() => cmds.add('drive0', 'x'.repeat(1024))).toThrow(/too long/);
    expect(cmds.add('drive0', 'x'.repeat(1023)).name).toHaveLength(1023);
    // multi-byte characters count in bytes
    expect(() => cmds.add('drive0', 'é'.repeat(512))).toThrow(/too long/);
    // the same name on another node is fine
    expect(cmds.add('drive1', 'b').name).toBe('b');
  });
  it('names the missing node in QEMU words', () => {
    const { cmds } = setup();
    expect(() => cmds.add('nope', 'x')).toThrow("Cannot find device='nope' nor node-name='nope'");
    expect(() => cmds.clear('nope', 'x')).toThrow("Node 'nope' not found");
    expect(() => cmds.clear('drive0', 'x')).toThrow("Dirty bitmap 'x' not found");
  });
  it('refuses persistence on a node without a bitmap store', () => {
    const { cmds } = setup();
    expect(() => cmds.add('drive0', 'p', { persistent: true })).toThrow("Can't store persistent bitmaps to drive0: Operation not supported");
  });
});

describe('write tracking', () => {
  it('rounds writes outward and counts set bits × granularity (QEMU verified numbers)', async () => {
    for (const [g, expected] of [
      [512, 5632],
      [65536, 196608],
      [MiB, 2 * MiB],
    ]) {
      const { drive, cmds } = setup();
      cmds.add('drive0', 'b', { granularity: g });
      await drive.write(0, new Uint8Array(1));
      await drive.write(65535, new Uint8Array(2));
      await drive.write(10 * MiB, new Uint8Array(4096));
      expect(drive.bitmaps.get('b').count).toBe(expected);
    }
  });
  it('counts zero writes and discards, not reads; disabled bitmaps miss writes', async () => {
    const drive = new Drive('drive0', '#block131', new MemoryDriver(64 * MiB), 'unmap');
    const cmds = new BitmapCommands(() => drive);
    cmds.add('drive0', 'on');
    cmds.add('drive0', 'off', { disabled: true });
    await drive.writeZeroes(0, 4096);
    await drive.discard(MiB, 4096);
    await drive.read(2 * MiB, 4096);
    expect(drive.bitmaps.get('on').count).toBe(2 * 65536);
    expect(drive.bitmaps.get('off').count).toBe(0);
  });
  it("ignores discards entirely under QEMU's default discard=ignore", async () => {
    const { drive, cmds } = setup();
    cmds.add('drive0', 'b');
    await drive.discard(0, 4096);
    expect(drive.bitmaps.get('b').count).toBe(0);
  });
  it('marks even when the write fails', async () => {
    const { drive, cmds } = setup();
    cmds.add('drive0', 'b');
    (drive.driver as MemoryDriver).failWrites = true;
    await expect(drive.write(0, new Uint8Array(10))).rejects.toThrow();
    expect(drive.bitmaps.get('b').count).toBe(65536);
  });
  it('counts a partial last granule whole but clips extents at the end of the disk', async () => {
    const drive = new Drive('d', '#b', new MemoryDriver(100 * 1024));
    const cmds = new BitmapCommands(() => drive);
    const b = cmds.add('d', 'b');
    await drive.write(80 * 1024, new Uint8Array(1));
    expect(b.count).toBe(65536);
    expect(b.dirtyExtents()).toEqual([{ offset: 65536, length: 100 * 1024 - 65536 }]);
  });
  it('lists bitmaps newest first and hides anonymous ones', () => {
    const { drive, cmds } = setup();
    cmds.add('drive0', 'a');
    cmds.add('drive0', 'b');
    drive.bitmaps.createSuccessor(drive.bitmaps.get('a'));
    expect(drive.bitmaps.infos().map((i) => i.name)).toEqual(['b', 'a']);
  });
});

describe('merge', () => {
  it('ORs sources into the target without clearing it, rounding outward to the target granularity', async () => {
    const { drive, cmds } = setup();
    const t = cmds.add('drive0', 't', { granularity: 2 * MiB, disabled: true });
    const a = cmds.add('drive0', 'a', { granularity: 512 });
    const b = cmds.add('drive0', 'b', { granularity: 65536 });
    t.mark(30 * MiB, 1);
    await drive.write(0, new Uint8Array(1));
    await drive.write(3 * MiB, new Uint8Array(1));
    cmds.merge('drive0', 't', ['a', 'b']);
    expect(t.count).toBe(6 * MiB); // 0-2M, 2-4M and the target's own 30M bit
    expect(a.count).toBe(1024);
    expect(b.count).toBe(2 * 65536);
  });
  it('takes {node, name} sources from other nodes of the same size', () => {
    const { cmds, small } = setup();
    cmds.add('drive0', 't');
    cmds.add('drive1', 's').mark(0, 1);
    cmds.add('small', 'tiny');
    cmds.merge('drive0', 't', [{ node: 'drive1', name: 's' }]);
    expect(cmds.find('drive0', 't').bitmap.count).toBe(65536);
    expect(() => cmds.merge('drive0', 't', [{ node: 'small', name: 'tiny' }])).toThrow(/different sizes/);
    expect(small.bitmaps.get('tiny').count).toBe(0);
  });
  it('changes nothing when any source is refused', () => {
    const { drive, cmds } = setup();
    const t = cmds.add('drive0', 't');
    cmds.add('drive0', 'a').mark(0, MiB);
    const busy = cmds.add('drive0', 'busy');
    busy.mark(5 * MiB, 1);
    busy.busy = true;
    expect(() => cmds.merge('drive0', 't', ['a', 'nosuch'])).toThrow("Dirty bitmap 'nosuch' not found");
    expect(() => cmds.merge('drive0', 't', ['a', 'busy'])).toThrow(/in use by another operation/);
    const bad = cmds.add('drive0', 'bad');
    bad.inconsistent = true;
    expect(() => cmds.merge('drive0', 't', ['a', 'bad'])).toThrow(/inconsistent/);
    expect(t.count).toBe(0);
    expect(drive.bitmaps.get('a').count).toBe(MiB);
  });
  it('refuses an empty source list (QEMU 7.2 crashes on it)', () => {
    const { cmds } = setup();
    cmds.add('drive0', 't');
    expect(() => cmds.merge('drive0', 't', [])).toThrow(/at least one source/);
  });
});

describe('busy and inconsistent refusals', () => {
  it('a busy bitmap refuses remove, clear, enable, disable and being a merge target', async () => {
    const { cmds } = setup();
    const b = cmds.add('drive0', 'b');
    cmds.add('drive0', 'src');
    b.busy = true;
    const msg = "Bitmap 'b' is currently in use by another operation and cannot be used";
    await expect(cmds.remove('drive0', 'b')).rejects.toThrow(msg);
    expect(() => cmds.clear('drive0', 'b')).toThrow(msg);
    expect(() => cmds.enable('drive0', 'b')).toThrow(msg);
    expect(() => cmds.disable('drive0', 'b')).toThrow(msg);
    expect(() => cmds.merge('drive0', 'b', ['src'])).toThrow(msg);
  });
  it('an inconsistent bitmap refuses everything but remove', async () => {
    const { drive, cmds } = setup();
    const b = cmds.add('drive0', 'b');
    b.inconsistent = true;
    b.disabled = true;
    expect(() => cmds.clear('drive0', 'b')).toThrow(/inconsistent/);
    expect(() => cmds.enable('drive0', 'b')).toThrow(/inconsistent/);
    expect(() => cmds.disable('drive0', 'b')).toThrow(/inconsistent/);
    expect(b.info()).toEqual({ name: 'b', count: 0, granularity: 65536, recording: false, busy: false, persistent: false, inconsistent: true });
    await cmds.remove('drive0', 'b');
    expect(drive.bitmaps.find('b')).toBeUndefined();
  });
  it('enable and disable are idempotent; clear works on a disabled bitmap', () => {
    const { cmds } = setup();
    const b = cmds.add('drive0', 'b', { disabled: true });
    b.mark(0, 1);
    cmds.disable('drive0', 'b');
    cmds.clear('drive0', 'b');
    expect(b.count).toBe(0);
    cmds.enable('drive0', 'b');
    cmds.enable('drive0', 'b');
    expect(b.recording).toBe(true);
  });
});

describe('successors (what backups use)', () => {
  it('freezes the bitmap, sends writes to the successor, and abdicates or reclaims', async () => {
    const { drive, cmds } = setup();
    const b = cmds.add('drive0', 'b');
    await drive.write(0, new Uint8Array(1));
    const s = drive.bitmaps.createSuccessor(b);
    expect(b.info()).toMatchObject({ busy: true, recording: true, count: 65536 });
    await drive.write(MiB, new Uint8Array(1));
    expect(b.count).toBe(65536);
    expect(s.count).toBe(65536);
    const reclaimed = drive.bitmaps.reclaim(b);
    expect(reclaimed.count).toBe(2 * 65536);
    expect(reclaimed.info()).toMatchObject({ busy: false, recording: true });
    drive.bitmaps.createSuccessor(b);
    await drive.write(2 * MiB, new Uint8Array(1));
    const after = drive.bitmaps.abdicate(b);
    expect(after.name).toBe('b');
    expect(after.count).toBe(65536);
    expect(drive.bitmaps.infos()).toEqual([after.info()]);
  });
});
