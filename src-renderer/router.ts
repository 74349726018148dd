import { nextTick } from 'vue';
import { createRouter, createWebHashHistory, type Router } from 'vue-router';
import BackupsView from './views/BackupsView.vue';
import BitmapsView from './views/BitmapsView.vue';
import DrivesView from './views/DrivesView.vue';
import JobsView from './views/JobsView.vue';
import RestoreView from './views/RestoreView.vue';

declare module 'vue-router' {
  interface RouteMeta {
    title?: string;
  }
}

/**
 * Hash history: Electron loads the app from file://, where only the hash can change.
 * Call after `api` is imported: the web transport tidies the address bar first, and hash
 * history takes its base from the address at creation.
 */
export function createAppRouter(): Router {
  const router = createRouter({
    history: createWebHashHistory(),
    routes: [
      { path: '/', redirect: '/drives' },
      { path: '/drives', component: DrivesView, meta: { title: 'Drives' } },
      { path: '/bitmaps', component: BitmapsView, meta: { title: 'Bitmaps' } },
      { path: '/backups', component: BackupsView, meta: { title: 'Backups' } },
      { path: '/jobs', component: JobsView, meta: { title: 'Jobs' } },
      { path: '/restore', component: RestoreView, meta: { title: 'Restore' } },
      { path: '/:pathMatch(.*)*', redirect: '/drives' },
    ],
  });

  let first = true;
  router.afterEach((to, _from, failure) => {
    if (failure) return;
    document.title = to.meta.title ? `${to.meta.title} · Tidemark` : 'Tidemark';
    if (first) {
      first = false;
      return;
    }
    // tell screen-reader and keyboard users the page changed: focus the new page's heading
    void nextTick(() => document.querySelector<HTMLElement>('main [data-focus-fallback]')?.focus());
  });
  return router;
}
