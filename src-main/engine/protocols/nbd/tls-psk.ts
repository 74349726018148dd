import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { TLSSocket, createSecureContext, type SecureContext, type TLSSocketOptions, type TlsOptions } from 'node:tls';
import type { Socket } from 'node:net';
import { TidemarkError } from '../../../../src-shared/errors.js';

/**
 * TLS with pre-shared keys for NBD (NBD_OPT_STARTTLS), with QEMU's `tls-creds-psk` key files:
 * one `username:hexkey` per line, the format GnuTLS's `psktool` writes and libnbd's
 * `tls-psk-file` reads. A client proves it holds the key of the username it presents; nothing
 * else is checked (as with QEMU's PSK credentials). Keys are reread at every STARTTLS, so a
 * changed file applies to the next connection without a restart, as it does in QEMU.
 */

/** QEMU looks for this name in a credentials directory. */
export const PSK_KEYS_FILE_NAME = 'keys.psk';

/** OpenSSL's limits (PSK_MAX_IDENTITY_LEN, and the largest key Node passes on). */
const MAX_IDENTITY_BYTES = 128;
const MAX_KEY_BYTES = 256;

/**
 * Both TLS 1.3 (whose old-style PSK callbacks OpenSSL serves with SHA-256 suites) and the TLS 1.2
 * PSK suites GnuTLS offers by default with `+ECDHE-PSK:+DHE-PSK:+PSK` (QEMU's PSK priority). No
 * certificate suites: PSK is the only way in. The server's order decides: AES-GCM first, which
 * AES-NI makes the fastest (GnuTLS clients list ChaCha20 first; measured with nbdcopy, 1 GiB
 * over one connection: ChaCha20 ~250 MiB/s, AES-128-GCM see the NBD README); in TLS 1.2 the
 * forward-secret ECDHE suites before plain PSK.
 */
const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-CHACHA20-POLY1305',
].join(':');

/** The key of each username, in the order the file gives them (the first entry for a name wins, as in GnuTLS). */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** Parses a keys file's text; a malformed line is an error naming the file and line. */
export function parsePskKeys(text: string, path: string): PskKeys {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line.trim() === '') continue;
    const where = `${path} line ${i + 1}`;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new TidemarkError('INVALID_INPUT', `${where}: expected 'username:hexkey'`);
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (Buffer.byteLength(user, 'utf8') > MAX_IDENTITY_BYTES) throw new TidemarkError('INVALID_INPUT', `${where}: the username is longer than ${MAX_IDENTITY_BYTES} bytes`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new TidemarkError('INVALID_INPUT', `${where}: the key must be an even number of hex digits`);
    if (hex.length / 2 > MAX_KEY_BYTES) throw new TidemarkError('INVALID_INPUT', `${where}: the key is longer than ${MAX_KEY_BYTES} bytes`);
    if (!keys.has(user)) keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new TidemarkError('INVALID_INPUT', `${path}: no keys (expected lines of 'username:hexkey')`);
  return keys;
}

/** Reads and parses a keys file. */
export async function readPskKeys(path: string): Promise<PskKeys> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new TidemarkError('FILE_NOT_FOUND', `Unable to read TLS keys ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parsePskKeys(text, path);
}

/** A keys file given directly, or a QEMU credentials directory holding `keys.psk`. */
export async function resolvePskKeysPath(path: string): Promise<string> {
  const st = await stat(path).catch(() => undefined);
  return st?.isDirectory() ? join(path, PSK_KEYS_FILE_NAME) : path;
}

/**
 * Server credentials: the keys file to authenticate clients against. One instance can serve any
 * number of listeners and connections.
 */
export class PskServerCredentials {
  private readonly context: SecureContext;

  constructor(readonly keysPath: string) {
    this.context = createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', honorCipherOrder: true });
  }

  /** The keys as they are now (read for every STARTTLS). */
  load(): Promise<PskKeys> {
    return readPskKeys(this.keysPath);
  }

  /**
   * Runs the server side of the TLS handshake over `socket` and resolves with the encrypted
   * socket once the client has proved its key. Bytes the client sent before the handshake began
   * must still be unread in `socket` (paused, no 'data' listener): the TLS socket takes them over.
   * Rejects (and destroys the socket) if the handshake fails or the connection ends first, with a
   * message saying which username failed and why, in words an administrator can act on.
   */
  handshake(socket: Socket, keys: PskKeys): Promise<TLSSocket> {
    let identity: string | undefined;
    // Node's TLSSocket takes pskCallback (as tls.createServer does), its typings only list it for servers
    const options: TLSSocketOptions & Pick<TlsOptions, 'pskCallback'> = {
      isServer: true,
      secureContext: this.context,
      pskCallback: (_s, id) => {
        identity = id;
        return keys.get(id) ?? null;
      },
    };
    const tls = new TLSSocket(socket, options);
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => {
        tls.off('secure', ok);
        tls.off('close', closed);
        tls.destroy();
        reject(new Error(this.explain(err, identity, keys)));
      };
      const closed = () => fail(new Error('the connection closed during the TLS handshake'));
      const ok = () => {
        tls.off('error', fail);
        tls.off('close', closed);
        resolve(tls);
      };
      tls.once('secure', ok);
      tls.once('error', fail);
      tls.once('close', closed);
    });
  }

  private explain(err: Error, identity: string | undefined, keys: PskKeys): string {
    const reason = (err as Error & { reason?: string }).reason ?? err.message;
    if (identity === undefined) return `the client offered no pre-shared key (${reason})`;
    if (!keys.has(identity)) return `username '${identity}' is not in ${this.keysPath}`;
    // TLS 1.3 fails on the PSK binder, TLS 1.2 on the first encrypted record
    if (/BINDER|DECRYPT|BAD_RECORD_MAC/.test((err as NodeJS.ErrnoException).code ?? '')) {
      return `the client's key for username '${identity}' does not match ${this.keysPath}`;
    }
    return `username '${identity}': ${reason}`;
  }
}
