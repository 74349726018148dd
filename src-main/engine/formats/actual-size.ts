import { stat } from 'node:fs/promises';

/** Bytes the file occupies on the host (st_blocks * 512), like `qemu-img info`'s actual-size. */
export async function actualSize(path: string): Promise<number> {
  try {
    const st = await stat(path);
    // st_blocks is not reported on every platform; fall back to the apparent size
    return typeof st.blocks === 'number' && st.blocks >= 0 ? st.blocks * 512 : st.size;
  } catch {
    return 0;
  }
}
