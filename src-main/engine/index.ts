// The engine's public surface, for tools that embed it (benchmarks, scripts). The app imports
// the modules directly.
export { BlockEngine, type AttachOptions } from './engine.js';
export { Drive } from './drive.js';
export { IoPool } from './io/pool.js';
export { fsOpener } from './io/fs-file.js';
export { openImage, createImage, probeFormat } from './formats/open.js';
export type { BlockDriver, BlockExtent, ImageInfo, ImageFormat } from './formats/types.js';
export { DirtyBitmap } from './bitmap/dirty-bitmap.js';
export { markBitmaps } from './bitmap/mark-bitmaps.js';
export { SharedBits } from './bitmap/shared-bits.js';
export { runTransaction, type TransactionAction } from './jobs/transaction.js';
export { createBackupJob, type BackupParams } from './jobs/backup-create.js';
export { QmpServer } from './protocols/qmp/server.js';
export { RestoreJob } from './jobs/restore-job.js';
export { NbdServer, type NbdServerOptions, type AddExportOptions, type ListenOptions } from './protocols/nbd/server.js';
export { nbdServerOf } from './protocols/qmp/nbd-commands.js';
export { PskServerCredentials, parsePskKeys, readPskKeys } from './protocols/nbd/tls-psk.js';
export { exportPointInTime, PointInTimeExport, type PointInTimeOptions, type PointInTimeResult } from './protocols/nbd/point-in-time.js';
