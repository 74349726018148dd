import { createDrive, dismissToasts, expect, openConsole, snap, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole({ qmp: true });

test('bitmaps: add, watch writes arrive live, merge, disable, clear and remove', async ({ page }) => {
  await openConsole(page, tm);
  await createDrive(page, { path: tm.imagePath('disk1.qcow2'), id: 'disk1', format: 'qcow2', size: '64M' });
  await dismissToasts(page);

  await page.getByTestId('nav-bitmaps').click();
  await expect(page.getByTestId('bitmaps-empty')).toBeVisible();
  await expect(page.getByTestId('bitmaps-empty')).toContainText('No bitmaps on disk1 yet');
  await snap(page, 'bitmaps-empty');

  // add: the memory cost follows the granularity, for this drive's size
  await page.getByTestId('add-bitmap').click();
  const dialog = page.getByRole('dialog', { name: 'Add a bitmap to disk1' });
  await expect(dialog).toBeVisible();
  await expect(page.getByTestId('field-bitmap-name')).toBeFocused();
  await expect(page.getByTestId('field-granularity')).toHaveValue(String(64 * 1024));
  await expect(dialog).toContainText('Memory: 128 B for this 64 MiB drive (1,024 bits, one per 64 KiB)');
  await page.getByTestId('field-granularity').selectOption(String(512));
  await expect(dialog).toContainText('Memory: 16 KiB for this 64 MiB drive (131,072 bits, one per 512 B)');
  await page.getByTestId('field-granularity').selectOption(String(64 * 1024));
  // qcow2: persistent is offered (and on); the raw-only sidecar is not
  await expect(page.getByTestId('field-persistent')).toBeChecked();
  await expect(page.getByTestId('field-sidecar')).toHaveCount(0);
  await page.getByTestId('field-start-disabled').check();
  await expect(dialog).toContainText('A disabled bitmap silently misses every write');
  await page.getByTestId('field-start-disabled').uncheck();
  await page.getByTestId('field-bitmap-name').fill('b1');
  await snap(page, 'bitmaps-add-dialog');
  await page.getByTestId('dialog-submit').click();
  await expect(dialog).toBeHidden();

  const row1 = page.getByTestId('bitmap-row-b1');
  await expect(row1).toBeVisible();
  await expect(row1).toContainText('recording');
  await expect(row1).toContainText('persistent');
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('0 B');
  await expect(page.getByTestId('bitmap-map-b1')).toHaveAttribute('data-dirty-cells', '0');

  // a guest-like write through QMP shows up without any reload: 1 MiB = 4 of 256 cells of 64 MiB
  await tm.write('disk1', 0, '1M');
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('1 MiB');
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('1.56% of disk');
  await expect(page.getByTestId('bitmap-map-b1')).toHaveAttribute('data-dirty-cells', '4');

  // a second, transient bitmap sees only what is written after it exists
  await dismissToasts(page);
  await page.getByTestId('add-bitmap').click();
  await page.getByTestId('field-bitmap-name').fill('b2');
  await page.getByTestId('field-persistent').uncheck();
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('bitmap-row-b2')).toContainText('transient');

  await tm.write('disk1', '32M', '2M', 0x22);
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('3 MiB');
  await expect(page.getByTestId('bitmap-dirty-b2')).toContainText('2 MiB');
  await expect(page.getByTestId('bitmap-map-b1')).toHaveAttribute('data-dirty-cells', '12');
  await expect(page.getByTestId('bitmap-map-b2')).toHaveAttribute('data-dirty-cells', '8');
  await dismissToasts(page);
  await snap(page, 'bitmaps-table');

  // merge b1 into b2: b2 becomes the union
  await page.getByTestId('merge-bitmaps').click();
  const merge = page.getByRole('dialog', { name: 'Merge bitmaps of disk1' });
  await page.getByTestId('field-merge-target').selectOption('b2');
  await page.getByTestId('dialog-submit').click();
  await expect(merge).toContainText('Pick at least one bitmap');
  await page.getByTestId('merge-source-b1').check();
  await snap(page, 'bitmaps-merge-dialog');
  await page.getByTestId('dialog-submit').click();
  await expect(merge).toBeHidden();
  await expect(page.getByTestId('bitmap-dirty-b2')).toContainText('3 MiB');
  await expect(page.getByTestId('bitmap-map-b2')).toHaveAttribute('data-dirty-cells', '12');
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('3 MiB');

  // disable warns that writes are then missed silently
  await page.getByTestId('bitmap-disable-b2').click();
  const disable = page.getByRole('dialog', { name: 'Disable b2?' });
  await expect(disable).toContainText('misses writes silently');
  await expect(disable).toContainText('backups based on it will be wrong');
  await snap(page, 'bitmaps-disable-confirm');
  await page.getByTestId('confirm-ok').click();
  await expect(disable).toBeHidden();
  await expect(page.getByTestId('bitmap-row-b2')).toContainText('disabled');
  await expect(page.getByTestId('bitmap-row-b2')).toContainText('Not recording');
  // it really misses writes
  await tm.write('disk1', '48M', '1M', 0x33);
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('4 MiB');
  await expect(page.getByTestId('bitmap-dirty-b2')).toContainText('3 MiB');
  await page.getByTestId('bitmap-enable-b2').click();
  await expect(page.getByTestId('bitmap-row-b2')).toContainText('recording');

  // clear: asks first (Cancel keeps everything), then resets the count and the map
  await page.getByTestId('bitmap-clear-b1').click();
  const clear = page.getByRole('dialog', { name: 'Clear b1?' });
  await expect(clear).toContainText('4 MiB');
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await page.keyboard.press('Escape');
  await expect(clear).toBeHidden();
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('4 MiB');
  await page.getByTestId('bitmap-clear-b1').click();
  await page.getByTestId('confirm-ok').click();
  await expect(clear).toBeHidden();
  await expect(page.getByTestId('bitmap-dirty-b1')).toContainText('0 B');
  await expect(page.getByTestId('bitmap-map-b1')).toHaveAttribute('data-dirty-cells', '0');

  // remove: asks, and says the image copy goes too
  await page.getByTestId('bitmap-remove-b1').click();
  const remove = page.getByRole('dialog', { name: 'Remove b1?' });
  await expect(remove).toContainText('including its copy in the qcow2 image');
  await page.getByTestId('confirm-ok').click();
  await expect(remove).toBeHidden();
  await expect(page.getByTestId('bitmap-row-b1')).toHaveCount(0);
  await expect(page.getByTestId('bitmap-row-b2')).toBeVisible();

  // and the list is the main process's: a reload shows the same
  await page.reload();
  await expect(page.getByTestId('bitmap-row-b2')).toBeVisible();
  await expect(page.getByTestId('bitmap-row-b1')).toHaveCount(0);
  await expect(page.getByTestId('bitmap-dirty-b2')).toContainText('3 MiB');
});

test('a raw drive offers a sidecar file and says what happens without one', async ({ page }) => {
  await openConsole(page, tm);
  await createDrive(page, { path: tm.imagePath('raw1.img'), id: 'raw1', format: 'raw', size: '16M' });
  await dismissToasts(page);
  await page.getByTestId('nav-bitmaps').click();
  await page.getByTestId('drive-picker').selectOption('raw1');
  await expect(page).toHaveURL(/drive=raw1/);
  await expect(page.getByTestId('bitmaps-empty')).toContainText('No bitmaps on raw1 yet');

  await page.getByTestId('add-bitmap').click();
  const dialog = page.getByRole('dialog', { name: 'Add a bitmap to raw1' });
  await expect(page.getByTestId('field-persistent')).toHaveCount(0);
  await expect(dialog).toContainText('Keep in a sidecar file (Tidemark extension; QEMU does not read it)');
  await expect(dialog).toContainText('lost when Tidemark exits');
  await page.getByTestId('field-bitmap-name').fill('side');
  await page.getByTestId('field-sidecar').check();
  await page.getByTestId('dialog-submit').click();
  await expect(dialog).toBeHidden();
  await expect(page.getByTestId('bitmap-row-side')).toContainText('sidecar');

  // a name in use is caught before anything is sent
  await page.getByTestId('add-bitmap').click();
  await page.getByTestId('field-bitmap-name').fill('side');
  await expect(page.getByRole('dialog')).toContainText('raw1 already has a bitmap called side');
  await page.keyboard.press('Escape');
  await expect(page.getByRole('dialog')).toBeHidden();

  // writes to a raw drive are tracked the same way
  await tm.write('raw1', 0, '64k');
  await expect(page.getByTestId('bitmap-dirty-side')).toContainText('64 KiB');
});

test('bitmaps left inconsistent by a crash say why, offer only Remove, and the next backup starts a new chain', async ({ page }) => {
  test.setTimeout(90_000);
  await openConsole(page, tm);
  await createDrive(page, { path: tm.imagePath('crash.qcow2'), id: 'crash', format: 'qcow2', size: '16M' });
  await dismissToasts(page);
  await page.getByTestId('nav-bitmaps').click();
  await page.getByTestId('drive-picker').selectOption('crash');
  await page.getByTestId('add-bitmap').click();
  await page.getByTestId('field-bitmap-name').fill('tracked');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByTestId('bitmap-row-tracked')).toContainText('persistent');

  // a backup chain of the drive, with the bitmap Back up now adds for it
  await page.getByTestId('nav-backups').click();
  await page.getByTestId('backup-settings-crash').getByTestId('field-backup-dir').fill(tm.imagePath('crash-backups'));
  await page.getByTestId('backup-settings-crash').getByTestId('save-backup-settings').click();
  await page.getByTestId('backup-now-crash').click();
  await page.getByTestId('dialog-submit').click();
  const points = page.getByTestId('drive-backups-crash').getByTestId('point');
  await expect(points.first()).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await dismissToasts(page);

  // like QEMU, persistent bitmaps are written to the image when it is closed: restart cleanly once
  await tm.restart();
  await openConsole(page, tm);
  await page.getByTestId('nav-bitmaps').click();
  await page.getByTestId('drive-picker').selectOption('crash');
  await expect(page.getByTestId('bitmap-row-tracked')).toContainText('recording');
  await tm.write('crash', 0, '1M');
  await expect(page.getByTestId('bitmap-dirty-tracked')).toContainText('1 MiB');

  // now Tidemark dies while the image says its bitmaps are in use, without saving them
  await tm.kill();
  await tm.start();
  await openConsole(page, tm);
  await page.getByTestId('nav-bitmaps').click();
  await page.getByTestId('drive-picker').selectOption('crash');
  const row = page.getByTestId('bitmap-row-tracked');
  await expect(row).toContainText('inconsistent');
  const note = page.getByTestId('bitmap-inconsistent-tracked');
  await expect(note).toContainText('Tidemark or QEMU stopped without saving it; its contents can’t be trusted');
  await expect(note).toContainText('Removing it is the one thing left to do');
  await expect(page.getByTestId('bitmap-dirty-tracked')).toContainText('unknown');
  await expect(page.getByTestId('bitmap-map-tracked')).toHaveAttribute('data-dirty-cells', '0');
  await expect(page.getByTestId('bitmap-enable-tracked')).toHaveCount(0);
  await expect(page.getByTestId('bitmap-disable-tracked')).toHaveCount(0);
  await expect(page.getByTestId('bitmap-clear-tracked')).toHaveCount(0);
  await expect(page.getByTestId('bitmap-remove-tracked')).toBeEnabled();
  // the chain's own bitmap too, and for it the consequence is plain
  const chainNote = page.locator('[data-testid^="bitmap-inconsistent-tidemark-crash-"]');
  await expect(chainNote).toContainText('The next backup of this drive starts a new full chain.');
  await snap(page, 'bitmaps-inconsistent');

  await page.getByTestId('bitmap-remove-tracked').click();
  await expect(page.getByRole('dialog', { name: 'Remove tracked?' })).toContainText('could not be trusted anyway');
  await page.getByTestId('confirm-ok').click();
  await expect(row).toHaveCount(0);

  // Back up now sees it coming, and the engine says why
  await page.getByTestId('nav-backups').click();
  await page.getByTestId('backup-now-crash').click();
  await expect(page.getByTestId('backup-plan')).toContainText('was not saved cleanly');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByTestId('toast').filter({ hasText: 'not saved cleanly' })).toBeVisible();
  const chains = page.getByTestId('drive-backups-crash').getByTestId('chain');
  await expect(chains).toHaveCount(2);
  await expect(chains.first().getByTestId('point').first()).toHaveAttribute('data-kind', 'full');
  await expect(chains.first().getByTestId('point').first()).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
  await expect(chains.first()).toContainText('active');
});
