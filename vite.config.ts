import { fileURLToPath } from 'node:url';
import vue from '@vitejs/plugin-vue';
import { defineConfig, type Plugin } from 'vite';

const root = fileURLToPath(new URL('./src-renderer', import.meta.url));

/**
 * The CSP meta tag in index.html is strict (no inline scripts or styles, no eval), which is
 * what the built app runs under in Electron and the web console. Vite's dev server needs inline
 * styles and its HMR socket, so the tag is dropped when serving (`vite` only, never in a build).
 */
function relaxCspForDevServer(): Plugin {
  return {
    name: 'tidemark:relax-csp-for-dev-server',
    apply: 'serve',
    transformIndexHtml: (html) => html.replace(/<meta\s+http-equiv="Content-Security-Policy"[^>]*>/i, ''),
  };
}

export default defineConfig({
  root,
  // Electron loads the build from file://, so every URL must be relative
  base: './',
  publicDir: 'public',
  plugins: [vue(), relaxCspForDevServer()],
  build: {
    outDir: '../dist/renderer',
    emptyOutDir: true,
    target: 'chrome120',
    // no inline <script> for the module preload polyfill: CSP allows scripts from 'self' only
    modulePreload: { polyfill: false },
    // never turn small assets into data: URLs for scripts or styles
    assetsInlineLimit: 0,
    sourcemap: true,
    reportCompressedSize: false,
  },
});
