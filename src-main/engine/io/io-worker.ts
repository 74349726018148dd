// One I/O worker: blocking pread/pwrite/fsync on file descriptors the main thread opened.
// Blocking here is the point: it keeps the main thread (QMP, NBD, UI events) from ever waiting on disk.
import { parentPort } from 'node:worker_threads';
import { readSync, writeSync, fsyncSync } from 'node:fs';
import { createHash } from 'node:crypto';
import type { IoReply, IoRequest } from './io-protocol.js';

if (!parentPort) throw new Error('io-worker must run as a worker thread');
const port = parentPort;

const HASH_CHUNK = 4 << 20;

function preadFull(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break; // EOF: the rest stays zero
    done += n;
  }
}

function handle(req: IoRequest): IoReply {
  switch (req.op) {
    case 'pread': {
      const buf = new Uint8Array(req.length);
      preadFull(req.fd, buf, req.position);
      return { id: req.id, ok: true, data: buf.buffer };
    }
    case 'pwrite': {
      const data = new Uint8Array(req.data);
      let done = 0;
      while (done < data.length) done += writeSync(req.fd, data, done, data.length - done, req.position + done);
      return { id: req.id, ok: true };
    }
    case 'fsync':
      fsyncSync(req.fd);
      return { id: req.id, ok: true };
    case 'sha256': {
      const hash = createHash('sha256');
      const buf = new Uint8Array(Math.min(HASH_CHUNK, Math.max(1, req.length)));
      for (let at = 0; at < req.length; ) {
        const n = Math.min(buf.length, req.length - at);
        const view = buf.subarray(0, n);
        view.fill(0);
        preadFull(req.fd, view, req.position + at);
        hash.update(view);
        at += n;
      }
      return { id: req.id, ok: true, hex: hash.digest('hex') };
    }
  }
}

port.on('message', (req: IoRequest) => {
  let reply: IoReply;
  try {
    reply = handle(req);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    reply = { id: req.id, ok: false, errno: e.code ?? 'EIO', message: e.message };
  }
  if (reply.ok && reply.data) port.postMessage(reply, [reply.data]);
  else port.postMessage(reply);
});
