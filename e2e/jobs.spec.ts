import type { Page } from '@playwright/test';
import { createDrive, dismissToasts, expect, openConsole, snap, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole({ qmp: true });

interface ProgressFrame {
  t: number;
  jobId: string;
}

/** Counts `jobs.progress` events as they arrive on the page's WebSocket. Call before the page opens. */
function countProgressEvents(page: Page): ProgressFrame[] {
  const frames: ProgressFrame[] = [];
  page.on('websocket', (ws) => {
    ws.on('framereceived', ({ payload }) => {
      if (typeof payload !== 'string' || !payload.includes('"jobs.progress"')) return;
      const msg = JSON.parse(payload) as { type?: string; name?: string; payload?: { job?: { id?: string } } };
      if (msg.type === 'event' && msg.name === 'jobs.progress' && msg.payload?.job?.id) {
        frames.push({ t: Date.now(), jobId: msg.payload.job.id });
      }
    });
  });
  return frames;
}

/** The most events any one job got within any one second. */
function peakPerSecond(frames: ProgressFrame[]): number {
  let peak = 0;
  const byJob = new Map<string, number[]>();
  for (const f of frames) byJob.set(f.jobId, [...(byJob.get(f.jobId) ?? []), f.t]);
  for (const times of byJob.values()) {
    for (let i = 0, j = 0; i < times.length; i++) {
      while (times[i] - times[j] >= 1000) j++;
      peak = Math.max(peak, i - j + 1);
    }
  }
  return peak;
}

/*
 * Page-side scripts are strings: the e2e project has no DOM types, and they run in the page.
 */

/**
 * Records, from now on, long tasks (≥ 50 ms on the main thread) and, through the Long Animation
 * Frames API, how long each script run by a WebSocket message took inside such frames. A message
 * script covers the store update and the Vue render and chart update it queues (microtasks).
 */
const WATCH_LONG_TASKS = `
  window.__perf = { longTasks: [], messageScripts: [] };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__perf.longTasks.push(Math.round(e.duration));
  }).observe({ type: 'longtask' });
  new PerformanceObserver((list) => {
    for (const frame of list.getEntries()) {
      for (const s of frame.scripts || []) {
        if (/WebSocket/i.test(s.invoker || '')) window.__perf.messageScripts.push({ invoker: s.invoker, ms: Math.round(s.duration) });
      }
    }
  }).observe({ type: 'long-animation-frame' });
`;

interface PagePerf {
  longTasks: number[];
  messageScripts: { invoker: string; ms: number }[];
}

/** Replaces Notification with a subclass that records what the page shows (before any page script runs). */
const RECORD_NOTIFICATIONS = `
  const Real = window.Notification;
  window.__notifications = [];
  class Recording extends Real {
    constructor(title, options) {
      super(title, options);
      window.__notifications.push({ title, body: options && options.body });
    }
  }
  Object.defineProperty(window, 'Notification', { value: Recording, configurable: true, writable: true });
`;

/** Starts "Back up now" for a drive, with a speed limit in MiB/s. */
async function startBackup(page: Page, driveId: string, mibPerSecond: number): Promise<void> {
  await page.getByTestId('nav-backups').click();
  await page.getByTestId(`backup-now-${driveId}`).click();
  await page.getByTestId('field-speed').fill(String(mibPerSecond));
  await expect(page.getByRole('dialog')).toContainText(`At most ${mibPerSecond} MiB/s.`);
  await page.getByTestId('dialog-submit').click();
  await expect(page.getByRole('dialog')).toBeHidden();
  await dismissToasts(page);
}

async function progressValue(page: Page, driveId: string): Promise<number> {
  return Number(await page.locator(`[data-testid="job-card"][data-drive="${driveId}"] [data-testid="job-progress"]`).getAttribute('value'));
}

test('throttled backups: live progress and chart, pause and resume, cancel, history, notifications', async ({ page }) => {
  test.setTimeout(150_000);
  const frames = countProgressEvents(page);

  // desktop notifications: granted, and recorded as the page creates them
  await page.context().grantPermissions(['notifications'], { origin: tm.origin });
  await page.addInitScript(RECORD_NOTIFICATIONS);

  await openConsole(page, tm);
  const folder = tm.imagePath('backups');
  for (const id of ['alpha', 'bravo']) {
    await createDrive(page, { path: tm.imagePath(`${id}.qcow2`), id, format: 'qcow2', size: '64M' });
    // 24 MiB of data: at 2 MiB/s a full backup takes about 12 s
    await tm.write(id, 0, '24M', 0x5a);
  }
  await dismissToasts(page);

  await page.getByTestId('nav-jobs').click();
  await expect(page.getByTestId('jobs-empty')).toBeVisible();
  await expect(page.getByTestId('history-empty')).toBeVisible();
  await snap(page, 'jobs-empty');

  // notifications are asked for on a click, and only then
  await page.getByTestId('toggle-notifications').check();
  await expect(page.getByTestId('toggle-notifications')).toBeChecked();
  await dismissToasts(page);

  // folders for both drives, then two throttled backups
  await page.getByTestId('nav-backups').click();
  for (const id of ['alpha', 'bravo']) {
    const settings = page.getByTestId(`backup-settings-${id}`);
    await settings.getByTestId('field-backup-dir').fill(folder);
    await settings.getByTestId('save-backup-settings').click();
    await expect(settings).toContainText('Backups go to');
  }
  await startBackup(page, 'alpha', 2);
  await startBackup(page, 'bravo', 2);
  await expect(page.getByTestId('backup-now-alpha')).toHaveText('Backing up…');
  await dismissToasts(page);

  await page.getByTestId('nav-jobs').click();
  await expect(page.getByTestId('nav-jobs-count')).toContainText('2');
  const alpha = page.locator('[data-testid="job-card"][data-drive="alpha"]');
  const bravo = page.locator('[data-testid="job-card"][data-drive="bravo"]');
  await expect(alpha).toContainText('Full backup of alpha');
  await expect(bravo).toBeVisible();
  await expect(alpha.getByTestId('job-limit')).toHaveText('2 MiB/s');

  // while they run and nobody touches anything: progress moves, the chart grows, no long tasks
  expect(await page.evaluate("PerformanceObserver.supportedEntryTypes.includes('long-animation-frame')")).toBe(true);
  await page.evaluate(WATCH_LONG_TASKS);
  const before = await progressValue(page, 'alpha');
  const samplesBefore = Number(await alpha.getByTestId('throughput-chart').getAttribute('data-samples'));
  await page.waitForTimeout(4000);
  await expect.poll(() => progressValue(page, 'alpha')).toBeGreaterThan(before);
  await expect
    .poll(async () => Number(await alpha.getByTestId('throughput-chart').getAttribute('data-samples')))
    .toBeGreaterThan(samplesBefore + 4);
  await expect(alpha.getByTestId('job-rate')).toContainText('MiB/s');
  const perf = (await page.evaluate('window.__perf')) as PagePerf;
  test.info().annotations.push({ type: 'long tasks while progress streamed in (ms)', description: JSON.stringify(perf.longTasks) });
  const slow = perf.messageScripts.filter((s) => s.ms >= 50);
  expect(slow, 'long tasks caused by progress updates (WebSocket messages)').toEqual([]);
  await snap(page, 'jobs-running');

  // pause: the bar stops; resume: it moves again
  await alpha.getByTestId('job-pause').click();
  await expect(alpha.getByTestId('job-state')).toHaveText('paused');
  await expect(alpha.getByTestId('job-pause')).toHaveText('Resume');
  await expect(alpha.getByTestId('job-eta')).toHaveText('paused');
  const paused = await progressValue(page, 'alpha');
  await page.waitForTimeout(1500);
  expect(await progressValue(page, 'alpha')).toBe(paused);
  await snap(page, 'jobs-paused');
  await alpha.getByTestId('job-pause').click();
  await expect(alpha.getByTestId('job-state')).toHaveText('running');
  await expect.poll(() => progressValue(page, 'alpha')).toBeGreaterThan(paused);

  // while alpha's backup runs, its chain's bitmap is busy: nothing can be done to it, and the screen says why
  await page.getByTestId('nav-bitmaps').click();
  await page.getByTestId('drive-picker').selectOption('alpha');
  const busyRow = page.locator('[data-testid^="bitmap-row-tidemark-alpha-"]');
  await expect(busyRow).toContainText('busy');
  await expect(busyRow).toContainText('A backup job is using this bitmap right now');
  await expect(busyRow.getByRole('button', { name: 'Remove' })).toBeDisabled();
  await expect(busyRow.getByRole('button', { name: 'Clear' })).toBeDisabled();
  await snap(page, 'bitmaps-busy');
  // back on Jobs, the chart kept its readings
  await page.getByTestId('nav-jobs').click();
  await expect
    .poll(async () => Number(await alpha.getByTestId('throughput-chart').getAttribute('data-samples')))
    .toBeGreaterThan(samplesBefore + 8);

  // cancel asks first; Cancel in the dialog keeps the job
  await bravo.getByTestId('job-cancel').click();
  const confirm = page.getByRole('dialog', { name: 'Cancel the full backup of bravo?' });
  await expect(confirm).toContainText('does not become a restore point');
  await page.getByTestId('dialog-cancel').click();
  await expect(bravo).toBeVisible();
  await bravo.getByTestId('job-cancel').click();
  await page.getByTestId('confirm-ok').click();
  await expect(bravo).toHaveCount(0);
  await expect(page.getByTestId('toast').filter({ hasText: 'Full backup of bravo was cancelled' })).toBeVisible();
  const cancelledRow = page.locator('[data-testid="history-row"][data-outcome="cancelled"]');
  await expect(cancelledRow).toHaveCount(1);
  await expect(cancelledRow).toContainText('bravo');

  // the cancelled attempt stays on bravo's timeline, muted, with the reason
  await page.getByTestId('nav-backups').click();
  const attempt = page.getByTestId('drive-backups-bravo').getByTestId('point').first();
  await expect(attempt).toHaveAttribute('data-status', 'failed');
  await expect(attempt).toContainText('cancelled');
  await page.getByTestId('nav-jobs').click();

  // lift alpha's limit so it finishes soon
  await alpha.getByTestId('job-limit-input').fill('0');
  await alpha.getByTestId('job-limit-apply').click();
  await expect(page.getByTestId('toast').filter({ hasText: 'Lifted the speed limit of full backup of alpha' })).toBeVisible();
  await expect(alpha).toHaveCount(0, { timeout: 60_000 });
  await expect(page.getByTestId('toast').filter({ hasText: 'Full backup of alpha finished' })).toBeVisible();
  await expect(page.locator('[data-testid="history-row"][data-outcome="completed"]')).toContainText('alpha');
  await expect(page.getByTestId('jobs-empty')).toBeVisible();
  await expect(page.getByTestId('nav-jobs-count')).toHaveCount(0);

  // the history chart: alpha's completed backup
  await page.getByTestId('history-drive').selectOption('alpha');
  await expect(page.getByTestId('history-chart')).toHaveAttribute('data-points', '1');
  await dismissToasts(page);
  await snap(page, 'jobs-history');

  // a desktop notification for the completion (not for the cancel, which the person did)
  const shown = (await page.evaluate('window.__notifications')) as { title: string; body?: string }[];
  expect(shown.map((n) => n.title)).toEqual(['Full backup of alpha finished']);

  // the events: never more than 10 a second for one job
  expect(frames.length).toBeGreaterThan(10);
  expect(peakPerSecond(frames), 'jobs.progress events per second per job').toBeLessThanOrEqual(10);
});
