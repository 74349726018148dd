import type { BlockDriver, BlockExtent } from '../types.js';
import type { ClusterMap } from './cluster-map.js';

/**
 * Block status of a guest range: runs of data / zero / unallocated, merged. Unallocated runs are
 * answered by the backing chain (depth + 1), or read as zeros with no depth past its end.
 */
export async function qcow2BlockStatus(
  map: ClusterMap,
  backing: BlockDriver | null,
  clusterSize: number,
  offset: number,
  length: number,
): Promise<BlockExtent[]> {
  const out: BlockExtent[] = [];
  const push = (e: BlockExtent) => {
    const last = out.at(-1);
    if (
      last &&
      last.offset + last.length === e.offset &&
      last.zero === e.zero &&
      last.data === e.data &&
      last.allocatedHere === e.allocatedHere &&
      last.depth === e.depth
    ) {
      last.length += e.length;
    } else {
      out.push(e);
    }
  };
  const unallocated = async (start: number, len: number) => {
    const inBacking = backing ? Math.max(0, Math.min(len, backing.virtualSize - start)) : 0;
    if (backing && inBacking > 0) {
      for (const e of await backing.blockStatus(start, inBacking)) {
        push({ ...e, allocatedHere: false, depth: e.depth === undefined ? undefined : e.depth + 1 });
      }
    }
    if (inBacking < len) {
      push({ offset: start + inBacking, length: len - inBacking, zero: true, data: false, allocatedHere: false, depth: undefined });
    }
  };

  const cs = clusterSize;
  const span = map.l2Entries * cs;
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const l1Index = Math.floor(pos / span);
    const tableEnd = Math.min(end, (l1Index + 1) * span);
    const table = await map.table(l1Index);
    if (!table) {
      await unallocated(pos, tableEnd - pos);
      pos = tableEnd;
      continue;
    }
    while (pos < tableEnd) {
      const c = Math.floor(pos / cs);
      const m = map.decode(table, c % map.l2Entries);
      const stop = Math.min(tableEnd, (c + 1) * cs);
      if (m.kind === 'unallocated') {
        // one backing query for the whole unallocated run, not one per cluster
        let runStop = stop;
        while (runStop < tableEnd && map.decode(table, (runStop / cs) % map.l2Entries).kind === 'unallocated') {
          runStop = Math.min(tableEnd, runStop + cs);
        }
        await unallocated(pos, runStop - pos);
        pos = runStop;
        continue;
      } else {
        const zero = m.kind === 'zero' || m.kind === 'zero-alloc';
        push({ offset: pos, length: stop - pos, zero, data: !zero, allocatedHere: true, depth: 0 });
      }
      pos = stop;
    }
  }
  return out;
}
