import { open, type FileHandle as NodeFileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import type { FileHandle, FileOpener, HostExtent, ReadSegment } from './file-handle.js';
import { fileErrorToTidemark } from './file-errors.js';

/**
 * FileHandle over Node's async fs (libuv's thread pool). Used where a worker pool would be
 * overkill: tools, probes, and as the reference the pool is tested against.
 */
export class FsFile implements FileHandle {
  private closed = false;
  constructor(
    readonly path: string,
    readonly readOnly: boolean,
    private readonly fh: NodeFileHandle,
  ) {}

  async pread(position: number, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, position + done).catch(this.fail('read'));
      if (bytesRead === 0) break; // EOF: the rest stays zero
      done += bytesRead;
    }
    return buf;
  }

  async preadv(segments: readonly ReadSegment[], length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    await Promise.all(
      segments.map(async (seg) => {
        for (let done = 0; done < seg.length; ) {
          const { bytesRead } = await this.fh.read(buf, seg.at + done, seg.length - done, seg.position + done).catch(this.fail('read'));
          if (bytesRead === 0) break; // EOF: the rest stays zero
          done += bytesRead;
        }
      }),
    );
    return buf;
  }

  async pwrite(position: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done).catch(this.fail('write'));
      done += bytesWritten;
    }
  }

  async size(): Promise<number> {
    return (await this.fh.stat().catch(this.fail('stat'))).size;
  }

  async truncate(length: number): Promise<void> {
    await this.fh.truncate(length).catch(this.fail('truncate'));
  }

  async sync(): Promise<void> {
    await this.fh.sync().catch(this.fail('sync'));
  }

  async allocation(position: number, length: number): Promise<HostExtent[]> {
    return length > 0 ? [{ offset: position, length, data: true }] : [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  private fail(op: string) {
    return (err: unknown): never => {
      throw fileErrorToTidemark(err, this.path, op);
    };
  }
}

export const fsOpener: FileOpener = {
  async open(path, options) {
    let flags = options.readOnly ? constants.O_RDONLY : constants.O_RDWR;
    if (options.create) flags |= constants.O_CREAT;
    if (options.exclusive) flags |= constants.O_EXCL;
    const fh = await open(path, flags, 0o644).catch((err: unknown) => {
      throw fileErrorToTidemark(err, path, 'open');
    });
    return new FsFile(path, options.readOnly, fh);
  },
};
