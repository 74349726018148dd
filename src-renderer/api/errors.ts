import type { ApiError, ErrorCode } from '../../src-shared/errors';

/**
 * What `api.request` rejects with: an Error whose message is the engine's sentence, carrying the
 * `{code, message}` the main process sent (or one the client made up for transport failures).
 */
export class ApiRequestError extends Error {
  readonly code: ErrorCode;
  readonly apiError: ApiError;
  /** the request that failed, e.g. "drives.add" */
  readonly method: string;

  constructor(apiError: ApiError, method: string, options?: { cause?: unknown }) {
    super(apiError.message, options);
    this.name = 'ApiRequestError';
    this.code = apiError.code;
    this.apiError = apiError;
    this.method = method;
  }
}

export function isApiRequestError(error: unknown): error is ApiRequestError {
  return error instanceof ApiRequestError;
}

/** A sentence for a person, whatever was thrown. */
export function errorMessage(error: unknown): string {
  if (error instanceof Error && error.message) return error.message;
  if (typeof error === 'string' && error) return error;
  return 'Something went wrong, and Tidemark did not say what.';
}
