import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDrive, dismissToasts, expect, openConsole, repoRoot, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole();
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
