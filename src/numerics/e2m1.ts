// FP4 e2m1 (MXFP4 element): codes 0..15 -> [0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2, -3, -4, -6].
// Packing (V4-MODEL 8.4): byte j of a row holds column 2j in the low nibble and 2j+1 in the high nibble.

export const E2M1_DECODE: Float32Array = Float32Array.from([
  0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6,
]);

export function decodeE2M1(nibble: number): number {
  return E2M1_DECODE[nibble & 0xf];
}

/** Unpacks `count` e2m1 values from packed bytes (low nibble first) into f32. */
export function unpackE2M1(packed: Uint8Array | Int8Array, count = packed.length * 2,
  dst: Float32Array = new Float32Array(count)): Float32Array {
  if (count > packed.length * 2) throw new Error(`unpackE2M1: ${packed.length} bytes hold at most ${packed.length * 2} values, asked for ${count}`);
  for (let i = 0; i < count; i++) {
    const byte = packed[i >> 1] & 0xff;
    dst[i] = E2M1_DECODE[i & 1 ? byte >> 4 : byte & 0xf];
  }
  return dst;
}

/** Packs e2m1 nibble codes (0..15) two per byte, low nibble first. */
export function packE2M1(codes: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(Math.ceil(codes.length / 2));
  for (let i = 0; i < codes.length; i++) out[i >> 1] |= (codes[i] & 0xf) << (i & 1 ? 4 : 0);
  return out;
}
