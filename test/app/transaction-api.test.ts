import { describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { qemu, qemuImgCompare } from '../helpers/qemu.js';
import { appHarness } from '../helpers/apps.js';

const { start } = appHarness();

describe('jobs.transaction (the typed app API)', () => {
  it('anchors two drives in one transaction, refuses bitmap actions in grouped mode, and rolls back on failure', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-tx-'));
    const app = await start(join(dir, 'data'));
    for (const id of ['a', 'b']) {
      const img = join(dir, `${id}.qcow2`);
      qemu('qemu-img', ['create', '-f', 'qcow2', img, '16M']);
      qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 0 2M', img]);
      await app.drives.add({ path: img, id });
    }
    const call = (params: unknown) => app.router.handle({ type: 'request', id: 1, method: 'jobs.transaction', params });
    const ok = await call({
      actions: [
        { type: 'bitmap-add', driveId: 'a', name: 'ba' },
        { type: 'bitmap-add', driveId: 'b', name: 'bb' },
        { type: 'backup', driveId: 'a', target: join(dir, 'a-full.qcow2'), format: 'qcow2', sync: 'full' },
        { type: 'backup', driveId: 'b', target: join(dir, 'b-full.qcow2'), format: 'qcow2', sync: 'full' },
      ],
    });
    expect(ok).toMatchObject({ ok: true, result: { jobs: ['a', 'b'] } });
    for (let i = 0; i < 400 && app.jobs.list().length; i++) await new Promise((r) => setTimeout(r, 25));
    expect(qemuImgCompare(join(dir, 'a.qcow2'), join(dir, 'a-full.qcow2')).same).toBe(true);
    expect(app.bitmaps.list().map((b) => b.name).sort()).toEqual(['ba', 'bb']);

    const grouped = await call({ actions: [{ type: 'bitmap-clear', driveId: 'a', name: 'ba' }], completionMode: 'grouped' });
    expect(grouped).toMatchObject({ ok: false, error: { message: expect.stringMatching(/does not support/) } });
    // a failing action undoes the ones before it
    const failed = await call({ actions: [{ type: 'bitmap-add', driveId: 'a', name: 'new' }, { type: 'bitmap-remove', driveId: 'a', name: 'nosuch' }] });
    expect(failed).toMatchObject({ ok: false });
    expect(app.bitmaps.list('a').map((b) => b.name)).toEqual(['ba']);
    expect(await call({ actions: [{ type: 'backup', driveId: 'a', sync: 'full' }] })).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
  });
});
