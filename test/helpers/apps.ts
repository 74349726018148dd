import { afterEach } from 'vitest';
import { TidemarkApp } from '../../src-main/app/app.js';
import { mountTmpfs, umount } from './qemu.js';

/**
 * Apps and tmpfs mounts a test file starts, closed and unmounted after each test.
 * `crash(app)` drops an app without closing it (its images stay "in use" on disk), as a kill would.
 */
export function appHarness() {
  const apps: TidemarkApp[] = [];
  const mounts: string[] = [];
  afterEach(async () => {
    for (const a of apps.splice(0)) await a.close().catch(() => {});
    for (const m of mounts.splice(0)) umount(m);
  });
  return {
    async start(dataDir: string): Promise<TidemarkApp> {
      const app = await TidemarkApp.start({ dataDir, host: 'web' });
      apps.push(app);
      return app;
    },
    /** closes cleanly now (a restart follows) */
    async stop(app: TidemarkApp): Promise<void> {
      apps.splice(apps.indexOf(app), 1);
      await app.close();
    },
    /** the process "dies": nothing is saved, only the I/O threads stop */
    async crash(app: TidemarkApp): Promise<void> {
      apps.splice(apps.indexOf(app), 1);
      await app.engine.pool.close();
    },
    mount(dir: string, size: string): void {
      mountTmpfs(dir, size);
      mounts.push(dir);
    },
  };
}
