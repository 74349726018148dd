import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CMD, CMDF, ERR, OPT, RawNbd, REP, RT, extentsOf, goPayload, metaPayload } from './helpers/raw-client.js';
import { runOk, startEnv, startQemuNbd, type NbdEnv, type QemuNbd } from './helpers/env.js';

/**
 * The same protocol probes against qemu-nbd (QEMU 7.2) and against Tidemark, on copies of one
 * image with one persistent bitmap: option replies, context lists and ids, error values of bad
 * requests, whether the connection survives them, block-status answers. Messages are not
 * compared (QEMU's wording is not part of the protocol), the codes and shapes are.
 */

type Obs = Record<string, unknown>;

const MiB = 1024 * 1024;

async function optionTypes(c: RawNbd, opt: number, data?: Buffer): Promise<string[]> {
  const replies = await c.option(opt, data);
  return replies.map((r) => (r.type === REP.META_CONTEXT ? `ctx:${r.data.readUInt32BE(0)}:${r.data.toString('utf8', 4)}` : r.type === REP.SERVER ? `server:${r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0))}` : `0x${r.type.toString(16)}`));
}

/** Handshake-phase probes. */
async function probeHandshake(sock: string, name: string): Promise<Obs> {
  const o: Obs = {};
  {
    const c = await RawNbd.connect(sock);
    o.handshakeFlags = await c.hello();
    o.list = await optionTypes(c, OPT.LIST);
    o.listWithData = await optionTypes(c, OPT.LIST, Buffer.from('x'));
    o.infoUnknown = await optionTypes(c, OPT.INFO, goPayload('no-such-export', []));
    o.infoBadLength = await optionTypes(c, OPT.INFO, Buffer.concat([goPayload(name, []), Buffer.from([0])]));
    o.setMetaUnstructured = await optionTypes(c, OPT.SET_META, metaPayload(name, ['base:allocation']));
    o.listMetaUnstructured = await optionTypes(c, OPT.LIST_META, metaPayload(name, ['base:allocation']));
    o.starttls = await optionTypes(c, OPT.STARTTLS);
    o.unknownOption = await optionTypes(c, 99, Buffer.from('abc'));
    o.extendedHeaders = await optionTypes(c, OPT.EXTENDED_HEADERS);
    o.structured = await optionTypes(c, OPT.STRUCTURED_REPLY);
    o.structuredAgain = await optionTypes(c, OPT.STRUCTURED_REPLY);
    o.structuredWithData = await optionTypes(c, OPT.STRUCTURED_REPLY, Buffer.from('x'));
    o.listMetaAll = await optionTypes(c, OPT.LIST_META, metaPayload(name, []));
    o.listMetaBase = await optionTypes(c, OPT.LIST_META, metaPayload(name, ['base:']));
    o.listMetaQemu = await optionTypes(c, OPT.LIST_META, metaPayload(name, ['qemu:']));
    o.listMetaBitmaps = await optionTypes(c, OPT.LIST_META, metaPayload(name, ['qemu:dirty-bitmap:']));
    o.listMetaOther = await optionTypes(c, OPT.LIST_META, metaPayload(name, ['x-foo:bar', 'qemu:nothing', 'qemu:dirty-bitmap:nope']));
    o.listMetaUnknownExport = await optionTypes(c, OPT.LIST_META, metaPayload('no-such-export', []));
    o.setMetaWildcards = await optionTypes(c, OPT.SET_META, metaPayload(name, ['base:', 'qemu:', 'qemu:dirty-bitmap:']));
    o.setMetaTruncated = await optionTypes(c, OPT.SET_META, metaPayload(name, ['base:allocation']).subarray(0, 12));
    o.setMeta = await optionTypes(c, OPT.SET_META, metaPayload(name, ['qemu:dirty-bitmap:b0', 'base:allocation']));
    const go = await c.option(OPT.GO, goPayload(name, [1, 2, 3]));
    o.goInfos = go.filter((r) => r.type === REP.INFO).map((r) => r.data.readUInt16BE(0)).sort();
    o.goFinal = go.at(-1)!.type;
    c.close();
  }
  {
    // NBD_OPT_ABORT is acknowledged, then the server closes
    const c = await RawNbd.connect(sock);
    await c.hello();
    o.abort = await optionTypes(c, OPT.ABORT);
    o.abortCloses = await c.waitClosed(3000);
  }
  {
    // an unknown export in NBD_OPT_EXPORT_NAME cannot be refused: the server hangs up
    const c = await RawNbd.connect(sock);
    await c.hello();
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('no-such-export'));
    o.exportNameUnknownCloses = await c.waitClosed(3000);
  }
  {
    // unknown client flags: the server must drop the connection
    const c = await RawNbd.connect(sock);
    await c.greeting();
    c.clientFlags(0x80);
    o.badClientFlagsCloses = await c.waitClosed(3000);
  }
  {
    // NBD_OPT_EXPORT_NAME with no zeroes negotiated: 10 bytes of export info
    const c = await RawNbd.connect(sock);
    await c.hello(3);
    c.sendOption(OPT.EXPORT_NAME, Buffer.from(name));
    const info = await c.read(10);
    o.exportNameFlags = info.readUInt16BE(8);
    c.close();
  }
  return o;
}

/** Transmission-phase probes on a writable export with structured replies and both contexts. */
async function probeTransmission(sock: string, name: string): Promise<Obs> {
  const o: Obs = {};
  const { c, size, flags, contexts } = await RawNbd.open(sock, name, { meta: ['base:allocation', 'qemu:dirty-bitmap:b0'] });
  o.size = size;
  o.flags = flags;
  o.contexts = [...contexts.entries()];
  const err = async (p: Promise<{ error: number }>) => (await p).error;
  o.readPastEnd = await err(c.pread(size - 512, 1024));
  o.readOffsetHuge = await err(c.pread(2 ** 53, 512));
  o.writePastEnd = await err(c.pwrite(size - 512, Buffer.alloc(1024)));
  o.trimPastEnd = await err(c.cmd(CMD.TRIM, size, 512));
  o.zeroPastEnd = await err(c.cmd(CMD.WRITE_ZEROES, size - 512, 1024));
  o.statusPastEnd = await err(c.cmd(CMD.BLOCK_STATUS, size, 512));
  o.cachePastEnd = await err(c.cmd(CMD.CACHE, size, 512));
  o.readTooLong = await err(c.pread(0, 32 * MiB + 1));
  o.readMax = await err(c.pread(0, 32 * MiB));
  o.unknownCommand = await err(c.cmd(42, 0, 512));
  o.badReadFlags = await err(c.pread(0, 512, CMDF.FAST_ZERO));
  o.badWriteFlags = await err(c.pwrite(0, Buffer.alloc(512), CMDF.REQ_ONE));
  o.fuaRead = await err(c.pread(0, 512, CMDF.FUA));
  o.statusZero = await err(c.cmd(CMD.BLOCK_STATUS, 0, 0));
  o.readZero = await err(c.pread(0, 0));
  o.writeZero = await err(c.pwrite(0, Buffer.alloc(0)));
  o.trimZero = await err(c.cmd(CMD.TRIM, 0, 0));
  o.flush = await err(c.cmd(CMD.FLUSH, 0, 0));
  o.cache = await err(c.cmd(CMD.CACHE, 0, MiB));
  // data at 1M..2M (written by qemu-io), zero clusters elsewhere
  o.fastZeroAligned = await err(c.cmd(CMD.WRITE_ZEROES, 8 * MiB, MiB, CMDF.FAST_ZERO));
  o.fastZeroUnalignedOnData = await err(c.cmd(CMD.WRITE_ZEROES, MiB + 512, 1024, CMDF.FAST_ZERO));
  o.fastZeroUnalignedOnZero = await err(c.cmd(CMD.WRITE_ZEROES, 12 * MiB + 512, 1024, CMDF.FAST_ZERO));
  const st = await c.cmd(CMD.BLOCK_STATUS, 0, size);
  o.statusAll = [...extentsOf(st).entries()];
  o.statusAllChunks = st.chunks.map((ch) => [ch.type, ch.flags]);
  const one = await c.cmd(CMD.BLOCK_STATUS, 512, 8 * MiB, CMDF.REQ_ONE);
  o.statusReqOne = [...extentsOf(one).entries()];
  const mid = await c.cmd(CMD.BLOCK_STATUS, 65536 + 100, 3 * MiB);
  o.statusUnaligned = [...extentsOf(mid).entries()];
  // a read across data and hole: sparse chunks; with DF a single data chunk
  const sparse = await c.pread(MiB + MiB / 2, MiB);
  o.sparseChunkTypes = sparse.chunks.map((ch) => ch.type);
  const df = await c.pread(MiB + MiB / 2, MiB, CMDF.DF);
  o.dfChunkTypes = df.chunks.map((ch) => ch.type);
  o.dfSameData = sparse.data!.equals(df.data!);
  // still usable after all those errors
  o.aliveAfter = (await c.pread(0, 4096)).error;
  c.disconnect();
  o.discClosed = await c.waitClosed(3000);
  return o;
}

/** Simple replies (no structured negotiation). */
async function probeSimple(sock: string, name: string): Promise<Obs> {
  const o: Obs = {};
  const { c, size, flags } = await RawNbd.open(sock, name, { structured: false });
  o.simpleFlags = flags;
  const past = await c.pread(size - 1, 2);
  o.simpleReadPastEnd = [past.error, past.simple];
  const ok = await c.pread(MiB, 4096);
  o.simpleRead = [ok.error, ok.simple, ok.data?.length, ok.data?.[0]];
  const bs = await c.cmd(CMD.BLOCK_STATUS, 0, 4096);
  o.simpleStatus = [bs.error, bs.simple];
  o.simpleDf = (await c.pread(0, 512, CMDF.DF)).error;
  o.simpleAlive = (await c.pread(0, 512)).error;
  c.close();
  return o;
}

/** A read-only export. */
async function probeReadOnly(sock: string, name: string): Promise<Obs> {
  const o: Obs = {};
  const { c, flags } = await RawNbd.open(sock, name);
  o.roFlags = flags;
  o.roWrite = (await c.pwrite(0, Buffer.alloc(512))).error;
  o.roTrim = (await c.cmd(CMD.TRIM, 0, 512)).error;
  o.roZero = (await c.cmd(CMD.WRITE_ZEROES, 0, 512)).error;
  o.roWritePastEnd = (await c.pwrite(2 ** 40, Buffer.alloc(512))).error;
  o.roFlush = (await c.cmd(CMD.FLUSH, 0, 0)).error;
  o.roAlive = (await c.pread(0, 512)).error;
  c.close();
  return o;
}

/**
 * Where Tidemark deliberately differs from QEMU 7.2, both answers are rewritten to one value:
 * - CAN_MULTI_CONN (256): every connection is served by one engine and flush is global, so
 *   Tidemark advertises it on writable exports too;
 * - request validation errors: QEMU 7.2 answers EINVAL to all of them; Tidemark uses the values
 *   the protocol asks for (ENOSPC for writes past the end, EPERM for writes to a read-only export).
 */
function normalize(o: Obs): Obs {
  const out: Obs = { ...o };
  for (const k of ['flags', 'exportNameFlags', 'roFlags', 'simpleFlags']) if (typeof out[k] === 'number') out[k] = (out[k] as number) & ~256;
  for (const k of ['writePastEnd', 'zeroPastEnd']) if (out[k] === ERR.ENOSPC) out[k] = ERR.EINVAL;
  for (const k of ['roWrite', 'roTrim', 'roZero', 'roWritePastEnd']) if (out[k] === ERR.EPERM) out[k] = ERR.EINVAL;
  delete out.list;
  return out;
}

let env: NbdEnv;
let qemuRw: QemuNbd;
let qemuRo: QemuNbd;

beforeAll(async () => {
  env = await startEnv({ exportAllDrives: false });
  const base = join(env.dir, 'base.qcow2');
  await runOk('qemu-img', ['create', '-f', 'qcow2', base, '64M']);
  await runOk('qemu-img', ['bitmap', '--add', base, 'b0']);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 1M 1M', '-c', 'write -z 12M 64k', '-c', 'write -P 0x22 20M 128k', base]);
  await runOk('qemu-img', ['bitmap', '--disable', base, 'b0']);
  for (const n of ['t.qcow2', 'q.qcow2', 'qro.qcow2']) await copyFile(base, join(env.dir, n));
  const drive = await env.engine.attach({ id: 'drive0', path: join(env.dir, 't.qcow2'), format: 'qcow2' });
  expect(drive.bitmaps.find('b0')?.disabled).toBe(true);
  env.server.addExport({ name: 'disk', driveId: 'drive0', writable: true, bitmaps: ['b0'] });
  env.server.addExport({ name: 'disk-ro', driveId: 'drive0', writable: false });
  qemuRw = await startQemuNbd(env.dir, ['-f', 'qcow2', '-x', 'disk', '-B', 'b0', join(env.dir, 'q.qcow2')], 'rw');
  qemuRo = await startQemuNbd(env.dir, ['-r', '-f', 'qcow2', '-x', 'disk-ro', join(env.dir, 'qro.qcow2')], 'ro');
});

afterAll(async () => {
  await qemuRw?.stop();
  await qemuRo?.stop();
  await env?.close();
});

describe('Tidemark answers like qemu-nbd', () => {
  test('handshake: options, errors, context lists and ids', async () => {
    const ours = await probeHandshake(env.sock, 'disk');
    const theirs = await probeHandshake(qemuRw.sock, 'disk');
    expect(normalize(ours)).toEqual(normalize(theirs));
    expect(ours.list).toEqual(['server:disk', 'server:disk-ro', '0x1']);
    // and the answers are the ones the spec asks for
    expect(ours.setMetaUnstructured).toEqual([`0x${REP.ERR_INVALID.toString(16)}`]);
    expect(ours.listMetaAll).toEqual(['ctx:0:base:allocation', 'ctx:0:qemu:dirty-bitmap:b0', '0x1']);
    expect(ours.setMeta).toEqual(['ctx:0:base:allocation', 'ctx:2:qemu:dirty-bitmap:b0', '0x1']);
    expect(ours.setMetaWildcards).toEqual(['0x1']);
  });

  test('transmission: error values, flags, block status, sparse reads', async () => {
    const ours = await probeTransmission(env.sock, 'disk');
    const theirs = await probeTransmission(qemuRw.sock, 'disk');
    expect(normalize(ours)).toEqual(normalize(theirs));
    expect(ours.readPastEnd).toBe(ERR.EINVAL);
    expect(ours.writePastEnd).toBe(ERR.ENOSPC);
    expect(ours.readTooLong).toBe(ERR.EINVAL);
    expect(ours.aliveAfter).toBe(0);
    expect(ours.sparseChunkTypes).toEqual([RT.OFFSET_DATA, RT.OFFSET_HOLE]);
  });

  test('simple replies and read-only exports', async () => {
    const ours = { ...(await probeSimple(env.sock, 'disk')), ...(await probeReadOnly(env.sock, 'disk-ro')) };
    const theirs = { ...(await probeSimple(qemuRw.sock, 'disk')), ...(await probeReadOnly(qemuRo.sock, 'disk-ro')) };
    expect(normalize(ours)).toEqual(normalize(theirs));
    expect(ours.roWrite).toBe(ERR.EPERM);
    expect(ours.roWritePastEnd).toBe(ERR.EPERM);
    expect(ours.simpleRead).toEqual([0, true, 4096, 0x11]);
  });
});
