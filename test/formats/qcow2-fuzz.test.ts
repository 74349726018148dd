import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { TidemarkError } from '../../src-shared/errors.js';
import { openImage } from '../../src-main/engine/formats/open.js';
import { fsOpener } from '../../src-main/engine/io/fs-file.js';
import { makeTempDir, qemuImg, qemuIo, removeDir, sha256 } from '../helpers/qemu-tools.js';

/**
 * Mutates header, L1, refcount table/block and L2 bytes of real small images. Whatever the
 * damage: opening and a few reads/writes either work or throw TidemarkError, never hang, and a
 * file that failed to open is byte-for-byte unchanged.
 */

let dir: string;
const bases: { name: string; bytes: Buffer; regions: [number, number][] }[] = [];

beforeAll(async () => {
  dir = await makeTempDir();
  // 4 KiB clusters: header 0, refcount table 0x1000, refcount block 0x2000, L1 0x3000, L2 0x4000...
  const small = join(dir, 'base-4k.qcow2');
  await qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4096', small, '2M');
  await qemuIo('-c', 'write -P 0x41 0 24k', '-c', 'write -z 64k 8k', '-c', 'write -P 0x42 1M 4k', small);
  bases.push({ name: '4k', bytes: await readFile(small), regions: [[0, 520], [0x1000, 0x1040], [0x2000, 0x2040], [0x3000, 0x3010], [0x4000, 0x4100]] });
  // 64 KiB clusters with a feature table, a compressed cluster and a backing file
  const back = join(dir, 'back.qcow2');
  await qemuImg('create', '-f', 'qcow2', back, '1M');
  const top = join(dir, 'base-64k.qcow2');
  await qemuImg('create', '-f', 'qcow2', '-b', 'back.qcow2', '-F', 'qcow2', top, '1M');
  await qemuIo('-c', 'write -P 0x43 0 64k', '-c', 'write -c -P 0x44 64k 64k', top);
  bases.push({ name: '64k', bytes: await readFile(top), regions: [[0, 560], [0x10000, 0x10040], [0x20000, 0x20040], [0x30000, 0x30010], [0x40000, 0x40040]] });
});
afterAll(async () => removeDir(dir));

const CASE_TIMEOUT_MS = 5000;

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish in ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs an operation; only TidemarkError may come out. */
async function tolerate(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof TidemarkError)) throw err;
  }
}

let n = 0;
const stats = { opened: 0, refused: 0 };

test('mutated images: TidemarkError or success, never a hang or another exception', async () => {
  const mutation = fc.record({
    base: fc.integer({ min: 0, max: 1 }),
    edits: fc.array(
      fc.record({
        region: fc.integer({ min: 0, max: 4 }),
        at: fc.nat(),
        kind: fc.constantFrom('byte', 'xor', 'ff', 'zero'),
        value: fc.integer({ min: 0, max: 255 }),
      }),
      { minLength: 1, maxLength: 6 },
    ),
    readOnly: fc.boolean(),
  });
  const deadline = Date.now() + 18_000;
  await fc.assert(
    fc.asyncProperty(mutation, async (m) => {
      if (Date.now() > deadline) return; // keep the whole run to ~20 s
      const p = join(dir, `fuzz-${n++}-${bases[m.base].name}.qcow2`);
      try {
        await fuzzCase(p, m);
      } finally {
        await rm(p, { force: true });
      }
    }),
    { numRuns: 5000, seed: 20260213, endOnFailure: true },
  );
  // the property must have exercised both outcomes, or the mutations are not reaching anything
  expect(stats.opened).toBeGreaterThan(50);
  expect(stats.refused).toBeGreaterThan(50);
  console.log(`fuzz: ${stats.opened} opened, ${stats.refused} refused`);
}, 60_000);

interface Mutation {
  base: number;
  edits: { region: number; at: number; kind: 'byte' | 'xor' | 'ff' | 'zero'; value: number }[];
  readOnly: boolean;
}

async function fuzzCase(p: string, { base, edits, readOnly }: Mutation): Promise<void> {
  const b = bases[base];
  const bytes = Buffer.from(b.bytes);
  for (const e of edits) {
    const [lo, hi] = b.regions[e.region];
    const pos = lo + (e.at % (hi - lo));
    if (e.kind === 'byte') bytes[pos] = e.value;
    else if (e.kind === 'xor') bytes[pos] ^= 1 << (e.value % 8);
    else if (e.kind === 'ff') bytes[pos] = 0xff;
    else bytes[pos] = 0;
  }
  await writeFile(p, bytes);
  const before = sha256(bytes);
  let img;
  try {
    img = await withTimeout(openImage(p, { readOnly, opener: fsOpener }), 'open');
    stats.opened++;
  } catch (err) {
    if (!(err instanceof TidemarkError)) throw err;
    stats.refused++;
    expect(sha256(await readFile(p))).toBe(before);
    return;
  }
  const opened = img;
  await withTimeout(
    (async () => {
      const size = opened.virtualSize;
      const clamp = (off: number, len: number) => [Math.min(off, size), Math.max(0, Math.min(len, size - Math.min(off, size)))] as const;
      for (const [off, len] of [clamp(0, 70000), clamp(65536, 4096), clamp(1 << 20, 5000), clamp(size - 100, 100)]) {
        await tolerate(opened.read(off, len));
      }
      await tolerate(opened.blockStatus(0, size));
      if (!readOnly) {
        const [o1, l1] = clamp(100, 9000);
        await tolerate(opened.write(o1, new Uint8Array(l1).fill(7)));
        const [o2, l2] = clamp(65536 * 3, 200000);
        await tolerate(opened.write(o2, new Uint8Array(l2).fill(8)));
        const [o3, l3] = clamp(4096, 65536);
        await tolerate(opened.writeZeroes(o3, l3));
        await tolerate(opened.discard(0, size));
      }
      await tolerate(opened.close());
    })(),
    'operations',
  );
}
