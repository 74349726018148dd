/**
 * Reading and writing one refcount inside a refcount block, for every refcount_order 0..6.
 * Sub-byte widths are packed least-significant bits first (as QEMU does); wider ones are big-endian.
 */
export interface RefcountCodec {
  bits: number;
  max: number;
  get(block: DataView, index: number): number;
  set(block: DataView, index: number, value: number): void;
  /** byte range [start, end) that holds entries [first, last] */
  byteRange(first: number, last: number): [number, number];
}

export function refcountCodec(order: number): RefcountCodec {
  const bits = 2 ** order;
  const byteRange = (first: number, last: number): [number, number] => [
    Math.floor((first * bits) / 8),
    Math.floor((last * bits) / 8) + Math.max(1, bits / 8),
  ];
  switch (order) {
    case 3:
      return { bits, max: 0xff, byteRange, get: (b, i) => b.getUint8(i), set: (b, i, v) => b.setUint8(i, v) };
    case 4:
      return { bits, max: 0xffff, byteRange, get: (b, i) => b.getUint16(i * 2), set: (b, i, v) => b.setUint16(i * 2, v) };
    case 5:
      return { bits, max: 0xffffffff, byteRange, get: (b, i) => b.getUint32(i * 4), set: (b, i, v) => b.setUint32(i * 4, v) };
    case 6:
      return {
        bits,
        // JS numbers: anything above 2^53 would be absurd for a refcount anyway
        max: Number.MAX_SAFE_INTEGER,
        byteRange,
        get: (b, i) => b.getUint32(i * 8) * 2 ** 32 + b.getUint32(i * 8 + 4),
        set: (b, i, v) => {
          b.setUint32(i * 8, Math.floor(v / 2 ** 32));
          b.setUint32(i * 8 + 4, v % 2 ** 32);
        },
      };
    default: {
      if (order < 0 || order > 2) throw new RangeError(`refcount order ${order}`);
      const perByte = 8 / bits;
      const mask = (1 << bits) - 1;
      return {
        bits,
        max: mask,
        byteRange,
        get: (b, i) => (b.getUint8(Math.floor(i / perByte)) >> ((i % perByte) * bits)) & mask,
        set: (b, i, v) => {
          const at = Math.floor(i / perByte);
          const shift = (i % perByte) * bits;
          b.setUint8(at, (b.getUint8(at) & ~(mask << shift)) | ((v & mask) << shift));
        },
      };
    }
  }
}
