// FP8 e4m3 ("e4m3fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; 0x7F/0xFF are NaN;
// largest finite 448. Encoding from f32 rounds to nearest even and saturates to +-448, as CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) and PTX cvt.rn.satfinite.e4m3x2.f32 do (SPEC 3).

export const E4M3_MAX = 448;
/** NaN encodes to this code (the canonical NaN that the hardware conversion produces). */
export const E4M3_NAN = 0x7f;

/** Decoded value of every one of the 256 codes. */
export const E4M3_DECODE: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let code = 0; code < 256; code++) {
    const sign = code & 0x80 ? -1 : 1;
    const exp = (code >> 3) & 0xf;
    const man = code & 0x7;
    let v: number;
    if (exp === 0xf && man === 0x7) v = NaN;
    else if (exp === 0) v = man * 2 ** -9;
    else v = (1 + man / 8) * 2 ** (exp - 7);
    t[code] = sign * v;
  }
  return t;
})();

export function decodeE4M3(code: number): number {
  return E4M3_DECODE[code & 0xff];
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Encodes a number (first rounded to f32) to e4m3: round to nearest even, saturating to +-448. */
export function encodeE4M3(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 24) & 0x80;
  const absBits = bits & 0x7fffffff;
  if (absBits > 0x7f800000) return E4M3_NAN; // NaN (sign dropped, like the hardware)
  if (absBits >= 0x43e00000) return sign | 0x7e; // |x| >= 448 (and inf): saturate
  const exp = (absBits >>> 23) - 127;
  if (exp >= -6) {
    // Normal in e4m3: keep 3 of the 23 mantissa bits, round the 20 dropped bits to nearest even.
    let code = ((exp + 7) << 3) | ((absBits >>> 20) & 0x7);
    const rest = absBits & 0xfffff;
    if (rest > 0x80000 || (rest === 0x80000 && (code & 1) === 1)) code++; // a carry moves into the exponent
    return sign | (code > 0x7e ? 0x7e : code);
  }
  // Subnormal in e4m3: multiples of 2^-9; the product below is exact in f64.
  const scaled = Math.abs(f32[0]) * 512;
  let q = Math.floor(scaled);
  const frac = scaled - q;
  if (frac > 0.5 || (frac === 0.5 && (q & 1) === 1)) q++;
  return sign | q; // q == 8 is the smallest normal, code 0x08: still correct
}

/** Encodes every element of `src` into `dst` (same length). */
export function encodeE4M3Array(src: ArrayLike<number>, dst: Uint8Array = new Uint8Array(src.length)): Uint8Array {
  if (dst.length !== src.length) throw new Error(`encodeE4M3Array: destination holds ${dst.length}, source ${src.length}`);
  for (let i = 0; i < src.length; i++) dst[i] = encodeE4M3(src[i]);
  return dst;
}

/** Decodes every code of `src` into `dst` (same length). */
export function decodeE4M3Array(src: Uint8Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length !== src.length) throw new Error(`decodeE4M3Array: destination holds ${dst.length}, source ${src.length}`);
  for (let i = 0; i < src.length; i++) dst[i] = E4M3_DECODE[src[i]];
  return dst;
}
