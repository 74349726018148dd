import type { JobSummary } from '../src-shared/api/domain';
import { formatEta, formatPercent, formatSize } from './format';

/** The figures a running job's progress shows, wherever it is shown (Jobs, the restore wizard). */
type Progress = Pick<JobSummary, 'bytesDone' | 'bytesTotal' | 'paused' | 'etaSeconds'>;

/** an estimate from the first few percent is mostly noise */
const ETA_AFTER_FRACTION = 0.05;

export function progressFraction(j: Progress): number {
  return j.bytesTotal > 0 ? j.bytesDone / j.bytesTotal : 0;
}

/** "1.2 GiB of 4 GiB (30%)" */
export function progressText(j: Progress): string {
  return `${formatSize(j.bytesDone)} of ${formatSize(j.bytesTotal)} (${formatPercent(progressFraction(j))})`;
}

/** Time left: "paused", "estimating…" until the estimate means something, then the estimate. */
export function etaText(j: Progress): string {
  if (j.paused) return 'paused';
  if (j.etaSeconds === null || progressFraction(j) < ETA_AFTER_FRACTION) return 'estimating…';
  return formatEta(j.etaSeconds);
}
