import { defineConfig } from '@playwright/test';

/**
 * End-to-end tests of the web console in Debian's Chromium. Each spec file starts its own
 * `tidemark serve --web` on a temporary data folder (see e2e/fixtures.ts). Artifacts (screenshots,
 * traces of failures, the HTML report) go to e2e-artifacts/, which git ignores.
 */
export default defineConfig({
  testDir: './e2e',
  testMatch: '*.spec.ts',
  outputDir: 'e2e-artifacts/test-results',
  globalSetup: './e2e/global-setup.ts',
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  timeout: 60_000,
  expect: { timeout: 10_000 },
  reporter: [['list'], ['html', { outputFolder: 'e2e-artifacts/report', open: 'never' }], ['json', { outputFile: '.tmp/playwright.json' }]],
  use: {
    browserName: 'chromium',
    headless: true,
    viewport: { width: 1200, height: 760 },
    // toasts and dialogs skip their transitions: no half-faded elements in assertions or pictures
    reducedMotion: 'reduce',
    screenshot: 'only-on-failure',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    },
  },
});
