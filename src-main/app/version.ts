/** Replaced at build time by esbuild's define; the source value is for tests. */
declare const __TIDEMARK_VERSION__: string | undefined;
export const APP_VERSION: string = typeof __TIDEMARK_VERSION__ === 'string' ? __TIDEMARK_VERSION__ : '0.1.0-dev';
