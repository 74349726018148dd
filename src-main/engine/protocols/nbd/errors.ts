import { TidemarkError } from '../../../../src-shared/errors.js';
import { FileError } from '../../io/file-errors.js';
import { NBD_EINVAL, NBD_EIO, NBD_ENOSPC, NBD_ENOTSUP, NBD_EPERM } from './constants.js';

/** A refusal of an NBD command with the error value to send and a message for the client's user. */
export class NbdCommandError extends Error {
  constructor(
    readonly errno: number,
    message: string,
  ) {
    super(message);
    this.name = 'NbdCommandError';
  }
}

const ERRNO_TO_NBD: Record<string, number> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EINVAL: NBD_EINVAL,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
};

/**
 * The NBD error value for a failure of the engine: the host errno where there is one (mapped as
 * the protocol asks: EDQUOT and EFBIG are ENOSPC), else by the engine's error code, else EIO.
 */
export function nbdErrno(err: unknown): number {
  if (err instanceof NbdCommandError) return err.errno;
  if (err instanceof FileError) return ERRNO_TO_NBD[err.errno] ?? NBD_EIO;
  if (err instanceof TidemarkError) {
    switch (err.code) {
      case 'PERMISSION_DENIED':
        return NBD_EPERM;
      case 'NO_SPACE':
        return NBD_ENOSPC;
      case 'INVALID_INPUT':
        return NBD_EINVAL;
      default:
        return NBD_EIO;
    }
  }
  return NBD_EIO;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
