import type { Drive } from '../../drive.js';

/** QEMU's BlockDeviceInfo for a drive's root node (query-block `inserted`, query-named-block-nodes). */
export async function blockDeviceInfo(drive: Drive): Promise<Record<string, unknown>> {
  const info = await drive.driver.info();
  const chain = info.backingChain;
  const image: Record<string, unknown> = {
    'virtual-size': info.virtualSize,
    filename: info.path,
    format: info.format,
    'actual-size': info.actualSize,
    'dirty-flag': false,
  };
  if (info.clusterSize !== undefined) image['cluster-size'] = info.clusterSize;
  if (info.backingFile !== undefined) {
    image['backing-filename'] = info.backingFile;
    image['full-backing-filename'] = info.backingFilename;
    if (info.backingFormat) image['backing-filename-format'] = info.backingFormat;
  }
  const out: Record<string, unknown> = {
    'node-name': drive.nodeName,
    file: info.path,
    ro: info.readOnly,
    drv: info.format,
    backing_file_depth: chain.length,
    encrypted: false,
    detect_zeroes: 'off',
    bps: 0,
    bps_rd: 0,
    bps_wr: 0,
    iops: 0,
    iops_rd: 0,
    iops_wr: 0,
    image,
    cache: { writeback: true, direct: false, 'no-flush': false },
    write_threshold: 0,
  };
  if (info.backingFile !== undefined) out.backing_file = info.backingFile;
  const bitmaps = drive.bitmaps.infos();
  if (bitmaps.length) out['dirty-bitmaps'] = bitmaps;
  return out;
}

/** One element of query-block. */
export async function blockInfo(drive: Drive): Promise<Record<string, unknown>> {
  return {
    device: drive.id,
    locked: false,
    removable: true,
    type: 'unknown',
    tray_open: false,
    'io-status': 'ok',
    inserted: await blockDeviceInfo(drive),
  };
}
