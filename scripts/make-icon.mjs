// Draws the app icon (a tide line over a disk) as a PNG, without any image library:
// rasterised here, encoded with zlib. Run: node scripts/make-icon.mjs (writes assets/icon.png).
import { deflateSync } from 'node:zlib';
import { writeFileSync } from 'node:fs';

const N = 512;
const px = new Uint8Array(N * N * 4);
const set = (x, y, [r, g, b, a]) => {
  const i = (y * N + x) * 4;
  px.set([r, g, b, a], i);
};
const teal = [11, 94, 115, 255];
const light = [224, 242, 246, 255];
const white = [255, 255, 255, 255];
for (let y = 0; y < N; y++) {
  for (let x = 0; x < N; x++) {
    // rounded square
    const r = 96;
    const dx = Math.max(r - x, x - (N - 1 - r), 0);
    const dy = Math.max(r - y, y - (N - 1 - r), 0);
    if (dx * dx + dy * dy > r * r) continue;
    set(x, y, teal);
    // two waves
    const w1 = 300 + 22 * Math.sin((x / N) * Math.PI * 4);
    const w2 = 360 + 22 * Math.sin((x / N) * Math.PI * 4 + 1.2);
    if (y > w1 && y < w1 + 26) set(x, y, white);
    if (y > w2 && y < w2 + 26) set(x, y, light);
    // the mark: a downward arrow above the waves
    if (x > 236 && x < 276 && y > 96 && y < 230) set(x, y, white);
    if (y >= 200 && y < 270 && Math.abs(x - 256) < 270 - y) set(x, y, white);
  }
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type), data]);
  let c = ~0;
  for (const b of td) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(~c >>> 0);
  return Buffer.concat([len, td, crc]);
}
const ihdr = Buffer.alloc(13);
ihdr.writeUInt32BE(N, 0);
ihdr.writeUInt32BE(N, 4);
ihdr.set([8, 6, 0, 0, 0], 8);
const raw = Buffer.alloc(N * (N * 4 + 1));
for (let y = 0; y < N; y++) raw.set(px.subarray(y * N * 4, (y + 1) * N * 4), y * (N * 4 + 1) + 1);
const png = Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
writeFileSync(new URL('../assets/icon.png', import.meta.url), png);
