/** Messages between the I/O pool and its workers. Buffers travel as transferred ArrayBuffers. */
export type IoRequest =
  | { id: number; op: 'pread'; fd: number; position: number; length: number }
  | { id: number; op: 'pwrite'; fd: number; position: number; data: ArrayBuffer }
  | { id: number; op: 'fsync'; fd: number }
  | { id: number; op: 'sha256'; fd: number; position: number; length: number };

export type IoReply =
  | { id: number; ok: true; data?: ArrayBuffer; hex?: string }
  | { id: number; ok: false; errno: string; message: string };
