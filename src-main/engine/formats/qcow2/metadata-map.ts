/**
 * Which host clusters hold metadata. Used to refuse (as corruption) a data write or a fresh
 * allocation that would land on metadata — what QEMU's overlap checks catch — so a damaged
 * image cannot make us overwrite its own tables.
 */
export class MetadataMap {
  /** [firstCluster, count] of the header, L1 table and refcount table */
  private fixed: { name: string; first: number; count: number }[] = [];
  private readonly l2 = new Set<number>();
  private readonly refblocks = new Set<number>();

  constructor(private readonly clusterSize: number) {}

  setFixed(name: string, offset: number, length: number): void {
    this.fixed = this.fixed.filter((r) => r.name !== name);
    if (length <= 0) return;
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    this.fixed.push({ name, first, count: last - first + 1 });
  }

  addL2(offset: number): void {
    this.l2.add(offset / this.clusterSize);
  }

  addRefblock(offset: number): void {
    this.refblocks.add(offset / this.clusterSize);
  }

  /** Name of the metadata structure among host clusters [first, first+count), or undefined. */
  find(first: number, count: number): string | undefined {
    for (const r of this.fixed) {
      if (first < r.first + r.count && r.first < first + count) return r.name;
    }
    // the sets are usually far smaller than a large run; iterate whichever is cheaper
    if (count > this.l2.size + this.refblocks.size) {
      for (const c of this.l2) if (c >= first && c < first + count) return 'an L2 table';
      for (const c of this.refblocks) if (c >= first && c < first + count) return 'a refcount block';
      return undefined;
    }
    for (let c = first; c < first + count; c++) {
      if (this.l2.has(c)) return 'an L2 table';
      if (this.refblocks.has(c)) return 'a refcount block';
    }
    return undefined;
  }
}
