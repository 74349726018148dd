/** Sizes as people type them. Binary units, like qemu-img: 1K = 1024. */
const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50, E: 2 ** 60 };

/** Parses "10G", "512M", "1.5T", "4096", "64k", "10 GiB"; returns undefined when it is not a size. */
export function parseSize(text: string | number): number | undefined {
  if (typeof text === 'number') return Number.isSafeInteger(text) && text >= 0 ? text : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtpeb]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return undefined;
  const unit = UNITS[m[2].toUpperCase()];
  const value = Number(m[1]) * unit;
  if (!Number.isFinite(value)) return undefined;
  const bytes = Math.round(value);
  // "1.5" bytes is not a size; fractions only make sense with a unit
  if (unit === 1 && bytes !== value) return undefined;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** 10737418240 → "10 GiB"; keeps up to two decimals. */
export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 ? String(v) : v.toFixed(2).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}
