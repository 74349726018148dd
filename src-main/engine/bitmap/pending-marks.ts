/**
 * The one rule that makes deferred write marking (write-marker.ts) invisible: whoever reads or
 * clears bitmap bits first applies every mark still queued. SharedBits calls settleMarks() at the
 * top of each such method; with nothing queued it costs one comparison per marker.
 */
type Settler = () => void;

const settlers = new Set<Settler>();

export function addSettler(s: Settler): () => void {
  settlers.add(s);
  return () => settlers.delete(s);
}

export function settleMarks(): void {
  for (const s of settlers) s();
}
