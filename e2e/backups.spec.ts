import { closeSync, cpSync, existsSync, openSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Locator, Page } from '@playwright/test';
import { createDrive, dismissToasts, expect, openConsole, snap, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole({ qmp: true });

function chains(page: Page, driveId: string): Locator {
  return page.getByTestId(`drive-backups-${driveId}`).getByTestId('chain');
}

function points(chain: Locator): Locator {
  return chain.getByTestId('point');
}

test('back up a drive twice, then its group; verify, catch a corrupted file, delete a chain', async ({ page }) => {
  test.setTimeout(120_000);
  await openConsole(page, tm);
  await createDrive(page, { path: tm.imagePath('vm1-root.qcow2'), id: 'root', format: 'qcow2', size: '64M' });
  await createDrive(page, { path: tm.imagePath('vm1-data.qcow2'), id: 'data', format: 'qcow2', size: '32M' });
  await dismissToasts(page);

  await page.getByTestId('nav-backups').click();
  await expect(page.getByTestId('no-chains-root')).toContainText('No backups of root yet');
  await expect(page.getByTestId('groups-panel')).toContainText('Use New group to make one');

  // a machine group of both drives
  await page.getByTestId('new-group').click();
  const groupDialog = page.getByRole('dialog', { name: 'New group' });
  await page.getByTestId('field-group-name').fill('vm1');
  await page.getByTestId('dialog-submit').click();
  await expect(groupDialog).toContainText('Pick at least one drive');
  await page.getByTestId('group-drive-root').check();
  await page.getByTestId('group-drive-data').check();
  await page.getByTestId('dialog-submit').click();
  await expect(groupDialog).toBeHidden();
  await expect(page.getByTestId('group-vm1')).toContainText('root');
  await expect(page.getByTestId('group-vm1')).toContainText('data');

  // the backup folder of root, saved in its settings
  const folder = tm.imagePath('backups');
  const settings = page.getByTestId('backup-settings-root');
  await expect(settings.getByTestId('save-backup-settings')).toBeDisabled();
  await settings.getByTestId('field-backup-dir').fill(folder);
  await settings.getByTestId('save-backup-settings').click();
  await expect(page.getByTestId('toast').filter({ hasText: 'Saved the backup settings of root' })).toBeVisible();
  // saved settings fold into one line
  await expect(settings).toContainText(`Backups go to ${folder}, incremental.`);
  await dismissToasts(page);

  // data, then the first backup: a full one starts the chain
  await tm.write('root', 0, '2M');
  await page.getByTestId('backup-now-root').click();
  await expect(page.getByTestId('backup-plan')).toContainText('a full backup, starting its first chain');
  await expect(page.getByTestId('field-backup-dest')).toHaveCount(0);
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(chains(page, 'root')).toHaveCount(1);
  const chain = chains(page, 'root').first();
  await expect(points(chain)).toHaveCount(1);
  await expect(points(chain).nth(0)).toHaveAttribute('data-kind', 'full');
  await expect(points(chain).nth(0)).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await expect(points(chain).nth(0)).toContainText('Full');
  await expect(points(chain).nth(0)).toContainText('#1');
  await expect(chain).toContainText('active');
  await expect(page.getByTestId('toast').filter({ hasText: 'Full backup of root finished' })).toBeVisible();

  // more data, Back up now again: an incremental on the same chain
  await tm.write('root', '16M', '1M', 0x22);
  await page.getByTestId('backup-now-root').click();
  await expect(page.getByTestId('backup-plan')).toContainText('an incremental backup');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(points(chain)).toHaveCount(2);
  await expect(points(chain).nth(1)).toHaveAttribute('data-kind', 'inc');
  await expect(points(chain).nth(1)).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await expect(points(chain).nth(1)).toContainText('Incremental');
  await expect(points(chain).nth(1)).toContainText('#2');
  await dismissToasts(page);

  // more data on both drives, then the group: data has no folder yet, so the dialog asks for one
  await tm.write('root', '32M', '1M', 0x33);
  await tm.write('data', 0, '1M', 0x44);
  await page.getByTestId('backup-group-vm1').click();
  await expect(page.getByTestId('backup-plan')).toContainText('root: an incremental backup');
  await expect(page.getByTestId('backup-plan')).toContainText('data: a full backup');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toContainText('Choose a folder for the backups first.');
  await expect(page.getByTestId('field-backup-dest')).toBeFocused();
  await page.getByTestId('field-backup-dest').fill(folder);
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(points(chain)).toHaveCount(3);
  await expect(points(chain).nth(2)).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await expect(points(chains(page, 'data').first()).nth(0)).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await expect(points(chains(page, 'data').first()).nth(0)).toHaveAttribute('data-kind', 'full');
  // the folder given to the group is remembered for data
  await expect(page.getByTestId('backup-settings-data')).toContainText(`Backups go to ${folder}`);
  await dismissToasts(page);
  await snap(page, 'backups-chains');

  // the folder: shown, and copied to the clipboard on request
  await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: tm.origin });
  const chainFolder = (await chain.getByTestId('chain-folder').textContent()) ?? '';
  expect(chainFolder.startsWith(`${folder}/root/`)).toBe(true);
  await chain.getByTestId('copy-folder').click();
  await expect(page.getByTestId('toast').filter({ hasText: `Copied ${chainFolder}` })).toBeVisible();
  expect(await page.evaluate('navigator.clipboard.readText()')).toBe(chainFolder);
  await dismissToasts(page);

  // verify: all intact
  await chain.getByTestId('verify-chain').click();
  const report = page.getByRole('dialog', { name: 'Chain verified' });
  await expect(report).toBeVisible();
  await expect(page.getByTestId('verify-ok')).toContainText('All 3 files');
  await snap(page, 'backups-verify-ok');
  await page.getByTestId('dialog-close').click();
  await expect(report).toBeHidden();
  await expect(chain.getByTestId('chain-report')).toContainText('Verified: all 3 files intact');

  // damage the incremental on disk: verify names it, and the timeline shows it
  const incFile = await points(chain).nth(1).getAttribute('data-file');
  expect(incFile).toBeTruthy();
  const size = statSync(incFile!).size;
  const fd = openSync(incFile!, 'r+');
  writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, Math.max(0, size - 8192));
  closeSync(fd);
  await chain.getByTestId('verify-chain').click();
  const bad = page.getByRole('dialog', { name: 'Verify found problems' });
  await expect(bad).toBeVisible();
  await expect(page.getByTestId('verify-problem')).toHaveCount(1);
  await expect(page.getByTestId('verify-problem')).toContainText('#2');
  await expect(page.getByTestId('verify-problem')).toContainText('checksum');
  await snap(page, 'backups-verify-problem');
  await page.getByTestId('dialog-close').click();
  await expect(points(chain).nth(1)).toHaveAttribute('data-status', 'corrupt');
  await expect(chain).toContainText('1 problem');
  await expect(chain.getByTestId('chain-report')).toContainText('Verify found 1 problem');

  // keep a copy of the chain folder, to import it back later
  const copy = tm.imagePath('copied-chain');
  cpSync(dirname(incFile!), copy, { recursive: true });

  // delete the whole chain: asks first, says what is lost; the files go
  const files = await points(chain).evaluateAll((els) => els.map((el) => el.getAttribute('data-file') ?? ''));
  await chain.getByTestId('delete-chain').click();
  const confirm = page.getByRole('dialog', { name: 'Delete this chain of root?' });
  await expect(confirm).toContainText('restore points #1–#3 of root can no longer be restored');
  await expect(confirm).toContainText('The next backup of root starts a new full chain');
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await snap(page, 'backups-delete-confirm');
  await page.getByTestId('confirm-ok').click();
  await expect(confirm).toBeHidden();
  await expect(chains(page, 'root')).toHaveCount(0);
  await expect(page.getByTestId('no-chains-root')).toBeVisible();
  for (const f of files) expect(existsSync(f), `${f} is deleted`).toBe(false);
  // the other drive's chain is untouched
  await expect(chains(page, 'data')).toHaveCount(1);
  await dismissToasts(page);

  // import the copy: the chain is listed again, from its manifest
  await page.getByTestId('import-backups').click();
  await page.getByTestId('field-import-folder').fill(copy);
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('toast').filter({ hasText: 'Imported 1 chain with 3 backups' })).toBeVisible();
  await expect(chains(page, 'root')).toHaveCount(1);
  await expect(points(chains(page, 'root').first())).toHaveCount(3);
  await expect(chains(page, 'root').first().getByTestId('chain-folder')).toHaveText(copy);
});

test('errors from the engine come back as toasts; a group can be edited and removed', async ({ page }) => {
  await openConsole(page, tm);
  await page.getByTestId('nav-backups').click();
  await expect(page.getByTestId('group-vm1')).toBeVisible();

  // the dialog checks what it can before sending anything
  await page.getByTestId('backup-now-data').click();
  await page.getByTestId('field-force-full').check();
  await expect(page.getByTestId('backup-plan')).toContainText('a full backup, starting a new chain');
  await page.getByTestId('field-speed').fill('fast');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toContainText('Type a speed above zero in MiB/s');
  await expect(page.getByTestId('field-speed')).toBeFocused();
  await page.keyboard.press('Escape');
  await expect(page.getByRole('dialog')).toBeHidden();

  // a backup folder inside a file cannot be created: the engine's sentence, in a toast that stays
  await page.getByTestId('backup-settings-data').getByTestId('edit-backup-settings').click();
  const settings = page.getByTestId('backup-settings-data');
  await settings.getByTestId('field-backup-dir').fill(`${tm.imagePath('vm1-data.qcow2')}/backups`);
  await settings.getByTestId('save-backup-settings').click();
  await dismissToasts(page);
  await page.getByTestId('backup-now-data').click();
  await page.getByTestId('dialog-submit').click();
  const error = page.getByTestId('toast').filter({ hasText: 'Could not start the backup' });
  await expect(error).toBeVisible();
  await expect(error).toHaveAttribute('role', 'alert');
  await expect(error).toContainText('vm1-data.qcow2');
  // the dialog stays, usable again
  await expect(page.getByTestId('dialog-submit')).toBeEnabled();
  await page.getByTestId('dialog-cancel').click();
  await dismissToasts(page);

  // importing a path that is not a folder
  await page.getByTestId('import-backups').click();
  await page.getByTestId('field-import-folder').fill(tm.imagePath('nothing-here'));
  await page.getByTestId('dialog-submit').click();
  const importError = page.getByTestId('toast').filter({ hasText: 'Could not import the folder' });
  await expect(importError).toContainText('is not a folder');
  await page.getByTestId('dialog-cancel').click();
  await dismissToasts(page);

  // edit: take a drive out; remove: asks, keeps drives and backups
  await page.getByTestId('edit-group-vm1').click();
  await expect(page.getByTestId('field-group-name')).toHaveAttribute('readonly', '');
  await page.getByTestId('group-drive-data').uncheck();
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('group-vm1')).not.toContainText('data');
  await page.getByTestId('remove-group-vm1').click();
  const confirm = page.getByRole('dialog', { name: 'Remove group vm1?' });
  await expect(confirm).toContainText('Only the grouping goes');
  await page.getByTestId('confirm-ok').click();
  await expect(page.getByTestId('group-vm1')).toHaveCount(0);
  await expect(chains(page, 'data')).toHaveCount(1);
});
