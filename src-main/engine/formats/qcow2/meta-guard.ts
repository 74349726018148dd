import { TidemarkError } from '../../../../src-shared/errors.js';

/**
 * Remembers that a metadata write failed. After that the in-memory tables may not match the
 * file any more, so the driver refuses further writes (reads stay possible) until reopened.
 */
export class MetaGuard {
  private failure: TidemarkError | undefined;

  constructor(private readonly path: string) {}

  async run<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      const code = err instanceof TidemarkError ? err.code : 'IO_ERROR';
      this.failure ??= new TidemarkError(
        code,
        `Image '${this.path}': a metadata update failed, further writes are refused (${err instanceof Error ? err.message : String(err)})`,
      );
      throw err;
    }
  }

  check(): void {
    if (this.failure) throw this.failure;
  }

  get failed(): boolean {
    return this.failure !== undefined;
  }
}
