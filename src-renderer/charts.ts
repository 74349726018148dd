import { CategoryScale, Chart, Filler, Legend, LinearScale, LineController, LineElement, PointElement, Tooltip } from 'chart.js';

/**
 * Chart.js, registered once with only what the screens use (no `chart.js/auto`). Chart.js 4
 * injects no <style> element; it sizes canvases through the CSSOM, which the strict CSP allows.
 */
Chart.register(LineController, LineElement, PointElement, LinearScale, CategoryScale, Tooltip, Legend, Filler);

Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily || 'system-ui, sans-serif';
Chart.defaults.font.size = 12;
Chart.defaults.color = cssVar('--text-muted', '#5b6776');
Chart.defaults.borderColor = cssVar('--border', '#dde3ea');

/** A colour from the stylesheet's tokens, so charts follow the theme. */
export function cssVar(name: string, fallback: string): string {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

/** Series colours, in order of use. */
export const SERIES_COLOURS = ['#0b5f78', '#c2410c', '#7c3aed', '#15803d', '#b91c1c', '#0369a1'];

export { Chart };
