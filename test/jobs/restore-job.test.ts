import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockEngine } from '../../src-main/engine/engine.js';
import { RestoreJob } from '../../src-main/engine/jobs/restore-job.js';
import type { FileHandle, FileOpener } from '../../src-main/engine/io/file-handle.js';
import type { ImageFormat } from '../../src-main/engine/formats/types.js';
import { qemu, qemuImgCheck, qemuImgCompare } from '../helpers/qemu.js';

const engines: BlockEngine[] = [];
afterEach(async () => {
  for (const e of engines.splice(0)) await e.close().catch(() => {});
});

/**
 * A chain whose windows mix layers: a 64 KiB-cluster base, a 512-byte-cluster overlay written
 * at odd offsets (pieces that straddle 4 KiB blocks and 1 MiB windows), an overlay that zeroes
 * and rewrites data of both below, and a compressed cluster.
 */
function buildChain(dir: string): string {
  const base = join(dir, 'l0.qcow2');
  qemu('qemu-img', ['create', '-q', '-f', 'qcow2', base, '24M']);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 6M', '-c', 'write -P 0x12 12M 3M', '-c', 'write -c -P 0x13 20M 64k', base]);
  const mid = join(dir, 'l1.qcow2');
  qemu('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'l0.qcow2', '-F', 'qcow2', mid]);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x21 1047552 5000', '-c', 'write -P 0x22 3000 1', '-c', 'write -P 0x23 8389120 3584', mid]);
  const top = join(dir, 'l2.qcow2');
  qemu('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'l1.qcow2', '-F', 'qcow2', top]);
  qemu('qemu-io', ['-f', 'qcow2', '-c', 'write -z 1M 2M', '-c', 'write -P 0x31 13M 64k', '-c', 'write -z 4096 4096', top]);
  return top;
}

async function runRestore(engine: BlockEngine, config: { pointFile: string; targetPath: string; format: ImageFormat; opener?: FileOpener; compress?: boolean; speed?: number }) {
  const job = new RestoreJob(
    {
      id: `r${engines.length}-${config.format}`,
      pointFile: config.pointFile,
      targetPath: config.targetPath,
      format: config.format,
      compress: config.compress ?? false,
      speed: config.speed,
      opener: config.opener ?? engine.opener,
      digest: (offset, parts) => engine.pool.contentDigest(offset, parts),
    },
    engine.jobs.sink,
    engine.jobs.onNull,
  );
  engine.jobs.add(job);
  job.start();
  await job.gone;
  return job;
}

describe('RestoreJob', () => {
  it('flattens a mixed chain to raw, qcow2 and compressed qcow2 that read like the chain, and the digests agree', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-restore-job-'));
    const top = buildChain(dir);
    const engine = new BlockEngine();
    engines.push(engine);
    const hashes = new Set<string>();
    for (const [format, compress] of [
      ['raw', false],
      ['qcow2', false],
      ['qcow2', true],
    ] as const) {
      const target = join(dir, `out-${format}-${compress}.img`);
      const job = await runRestore(engine, { pointFile: top, targetPath: target, format, compress });
      expect(job.error).toBeUndefined();
      expect(job.report?.verified).toBe(true);
      expect(job.report?.restoredHash).toBe(job.report?.sourceHash);
      hashes.add(job.report!.sourceHash);
      expect(qemuImgCompare(top, target, 'qcow2', format).same).toBe(true);
      if (format === 'qcow2') expect(qemuImgCheck(target).ok).toBe(true);
    }
    // the digest is of the contents: one value whatever the format
    expect(hashes.size).toBe(1);
  });

  it('fails verification when a write lands wrong, and leaves no file behind', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-restore-job-'));
    const top = buildChain(dir);
    const engine = new BlockEngine();
    engines.push(engine);
    // an opener whose files for the restore target flip one bit of the first data write they see
    let corrupted = false;
    const opener: FileOpener = {
      async open(path, options) {
        const file = await engine.opener.open(path, options);
        if (!path.includes('restored')) return file;
        const pwrite = file.pwrite.bind(file);
        const flipping: FileHandle = Object.assign(Object.create(file) as FileHandle, {
          pwrite(position: number, data: Uint8Array): Promise<void> {
            if (!corrupted && data.length >= 4096 && data.some((b) => b !== 0)) {
              corrupted = true;
              const copy = data.slice();
              copy[copy.length - 1] ^= 0x40;
              return pwrite(position, copy);
            }
            return pwrite(position, data);
          },
        });
        return flipping;
      },
    };
    const target = join(dir, 'restored.raw');
    const job = await runRestore(engine, { pointFile: top, targetPath: target, format: 'raw', opener });
    expect(corrupted).toBe(true);
    expect(job.report).toBeUndefined();
    expect(job.error).toMatch(/^Verification failed: the restored image does not read the same as the backup \(first difference in the range \d+(\.\d+)? MiB – \d+(\.\d+)? MiB of the disk\)\.$/);
    expect(existsSync(target)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.includes('restored'))).toEqual([]);
  });

  it('keeps to its speed limit (bytes copied and verified per second), and still restores exactly', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tm-restore-job-'));
    const top = buildChain(dir);
    const engine = new BlockEngine();
    engines.push(engine);
    const target = join(dir, 'slow.qcow2');
    const speed = 16 << 20;
    const t = performance.now();
    const job = await runRestore(engine, { pointFile: top, targetPath: target, format: 'qcow2', speed });
    const elapsed = performance.now() - t;
    expect(job.error).toBeUndefined();
    // throttled: data copied (~9 MiB) plus the windows read back (~9 MiB or more of the 24 MiB disk) at 16 MiB/s,
    // less the first slice that goes at once — a lower bound, which a slow machine cannot break
    const throttled = job.report!.dataBytes * 2 - (speed * 0.1) * 2;
    expect(elapsed).toBeGreaterThanOrEqual((throttled / speed) * 1000 * 0.9);
    expect(qemuImgCompare(top, target, 'qcow2', 'qcow2').same).toBe(true);
  });
});

