import { expect, openConsole, snap, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole();

test('adding a path that does not exist shows the engine’s error and lists nothing', async ({ page }) => {
  await openConsole(page, tm);
  await expect(page.getByTestId('drives-empty')).toBeVisible();

  const missing = tm.imagePath('no-such-disk.qcow2');
  await page.getByTestId('add-drive').click();
  await expect(page.getByRole('dialog', { name: 'Add existing image' })).toBeVisible();
  await page.getByTestId('field-path').fill(missing);
  await page.getByTestId('field-id').fill('ghost');
  await page.getByTestId('dialog-submit').click();

  const toast = page.getByTestId('toast');
  await expect(toast).toHaveCount(1);
  await expect(toast).toContainText('Could not add the image');
  // the engine's own sentence names the file
  await expect(toast).toContainText('no-such-disk.qcow2');
  await expect(toast).toHaveAttribute('role', 'alert');
  // the dialog stays open so the path can be fixed, with the submit button usable again
  await expect(page.getByTestId('dialog-submit')).toBeEnabled();
  await expect(page.getByTestId('field-path')).toBeFocused();
  await snap(page, 'add-missing-error');

  await page.getByTestId('dialog-cancel').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('drives-empty')).toBeVisible();
  await expect(page.getByTestId('drives-table')).toHaveCount(0);
  await expect(page.getByTestId('drive-row-ghost')).toHaveCount(0);

  // error toasts stay until dismissed
  await page.getByTestId('toast').getByRole('button', { name: 'Dismiss notification' }).click();
  await expect(page.getByTestId('toast')).toHaveCount(0);
});
