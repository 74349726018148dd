/**
 * Every error that crosses a process boundary is `{code, message}` with a code from this list.
 * The message is a complete sentence for a person; the code is for programs.
 */
export const ERROR_CODES = [
  'INVALID_INPUT',
  'UNKNOWN_METHOD',
  'UNAUTHORIZED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'FILE_NOT_FOUND',
  'NOT_A_FILE',
  'PERMISSION_DENIED',
  'UNSUPPORTED_FORMAT',
  'CORRUPT_IMAGE',
  'LOCKED',
  'INVALID_SIZE',
  'NO_SPACE',
  'IO_ERROR',
  'BUSY',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ApiError {
  code: ErrorCode;
  message: string;
}

/** The error type every layer throws for failures it can explain. */
export class TidemarkError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TidemarkError';
    this.code = code;
  }

  toApi(): ApiError {
    return { code: this.code, message: this.message };
  }
}

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && (ERROR_CODES as readonly string[]).includes(value);
}
