import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDrive, dismissToasts, expect, openConsole, repoRoot, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole({ qmp: true });
// a tidy, stable folder name for the picture (the other specs use random scratch folders)
const images = join(tmpdir(), 'tidemark-demo', 'images');

test.beforeAll(() => {
  rmSync(join(tmpdir(), 'tidemark-demo'), { recursive: true, force: true });
  mkdirSync(images, { recursive: true });
});
test.afterAll(() => {
  rmSync(join(tmpdir(), 'tidemark-demo'), { recursive: true, force: true });
});

// The README's picture of the Drives screen: two drives, nothing else on screen.
test('screenshot of the Drives screen with two drives', async ({ page }) => {
  await page.setViewportSize({ width: 1100, height: 420 });
  await openConsole(page, tm);
  await createDrive(page, {
    path: join(images, 'web01-root.qcow2'),
    id: 'web01-root',
    format: 'qcow2',
    size: '20G',
    clusterSize: 64 * 1024,
  });
  await createDrive(page, { path: join(images, 'web01-data.img'), id: 'web01-data', format: 'raw', size: '50G' });
  await dismissToasts(page);
  await expect(page.getByTestId('drive-size-web01-root')).toHaveText('20 GiB');
  await expect(page.getByTestId('drive-size-web01-data')).toHaveText('50 GiB');
  // no focus ring or hover highlight in the picture
  await page.mouse.move(0, 0);
  await page.evaluate('document.activeElement?.blur()');
  await page.screenshot({ path: join(repoRoot, 'assets', 'screenshot-drives.png') });
});

// The README's picture of the Backups screen: a machine group of two drives, each with a chain.
// (Runs after the Drives picture, on the same console.)
test('screenshot of the Backups screen with a chain', async ({ page }) => {
  test.setTimeout(90_000);
  await page.setViewportSize({ width: 1100, height: 720 });
  await openConsole(page, tm);
  await expect(page.getByTestId('drive-row-web01-root')).toBeVisible();
  // two qcow2 drives of one machine (the 50 GiB raw drive of the first picture would take long to copy)
  await page.getByTestId('detach-web01-data').click();
  await page.getByTestId('confirm-ok').click();
  await expect(page.getByTestId('drive-row-web01-data')).toHaveCount(0);
  await createDrive(page, { path: join(images, 'web01-home.qcow2'), id: 'web01-home', format: 'qcow2', size: '10G' });
  await dismissToasts(page);
  await page.getByTestId('nav-backups').click();

  await page.getByTestId('new-group').click();
  await page.getByTestId('field-group-name').fill('web01');
  await page.getByTestId('group-drive-web01-root').check();
  await page.getByTestId('group-drive-web01-home').check();
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();

  const writes: [string, string][] = [
    ['0', '8M'],
    ['1G', '2M'],
    ['5G', '3M'],
  ];
  for (const [i, [offset, length]] of writes.entries()) {
    await tm.write('web01-root', offset, length, 0x31 + i);
    await tm.write('web01-home', offset, length, 0x41 + i);
    await page.getByTestId('backup-group-web01').click();
    if (i === 0) await page.getByTestId('field-backup-dest').fill(join(tmpdir(), 'tidemark-demo', 'backups'));
    await page.getByTestId('dialog-submit').click();
    await expect(page.getByRole('dialog')).toBeHidden();
    for (const id of ['web01-root', 'web01-home']) {
      const points = page.getByTestId(`drive-backups-${id}`).getByTestId('point');
      await expect(points).toHaveCount(i + 1);
      await expect(points.nth(i)).toHaveAttribute('data-status', 'complete', { timeout: 30_000 });
    }
  }
  await page.getByTestId('drive-backups-web01-home').getByTestId('verify-chain').click();
  await page.getByTestId('dialog-close').click();
  await dismissToasts(page);
  await page.evaluate('window.scrollTo(0, 0)');
  await page.mouse.move(0, 0);
  await page.evaluate('document.activeElement?.blur()');
  await page.screenshot({ path: join(repoRoot, 'assets', 'screenshot-backups.png') });
});
