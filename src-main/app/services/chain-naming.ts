import { join } from 'node:path';

/** 2026-11-26T07:05:12.345Z → 20261126T070512Z: sorts, reads, and is safe in any file system. */
export function compactTime(iso: string): string {
  return iso.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

/** `<dest>/<drive>/<chain-start>/`: one folder per chain, so a chain can be moved or re-imported whole. */
export function chainFolder(dest: string, driveId: string, chainStartIso: string): string {
  return join(dest, driveId, compactTime(chainStartIso));
}

/** `<n>-<full|inc|diff>-<UTC time>.qcow2`: names that sort and explain themselves. */
export function pointFileName(seq: number, kind: 'full' | 'inc' | 'diff', timeIso: string): string {
  return `${String(seq).padStart(3, '0')}-${kind}-${compactTime(timeIso)}.qcow2`;
}

/** The bitmap that tracks a chain's changes, named after it. */
export function chainBitmapName(chainId: string): string {
  return `tidemark-${chainId}`;
}
