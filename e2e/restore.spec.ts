import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Locator, Page } from '@playwright/test';
import { createDrive, dismissToasts, expect, openConsole, repoRoot, snap, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole({ qmp: true });

/**
 * `qemu-img compare`: true when the two images read the same, false when they differ (exit 1);
 * anything else (exit 2: an error) fails the test. `-U` reads images the console has open.
 */
function sameContents(a: string, aFormat: 'raw' | 'qcow2', b: string, bFormat: 'raw' | 'qcow2'): boolean {
  const r = spawnSync('qemu-img', ['compare', '-U', '-f', aFormat, '-F', bFormat, a, b], { encoding: 'utf8' });
  if (r.status !== 0 && r.status !== 1) throw new Error(`qemu-img compare ${a} ${b} failed (${r.status}): ${r.stderr}`);
  return r.status === 0;
}

/** Makes the engine write a drive's caches to its file, so tools reading the file see what guests see. */
async function flush(driveId: string): Promise<void> {
  const qmp = await tm.qmp();
  try {
    await qmp.qemuIo(driveId, 'flush');
  } finally {
    qmp.close();
  }
}

function chainPoints(page: Page, driveId: string): Locator {
  return page.getByTestId(`drive-backups-${driveId}`).getByTestId('point');
}

/** "Back up now" on Backups for one drive; waits until the new point is complete. */
async function backUp(page: Page, driveId: string, expectCount: number): Promise<void> {
  await page.getByTestId('nav-backups').click();
  await page.getByTestId(`backup-now-${driveId}`).click();
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(chainPoints(page, driveId)).toHaveCount(expectCount);
  await expect(chainPoints(page, driveId).nth(expectCount - 1)).toHaveAttribute('data-status', 'complete', { timeout: 60_000 });
  await dismissToasts(page);
}

/** the backup files of a drive's chains, oldest first (from the Backups screen) */
async function pointFiles(page: Page, driveId: string): Promise<string[]> {
  await page.getByTestId('nav-backups').click();
  return chainPoints(page, driveId).evaluateAll((els) => els.map((el) => el.getAttribute('data-file') ?? ''));
}

async function setBackupFolder(page: Page, driveId: string, folder: string): Promise<void> {
  await page.getByTestId('nav-backups').click();
  const settings = page.getByTestId(`backup-settings-${driveId}`);
  await settings.getByTestId('field-backup-dir').fill(folder);
  await settings.getByTestId('save-backup-settings').click();
  await expect(settings).toContainText(`Backups go to ${folder}`);
  await dismissToasts(page);
}

function wizard(page: Page): Locator {
  return page.getByTestId('restore-wizard');
}

async function atStep(page: Page, step: string): Promise<void> {
  await expect(wizard(page)).toHaveAttribute('data-step', step);
}

function check(page: Page, id: 'chain' | 'space' | 'target' | 'idle'): Locator {
  return page.locator(`[data-testid="preflight-check"][data-check="${id}"]`);
}

/** Waits for the checks to settle, all four passed. */
async function allChecksPass(page: Page): Promise<void> {
  await expect(page.getByTestId('preflight-pending')).toHaveCount(0);
  await expect(page.getByTestId('preflight-check')).toHaveCount(4);
  await expect(page.locator('[data-testid="preflight-check"][data-ok="false"]')).toHaveCount(0);
}

async function next(page: Page, to: string): Promise<void> {
  await expect(page.getByTestId('wizard-next')).toBeEnabled();
  await page.getByTestId('wizard-next').click();
  await atStep(page, to);
}

test('restore point 1 of a drive into a new raw file: every step, progress, verified, equal to the backup', async ({ page }) => {
  test.setTimeout(180_000);
  await openConsole(page, tm);
  // 2 GiB, mostly empty (the restore reads and verifies only what holds data)
  await createDrive(page, { path: tm.imagePath('vm1-root.qcow2'), id: 'root', format: 'qcow2', size: '2G' });
  await dismissToasts(page);

  // a drive without backups: nothing to restore yet, and the wizard says so
  await page.getByTestId('nav-restore').click();
  await expect(page.getByRole('heading', { level: 1, name: 'Restore' })).toBeFocused();
  await expect(page.getByTestId('subject-drive-root')).toContainText('No backups yet');
  await expect(page.getByTestId('subject-drive-root').getByRole('radio')).toBeDisabled();
  await expect(page.getByTestId('wizard-next')).toBeDisabled();

  // point 1, then different data at the same place and more elsewhere, point 2
  await setBackupFolder(page, 'root', tm.imagePath('backups'));
  await tm.write('root', 0, '4M', 0x11);
  await tm.write('root', '1G', '2M', 0x12);
  await backUp(page, 'root', 1);
  await tm.write('root', 0, '1M', 0x21);
  await tm.write('root', '64M', '3M', 0x22);
  await backUp(page, 'root', 2);
  const [point1File, point2File] = await pointFiles(page, 'root');

  // 1. the drive, chosen already: it is the only one with backups
  await page.getByTestId('nav-restore').click();
  await atStep(page, 'subject');
  await expect(page.getByTestId('subject-drive-root').getByRole('radio')).toBeChecked();
  await expect(page.getByTestId('subject-drive-root')).toContainText('2 restore points');
  await snap(page, 'restore-1-drive');
  await next(page, 'point');

  // 2. the newest point is preselected; take point 1
  await expect(page.getByTestId('restore-point')).toHaveCount(2);
  await expect(page.getByTestId('restore-day')).toHaveCount(1);
  await expect(page.getByTestId('point-radio-2')).toBeChecked();
  await expect(page.locator('[data-testid="restore-point"][data-n="1"]')).toContainText('Full #1');
  await expect(page.locator('[data-testid="restore-point"][data-n="2"]')).toContainText('Incremental #2');
  await expect(page.locator('[data-testid="restore-point"][data-n="2"]')).toContainText('on disk');
  await page.getByTestId('point-radio-1').check();
  await snap(page, 'restore-2-point');
  await next(page, 'checks');

  // 3. pre-flight: four checks, all passed, each with the engine's detail
  await allChecksPass(page);
  await expect(check(page, 'chain')).toContainText('Backup chain verified');
  await expect(check(page, 'chain')).toContainText('1 file(s) present, checksums match');
  await expect(check(page, 'space')).toContainText('free in');
  await expect(check(page, 'target')).toContainText('A new raw file');
  await expect(check(page, 'idle')).toContainText('does not touch the drive');
  await expect(page.getByTestId('wizard-context')).toContainText('Full #1');
  await dismissToasts(page);
  await page.mouse.move(0, 0);
  await snap(page, 'restore-3-checks');
  // the README's picture: the pre-flight step, small
  await page.setViewportSize({ width: 1000, height: 700 });
  await page.evaluate('document.activeElement?.blur()');
  await page.screenshot({ path: join(repoRoot, 'assets', 'screenshot-restore.png') });
  await page.setViewportSize({ width: 1200, height: 760 });
  await next(page, 'target');

  // 4. target: a new raw file next to the drive by default, nothing overwritten, nothing attached
  const suggested = await page.getByTestId('target-path').inputValue();
  const imagesDir = dirname(tm.imagePath('vm1-root.qcow2'));
  expect(suggested.startsWith(`${imagesDir}/root-point1-`)).toBe(true);
  expect(suggested).toMatch(/root-point1-\d{4}-\d\d-\d\d\.raw$/);
  await expect(page.getByTestId('target-kind-file')).toBeChecked();
  await expect(page.getByTestId('target-format-raw')).toBeChecked();
  await expect(page.getByTestId('target-force')).not.toBeChecked();
  await expect(page.getByTestId('target-attach')).not.toBeChecked();
  // qcow2 renames the suggestion and offers compression; back to raw
  await page.getByTestId('target-format-qcow2').check();
  await expect(page.getByTestId('target-path')).toHaveValue(suggested.replace(/\.raw$/, '.qcow2'));
  await expect(page.getByTestId('target-compress')).toBeVisible();
  await page.getByTestId('target-format-raw').check();
  await expect(page.getByTestId('target-compress')).toHaveCount(0);
  // into a folder of our own
  const restored = join(tm.root, 'restored', 'root-at-point-1.raw');
  mkdirSync(dirname(restored), { recursive: true });
  await page.getByTestId('target-path').fill(restored);
  await expect(check(page, 'target')).toContainText(restored);
  // a speed limit: refused until it is a speed; at 2 MiB/s the 6 MiB of data take long enough
  // to watch the progress below
  await page.getByTestId('target-speed').fill('fast');
  await expect(wizard(page)).toContainText('Type a speed above zero in MiB/s');
  await expect(page.getByTestId('wizard-next')).toBeDisabled();
  await page.getByTestId('target-speed').fill('2');
  await expect(wizard(page)).toContainText('At most 2');
  await allChecksPass(page);
  await snap(page, 'restore-4-target');
  await next(page, 'confirm');

  // 5. review: every consequence spelled out; a new file needs no typed confirmation
  const summary = page.getByTestId('restore-summary');
  await expect(summary).toContainText('Restore root to how it was on');
  await expect(summary).toContainText('full #1');
  await expect(page.getByTestId('summary-path')).toHaveText(restored);
  await expect(summary).toContainText('Read 1 backup file (full #1)');
  await expect(summary).toContainText('Leave drive root and its backups as they are.');
  await expect(page.getByTestId('summary-speed')).toContainText('Read and write at most 2');
  await expect(page.getByTestId('confirm-id')).toHaveCount(0);
  await snap(page, 'restore-5-confirm');
  // Back keeps every choice
  await page.getByTestId('wizard-back').click();
  await atStep(page, 'target');
  await expect(page.getByTestId('target-path')).toHaveValue(restored);
  await next(page, 'confirm');
  await expect(page.getByTestId('start-restore')).toBeEnabled();
  await page.getByTestId('start-restore').click();

  // 6. progress: phase, bar, bytes, speed, time left; no way back any more
  await atStep(page, 'progress');
  await expect(page.getByTestId('restore-progress')).toHaveAttribute('data-job-id', /^restore-root-/);
  await expect(page.getByTestId('restore-bar')).toBeVisible();
  await expect(page.getByTestId('restore-bytes')).toHaveText(/ of |preparing/);
  await expect(page.getByTestId('restore-rate')).toBeVisible();
  await expect(page.getByTestId('restore-eta')).toBeVisible();
  await expect(page.getByTestId('restore-phase')).not.toBeEmpty();
  await expect(page.getByTestId('cancel-restore')).toBeEnabled();
  await expect(page.getByTestId('restore-progress')).toContainText('Cancelling removes the partial file');
  await expect(page.getByTestId('wizard-back')).toHaveCount(0);
  await snap(page, 'restore-6-progress');

  // 7. result: verified, both hashes, the path, the time it took
  await atStep(page, 'result');
  const result = page.getByTestId('restore-result');
  await expect(result).toHaveAttribute('data-outcome', 'completed');
  await expect(page.getByTestId('result-headline')).toHaveText(/Restored and verified/);
  await expect(page.getByTestId('result-verified')).toContainText('Verified');
  const sourceHash = await page.getByTestId('result-source-hash').getAttribute('data-hash');
  const restoredHash = await page.getByTestId('result-restored-hash').getAttribute('data-hash');
  expect(sourceHash).toMatch(/^[0-9a-f]{64}$/);
  expect(restoredHash).toBe(sourceHash);
  await expect(page.getByTestId('result-source-hash')).toHaveText(`${sourceHash!.slice(0, 12)}…`);
  await expect(page.getByTestId('result-target')).toHaveText(restored);
  await expect(page.getByTestId('result-duration')).not.toHaveText('—');
  await expect(page.getByTestId('result-untouched')).toContainText('Drive root and its backups were not touched.');
  await dismissToasts(page);
  await snap(page, 'restore-7-result');

  // the restored file holds exactly what the drive held at point 1, not at point 2 or now
  expect(statSync(restored).size).toBe(2 * 2 ** 30);
  expect(sameContents(restored, 'raw', point1File, 'qcow2')).toBe(true);
  expect(sameContents(restored, 'raw', point2File, 'qcow2')).toBe(false);
  await flush('root');
  expect(sameContents(restored, 'raw', tm.imagePath('vm1-root.qcow2'), 'qcow2')).toBe(false);
  // nothing but the restored file in its folder: no partial file left behind
  expect(readdirSync(dirname(restored))).toEqual(['root-at-point-1.raw']);

  // the hash, copied
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: tm.origin });
  await page.getByTestId('copy-source-hash').click();
  await expect(page.getByTestId('toast').filter({ hasText: 'Copied the backup’s content digest' })).toBeVisible();
  expect(await page.evaluate('navigator.clipboard.readText()')).toBe(sourceHash);
  await dismissToasts(page);

  // the run survives leaving the screen
  await page.getByTestId('nav-jobs').click();
  await expect(page.locator('[data-testid="history-row"]').first()).toBeVisible();
  await page.getByTestId('nav-restore').click();
  await atStep(page, 'result');

  // another point: back to step 2 with the same drive
  await page.getByTestId('restore-another').click();
  await atStep(page, 'point');
  await expect(page.getByTestId('wizard-context')).toContainText('root');
  await page.getByTestId('wizard-back').click();
  await atStep(page, 'subject');
});

test('a missing folder fails the target check; a damaged middle backup names itself and offers point 1; in place needs the typed id', async ({
  page,
}) => {
  test.setTimeout(180_000);
  await openConsole(page, tm);
  // a third point, so that #2 sits in the middle of the chain
  await tm.write('root', '512M', '1M', 0x31);
  await backUp(page, 'root', 3);
  const files = await pointFiles(page, 'root');
  expect(files).toHaveLength(3);

  // from the Backups screen straight to the points of root
  await page.getByTestId('restore-drive-root').click();
  await atStep(page, 'point');
  await expect(page.getByTestId('point-radio-3')).toBeChecked();
  await next(page, 'checks');
  await allChecksPass(page);
  await next(page, 'target');

  // a folder that does not exist: the target check fails with the engine's words, and Next is off
  const nowhere = join(tm.root, 'no-such-folder', 'root.raw');
  await page.getByTestId('target-path').fill(nowhere);
  await expect(check(page, 'target')).toHaveAttribute('data-ok', 'false');
  await expect(check(page, 'target')).toContainText(`The folder '${dirname(nowhere)}' does not exist.`);
  await expect(page.getByTestId('wizard-next')).toBeDisabled();
  await expect(page.getByTestId('wizard-blocked')).toContainText('Fix what failed above');
  await snap(page, 'restore-target-missing-folder');
  // a relative path never reaches the engine
  await page.getByTestId('target-path').fill('root.raw');
  await expect(page.getByTestId('restore-step-target')).toContainText('Type a full path');
  await expect(page.getByTestId('wizard-next')).toBeDisabled();
  // the suggestion is fine again
  await page.getByTestId('target-path').fill(tm.imagePath('root-3.raw'));
  await allChecksPass(page);
  await expect(page.getByTestId('wizard-next')).toBeEnabled();

  // in place: a plain warning; the checks look at the drive itself
  await page.getByTestId('target-kind-in-place').check();
  await expect(page.getByTestId('in-place-warning')).toContainText('This overwrites drive root.');
  await expect(page.getByTestId('target-path')).toHaveCount(0);
  await allChecksPass(page);
  await expect(check(page, 'idle')).toContainText('No job is using the drive.');
  await expect(check(page, 'target')).toContainText('will be overwritten');
  await next(page, 'confirm');
  // the button stays off until the drive's id is typed
  const startButton = page.getByTestId('start-restore');
  await expect(startButton).toBeDisabled();
  await expect(startButton).toHaveText('Overwrite root');
  await expect(page.getByTestId('restore-summary')).toContainText('Overwrite drive root');
  await page.getByTestId('confirm-id').fill('roo');
  await expect(startButton).toBeDisabled();
  await page.getByTestId('confirm-id').fill('Root');
  await expect(startButton).toBeDisabled();
  await page.getByTestId('confirm-id').fill('root');
  await expect(startButton).toBeEnabled();
  await snap(page, 'restore-in-place-confirm');

  // damage the middle backup on disk, then check again: the chain check names it
  const middle = files[1];
  const size = statSync(middle).size;
  const fd = openSync(middle, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, Math.max(0, size - 8192));
  closeSync(fd);
  await page.getByTestId('stepper-checks').getByRole('button').click();
  await atStep(page, 'checks');
  await expect(check(page, 'chain')).toHaveAttribute('data-ok', 'false');
  await expect(check(page, 'chain')).toContainText(middle);
  await expect(check(page, 'chain')).toContainText('checksum no longer matches');
  await expect(page.getByTestId('wizard-next')).toBeDisabled();
  // the engine still lists #2 as restorable (only a verify marks it), but #2 needs the damaged file
  const still = page.getByTestId('preflight-still-restorable');
  await expect(still).toContainText('Earlier points that are still restorable: #1 (');
  await expect(still).not.toContainText('#2');
  await expect(page.getByTestId('pick-restorable')).toHaveText('Restore #1 instead');
  await snap(page, 'restore-chain-damaged');
  await page.getByTestId('pick-restorable').click();
  await expect(page.getByTestId('wizard-context')).toContainText('Full #1');
  await allChecksPass(page);
  await expect(check(page, 'chain')).toContainText('1 file(s) present');

  // the picker now says why #2 and #3 are out
  await page.getByTestId('wizard-back').click();
  await atStep(page, 'point');
  await expect(page.getByTestId('point-radio-1')).toBeChecked();
  for (const n of [2, 3]) {
    const row = page.locator(`[data-testid="restore-point"][data-n="${n}"]`);
    await expect(row).toHaveAttribute('data-available', 'false');
    await expect(page.getByTestId(`point-radio-${n}`)).toBeDisabled();
  }
  await expect(page.locator('[data-testid="restore-point"][data-n="2"]')).toContainText('checksum no longer matches');
  await expect(page.locator('[data-testid="restore-point"][data-n="3"]')).toContainText('Needs incremental #2');
  await snap(page, 'restore-points-unavailable');

  // and through with it: root in place, back to point 1
  await next(page, 'checks');
  await allChecksPass(page);
  await next(page, 'target');
  await expect(page.getByTestId('target-kind-in-place')).toBeChecked();
  await allChecksPass(page);
  await next(page, 'confirm');
  await page.getByTestId('confirm-id').fill('root');
  await page.getByTestId('start-restore').click();
  await atStep(page, 'result');
  await expect(page.getByTestId('restore-result')).toHaveAttribute('data-outcome', 'completed', { timeout: 60_000 });
  await expect(page.getByTestId('result-verified')).toBeVisible();
  await expect(page.getByTestId('result-target')).toHaveText(tm.imagePath('vm1-root.qcow2'));
  await expect(page.getByTestId('result-duration')).toContainText('of the drive rewritten');
  await snap(page, 'restore-in-place-result');
  await flush('root');
  expect(sameContents(tm.imagePath('vm1-root.qcow2'), 'qcow2', files[0], 'qcow2')).toBe(true);
  expect(existsSync(`${tm.imagePath('vm1-root.qcow2')}.restore.tidemark-partial`)).toBe(false);
  await page.getByTestId('restore-done').click();
  await atStep(page, 'subject');
});

test('a machine group: each drive at the same point in time, attached to inspect over NBD', async ({ page }) => {
  test.setTimeout(180_000);
  await openConsole(page, tm);
  for (const id of ['web', 'db']) await createDrive(page, { path: tm.imagePath(`vm2-${id}.qcow2`), id, format: 'qcow2', size: '64M' });
  await dismissToasts(page);
  await page.getByTestId('nav-backups').click();
  await page.getByTestId('new-group').click();
  await page.getByTestId('field-group-name').fill('vm2');
  await page.getByTestId('group-drive-web').check();
  await page.getByTestId('group-drive-db').check();
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();

  // two group backups, with different data in between
  for (const [i, pattern] of [0x41, 0x42].entries()) {
    await tm.write('web', i * 2 ** 20, '1M', pattern);
    await tm.write('db', i * 2 ** 20, '2M', pattern + 0x10);
    await page.getByTestId('backup-group-vm2').click();
    if (i === 0) await page.getByTestId('field-backup-dest').fill(tm.imagePath('group-backups'));
    await page.getByTestId('dialog-submit').click();
    await expect(page.getByRole('dialog')).toBeHidden();
    for (const id of ['web', 'db']) {
      await expect(chainPoints(page, id)).toHaveCount(i + 1);
      await expect(chainPoints(page, id).nth(i)).toHaveAttribute('data-status', 'complete', { timeout: 60_000 });
    }
  }
  await dismissToasts(page);
  const webPoint1 = (await pointFiles(page, 'web'))[0];
  const dbPoint1 = (await pointFiles(page, 'db'))[0];

  await page.getByTestId('restore-group-vm2').click();
  await atStep(page, 'point');
  await expect(page.getByTestId('restore-point')).toHaveCount(2);
  await page.getByTestId('restore-point').nth(1).getByRole('radio').check();
  await expect(page.getByTestId('restore-point').nth(1)).toContainText('db: full #1 · web: full #1');
  await next(page, 'checks');
  // each drive's checks
  await expect(page.getByTestId('preflight-web').getByTestId('preflight-check')).toHaveCount(4);
  await expect(page.getByTestId('preflight-db').getByTestId('preflight-check')).toHaveCount(4);
  await expect(page.locator('[data-testid="preflight-check"][data-ok="false"]')).toHaveCount(0);
  await next(page, 'target');

  const out = join(tm.root, 'group-restored');
  mkdirSync(out, { recursive: true });
  await page.getByTestId('target-path-web').fill(join(out, 'web.raw'));
  await page.getByTestId('target-path-db').fill(join(out, 'db.raw'));
  await page.getByTestId('target-attach').check();
  await expect(page.getByTestId('target-attach-id-web')).toHaveValue('web-p1');
  await expect(page.getByTestId('target-attach-id-db')).toHaveValue('db-p1');
  // an id Tidemark has already is refused before anything runs
  await page.getByTestId('target-attach-id-db').fill('web');
  await expect(page.getByTestId('restore-step-target')).toContainText('Tidemark already has a drive called web');
  await expect(page.getByTestId('wizard-next')).toBeDisabled();
  await page.getByTestId('target-attach-id-db').fill('db-p1');
  const nbd = page.getByTestId('target-nbd-url');
  await expect(nbd).toHaveCount(2);
  await expect(nbd.filter({ hasText: 'web-p1' })).toHaveText(/^nbd\+unix:\/\/\/web-p1\?socket=.+nbd\.sock$/);
  await expect(page.locator('[data-testid="preflight-check"]')).toHaveCount(8);
  await expect(page.getByTestId('preflight-pending')).toHaveCount(0);
  await expect(page.locator('[data-testid="preflight-check"][data-ok="false"]')).toHaveCount(0);
  await snap(page, 'restore-group-target');
  await next(page, 'confirm');
  await expect(page.getByTestId('restore-summary')).toContainText('Restore machine group vm2 (2 drives)');
  await expect(page.getByTestId('summary-web')).toContainText('Then attach it as drive web-p1.');
  await page.getByTestId('start-restore').click();

  await atStep(page, 'result');
  await expect(page.getByTestId('restore-result')).toHaveAttribute('data-outcome', 'completed', { timeout: 60_000 });
  await expect(page.getByTestId('result-headline')).toHaveText(/All 2 drives restored and verified/);
  for (const id of ['web', 'db']) {
    const r = page.getByTestId(`result-${id}`);
    await expect(r).toHaveAttribute('data-state', 'completed');
    await expect(r.getByTestId('result-verified')).toBeVisible();
    await expect(r.getByTestId('result-attached')).toHaveText(`${id}-p1`);
  }
  const url = (await page.getByTestId('result-web').getByTestId('result-nbd').textContent()) ?? '';
  expect(url).toMatch(/^nbd\+unix:\/\/\/web-p1\?socket=/);
  await snap(page, 'restore-group-result');

  expect(sameContents(join(out, 'web.raw'), 'raw', webPoint1, 'qcow2')).toBe(true);
  expect(sameContents(join(out, 'db.raw'), 'raw', dbPoint1, 'qcow2')).toBe(true);
  // the attached image, read over NBD as a VM would
  const overNbd = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', url, join(out, 'web.raw')], { encoding: 'utf8' });
  expect(overNbd.status, overNbd.stderr).toBe(0);

  // both are drives now
  await page.getByTestId('nav-drives').click();
  await expect(page.getByTestId('drive-row-web-p1')).toBeVisible();
  await expect(page.getByTestId('drive-row-db-p1')).toBeVisible();
});

test('cancelling a restore asks first, then removes its partial file and leaves the drive as it was', async ({ page }) => {
  test.setTimeout(180_000);
  await openConsole(page, tm);
  await createDrive(page, { path: tm.imagePath('bulk.qcow2'), id: 'bulk', format: 'qcow2', size: '1G' });
  await dismissToasts(page);
  await setBackupFolder(page, 'bulk', tm.imagePath('backups'));
  await tm.write('bulk', 0, '256M', 0x61);
  await backUp(page, 'bulk', 1);

  await page.getByTestId('restore-drive-bulk').click();
  await atStep(page, 'point');
  await next(page, 'checks');
  await allChecksPass(page);
  await next(page, 'target');
  const target = join(tm.root, 'cancelled', 'bulk.raw');
  mkdirSync(dirname(target), { recursive: true });
  await page.getByTestId('target-path').fill(target);
  // slowed down, so that the pause below meets a restore that is still copying
  await page.getByTestId('target-speed').fill('20');
  await allChecksPass(page);
  await next(page, 'confirm');
  await page.getByTestId('start-restore').click();
  await atStep(page, 'progress');
  const progress = page.getByTestId('restore-progress');
  await expect(progress).toHaveAttribute('data-job-id', /^restore-bulk-/);
  // hold it still while copying (QMP, as a script would), so the cancel below meets a running restore
  const jobId = (await progress.getAttribute('data-job-id')) ?? '';
  const qmp = await tm.qmp();
  try {
    await qmp.execute('block-job-pause', { device: jobId });
  } finally {
    qmp.close();
  }
  await expect(page.getByTestId('restore-phase')).toContainText('Paused');
  await expect(page.getByTestId('restore-eta')).toHaveText('paused');

  // Cancel asks first, and "Cancel" there keeps it going
  await page.getByTestId('cancel-restore').click();
  const ask = page.getByRole('dialog', { name: 'Cancel the restore of bulk?' });
  await expect(ask).toContainText('its partial file is removed: nothing is left at');
  await expect(ask).toContainText('Drive bulk and its backups are untouched');
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await snap(page, 'restore-cancel-confirm');
  await page.getByTestId('dialog-cancel').click();
  await expect(ask).toBeHidden();
  await atStep(page, 'progress');
  await page.getByTestId('cancel-restore').click();
  await page.getByTestId('confirm-ok').click();

  await atStep(page, 'result');
  await expect(page.getByTestId('restore-result')).toHaveAttribute('data-outcome', 'cancelled');
  await expect(page.getByTestId('result-headline')).toHaveText(/Restore cancelled/);
  await expect(page.getByTestId('result-untouched')).toContainText(`The partial file was removed: nothing is left at ${target}.`);
  await snap(page, 'restore-cancelled');
  expect(readdirSync(dirname(target))).toEqual([]);
  // the drive still reads as its backup
  const [point1] = await pointFiles(page, 'bulk');
  await flush('bulk');
  expect(sameContents(tm.imagePath('bulk.qcow2'), 'qcow2', point1, 'qcow2')).toBe(true);
});

test('an error from the engine is a toast, and the wizard stays on its step', async ({ page }) => {
  await openConsole(page, tm);
  await page.getByTestId('nav-restore').click();
  await page.getByTestId('subject-drive-web').getByRole('radio').check();
  await next(page, 'point');
  await next(page, 'checks');
  await allChecksPass(page);
  await next(page, 'target');
  const target = tm.imagePath('web-race.raw');
  await page.getByTestId('target-path').fill(target);
  await allChecksPass(page);
  await next(page, 'confirm');
  // the file appears after the checks passed: the engine refuses to start
  closeSync(openSync(target, 'w'));
  await page.getByTestId('start-restore').click();
  const toast = page.getByTestId('toast').filter({ hasText: 'Could not start the restore' });
  await expect(toast).toBeVisible();
  await expect(toast).toHaveAttribute('role', 'alert');
  await expect(toast).toContainText('already exists');
  await atStep(page, 'confirm');
  await expect(page.getByTestId('start-restore')).toBeEnabled();
  await snap(page, 'restore-start-refused');
  // back to the target: the checks see the file now, and allowing the overwrite clears it
  await page.getByTestId('wizard-back').click();
  await expect(check(page, 'target')).toContainText('already exists');
  await page.getByTestId('target-force').check();
  await expect(check(page, 'target')).toContainText('will be replaced (you allowed it)');
  await allChecksPass(page);
});
