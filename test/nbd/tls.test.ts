import { createHash } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { PskServerCredentials, parsePskKeys } from '../../src-main/engine/protocols/nbd/tls-psk.js';
import type { Qmp } from './helpers/qmp-client.js';
import { withQemu, withTidemark, type NodeNames } from './helpers/qmp-peers.js';
import { OPT, RawNbd, REP, goPayload } from './helpers/raw-client.js';
import { makeTempDir, removeDir, run, runOk, sleep, startEnv, type NbdEnv } from './helpers/env.js';

/**
 * TLS-PSK on the NBD server: the keys file format, and one script (QMP credentials and server
 * commands, then what real clients and a raw client see before, during and after STARTTLS) run
 * against real QEMU 7.2 and against Tidemark, which must agree step by step.
 */

const KEY = '0123456789abcdef0123456789abcdef';
const WRONG_KEY = 'ffffffffffffffffffffffffffffffff';

let dir: string;

beforeAll(async () => {
  dir = await makeTempDir('tidemark-nbd-tls-');
  await runOk('qemu-img', ['create', '-f', 'qcow2', join(dir, 'd0.qcow2'), '16M']);
  await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x31 0 1M', '-c', 'write -P 0x7e 5M 64k', join(dir, 'd0.qcow2')]);
  // QEMU's credentials directories (keys.psk inside), and libnbd's key files
  const keysDir = async (name: string, text: string) => {
    await mkdir(join(dir, name));
    await writeFile(join(dir, name, 'keys.psk'), text, { mode: 0o600 });
  };
  await keysDir('server', `alice:${KEY}\ncarol:${WRONG_KEY}\n`);
  await keysDir('client', `alice:${KEY}\n`);
  await keysDir('client-wrong', `alice:${WRONG_KEY}\n`);
  await keysDir('garbage', 'not a keys file\n');
  await writeFile(join(dir, 'alice.psk'), `alice:${KEY}\n`, { mode: 0o600 });
  await writeFile(join(dir, 'alice-wrong.psk'), `alice:${WRONG_KEY}\n`, { mode: 0o600 });
  await writeFile(join(dir, 'mallory.psk'), `mallory:${KEY}\n`, { mode: 0o600 });
});

afterAll(async () => {
  await removeDir(dir);
});

describe('keys files (QEMU tls-creds-psk, GnuTLS psktool, libnbd tls-psk-file)', () => {
  test('username:hexkey per line; blank lines and CRLF are fine; the first entry of a name wins', () => {
    const keys = parsePskKeys(`alice:${KEY}\r\n\nbob:00ff\nalice:${WRONG_KEY}\n`, 'k');
    expect([...keys.keys()]).toEqual(['alice', 'bob']);
    expect(keys.get('alice')!.toString('hex')).toBe(KEY);
    expect(keys.get('bob')).toEqual(Buffer.from([0, 255]));
  });

  test('a malformed file is refused naming the file and line', () => {
    expect(() => parsePskKeys(`alice:${KEY}\njust-a-name\n`, '/k.psk')).toThrow("/k.psk line 2: expected 'username:hexkey'");
    expect(() => parsePskKeys(':00ff\n', '/k.psk')).toThrow('/k.psk line 1');
    expect(() => parsePskKeys('alice:abc\n', '/k.psk')).toThrow('line 1: the key must be an even number of hex digits');
    expect(() => parsePskKeys('alice:zz\n', '/k.psk')).toThrow('hex digits');
    expect(() => parsePskKeys('alice:\n', '/k.psk')).toThrow('hex digits');
    expect(() => parsePskKeys(`${'u'.repeat(129)}:00\n`, '/k.psk')).toThrow('longer than 128 bytes');
    expect(() => parsePskKeys('\n\n', '/k.psk')).toThrow('/k.psk: no keys');
  });
});

/** A TCP port free right now (the peers run one after the other, each on its own). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

function replyText(replies: { type: number; data: Buffer }[]): string {
  return replies
    .map((r) => {
      if (r.type === REP.SERVER) return `server:${r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0))}`;
      if (r.type >= 0x80000000) return `0x${r.type.toString(16)} ${r.data.toString('utf8')}`;
      return `0x${r.type.toString(16)}`;
    })
    .join(' | ');
}

interface Step {
  what: string;
  outcome: string;
}

/** The script: QMP steps, then clients against the TLS server on `port`. */
async function script(q: Qmp, nodes: NodeNames, d: string, port: number): Promise<Step[]> {
  const steps: Step[] = [];
  const qmp = async (cmd: string, args?: Record<string, unknown>) => {
    const r = await q.command(cmd, args);
    const outcome = 'error' in r ? `error: ${(r.error as { desc: string }).desc}` : 'ok';
    const text = JSON.stringify(args ?? {}).replaceAll(dir, '<dir>').replaceAll(String(port), '<port>').replaceAll(nodes.drive0, '<drive0>');
    steps.push({ what: `${cmd} ${text}`, outcome });
  };
  const note = (what: string, outcome: unknown) => steps.push({ what, outcome: String(outcome) });
  const psk = (id: string, props: Record<string, unknown>) => qmp('object-add', { 'qom-type': 'tls-creds-psk', id, ...props });

  // credentials
  await psk('nodir', { endpoint: 'server' });
  await psk('missing', { dir: join(dir, 'nonexistent'), endpoint: 'server' });
  await psk('named', { dir: join(dir, 'server'), endpoint: 'server', username: 'alice' });
  await psk('0bad', { dir: join(dir, 'server'), endpoint: 'server' });
  await psk('odd', { dir: join(dir, 'server'), endpoint: 'sideways' });
  await psk('cl', { dir: join(dir, 'server') });
  await psk('cl', { dir: join(dir, 'client'), endpoint: 'client', username: 'alice' });
  await psk('tls0', { dir: join(dir, 'server'), endpoint: 'server', 'verify-peer': false });
  await psk('tls0', { dir: join(dir, 'server'), endpoint: 'server' });
  await qmp('object-del', { id: 'nope' });
  // the server
  const addr = { type: 'inet', data: { host: '127.0.0.1', port: String(port) } };
  await qmp('nbd-server-start', { addr, 'tls-creds': 'nope' });
  await qmp('nbd-server-start', { addr, 'tls-creds': 'cl' });
  await qmp('nbd-server-start', { addr, 'tls-creds': 'tls0' });
  await qmp('nbd-server-start', { addr, 'tls-creds': 'tls0' });
  await qmp('block-export-add', { type: 'nbd', id: 'e0', 'node-name': nodes.drive0, name: 'drive0' });

  // before TLS: only STARTTLS is served
  {
    const c = await RawNbd.connectTcp(port);
    note('greeting flags', await c.hello());
    note('LIST before TLS', replyText(await c.option(OPT.LIST)));
    note('INFO before TLS', replyText(await c.option(OPT.INFO, goPayload('drive0', []))));
    note('STRUCTURED_REPLY before TLS', replyText(await c.option(OPT.STRUCTURED_REPLY)));
    note('unknown option before TLS', replyText(await c.option(99, Buffer.from('abc'))));
    note('GO before TLS', replyText(await c.option(OPT.GO, goPayload('drive0', []))));
    note('ABORT before TLS', replyText(await c.option(OPT.ABORT)));
    note('closed after ABORT', await c.waitClosed(5000));
  }
  {
    const c = await RawNbd.connectTcp(port);
    await c.hello();
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('drive0'));
    note('EXPORT_NAME before TLS: closed', await c.waitClosed(5000));
  }
  {
    const c = await RawNbd.connectTcp(port);
    await c.hello();
    note('STARTTLS with data', replyText(await c.option(OPT.STARTTLS, Buffer.from('x'))));
    note('closed after STARTTLS with data', await c.waitClosed(5000));
  }
  // TLS, then the usual handshake inside it
  for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
    const plain = await RawNbd.connectTcp(port);
    await plain.hello();
    const c = await plain.startTls('alice', Buffer.from(KEY, 'hex'), version);
    note(`${version}: LIST in TLS`, replyText(await c.option(OPT.LIST)));
    note(`${version}: STARTTLS in TLS`, replyText(await c.option(OPT.STARTTLS)));
    await c.negotiateStructured();
    const { size } = await c.go('drive0');
    const r = await c.pread(5 * 1024 * 1024 - 4096, 8192);
    note(`${version}: size, read`, `${size} ${r.error} ${createHash('sha256').update(r.data!).digest('hex')}`);
    c.close();
  }
  {
    const plain = await RawNbd.connectTcp(port);
    await plain.hello();
    note('TLS with the wrong key', await plain.startTls('alice', Buffer.from(WRONG_KEY, 'hex')).then(() => 'connected', () => 'refused'));
  }
  // real clients
  const uri = (user: string, keys: string) => `nbds://${user}@127.0.0.1:${port}/drive0?tls-psk-file=${join(dir, keys)}`;
  const info = await run('nbdinfo', [uri('alice', 'alice.psk')]);
  note('nbdinfo with the key', `${info.code} ${/export-size: \d+/.exec(info.stdout)?.[0]} ${/protocol: .*/.exec(info.stdout)?.[0]}`);
  note('nbdinfo without TLS', (await run('nbdinfo', [`nbd://127.0.0.1:${port}/drive0`])).code !== 0);
  note('nbdinfo with the wrong key', (await run('nbdinfo', [uri('alice', 'alice-wrong.psk')])).code !== 0);
  note('nbdinfo with an unknown username', (await run('nbdinfo', [uri('mallory', 'mallory.psk')])).code !== 0);
  const nbdOpts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=drive0,tls-creds=c0`;
  const compare = await run('qemu-img', ['compare', '-U', '--object', `tls-creds-psk,id=c0,dir=${join(dir, 'client')},endpoint=client,username=alice`, '--image-opts', nbdOpts, `driver=qcow2,file.driver=file,file.filename=${join(d, 'd0.qcow2')}`]);
  note('qemu-img compare over TLS', `${compare.code} ${compare.stdout.trim()}`);
  // the running server keeps its credentials when the object goes
  await qmp('object-del', { id: 'tls0' });
  note('nbdinfo after object-del', (await run('nbdinfo', ['--size', uri('alice', 'alice.psk')])).stdout.trim());
  await qmp('nbd-server-stop');
  await qmp('object-del', { id: 'tls0' });
  await qmp('object-del', { id: 'cl' });
  return steps;
}

describe('TLS-PSK agrees with QEMU 7.2', () => {
  test('the same script: credentials, server, and what raw and real clients see', async () => {
    const peerRun = async (name: string, peer: typeof withQemu) => {
      const d = join(dir, name);
      await mkdir(d);
      await copyFile(join(dir, 'd0.qcow2'), join(d, 'd0.qcow2'));
      const port = await freePort();
      return peer(d, [{ id: 'drive0', path: join(d, 'd0.qcow2') }], (q, nodes) => script(q, nodes, d, port));
    };
    const theirs = await peerRun('qemu', withQemu);
    const ours = await peerRun('ours', withTidemark);
    expect(ours).toEqual(theirs);
    // the script did what it says: TLS worked, and was needed
    const outcome = (what: string) => ours.find((s) => s.what === what)?.outcome;
    expect(outcome('nbdinfo with the key')).toBe('0 export-size: 16777216 protocol: newstyle-fixed with TLS, using structured packets');
    expect(outcome('nbdinfo without TLS')).toBe('true');
    expect(outcome('LIST before TLS')).toBe('0x80000005 Option 0x3 not permitted before TLS');
    expect(outcome('TLSv1.2: LIST in TLS')).toBe('server:drive0 | 0x1');
    expect(outcome('TLS with the wrong key')).toBe('refused');
    expect(outcome('qemu-img compare over TLS')).toBe('0 Images are identical.');
  }, 120_000);
});

describe('Tidemark: TLS-PSK on a listener', () => {
  let env: NbdEnv;
  let keysPath: string;
  let port: number;

  beforeAll(async () => {
    env = await startEnv({ limits: { handshakeTimeoutMs: 1500 } });
    await copyFile(join(dir, 'd0.qcow2'), join(env.dir, 'd0.qcow2'));
    await env.engine.attach({ id: 'drive0', path: join(env.dir, 'd0.qcow2'), format: 'qcow2' });
    keysPath = join(env.dir, 'keys.psk');
    await writeFile(keysPath, `alice:${KEY}\n`, { mode: 0o600 });
    port = await env.server.listenTcp(0, '127.0.0.1', { tls: new PskServerCredentials(keysPath) });
  });

  afterAll(async () => {
    await env?.close();
  });

  const connectTls = async (user = 'alice', key = KEY) => {
    const plain = await RawNbd.connectTcp(port);
    await plain.hello();
    return plain.startTls(user, Buffer.from(key, 'hex'));
  };
  const settled = async () => {
    for (let i = 0; i < 100 && env.server.clientCount > 0; i++) await sleep(20);
    return env.server.clientCount;
  };

  test('the listeners say which require TLS; the unix socket (owner-only) does not', async () => {
    expect(env.server.listenerInfo()).toEqual([
      { address: `unix:${env.sock}`, tls: false },
      { address: `127.0.0.1:${port}`, tls: true },
    ]);
    const { c, size } = await RawNbd.open(env.sock, 'drive0');
    expect(size).toBe(16 * 1024 * 1024);
    c.close();
  });

  test('writes through TLS are guest writes: in the drive and its bitmap', async () => {
    const drive = env.engine.get('drive0')!;
    const bitmap = env.engine.bitmapCommands.add('drive0', 'tls-b0', { granularity: 65536 });
    const opts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=drive0,tls-creds=c0`;
    await runOk('qemu-io', ['--object', `tls-creds-psk,id=c0,dir=${join(dir, 'client')},endpoint=client,username=alice`, '--image-opts', opts, '-c', 'write -P 0x5c 8M 128k']);
    expect(Buffer.from(await drive.read(8 * 1024 * 1024, 128 * 1024)).equals(Buffer.alloc(128 * 1024, 0x5c))).toBe(true);
    expect(bitmap.dirtyExtents()).toEqual([{ offset: 8 * 1024 * 1024, length: 128 * 1024 }]);
  });

  test("the server's cipher order wins: AES-GCM before ChaCha20 (GnuTLS clients list ChaCha20 first; AES-NI makes GCM ~4x faster)", async () => {
    const plain = await RawNbd.connectTcp(port);
    await plain.hello();
    const c = await plain.startTls('alice', Buffer.from(KEY, 'hex'), 'TLSv1.3', 'TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256');
    expect((c.socket as TLSSocket).getCipher().name).toBe('TLS_AES_128_GCM_SHA256');
    c.close();
  });

  test('failed handshakes are logged with the reason, and cost nothing', async () => {
    env.log.splice(0);
    await expect(connectTls('alice', WRONG_KEY)).rejects.toThrow();
    await expect(connectTls('mallory')).rejects.toThrow();
    expect(await settled()).toBe(0);
    expect(env.log.join('\n')).toContain(`the client's key for username 'alice' does not match ${keysPath}`);
    expect(env.log.join('\n')).toContain(`username 'mallory' is not in ${keysPath}`);
  });

  test('the keys file is read at each STARTTLS: a new key applies to the next connection', async () => {
    await writeFile(keysPath, `alice:${WRONG_KEY}\n`);
    await expect(connectTls('alice', KEY)).rejects.toThrow();
    const c = await connectTls('alice', WRONG_KEY);
    expect(replyText(await c.option(OPT.LIST))).toBe('server:drive0 | 0x1');
    c.close();
    // unreadable keys: STARTTLS is refused with a reason, and TLS is still required
    await writeFile(keysPath, 'garbage\n');
    const plain = await RawNbd.connectTcp(port);
    await plain.hello();
    expect(replyText(await plain.option(OPT.STARTTLS))).toBe('0x80000002 TLS credentials are unavailable on the server');
    expect(replyText(await plain.option(OPT.LIST))).toBe('0x80000005 Option 0x3 not permitted before TLS');
    plain.close();
    expect(env.log.join('\n')).toContain(`STARTTLS refused: ${keysPath} line 1: expected 'username:hexkey'`);
    await writeFile(keysPath, `alice:${KEY}\n`);
  });

  test('a client that does not wait for the ACK before TLS, or never starts it, is disconnected', async () => {
    const eager = await RawNbd.connectTcp(port);
    await eager.hello();
    eager.sendOption(OPT.STARTTLS);
    eager.write(Buffer.from('\x16\x03\x01 not waiting for the reply'));
    // at once, not after the handshake time limit
    expect(await eager.waitClosed(700)).toBe(true);
    expect(env.log.join('\n')).toContain('client sent data after NBD_OPT_STARTTLS before the reply; disconnecting');
    // STARTTLS acknowledged, then silence: the handshake time limit still applies
    const silent = await RawNbd.connectTcp(port);
    await silent.hello();
    expect(replyText(await silent.option(OPT.STARTTLS))).toBe('0x1');
    expect(await silent.waitClosed(5000)).toBe(true);
    // a client that hangs up halfway through the TLS handshake
    const quitter = await RawNbd.connectTcp(port);
    await quitter.hello();
    expect(replyText(await quitter.option(OPT.STARTTLS))).toBe('0x1');
    quitter.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40]));
    quitter.close();
    expect(await settled()).toBe(0);
  });

  test('fuzz: options before TLS, and garbage in place of the TLS handshake, never get past it or harm the server', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ opt: fc.constantFrom(OPT.LIST, OPT.INFO, OPT.GO, OPT.STRUCTURED_REPLY, OPT.SET_META, OPT.STARTTLS, OPT.ABORT, OPT.EXPORT_NAME, 0, 99), data: fc.uint8Array({ maxLength: 24 }) }), { maxLength: 5 }),
        fc.uint8Array({ minLength: 1, maxLength: 300 }),
        async (opts, garbage) => {
          const c = await RawNbd.connectTcp(port);
          try {
            await c.hello();
            for (const o of opts) {
              if (o.opt === OPT.STARTTLS && o.data.length === 0) continue;
              if (o.opt === OPT.EXPORT_NAME) {
                c.sendOption(o.opt, Buffer.from(o.data));
                expect(await c.waitClosed(3000)).toBe(true);
                return;
              }
              const [r, ...more] = await c.option(o.opt, Buffer.from(o.data));
              expect(more).toEqual([]);
              if (o.opt === OPT.STARTTLS) {
                expect(r.type).toBe(REP.ERR_INVALID);
                expect(await c.waitClosed(3000)).toBe(true);
                return;
              }
              expect(r.type).toBe(REP.ERR_TLS_REQD);
              if (o.opt === OPT.ABORT) {
                expect(await c.waitClosed(3000)).toBe(true);
                return;
              }
            }
            expect(replyText(await c.option(OPT.STARTTLS))).toBe('0x1');
            c.write(garbage);
            expect(await c.waitClosed(3000)).toBe(true);
          } finally {
            c.close();
          }
        },
      ),
      { numRuns: 25 },
    );
    expect(await settled()).toBe(0);
    const ok = await connectTls();
    expect(replyText(await ok.option(OPT.LIST))).toBe('server:drive0 | 0x1');
    ok.close();
  }, 60_000);
});
