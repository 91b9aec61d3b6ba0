// bfloat16: the top 16 bits of an f32. Encoding rounds to nearest even (SPEC 3); NaN stays a quiet NaN.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function encodeBF16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) & 0x8000) | 0x7fc0;
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

export function decodeBF16(code: number): number {
  u32[0] = (code & 0xffff) << 16;
  return f32[0];
}

export function encodeBF16Array(src: ArrayLike<number>, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length !== src.length) throw new Error(`encodeBF16Array: destination holds ${dst.length}, source ${src.length}`);
  for (let i = 0; i < src.length; i++) dst[i] = encodeBF16(src[i]);
  return dst;
}

/** Widens bf16 bits to f32 without per-element calls: the bits shift into the high half of each word. */
export function decodeBF16Array(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length !== src.length) throw new Error(`decodeBF16Array: destination holds ${dst.length}, source ${src.length}`);
  const out = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
  return dst;
}

/** Rounds an f32/f64 value to the nearest bf16 value, returned as a number. */
export function roundBF16(x: number): number {
  return decodeBF16(encodeBF16(x));
}
