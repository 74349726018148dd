import { access, constants as fsConstants } from 'node:fs/promises';
import { resolve } from 'node:path';
import { registerCommand } from './commands.js';
import { QEMU_ID, type ArgSpec } from './args.js';
import { generic } from './errors.js';
import type { BlockEngine } from '../../engine.js';
import { PSK_KEYS_FILE_NAME, PskServerCredentials, readPskKeys } from '../nbd/tls-psk.js';
import { ERRNO_TEXT } from '../../io/file-errors.js';

// QEMU's object-add / object-del for the one object type Tidemark's QMP has a use for:
// `tls-creds-psk`, the credentials nbd-server-start's `tls-creds` names. Arguments, order of
// checks and messages are QEMU 7.2's (qom/object_interfaces.c, crypto/tlscredspsk.c).

/**
 * A `tls-creds-psk` object as object-add made it: the server side for endpoint 'server'; for
 * 'client', nothing (it is only checked: Tidemark connects to no NBD server).
 */
interface TlsCredsPsk {
  server?: PskServerCredentials;
}

/** The user-created objects of each engine's QMP (QEMU's /objects container), by id. */
const registries = new WeakMap<BlockEngine, Map<string, TlsCredsPsk>>();

function qmpObjects(engine: BlockEngine): Map<string, TlsCredsPsk> {
  let m = registries.get(engine);
  if (!m) {
    m = new Map();
    registries.set(engine, m);
  }
  return m;
}

const PSK_PROPERTIES = {
  'qom-type': { type: 'str', enum: ['tls-creds-psk'] },
  id: { type: 'str' },
  dir: { type: 'str', optional: true },
  endpoint: { type: 'str', optional: true, enum: ['client', 'server'] },
  username: { type: 'str', optional: true },
  'verify-peer': { type: 'bool', optional: true },
  priority: { type: 'str', optional: true },
} satisfies ArgSpec;

async function createPsk(a: Record<string, unknown>): Promise<TlsCredsPsk> {
  const endpoint = (a.endpoint as 'client' | 'server' | undefined) ?? 'client';
  if (typeof a.dir !== 'string') throw generic("Missing 'dir' property value");
  if (endpoint === 'server' && a.username !== undefined) throw generic('username should not be set when endpoint=server');
  // GnuTLS priority strings have no OpenSSL equivalent: refusing is honest, ignoring would not be
  if (a.priority !== undefined) throw generic("Tidemark does not take TLS priority strings ('priority'); it offers TLS 1.3 and the TLS 1.2 PSK suites");
  // QEMU joins the two as text: dir '' looks for '/keys.psk'
  const keysPath = `${a.dir}/${PSK_KEYS_FILE_NAME}`;
  try {
    await access(keysPath, fsConstants.R_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    throw generic(`Unable to access credentials ${keysPath}: ${ERRNO_TEXT[code] ?? code}`);
  }
  if (endpoint === 'client') {
    // checked as QEMU checks it
    const username = (a.username as string | undefined) ?? 'qemu';
    const keys = await readPskKeys(keysPath).catch(() => new Map<string, Buffer>());
    if (!keys.has(username)) throw generic(`Username ${username} not found in PSK file ${keysPath}`);
    return {};
  }
  // like QEMU, the server's keys are read at each handshake, so the file may change later
  return { server: new PskServerCredentials(resolve(keysPath)) };
}

registerCommand('object-add', {
  // the one type there is decides the properties
  args: PSK_PROPERTIES,
  async run(a, ctx) {
    const id = a.id as string;
    if (!QEMU_ID.test(id)) throw generic("Parameter 'id' expects an identifier");
    const objects = qmpObjects(ctx.engine);
    if (objects.has(id)) throw generic(`attempt to add duplicate property '${id}' to object (type 'container')`);
    const obj = await createPsk(a);
    // the id may have been taken while the file was being checked
    if (objects.has(id)) throw generic(`attempt to add duplicate property '${id}' to object (type 'container')`);
    objects.set(id, obj);
    return {};
  },
});

registerCommand('object-del', {
  args: { id: { type: 'str' } },
  async run(a, ctx) {
    const id = a.id as string;
    const objects = qmpObjects(ctx.engine);
    // as in QEMU, a running NBD server keeps the credentials it started with
    if (!objects.delete(id)) throw generic(`object '${id}' not found`);
    return {};
  },
});

/** nbd-server-start's tls-creds, with QEMU's messages (blockdev-nbd.c). */
export function serverTlsCreds(engine: BlockEngine, id: string): PskServerCredentials {
  const obj = qmpObjects(engine).get(id);
  if (!obj) throw generic(`No TLS credentials with id '${id}'`);
  if (!obj.server) throw generic('Expected TLS credentials for a server endpoint');
  return obj.server;
}
