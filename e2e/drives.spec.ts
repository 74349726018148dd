import { existsSync, statSync } from 'node:fs';
import { createDrive, dismissToasts, expect, openConsole, snap, test, useTidemarkConsole } from './fixtures.js';

const GiB = 2 ** 30;
const tm = useTidemarkConsole();

test('a new raw 10G drive is created and listed as 10 GiB', async ({ page }) => {
  await openConsole(page, tm);
  await expect(page.getByTestId('drives-empty')).toBeVisible();
  await snap(page, 'drives-empty');

  const path = tm.imagePath('alpha.img');
  await page.getByTestId('new-drive').click();
  const dialog = page.getByRole('dialog', { name: 'New drive' });
  await expect(dialog).toBeVisible();
  await expect(page.getByTestId('field-path')).toBeFocused();
  await page.getByTestId('field-path').fill(path);
  await page.getByTestId('field-id').fill('alpha');
  await page.getByTestId('field-format').selectOption('raw');
  // qcow2-only fields go away for raw
  await expect(page.getByTestId('field-cluster-size')).toBeHidden();
  await expect(page.getByTestId('field-backing')).toBeHidden();
  await page.getByTestId('field-size').fill('10G');
  await expect(dialog).toContainText('= 10 GiB (10,737,418,240 bytes)');
  await snap(page, 'new-drive-dialog');
  await page.getByTestId('dialog-submit').click();

  await expect(dialog).toBeHidden();
  await expect(page.getByTestId('drive-row-alpha')).toBeVisible();
  await expect(page.getByTestId('drive-size-alpha')).toHaveText('10 GiB');
  await expect(page.getByTestId('drive-row-alpha')).toContainText(path);
  await expect(page.getByTestId('drive-row-alpha')).toContainText('raw');
  expect(statSync(path).size).toBe(10 * GiB);
  // focus went back to the button that opened the dialog
  await expect(page.getByTestId('new-drive')).toBeFocused();
  await snap(page, 'drive-created');
});

test('the New drive dialog checks its fields before sending anything', async ({ page }) => {
  await openConsole(page, tm);
  await page.getByTestId('new-drive').click();
  await page.getByTestId('field-size').fill('ten gigs');
  await expect(page.getByRole('dialog')).toContainText('"ten gigs" is not a size');
  await page.getByTestId('field-id').fill('9lives');
  await expect(page.getByRole('dialog')).toContainText('A drive id starts with a letter');
  await page.getByTestId('dialog-submit').click();
  // the first invalid field gets focus; the dialog stays open
  await expect(page.getByTestId('field-path')).toBeFocused();
  await expect(page.getByRole('dialog')).toContainText('Type the full path');

  // qcow2: with a backing file the size may stay empty
  await page.getByTestId('field-format').selectOption('qcow2');
  await expect(page.getByTestId('field-cluster-size')).toHaveValue(String(64 * 1024));
  await page.getByTestId('field-size').fill('');
  await page.getByTestId('field-backing').fill('/somewhere/base.qcow2');
  await expect(page.getByRole('dialog')).toContainText('the drive takes the backing file’s size');

  // Esc closes, and focus returns to the opener
  await page.keyboard.press('Escape');
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('new-drive')).toBeFocused();
});

test('the submit button is disabled while the request is in flight', async ({ page }) => {
  // hold every request for a moment on its way to the console
  await page.routeWebSocket(/\/api$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      setTimeout(() => server.send(message), 800);
    });
  });
  await openConsole(page, tm);
  await page.getByTestId('new-drive').click();
  await page.getByTestId('field-path').fill(tm.imagePath('slow.img'));
  await page.getByTestId('field-id').fill('slow');
  await page.getByTestId('field-format').selectOption('raw');
  await page.getByTestId('field-size').fill('1M');
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByTestId('dialog-submit')).toBeDisabled();
  await expect(page.getByTestId('dialog-submit')).toHaveText('Creating…');
  await expect(page.getByRole('dialog')).toBeHidden();
  await expect(page.getByTestId('drive-size-slow')).toHaveText('1 MiB');
});

test('a list that fails to load says why, and Try again loads it', async ({ page }) => {
  // the first drives.list is answered with an error before it reaches the console
  let failed = false;
  await page.routeWebSocket(/\/api$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((message) => {
      const request = JSON.parse(String(message)) as { id: number; method: string };
      if (request.method === 'drives.list' && !failed) {
        failed = true;
        ws.send(JSON.stringify({ type: 'response', id: request.id, ok: false, error: { code: 'IO_ERROR', message: 'The catalog could not be read.' } }));
        return;
      }
      server.send(message);
    });
  });
  await page.goto(tm.url);
  const notice = page.getByRole('alert').filter({ hasText: 'Could not load the drive list.' });
  await expect(notice).toContainText('The catalog could not be read.');
  // (earlier tests in this file have made drives: the list shows either way once loaded)
  const list = page.getByTestId('drives-empty').or(page.getByTestId('drives-table'));
  await expect(list).toBeHidden();
  await notice.getByRole('button', { name: 'Try again' }).click();
  await expect(notice).toBeHidden();
  await expect(list).toBeVisible();
});

test('drives survive a restart of the console', async ({ page }) => {
  await openConsole(page, tm);
  const path = tm.imagePath('beta.qcow2');
  await createDrive(page, { path, id: 'beta', format: 'qcow2', size: '1G', clusterSize: 128 * 1024 });
  await expect(page.getByTestId('drive-size-beta')).toHaveText('1 GiB');
  await expect(page.getByTestId('drive-row-beta')).toContainText('128 KiB');

  await tm.stop();
  await expect(page.getByTestId('connection-banner')).toBeVisible();
  await snap(page, 'disconnected');

  await tm.start();
  // a new run has a new token; the old page's cookie is no longer valid, so open the new link
  await openConsole(page, tm);
  await expect(page.getByTestId('connection-banner')).toBeHidden();
  await expect(page.getByTestId('drive-row-beta')).toBeVisible();
  await expect(page.getByTestId('drive-size-beta')).toHaveText('1 GiB');
  await expect(page.getByTestId('drive-row-alpha')).toBeVisible();
});

test('detach asks first, removes the drive and keeps the file', async ({ page }) => {
  await openConsole(page, tm);
  const path = tm.imagePath('gamma.img');
  await createDrive(page, { path, id: 'gamma', format: 'raw', size: '64M' });
  await dismissToasts(page);

  // Cancel (Esc) changes nothing and returns focus to the Detach button
  await page.getByTestId('detach-gamma').click();
  const confirm = page.getByRole('dialog', { name: 'Detach gamma?' });
  await expect(confirm).toBeVisible();
  await expect(confirm).toContainText('The image file is not deleted');
  await expect(confirm).toContainText(path);
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await page.keyboard.press('Escape');
  await expect(confirm).toBeHidden();
  await expect(page.getByTestId('detach-gamma')).toBeFocused();
  await expect(page.getByTestId('drive-row-gamma')).toBeVisible();

  await page.getByTestId('detach-gamma').click();
  // Tab and Shift+Tab stay inside the dialog
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await page.keyboard.press('Tab');
  await expect(page.getByTestId('confirm-ok')).toBeFocused();
  await page.keyboard.press('Tab');
  await expect(page.getByTestId('dialog-cancel')).toBeFocused();
  await page.keyboard.press('Shift+Tab');
  await expect(page.getByTestId('confirm-ok')).toBeFocused();
  await snap(page, 'detach-confirm');
  await page.getByTestId('confirm-ok').click();
  await expect(confirm).toBeHidden();
  await expect(page.getByTestId('drive-row-gamma')).toHaveCount(0);
  expect(existsSync(path)).toBe(true);
  expect(statSync(path).size).toBe(64 * 2 ** 20);
  await expect(page.getByTestId('toast').filter({ hasText: 'Detached gamma' })).toBeVisible();

  // and it stays gone after a reload (the main process forgot it too)
  await page.reload();
  await expect(page.getByTestId('drives-table')).toBeVisible();
  await expect(page.getByTestId('drive-row-gamma')).toHaveCount(0);
});

test('the sidebar reaches every screen, each honest about what is there', async ({ page }) => {
  await openConsole(page, tm);
  for (const [id, title] of [
    ['bitmaps', 'Bitmaps'],
    ['backups', 'Backups'],
    ['jobs', 'Jobs'],
    ['restore', 'Restore'],
    ['drives', 'Drives'],
  ] as const) {
    await page.getByTestId(`nav-${id}`).click();
    await expect(page).toHaveURL(new RegExp(`#/${id}$`));
    await expect(page.getByRole('heading', { level: 1, name: title })).toBeFocused();
    await expect(page.getByTestId(`nav-${id}`)).toHaveAttribute('aria-current', 'page');
    // every screen is built: none is a placeholder any more
    await expect(page.getByText('Not in this version yet')).toHaveCount(0);
  }
  await page.getByTestId('nav-bitmaps').click();
  await snap(page, 'bitmaps');
});
