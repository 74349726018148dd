import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { TidemarkError } from '../../../src-shared/errors.js';
import type { FileHandle, FileOpener } from '../io/file-handle.js';
import { errnoOf, ERRNO_TEXT } from '../io/file-errors.js';
import { corruptImage, unsupportedImage } from './image-errors.js';
import { QCOW2_MAGIC } from './qcow2/constants.js';
import { createQcow2 } from './qcow2/create.js';
import { Qcow2Driver } from './qcow2/driver.js';
import { createRaw, RawDriver } from './raw.js';
import type { BlockDriver, ImageFormat } from './types.js';

export const MAX_CHAIN_DEPTH = 64;

/** qcow2 if the file starts with the qcow2 magic, else raw (QEMU's probe, minus the formats we lack). */
export async function probeFormat(file: FileHandle): Promise<ImageFormat> {
  const head = await file.pread(0, 4);
  const magic = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
  return magic === QCOW2_MAGIC ? 'qcow2' : 'raw';
}

export interface OpenImageOptions {
  readOnly: boolean;
  /** default 'auto' (probe) */
  format?: ImageFormat | 'auto';
  opener: FileOpener;
  /** longest backing chain accepted (default 64) */
  maxChainDepth?: number;
}

/**
 * Opens an image and its whole backing chain (backing images read-only, same opener). Relative
 * backing names resolve against the folder of the image that names them. Loops are detected by
 * real path; a missing backing file is FILE_NOT_FOUND naming both files.
 */
export async function openImage(path: string, options: OpenImageOptions): Promise<BlockDriver> {
  const absolute = resolve(path);
  return openOne(absolute, options.format ?? 'auto', options.readOnly, options, [], undefined);
}

async function realPathOf(path: string, referrer: string | undefined): Promise<string> {
  try {
    return await realpath(path);
  } catch (err) {
    const errno = errnoOf(err);
    const why = (errno && ERRNO_TEXT[errno]) ?? String(err);
    if (referrer !== undefined) {
      throw new TidemarkError(
        errno === 'ENOENT' ? 'FILE_NOT_FOUND' : 'IO_ERROR',
        `Could not open backing file '${path}' of '${referrer}': ${why}`,
        { cause: err },
      );
    }
    throw new TidemarkError(errno === 'ENOENT' ? 'FILE_NOT_FOUND' : 'IO_ERROR', `Could not open '${path}': ${why}`, { cause: err });
  }
}

async function openOne(
  path: string,
  format: ImageFormat | 'auto',
  readOnly: boolean,
  options: OpenImageOptions,
  chain: string[],
  referrer: string | undefined,
): Promise<BlockDriver> {
  const real = await realPathOf(path, referrer);
  if (chain.includes(real)) {
    throw corruptImage(referrer ?? path, `backing chain loops back to '${path}'`);
  }
  const maxDepth = options.maxChainDepth ?? MAX_CHAIN_DEPTH;
  if (chain.length > maxDepth) throw corruptImage(chain[0], `backing chain is deeper than ${maxDepth} images`);
  const file = await options.opener.open(path, { readOnly });
  try {
    const fmt = format === 'auto' ? await probeFormat(file) : format;
    if (fmt === 'raw') return await RawDriver.open(file);
    return await Qcow2Driver.open(file, {
      readOnly,
      openBacking: (name, backingFormat) => {
        if (/^[a-z][a-z0-9+.-]+:/i.test(name) && !/^[a-z]:[\\/]/i.test(name)) {
          throw unsupportedImage(path, `backing file '${name}' uses a protocol, which is not supported`);
        }
        let fmtOfBacking: ImageFormat | 'auto' = 'auto';
        if (backingFormat !== undefined) {
          if (backingFormat !== 'raw' && backingFormat !== 'qcow2') {
            throw unsupportedImage(path, `backing file format '${backingFormat}' is not supported`);
          }
          fmtOfBacking = backingFormat;
        }
        const target = isAbsolute(name) ? name : resolve(dirname(path), name);
        return openOne(target, fmtOfBacking, true, options, [...chain, real], path);
      },
    });
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

export interface CreateImageOptions {
  format: ImageFormat;
  /** bytes; for qcow2 with a backing file it defaults to the backing image's size */
  virtualSize?: number;
  clusterSize?: number;
  backingFile?: string;
  /** probed when omitted (qemu-img requires it; we look) */
  backingFormat?: ImageFormat;
  compressionType?: 'zlib' | 'zstd';
  version?: 2 | 3;
  opener: FileOpener;
}

/** Creates an empty image (raw: a sparse file; qcow2: QEMU's layout). */
export async function createImage(path: string, options: CreateImageOptions): Promise<void> {
  const absolute = resolve(path);
  if (options.format === 'raw') {
    if (options.backingFile !== undefined) throw new TidemarkError('INVALID_INPUT', `Cannot create '${path}': raw images have no backing file`);
    if (options.virtualSize === undefined) throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': a size is needed`);
    await createRaw(absolute, options.virtualSize, options.opener);
    return;
  }
  let virtualSize = options.virtualSize;
  let backingFormat = options.backingFormat;
  if (options.backingFile !== undefined && (virtualSize === undefined || backingFormat === undefined)) {
    const target = isAbsolute(options.backingFile) ? options.backingFile : resolve(dirname(absolute), options.backingFile);
    const backing = await openImage(target, { readOnly: true, format: backingFormat ?? 'auto', opener: options.opener });
    try {
      virtualSize ??= backing.virtualSize;
      backingFormat ??= backing.format;
    } finally {
      await backing.close();
    }
  }
  if (virtualSize === undefined) throw new TidemarkError('INVALID_SIZE', `Cannot create '${path}': a size is needed`);
  await createQcow2(
    absolute,
    {
      virtualSize,
      clusterSize: options.clusterSize,
      backingFile: options.backingFile,
      backingFormat,
      compressionType: options.compressionType,
      version: options.version,
    },
    options.opener,
  );
}
