/**
 * How the I/O pool talks to its workers: no message per request, but shared memory.
 *
 * Each worker has a channel of SharedArrayBuffers:
 * - `ctrl`: three counters on separate cache lines: SUBMITTED (requests the main thread has
 *   published), COMPLETED (requests the worker has finished) and SLEEPING (1 while the worker
 *   waits, so the main thread only pays for a wake-up when one is needed). The counters are
 *   int32 and wrap; only equality is ever tested.
 * - `slots`: a ring of request records. Request k lives in slot k mod SLOTS. The worker serves
 *   them in order, so completions come back in submission order.
 * - `slab`: a data ring for small reads and writes. A write's bytes are copied in before the
 *   request is published; a read's bytes are copied out when it completes. Regions are handed
 *   out and given back in submission order (a plain ring allocator).
 * - `arena` (one for the whole pool): buffers lent to callers (FileHandle.preadLent), which the
 *   workers read into and write from directly.
 * - a MessagePort for what does not fit the slab: a large read comes back as a transferred
 *   ArrayBuffer the worker allocated (so the page faults of a fresh buffer happen on the
 *   worker), a large write goes out as a transferred copy. Both sides read the port
 *   synchronously (receiveMessageOnPort), in request order.
 *
 * The worker sleeps in Atomics.wait; the main thread waits with Atomics.waitAsync, so requests
 * and completions are batched for free: whatever was published before a wake-up is served or
 * drained in one go.
 */

import type { MessagePort } from 'node:worker_threads';

/** A spin-wait hint to the CPU (Atomics.pause where the runtime has it), for the loops that poll ctrl. */
export const cpuPause: () => void = (Atomics as unknown as { pause?: () => void }).pause?.bind(Atomics) ?? (() => undefined);

/** ctrl indices (int32), 64 bytes apart */
export const CTRL_SUBMITTED = 0;
export const CTRL_COMPLETED = 16;
export const CTRL_SLEEPING = 32;
export const CTRL_BYTES = 192;

/** request records: SLOT_BYTES each; request k (an int32 counter that wraps) lives in slot k & (SLOTS - 1) */
export const SLOTS = 256;
export const SLOT_BYTES = 128;
/** int32 fields of a slot (index within the slot's 32 int32s) */
export const S_OP = 0;
export const S_FD = 1;
export const S_DATA = 2; // byte offset in the slab
export const S_STATUS = 3; // 0 ok, 1 failed (errno name in the aux area)
export const S_RESULT = 4; // bytes read into the slab
export const S_AUX_LEN = 5;
export const S_ARENA = 6; // byte offset in the arena (lent buffers)
/** float64 fields of a slot (index within the slot's 16 float64s) */
export const F_POSITION = 4;
export const F_LENGTH = 5;
/** byte offset within a slot of the aux area (errno name, or a sha256 in hex) */
export const AUX_AT = 64;
export const AUX_BYTES = 64;

export const OP_PREAD_SLAB = 1;
export const OP_PREAD_PORT = 2;
export const OP_PWRITE_SLAB = 3;
export const OP_PWRITE_PORT = 4;
export const OP_FSYNC = 5;
export const OP_SHA256 = 6;
/**
 * Scatter read: S_RESULT holds the segment count; the slab region at S_DATA holds them as
 * float64 triples (position, length, at); the worker returns a buffer of F_LENGTH bytes on the port.
 */
export const OP_PREADV = 7;
/** OP_PREADV into the arena at S_ARENA (segments at position -1 are zero-filled, gaps left alone) */
export const OP_PREADV_ARENA = 8;
/** write F_LENGTH bytes from the arena at S_ARENA (no copy: the lent bytes stay put until released) */
export const OP_PWRITE_ARENA = 9;
/**
 * The content digest (content-digest.ts) of a window at guest offset F_POSITION, given like
 * OP_PREADV's segments: `position` an offset in the arena (lent bytes) or -1 for zeros, `length`
 * its bytes. The hex digest comes back in the aux area: hashing runs beside the reads.
 */
export const OP_DIGEST_ARENA = 10;
/**
 * The content digest of the file range [F_POSITION, +F_LENGTH) (at most 4 MiB), read here: the
 * segments given like OP_PREADV's (`at` relative to F_POSITION) are read, the rest is zeros.
 */
export const OP_DIGEST_FILE = 11;

export interface ChannelBuffers {
  ctrl: SharedArrayBuffer;
  slots: SharedArrayBuffer;
  slab: SharedArrayBuffer;
  /** the pool's lent buffers, shared by all its workers */
  arena: SharedArrayBuffer;
}

/** What a worker gets as workerData (the ports travel in the transfer list). */
export interface WorkerInit extends ChannelBuffers {
  port: MessagePort;
}

/** what travels on the port */
export interface PortMessage {
  data: ArrayBuffer;
}

export const textEncoder = new TextEncoder();
export const textDecoder = new TextDecoder();

/** Writes a short ASCII string into a slot's aux area; returns its length. */
export function putAux(slots: Uint8Array, slot: number, text: string): number {
  const bytes = textEncoder.encode(text.slice(0, AUX_BYTES));
  const n = Math.min(bytes.length, AUX_BYTES);
  slots.set(bytes.subarray(0, n), slot * SLOT_BYTES + AUX_AT);
  return n;
}

export function getAux(slots: Uint8Array, slot: number, length: number): string {
  const at = slot * SLOT_BYTES + AUX_AT;
  // TextDecoder refuses views of shared memory: copy the few bytes out first
  return textDecoder.decode(slots.slice(at, at + Math.min(length, AUX_BYTES)));
}
