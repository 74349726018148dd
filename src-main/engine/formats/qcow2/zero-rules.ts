import type { EntryDecision } from './cluster-map.js';
import type { ClusterMapping } from './l2-entry.js';

/** The L2 entry QEMU uses for "reads as zeros, nothing allocated". */
const ZERO_PLAIN = { hi: 0, lo: 1 };

export interface SplitRange {
  /** whole guest clusters [first, first+count) */
  full: { first: number; count: number } | undefined;
  /** byte pieces inside partially covered clusters, one per cluster */
  partial: { offset: number; length: number }[];
}

/**
 * Splits a byte range into whole clusters and partial pieces. The last cluster of the disk counts
 * as whole when the range reaches the end of the disk (its tail past the disk end is invisible).
 */
export function splitClusters(offset: number, length: number, cs: number, virtualSize: number): SplitRange {
  const end = offset + length;
  const a = Math.ceil(offset / cs);
  const b = end === virtualSize ? Math.ceil(end / cs) : Math.floor(end / cs);
  if (a >= b) {
    const partial: { offset: number; length: number }[] = [];
    for (let pos = offset; pos < end; ) {
      const stop = Math.min(end, (Math.floor(pos / cs) + 1) * cs);
      partial.push({ offset: pos, length: stop - pos });
      pos = stop;
    }
    return { full: undefined, partial };
  }
  const partial: { offset: number; length: number }[] = [];
  if (offset < a * cs) partial.push({ offset, length: a * cs - offset });
  if (b * cs < end) partial.push({ offset: b * cs, length: end - b * cs });
  return { full: { first: a, count: b - a }, partial };
}

/**
 * Write-zeroes of a whole cluster in a v3 image, leaving what QEMU leaves:
 * - without unmap, a data cluster keeps its host cluster: `offset | zero | COPIED`;
 * - with unmap (or a shared/compressed cluster) the host cluster is freed and the entry is 0x1;
 * - an unallocated cluster becomes 0x1 when it has an L2 table (QEMU's behaviour) or a backing
 *   file to mask; without either it already reads as zeros and is left alone.
 */
export function zeroDecisionV3(m: ClusterMapping, l2Exists: boolean, mayUnmap: boolean, hasBacking: boolean): EntryDecision {
  switch (m.kind) {
    case 'unallocated':
      return l2Exists || hasBacking ? { ...ZERO_PLAIN, free: false } : null;
    case 'zero':
      return null;
    case 'zero-alloc':
      return mayUnmap || !m.copied ? { ...ZERO_PLAIN, free: true } : null;
    case 'normal':
      return mayUnmap || !m.copied ? { ...ZERO_PLAIN, free: true } : { hi: m.hi, lo: m.lo | 1, free: false };
    case 'compressed':
      return { ...ZERO_PLAIN, free: true };
  }
}

/**
 * Discard of a whole cluster (QEMU's non-full discard): the host cluster is freed; v3 marks the
 * cluster zero, v2 (no zero flag) leaves it unallocated. With a backing file, v3 also masks
 * unallocated clusters with the zero flag, as QEMU does.
 */
export function discardDecision(m: ClusterMapping, v3: boolean, hasBacking: boolean): EntryDecision {
  if (m.kind === 'normal' || m.kind === 'zero-alloc' || m.kind === 'compressed') {
    return v3 ? { ...ZERO_PLAIN, free: true } : { hi: 0, lo: 0, free: true };
  }
  if (m.kind === 'unallocated' && v3 && hasBacking) return { ...ZERO_PLAIN, free: false };
  return null;
}

/** v2 write-zeroes: with unmap and nothing below to show through, a cluster can simply be unmapped. */
export function unmapsToZeroV2(m: ClusterMapping, mayUnmap: boolean, zeroBelow: boolean): boolean {
  return mayUnmap && zeroBelow && m.kind !== 'unallocated' && m.kind !== 'zero';
}
