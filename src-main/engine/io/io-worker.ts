// One I/O worker: blocking pread/pwrite/fsync on file descriptors the main thread opened.
// Blocking here is the point: it keeps the main thread (QMP, NBD, UI events) from ever waiting on disk.
// Requests arrive in a shared ring (see io-protocol.ts); this thread never returns to its event loop.
import { receiveMessageOnPort, workerData } from 'node:worker_threads';
import { fsyncSync, readSync, readvSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import {
  CTRL_COMPLETED,
  cpuPause,
  CTRL_SLEEPING,
  CTRL_SUBMITTED,
  F_LENGTH,
  F_POSITION,
  OP_FSYNC,
  OP_PREAD_PORT,
  OP_PREAD_SLAB,
  OP_PREADV,
  OP_PREADV_ARENA,
  OP_PWRITE_ARENA,
  OP_PWRITE_PORT,
  OP_PWRITE_SLAB,
  OP_SHA256,
  OP_DIGEST_ARENA,
  OP_DIGEST_FILE,
  S_ARENA,
  S_AUX_LEN,
  S_DATA,
  S_FD,
  S_OP,
  S_RESULT,
  S_STATUS,
  SLOTS,
  putAux,
  type PortMessage,
  type WorkerInit,
} from './io-protocol.js';
import { contentDigest, type DigestPart } from './content-digest.js';

const init = workerData as WorkerInit | undefined;
if (!init?.ctrl) throw new Error('io-worker must run as an I/O pool worker thread');

const ctrl = new Int32Array(init.ctrl);
const i32 = new Int32Array(init.slots);
const f64 = new Float64Array(init.slots);
const slotBytes = new Uint8Array(init.slots);
const slab = new Uint8Array(init.slab);
const slabF64 = new Float64Array(init.slab);
const arena = new Uint8Array(init.arena);
const port = init.port;

const HASH_CHUNK = 4 << 20;
let hashBuf: Uint8Array | undefined;

/** Reads until `buf` is full or EOF; returns the bytes read (the caller zeroes the rest). */
function preadFull(fd: number, buf: Uint8Array, position: number): number {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * Scatter read into `buf`: segments that follow each other in the file go out as one preadv (one
 * syscall, the iovecs pointing into the buffer). A segment at position -1 is zero-filled. With
 * `zeroGaps`, what no segment covers is zeroed too.
 */
function preadv(fd: number, buf: Uint8Array, segAt: number, count: number, zeroGaps: boolean): void {
  const base = segAt / 8;
  const seg = (k: number) => ({ position: slabF64[base + k * 3], length: slabF64[base + k * 3 + 1], at: slabF64[base + k * 3 + 2] });
  // segments come sorted by `at` and do not overlap
  let covered = 0;
  for (let k = 0; k < count; k++) {
    const s = seg(k);
    if (zeroGaps && s.at > covered) buf.fill(0, covered, s.at);
    if (s.position < 0) buf.fill(0, s.at, s.at + s.length);
    covered = s.at + s.length;
  }
  if (zeroGaps && covered < buf.length) buf.fill(0, covered);
  for (let k = 0; k < count; ) {
    const first = seg(k);
    if (first.position < 0) {
      k++;
      continue;
    }
    const views = [buf.subarray(first.at, first.at + first.length)];
    let end = first.position + first.length;
    let j = k + 1;
    for (; j < count && views.length < 1024; j++) {
      const s = seg(j);
      if (s.position !== end) break;
      views.push(buf.subarray(s.at, s.at + s.length));
      end += s.length;
    }
    const want = end - first.position;
    const got = views.length === 1 ? preadFull(fd, views[0], first.position) : readvSync(fd, views, first.position);
    if (got < want) {
      // a short read (EOF, or a partial read): finish view by view
      let at = first.position;
      for (const v of views) {
        const n = Math.min(v.length, Math.max(0, got - (at - first.position)));
        if (n < v.length) v.fill(0, n + preadFull(fd, v.subarray(n), at + n));
        at += v.length;
      }
    }
    k = j;
  }
}

function pwriteFull(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) done += writeSync(fd, data, done, data.length - done, position + done);
}

function sha256(fd: number, position: number, length: number): string {
  const hash = createHash('sha256');
  hashBuf ??= new Uint8Array(HASH_CHUNK);
  for (let at = 0; at < length; ) {
    const n = Math.min(HASH_CHUNK, length - at);
    const view = hashBuf.subarray(0, n);
    view.fill(0, preadFull(fd, view, position + at));
    hash.update(view);
    at += n;
  }
  return hash.digest('hex');
}

/** Content digest of arena pieces and zero runs, in order (see OP_DIGEST_ARENA). */
function digestArena(offset: number, segAt: number, count: number): string {
  const base = segAt / 8;
  const parts: DigestPart[] = [];
  for (let k = 0; k < count; k++) {
    const position = slabF64[base + k * 3];
    const length = slabF64[base + k * 3 + 1];
    parts.push(position < 0 ? { length } : { bytes: arena.subarray(position, position + length), length });
  }
  return contentDigest(offset, parts);
}

/** Content digest of a file range, of which the segments are read (see OP_DIGEST_FILE). */
function digestFile(fd: number, position: number, length: number, segAt: number, count: number): string {
  if (length > HASH_CHUNK) throw Object.assign(new Error('range too large'), { code: 'EINVAL' });
  hashBuf ??= new Uint8Array(HASH_CHUNK);
  const view = hashBuf.subarray(0, length);
  preadv(fd, view, segAt, count, true);
  return contentDigest(position, [{ bytes: view, length }]);
}

function serve(slot: number): void {
  const ib = slot * 32;
  const fb = slot * 16;
  const fd = i32[ib + S_FD];
  const position = f64[fb + F_POSITION];
  const length = f64[fb + F_LENGTH];
  const at = i32[ib + S_DATA];
  try {
    switch (i32[ib + S_OP]) {
      case OP_PREAD_SLAB:
        i32[ib + S_RESULT] = preadFull(fd, slab.subarray(at, at + length), position);
        break;
      case OP_PREAD_PORT: {
        // a fresh buffer of our own: its page faults are paid here, not on the main thread
        const buf = new Uint8Array(Buffer.allocUnsafeSlow(length).buffer, 0, length);
        buf.fill(0, preadFull(fd, buf, position));
        port.postMessage({ data: buf.buffer } satisfies PortMessage, [buf.buffer]);
        break;
      }
      case OP_PREADV: {
        // a fresh buffer of our own (its page faults are paid here); calloc'd fresh pages are zero already
        const buf = new Uint8Array(length);
        preadv(fd, buf, at, i32[ib + S_RESULT], false);
        port.postMessage({ data: buf.buffer } satisfies PortMessage, [buf.buffer]);
        break;
      }
      case OP_PREADV_ARENA: {
        const to = i32[ib + S_ARENA];
        preadv(fd, arena.subarray(to, to + length), at, i32[ib + S_RESULT], false);
        break;
      }
      case OP_PWRITE_ARENA: {
        const from = i32[ib + S_ARENA];
        pwriteFull(fd, arena.subarray(from, from + length), position);
        break;
      }
      case OP_PWRITE_SLAB:
        pwriteFull(fd, slab.subarray(at, at + length), position);
        break;
      case OP_PWRITE_PORT: {
        const m = receiveMessageOnPort(port)?.message as PortMessage | undefined;
        if (!m) throw Object.assign(new Error('write data missing'), { code: 'EIO' });
        pwriteFull(fd, new Uint8Array(m.data), position);
        break;
      }
      case OP_FSYNC:
        fsyncSync(fd);
        break;
      case OP_SHA256:
        i32[ib + S_AUX_LEN] = putAux(slotBytes, slot, sha256(fd, position, length));
        break;
      case OP_DIGEST_ARENA:
        i32[ib + S_AUX_LEN] = putAux(slotBytes, slot, digestArena(position, at, i32[ib + S_RESULT]));
        break;
      case OP_DIGEST_FILE:
        i32[ib + S_AUX_LEN] = putAux(slotBytes, slot, digestFile(fd, position, length, at, i32[ib + S_RESULT]));
        break;
      default:
        throw Object.assign(new Error('unknown request'), { code: 'EINVAL' });
    }
    i32[ib + S_STATUS] = 0;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    i32[ib + S_STATUS] = 1;
    i32[ib + S_AUX_LEN] = putAux(slotBytes, slot, typeof code === 'string' ? code : 'EIO');
  }
}

/**
 * After serving, keep looking for the next request this long before sleeping. Falling asleep and
 * being woken costs two futex calls and, in a VM, an inter-processor interrupt on each side
 * (measured ~10 µs of main-thread time per wake-up); a request that follows closely — the next
 * one of a qd1 stream comes ~10 µs after a completion — is picked up at once instead.
 * Measured on the 2-core VM: a 4 KiB allocating write at qd1 takes 24 µs instead of 55 µs;
 * backups and qd16 streams neither gain nor lose.
 */
const SPIN_MS = 0.03;

/**
 * The longest a sleeping worker goes without looking for requests (ms). A wake-up should never
 * be needed for this: the main thread notifies whenever it takes SLEEPING down. But once, 1.1
 * million requests into `npm run bench`, a worker sat in Atomics.wait with SLEEPING already 0
 * and 8 requests submitted, and the process hung for good; the protocol above has no such
 * window that we could find, so the notify was lost below it. Bounded, such a loss costs one
 * nap instead of a hang; an idle worker looks 10 times a second (nothing measurable).
 */
const NAP_MS = 100;

let done = 0;
for (;;) {
  let submitted = Atomics.load(ctrl, CTRL_SUBMITTED);
  if (submitted === done) {
    const until = performance.now() + SPIN_MS;
    while (submitted === done && performance.now() < until) {
      for (let i = 0; i < 32 && submitted === done; i++) {
        cpuPause();
        submitted = Atomics.load(ctrl, CTRL_SUBMITTED);
      }
    }
  }
  if (submitted === done) {
    // announce the sleep, then look once more: a request published in between is not missed
    // (the main thread notifies only when it takes SLEEPING down from 1)
    Atomics.store(ctrl, CTRL_SLEEPING, 1);
    submitted = Atomics.load(ctrl, CTRL_SUBMITTED);
    if (submitted === done) Atomics.wait(ctrl, CTRL_SUBMITTED, done, NAP_MS);
    Atomics.store(ctrl, CTRL_SLEEPING, 0);
    continue;
  }
  while (done !== submitted) {
    serve(done & (SLOTS - 1));
    done = (done + 1) | 0;
    Atomics.store(ctrl, CTRL_COMPLETED, done);
    Atomics.notify(ctrl, CTRL_COMPLETED);
  }
}
