import { TidemarkError, type ErrorCode } from '../../../src-shared/errors.js';

/** The OS error texts QEMU prints (strerror), which job errors must match. */
export const ERRNO_TEXT: Record<string, string> = {
  ENOSPC: 'No space left on device',
  EIO: 'Input/output error',
  EACCES: 'Permission denied',
  EPERM: 'Operation not permitted',
  EROFS: 'Read-only file system',
  ENOENT: 'No such file or directory',
  EISDIR: 'Is a directory',
  ENOTDIR: 'Not a directory',
  EEXIST: 'File exists',
  EINVAL: 'Invalid argument',
  EBUSY: 'Device or resource busy',
  EAGAIN: 'Resource temporarily unavailable',
};

const ERRNO_CODE: Record<string, ErrorCode> = {
  ENOSPC: 'NO_SPACE',
  EDQUOT: 'NO_SPACE',
  EIO: 'IO_ERROR',
  EACCES: 'PERMISSION_DENIED',
  EPERM: 'PERMISSION_DENIED',
  EROFS: 'PERMISSION_DENIED',
  ENOENT: 'FILE_NOT_FOUND',
  EISDIR: 'NOT_A_FILE',
  EEXIST: 'ALREADY_EXISTS',
};

/** An OS-level failure on a file, carrying the errno name so jobs can report it like QEMU. */
export class FileError extends TidemarkError {
  readonly errno: string;
  constructor(errno: string, path: string, op: string, cause?: unknown) {
    super(ERRNO_CODE[errno] ?? 'IO_ERROR', `${op} of '${path}' failed: ${ERRNO_TEXT[errno] ?? errno}`, { cause });
    this.name = 'FileError';
    this.errno = errno;
  }
  /** QEMU's wording of the cause alone (strerror), e.g. for BLOCK_JOB_COMPLETED's `error`. */
  get strerror(): string {
    return ERRNO_TEXT[this.errno] ?? this.errno;
  }
}

export function errnoOf(err: unknown): string | undefined {
  if (err && typeof err === 'object' && 'code' in err && typeof (err as { code: unknown }).code === 'string') {
    return (err as { code: string }).code;
  }
  return undefined;
}

export function fileErrorToTidemark(err: unknown, path: string, op: string): TidemarkError {
  if (err instanceof TidemarkError) return err;
  const errno = errnoOf(err);
  if (errno) return new FileError(errno, path, op, err);
  return new TidemarkError('IO_ERROR', `${op} of '${path}' failed: ${String(err)}`, { cause: err });
}
