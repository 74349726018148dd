import { TidemarkError } from '../../../src-shared/errors.js';

/**
 * Error constructors shared by the format drivers. Every message names the image, so a job log
 * line is useful on its own ("…'<path>': <problem>").
 */
export function corruptImage(path: string, problem: string): TidemarkError {
  return new TidemarkError('CORRUPT_IMAGE', `Corrupt image '${path}': ${problem}`);
}

export function unsupportedImage(path: string, problem: string): TidemarkError {
  return new TidemarkError('UNSUPPORTED_FORMAT', `Unsupported image '${path}': ${problem}`);
}

export function readOnlyImage(path: string): TidemarkError {
  return new TidemarkError('PERMISSION_DENIED', `Image '${path}' is open read-only`);
}

export function outOfRange(path: string, what: string, offset: number, length: number, size: number): TidemarkError {
  return new TidemarkError(
    'INVALID_INPUT',
    `Image '${path}': ${what} of ${length} bytes at offset ${offset} is beyond the virtual size ${size}`,
  );
}

export function closedImage(path: string): TidemarkError {
  return new TidemarkError('INVALID_INPUT', `Image '${path}' is closed`);
}

/** Whether offset and length are whole, non-negative numbers (of any size). */
function wellFormed(offset: number, length: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0;
}

/** Whether a guest request is one checkRequest lets through (without building an error). */
export function requestFits(offset: number, length: number, size: number): boolean {
  return wellFormed(offset, length) && offset + length <= size;
}

/** Validates a guest request against the virtual size; zero-length requests are fine anywhere inside. */
export function checkRequest(path: string, what: string, offset: number, length: number, size: number): void {
  if (!wellFormed(offset, length)) {
    throw new TidemarkError('INVALID_INPUT', `Image '${path}': invalid ${what} request (offset ${offset}, length ${length})`);
  }
  if (offset + length > size) throw outOfRange(path, what, offset, length, size);
}
