import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { appHarness } from '../helpers/apps.js';

const { start, stop, crash } = appHarness();

describe('sidecar bitmaps for raw drives (opt-in)', () => {
  it('survive a clean restart with their bits; a crash leaves them inconsistent; plain raw bitmaps are transient', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-sidecar-'));
    const img = join(dir, 'disk.raw');
    writeFileSync(img, new Uint8Array(0));
    const { truncateSync } = await import('node:fs');
    truncateSync(img, 64 << 20);
    const data = join(dir, 'data');
    let app = await start(data);
    await app.drives.add({ path: img, id: 'r' });
    const s = await app.bitmaps.add({ driveId: 'r', name: 'kept', sidecar: true, granularity: 65536 });
    expect(s).toMatchObject({ sidecar: true, persistent: false });
    await app.bitmaps.add({ driveId: 'r', name: 'transient' });
    await expect(app.bitmaps.add({ driveId: 'r', name: 'p', persistent: true })).rejects.toThrow(/Operation not supported/);
    const drive = app.engine.get('r')!;
    await drive.write(0, new Uint8Array(1));
    await drive.write(5 << 20, new Uint8Array(200000));
    const count = drive.bitmaps.get('kept').count;
    await stop(app);

    app = await start(data);
    const after = app.bitmaps.list('r');
    expect(after.map((b) => b.name)).toEqual(['kept']);
    expect(after[0]).toMatchObject({ count, sidecar: true, inconsistent: false, recording: true });
    await app.engine.get('r')!.write(10 << 20, new Uint8Array(1));
    await crash(app);

    app = await start(data);
    expect(app.bitmaps.list('r')[0]).toMatchObject({ name: 'kept', inconsistent: true, recording: false, count: 0 });
    expect(() => app.bitmaps.clear({ driveId: 'r', name: 'kept' })).toThrow(/inconsistent/);
    await app.bitmaps.remove({ driveId: 'r', name: 'kept' });
    expect(app.bitmaps.list('r')).toEqual([]);
  });
});
