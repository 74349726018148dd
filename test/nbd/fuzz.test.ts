import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { RequestParser, type ParserEvent } from '../../src-main/engine/protocols/nbd/wire.js';
import { parseMetaRequest } from '../../src-main/engine/protocols/nbd/meta.js';
import { CMD, OPT, RawNbd, goPayload, metaPayload, requestHeader } from './helpers/raw-client.js';
import { runOk, sleep, startEnv, type NbdEnv } from './helpers/env.js';

/**
 * Property tests of the transmission-phase framing (the part every byte of a client goes
 * through), then a live fuzz of the whole server with mixed valid and broken traffic.
 */

interface Req {
  type: number;
  flags: number;
  handle: bigint;
  offset: bigint;
  length: number;
  payload?: Buffer;
}

const MAX = 4096; // the parser's payload limit in these tests (small, so oversized writes are cheap)

const reqArb: fc.Arbitrary<Req> = fc
  .record({
    type: fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 5, 6, 7), fc.integer({ min: 0, max: 0xffff })),
    flags: fc.integer({ min: 0, max: 0xffff }),
    handle: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offset: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    length: fc.oneof(fc.integer({ min: 0, max: MAX + 100 }), fc.integer({ min: 0, max: 0xffffffff })),
    seed: fc.integer({ min: 0, max: 255 }),
  })
  .map(({ seed, ...r }) => {
    // writes carry their payload unless it is over the limit and huge (then it is sent but dropped)
    if (r.type === 1 && r.length > 0) {
      const len = r.length <= MAX + 100 ? r.length : MAX + 1 + (r.length % 1000);
      return { ...r, length: len, payload: Buffer.alloc(len, seed) };
    }
    return r;
  });

function encode(r: Req): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(r.flags, 4);
  h.writeUInt16BE(r.type, 6);
  h.writeBigUInt64BE(r.handle, 8);
  h.writeBigUInt64BE(r.offset, 16);
  h.writeUInt32BE(r.length, 24);
  return r.payload ? Buffer.concat([h, r.payload]) : h;
}

/** Cuts a buffer at the given fractions. */
function slice(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * buf.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let at = 0;
  for (const p of points) {
    if (p > at) out.push(buf.subarray(at, p));
    at = Math.max(at, p);
  }
  if (at < buf.length) out.push(buf.subarray(at));
  return out;
}

describe('request parser properties', () => {
  test('any sequence of requests, cut anywhere, comes out whole and in order', () => {
    fc.assert(
      fc.property(fc.array(reqArb, { maxLength: 30 }), fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 40 }), (reqs, cuts) => {
        const parser = new RequestParser(MAX);
        const events: ParserEvent[] = [];
        for (const piece of slice(Buffer.concat(reqs.map(encode)), cuts)) events.push(...parser.push(piece));
        expect(events.length).toBe(reqs.length);
        events.forEach((ev, i) => {
          const r = reqs[i];
          expect(ev.kind).toBe('request');
          if (ev.kind !== 'request') return;
          expect(ev.request.type).toBe(r.type);
          expect(ev.request.flags).toBe(r.flags);
          expect(ev.request.length).toBe(r.length);
          expect(ev.request.handle.readBigUInt64BE(0)).toBe(r.handle);
          // offsets beyond 2^53 lose precision but stay beyond every export
          if (r.offset <= BigInt(Number.MAX_SAFE_INTEGER)) expect(ev.request.offset).toBe(Number(r.offset));
          else expect(ev.request.offset).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
          if (r.type === 1 && r.length > MAX) {
            expect(ev.payloadDropped).toBe(true);
            expect(ev.payload).toBeUndefined();
          } else if (r.type === 1 && r.length > 0) {
            expect(Buffer.compare(ev.payload!, r.payload!)).toBe(0);
          } else {
            expect(ev.payload).toBeUndefined();
          }
        });
        expect(parser.pendingBytes).toBe(0);
      }),
      { numRuns: 15000 },
    );
  });

  test('arbitrary bytes: never throws, stops for good at the first bad magic', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 20 }), (pieces) => {
        const parser = new RequestParser(MAX);
        let poisonedAt = -1;
        pieces.forEach((p, i) => {
          const evs = parser.push(p);
          if (poisonedAt >= 0) expect(evs).toEqual([]);
          const bad = evs.findIndex((e) => e.kind === 'bad-magic');
          if (bad >= 0) {
            expect(bad).toBe(evs.length - 1);
            poisonedAt = i;
          }
        });
        if (poisonedAt >= 0) expect(parser.poisoned).toBe(true);
      }),
      { numRuns: 20000 },
    );
  });

  test('valid requests then garbage: every request before the garbage is delivered', () => {
    fc.assert(
      fc.property(fc.array(reqArb, { maxLength: 10 }), fc.uint8Array({ minLength: 28, maxLength: 100 }), (reqs, junk) => {
        fc.pre(Buffer.from(junk).readUInt32BE(0) !== 0x25609513);
        const parser = new RequestParser(MAX);
        const evs = parser.push(Buffer.concat([...reqs.map(encode), Buffer.from(junk)]));
        expect(evs.length).toBe(reqs.length + 1);
        expect(evs.at(-1)!.kind).toBe('bad-magic');
      }),
      { numRuns: 3000 },
    );
  });

  test('metadata-context payloads: any bytes parse or are refused, never throw', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        const r = parseMetaRequest(Buffer.from(bytes));
        expect(typeof r === 'string' || Array.isArray(r.queries)).toBe(true);
      }),
      { numRuns: 3000 },
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 40 }), fc.array(fc.string({ maxLength: 40 }), { maxLength: 5 }), (name, queries) => {
        const r = parseMetaRequest(metaPayload(name, queries));
        expect(r).toEqual({ exportName: name, queries });
      }),
      { numRuns: 500 },
    );
  });
});

describe('live fuzz', () => {
  let env: NbdEnv;
  const SIZE = 4 * 1024 * 1024;

  beforeAll(async () => {
    env = await startEnv({ exportAllDrives: false, limits: { handshakeTimeoutMs: 2000 } });
    const img = join(env.dir, 'fz.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', img, String(SIZE)]);
    await env.engine.attach({ id: 'fz', path: img, format: 'qcow2' });
    env.engine.bitmapCommands.add('fz', 'b', { granularity: 4096, disabled: true });
    env.server.addExport({ name: 'fz', driveId: 'fz', writable: true, bitmaps: ['b'] });
    env.server.addExport({ name: 'fz-ro', driveId: 'fz' });
  });

  afterAll(async () => {
    await env?.close();
  });

  const optionArb = fc.oneof(
    fc.record({ opt: fc.constantFrom(OPT.STRUCTURED_REPLY, OPT.LIST, OPT.STARTTLS, OPT.EXTENDED_HEADERS, 0, 4, 99), data: fc.uint8Array({ maxLength: 20 }) }),
    fc.record({ opt: fc.constantFrom(OPT.INFO, OPT.LIST_META, OPT.SET_META), data: fc.oneof(fc.uint8Array({ maxLength: 60 }), fc.constantFrom(goPayload('fz', [0, 1, 2, 3]), metaPayload('fz', ['base:allocation', 'qemu:dirty-bitmap:b']), metaPayload('fz-ro', ['qemu:']), metaPayload('nope', []))) }),
  );

  const cmdArb = fc.record({
    type: fc.constantFrom(CMD.READ, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.CACHE, CMD.WRITE_ZEROES, CMD.BLOCK_STATUS, 9, 200),
    flags: fc.constantFrom(0, 1, 2, 4, 8, 16, 0x20, 0xffff),
    offset: fc.oneof(fc.integer({ min: 0, max: SIZE }), fc.constant(2 ** 50)),
    length: fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constant(32 * 1024 * 1024 + 1)),
  });

  test('mixed valid and broken sessions: the server stays up and correct', async () => {
    let sessions = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(optionArb, { maxLength: 6 }), fc.constantFrom('fz', 'fz-ro', 'nope'), fc.array(cmdArb, { maxLength: 25 }), fc.boolean(), async (opts, name, cmds, tail) => {
        sessions++;
        const c = await RawNbd.connect(env.sock);
        try {
          await c.hello();
          for (const o of opts) {
            const replies = await c.option(o.opt, Buffer.from(o.data));
            expect(replies.length).toBeGreaterThan(0);
          }
          const go = await c.option(OPT.GO, goPayload(name));
          if (go.at(-1)!.type !== 1) {
            expect(name).toBe('nope');
            return;
          }
          c.startDemux();
          const pending = cmds.map((k) => {
            const payload = k.type === CMD.WRITE && k.length <= 70000 ? Buffer.alloc(k.length, 0x42) : undefined;
            if (k.type === CMD.WRITE && !payload) {
              // an oversized write's payload is sent in full, then dropped by the server
              return c.cmd(k.type, k.offset, k.length, k.flags, Buffer.alloc(k.length));
            }
            return c.cmd(k.type, k.offset, k.length, k.flags, payload);
          });
          const replies = await Promise.all(pending);
          // every request got exactly one answer; read-only exports refuse every write
          expect(replies.length).toBe(cmds.length);
          if (name === 'fz-ro') replies.forEach((r, i) => [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES].includes(cmds[i].type) && expect(r.error).not.toBe(0));
          if (tail) c.write(requestHeader(CMD.READ, 0, 512, 0, 999n, 0x12345678));
        } finally {
          c.close();
        }
      }),
      { numRuns: 1500, interruptAfterTimeLimit: 9_000 },
    );
    expect(sessions).toBeGreaterThan(200);
    await sleep(50);
    // still serving, and its view of the disk is the engine's
    const { c } = await RawNbd.open(env.sock, 'fz');
    const r = await c.pread(0, SIZE);
    expect(r.error).toBe(0);
    expect(r.data!.equals(Buffer.from(await env.engine.get('fz')!.read(0, SIZE)))).toBe(true);
    c.close();
    expect(env.log.filter((l) => l.includes('failed unexpectedly'))).toEqual([]);
  });
});
