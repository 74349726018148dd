import type { Drive } from '../../drive.js';

/**
 * The subset of qemu-io's command language that QMP's `human-monitor-command "qemu-io DEV CMD"`
 * is used for in tests and documentation: write (-P pattern, -z zeroes, -u unmap), read (-P
 * verify), discard, flush. Numbers take qemu-io's suffixes (k, M, G, T, P, E; case-insensitive).
 */
export class QemuIoError extends Error {}

const SUFFIX: Record<string, number> = { b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** qemu-io's cvtnum: decimal, 0x hex, or a number with a binary suffix. */
export function parseQemuIoNumber(text: string): number {
  const m = /^(0x[0-9a-f]+|\d+(?:\.\d+)?)([bkmgtpe]?)$/i.exec(text);
  if (!m) throw new QemuIoError(`invalid number '${text}'`);
  const base = m[1].toLowerCase().startsWith('0x') ? parseInt(m[1], 16) : Number(m[1]);
  const mult = m[2] ? SUFFIX[m[2].toLowerCase()] : 1;
  const value = base * mult;
  if (!Number.isSafeInteger(value)) throw new QemuIoError(`invalid number '${text}'`);
  if (!m[2] && !Number.isInteger(base)) throw new QemuIoError(`invalid number '${text}'`);
  return value;
}

/** Splits a qemu-io command line into words (qemu-io honours simple quoting). */
export function splitWords(line: string): string[] {
  const words: string[] = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) words.push(m[1] ?? m[2] ?? m[3]);
  return words;
}

function parsePattern(text: string): number {
  const v = parseQemuIoNumber(text);
  if (v > 255) throw new QemuIoError(`pattern ${text} does not fit a byte`);
  return v;
}

function human(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} bytes` : `${Number(v.toFixed(3))} ${units[i]}`;
}

type Parsed = { flags: Map<string, string | true>; args: string[] };

function getopt(words: string[], withValue: string, bare: string): Parsed {
  const flags = new Map<string, string | true>();
  const args: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i];
    if (w.startsWith('-') && w.length === 2 && !/\d/.test(w[1])) {
      const f = w[1];
      if (withValue.includes(f)) {
        const v = words[++i];
        if (v === undefined) throw new QemuIoError(`option requires an argument -- '${f}'`);
        flags.set(f, v);
      } else if (bare.includes(f)) flags.set(f, true);
      else throw new QemuIoError(`invalid option -- '${f}'`);
    } else args.push(w);
  }
  return { flags, args };
}

function offsetLength(p: Parsed, cmd: string): { offset: number; length: number } {
  if (p.args.length !== 2) throw new QemuIoError(`${cmd}: expects an offset and a length`);
  return { offset: parseQemuIoNumber(p.args[0]), length: parseQemuIoNumber(p.args[1]) };
}

/** Runs one qemu-io command against a drive; resolves with qemu-io's output text. */
export async function runQemuIo(drive: Drive, line: string): Promise<string> {
  const words = splitWords(line);
  const cmd = words.shift();
  switch (cmd) {
    case 'write': {
      const p = getopt(words, 'P', 'zuqfc');
      const { offset, length } = offsetLength(p, 'write');
      if (p.flags.has('z')) {
        if (p.flags.has('P')) throw new QemuIoError('-z and -P cannot be specified at the same time');
        await drive.writeZeroes(offset, length, { mayUnmap: p.flags.has('u') });
      } else {
        if (p.flags.has('u')) throw new QemuIoError('-u requires -z to be specified');
        const pattern = p.flags.has('P') ? parsePattern(String(p.flags.get('P'))) : 0xcd;
        await writeInChunks(drive, offset, length, pattern);
      }
      return `wrote ${length}/${length} bytes at offset ${offset}\n${human(length)}, 1 ops\n`;
    }
    case 'read': {
      const p = getopt(words, 'P', 'qvl');
      const { offset, length } = offsetLength(p, 'read');
      const expect = p.flags.has('P') ? parsePattern(String(p.flags.get('P'))) : undefined;
      let out = '';
      for (let at = 0; at < length; ) {
        const n = Math.min(CHUNK, length - at);
        const data = await drive.read(offset + at, n);
        if (expect !== undefined) {
          const bad = data.findIndex((b) => b !== expect);
          if (bad >= 0) {
            out += `Pattern verification failed at offset ${offset + at + bad}, ${n - bad} bytes\n`;
            break;
          }
        }
        at += n;
      }
      return `${out}read ${length}/${length} bytes at offset ${offset}\n${human(length)}, 1 ops\n`;
    }
    case 'discard': {
      const p = getopt(words, '', 'q');
      const { offset, length } = offsetLength(p, 'discard');
      await drive.discard(offset, length);
      return `discard ${length}/${length} bytes at offset ${offset}\n${human(length)}, 1 ops\n`;
    }
    case 'flush':
      if (words.length) throw new QemuIoError('flush takes no arguments');
      await drive.flush();
      return '';
    case undefined:
      return '';
    default:
      throw new QemuIoError(`command "${cmd}" not found`);
  }
}

/** Large pattern writes go in bounded pieces so a `write 0 4G` never needs 4 GiB of memory. */
const CHUNK = 16 << 20;

async function writeInChunks(drive: Drive, offset: number, length: number, pattern: number): Promise<void> {
  const buf = new Uint8Array(Math.min(CHUNK, length)).fill(pattern);
  for (let at = 0; at < length; ) {
    const n = Math.min(CHUNK, length - at);
    await drive.write(offset + at, n === buf.length ? buf : buf.subarray(0, n));
    at += n;
  }
}
