// The CPU kernels of the V4 forward (V4-MODEL 8): bf16 rounding, RMSNorm, the FP8 activation quantiser and the
// block-scaled FP8 linear, plain fp32 linears, the QAT simulations (FP8 block 64, FP4 block 32) and the Hadamard
// rotation. Activations are Float32Arrays; a "bf16 tensor" is a Float32Array whose every value is bf16-exact.
//
// Arithmetic conventions (documented in docs/MODEL.md): an fp32 operation of the reference is evaluated in f64 and
// rounded to f32 where the reference materialises an fp32 tensor; dot products accumulate in f64 (the reference's
// GEMMs accumulate in fp32 in an order the kernels do not document). Inside one 128-wide K block of an FP8 GEMM
// the f64 sum of e4m3 x e4m3 products is exact, so it equals the correctly rounded block sum.
// Hot loops take typed arrays and offsets, never closures, and use several independent accumulators.

const fr = Math.fround;
const f32s = new Float32Array(1);
const u32s = new Uint32Array(f32s.buffer);

/** Rounds x[from, to) to bf16 in place (nearest even; values stay f32-typed). */
export function roundBF16(x: Float32Array, from = 0, to = x.length): Float32Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = from; i < to; i++) {
    const b = u[i];
    if ((b & 0x7fffffff) > 0x7f800000) continue; // NaN stays NaN
    u[i] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
  }
  return x;
}

/** One value rounded to bf16. */
export function bf16(v: number): number {
  f32s[0] = v;
  const b = u32s[0];
  if ((b & 0x7fffffff) > 0x7f800000) return v;
  u32s[0] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
  return f32s[0];
}

/** bf16 bits -> f32 values. */
export function bf16ToF32(src: Uint16Array, dst = new Float32Array(src.length), srcOff = 0, n = src.length - srcOff, dstOff = 0): Float32Array {
  const u = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < n; i++) u[dstOff + i] = src[srcOff + i] << 16;
  return dst;
}

/** bf16-exact f32 values -> bf16 bits. */
export function f32ToBF16Bits(src: Float32Array, n = src.length): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, n);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = u[i] >>> 16;
  return out;
}

/**
 * RMSNorm over rows of width n (V4-MODEL 0): y = bf16(w * (x * rsqrt(mean(x^2) + eps))), fp32 inside.
 * In place is allowed (out === x).
 */
export function rmsNorm(x: Float32Array, rows: number, n: number, w: Float32Array | undefined, eps: number, out: Float32Array, xOff = 0, stride = n, outOff = 0, outStride = n): void {
  for (let r = 0; r < rows; r++) {
    const o = xOff + r * stride;
    let ss = 0;
    for (let i = 0; i < n; i++) { const v = x[o + i]; ss += v * v; }
    const rs = fr(1 / Math.sqrt(fr(fr(ss / n) + eps)));
    const oo = outOff + r * outStride;
    if (w) for (let i = 0; i < n; i++) out[oo + i] = bf16(fr(w[i] * fr(x[o + i] * rs)));
    else for (let i = 0; i < n; i++) out[oo + i] = bf16(fr(x[o + i] * rs));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// e4m3 / e2m1 rounding on values

/** The e4m3 value nearest to v (round to nearest even, saturating at +-448): V4-MODEL 8.2's q. */
export function e4m3Round(v: number): number {
  f32s[0] = v;
  const b = u32s[0];
  const a = b & 0x7fffffff;
  if (a >= 0x43e00000) return v < 0 ? -448 : 448; // |v| >= 448 (also inf)
  if (a < 0x3c800000) { // |v| < 2^-6: subnormal e4m3, multiples of 2^-9
    const s = Math.abs(f32s[0]) * 512;
    let q = Math.floor(s);
    const frac = s - q;
    if (frac > 0.5 || (frac === 0.5 && (q & 1) === 1)) q++;
    const r = q / 512;
    return v < 0 ? -r : r;
  }
  // normal: keep 3 mantissa bits, round the 20 dropped ones to nearest even
  u32s[0] = (b + 0x7ffff + ((b >>> 20) & 1)) & 0xfff00000;
  const r = f32s[0];
  return r > 448 ? 448 : r < -448 ? -448 : r;
}

/** e2m1 nearest value with ties to the even code (V4-MODEL 8.3): grid 0, .5, 1, 1.5, 2, 3, 4, 6. */
export function e2m1Round(v: number): number {
  const a = Math.abs(v);
  let r: number;
  if (a <= 0.25) r = 0;
  else if (a < 0.75) r = 0.5;
  else if (a <= 1.25) r = 1;
  else if (a < 1.75) r = 1.5;
  else if (a <= 2.5) r = 2;
  else if (a < 3.5) r = 3;
  else if (a <= 5) r = 4;
  else r = 6;
  return v < 0 ? -r : r;
}

/** 2^ceil(log2(r)) for a positive f32 r, from its bits (the kernels' ue8m0 rule: exponent, +1 if any mantissa bit). */
export function pow2Ceil(r: number): number {
  f32s[0] = r;
  const bits = u32s[0];
  const exp = ((bits >>> 23) & 0xff) - 127;
  return 2 ** (exp + ((bits & 0x7fffff) !== 0 ? 1 : 0));
}

const INV448 = fr(1 / 448);
const INV6 = fr(1 / 6);
const AMAX_FLOOR = fr(1e-4);
const FP4_AMAX_FLOOR = 6 * 2 ** -126;

/**
 * FP8 QAT simulation (V4-MODEL 8.3 items 1-2): per block of `block` values, s = 2^ceil(log2(max(amax, 1e-4) / 448)),
 * x <- e4m3(clamp(x / s)) * s. Exact in bf16, so the result stays bf16.
 */
export function fp8SimInPlace(x: Float32Array, off: number, len: number, block = 64): void {
  for (let b0 = off; b0 < off + len; b0 += block) {
    let amax = 0;
    for (let i = b0; i < b0 + block; i++) { const a = Math.abs(x[i]); if (a > amax) amax = a; }
    const s = pow2Ceil(fr(Math.max(amax, AMAX_FLOOR) * INV448));
    for (let i = b0; i < b0 + block; i++) x[i] = e4m3Round(x[i] / s) * s;
  }
}

/** FP4 QAT simulation (V4-MODEL 8.3 items 3-4): block 32, s = 2^ceil(log2(max(amax, 6 * 2^-126) / 6)). */
export function fp4SimInPlace(x: Float32Array, off: number, len: number, block = 32): void {
  for (let b0 = off; b0 < off + len; b0 += block) {
    let amax = 0;
    for (let i = b0; i < b0 + block; i++) { const a = Math.abs(x[i]); if (a > amax) amax = a; }
    const s = pow2Ceil(fr(Math.max(amax, FP4_AMAX_FLOOR) * INV6));
    for (let i = b0; i < b0 + block; i++) {
      let q = x[i] / s;
      if (q > 6) q = 6; else if (q < -6) q = -6;
      x[i] = bf16(e2m1Round(q) * s);
    }
  }
}

/** Sylvester Walsh-Hadamard over x[off, off + n) (n a power of two), times n^-1/2, bf16 out (V4-MODEL 8.5). */
export function hadamardInPlace(x: Float32Array, off: number, n: number, tmp: Float64Array): void {
  for (let i = 0; i < n; i++) tmp[i] = x[off + i];
  for (let h = 1; h < n; h <<= 1) {
    for (let i = 0; i < n; i += h << 1) {
      for (let j = i; j < i + h; j++) { const a = tmp[j]; const b = tmp[j + h]; tmp[j] = a + b; tmp[j + h] = a - b; }
    }
  }
  const sc = 1 / Math.sqrt(n);
  for (let i = 0; i < n; i++) x[off + i] = bf16(fr(tmp[i] * sc));
}

// ---------------------------------------------------------------------------------------------------------------
// Linears

/** An FP8 linear: e4m3 code VALUES [out, in] (decoded once at load) and f32 block scales [ceil(out/128), in/128]. */
export interface Fp8Linear {
  w: Float32Array;
  s: Float32Array;
  out: number;
  in: number;
}

/** Scratch for the activation quantiser (grown on demand). */
export class QuantScratch {
  q = new Float32Array(0);
  s = new Float32Array(0);
  ensure(rows: number, k: number): void {
    if (this.q.length < rows * k) this.q = new Float32Array(rows * k);
    if (this.s.length < rows * (k / 128)) this.s = new Float32Array(rows * (k / 128));
  }
}

/**
 * act_quant (V4-MODEL 8.2): per row per 128 values, amax = max(|x|, 1e-4), s = 2^ceil(log2(amax * f32(1/448)))
 * (ue8m0) or amax / 448, q = e4m3(clamp(x / s, +-448)). Writes q's values and s into the scratch.
 */
export function actQuant(x: Float32Array, rows: number, k: number, pow2: boolean, sc: QuantScratch, xOff = 0, xStride = k): void {
  sc.ensure(rows, k);
  const kb = k / 128;
  const q = sc.q; const ss = sc.s;
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < kb; b++) {
      const i0 = xOff + r * xStride + b * 128;
      let amax = 0;
      for (let i = i0; i < i0 + 128; i++) { const a = Math.abs(x[i]); if (a > amax) amax = a; }
      amax = Math.max(fr(amax), AMAX_FLOOR);
      const s = pow2 ? pow2Ceil(fr(amax * INV448)) : fr(amax / 448);
      ss[r * kb + b] = s;
      const o = r * k + b * 128;
      for (let i = 0; i < 128; i++) q[o + i] = e4m3Round(x[i0 + i] / s);
    }
  }
}

/**
 * FP8 x FP8 block-scaled GEMM (V4-MODEL 8.4) with bf16 output: per 128-wide K block the exact sum of the e4m3
 * products, then total = f32(total + f32(f32(p) * f32(sA * sW))), blocks in ascending K order.
 * out[r * outStride + outOff + n] for activation rows r.
 */
export function fp8Linear(x: Float32Array, rows: number, lin: Fp8Linear, pow2: boolean, sc: QuantScratch, out: Float32Array,
  xOff = 0, xStride = lin.in, outOff = 0, outStride = lin.out): void {
  const K = lin.in; const N = lin.out;
  actQuant(x, rows, K, pow2, sc, xOff, xStride);
  // Four activation rows per pass over the weights: each weight load serves four rows, and the 4 x K block of
  // activations stays in L1 while all N weight rows stream past (a row-at-a-time loop re-read all rows per column).
  let r = 0;
  for (; r + 4 <= rows; r += 4) fp8Rows4(sc.q, sc.s, r, lin, out, outOff, outStride);
  for (; r < rows; r++) fp8Row1(sc.q, sc.s, r, lin, out, outOff, outStride);
}

/**
 * The scale step of the FP8 linear from precomputed exact block partials P [rows, N, K/128] (the SIMD kernel's):
 * the same arithmetic as fp8Linear's loops, so both paths give the same bits.
 */
export function fp8Combine(P: Float64Array, sA: Float32Array, rows: number, lin: Fp8Linear, out: Float32Array, outOff = 0, outStride = lin.out): void {
  const N = lin.out; const kb = lin.in / 128; const sW = lin.s;
  for (let r = 0; r < rows; r++) {
    for (let n = 0; n < N; n++) {
      const po = (r * N + n) * kb; const so = (n >> 7) * kb;
      let total = 0;
      for (let b = 0; b < kb; b++) total = fr(total + fr(fr(P[po + b]) * fr(sA[r * kb + b] * sW[so + b])));
      out[outOff + r * outStride + n] = bf16(total);
    }
  }
}

function fp8Rows4(A: Float32Array, sA: Float32Array, r: number, lin: Fp8Linear, out: Float32Array, outOff: number, outStride: number): void {
  const K = lin.in; const N = lin.out; const kb = K / 128; const W = lin.w; const sW = lin.s;
  const a0 = r * K; const a1 = a0 + K; const a2 = a1 + K; const a3 = a2 + K;
  for (let n = 0; n < N; n++) {
    const wo = n * K; const so = (n >> 7) * kb;
    let t0 = 0; let t1 = 0; let t2 = 0; let t3 = 0;
    for (let b = 0; b < kb; b++) {
      let p0 = 0; let p1 = 0; let p2 = 0; let p3 = 0;
      const c1 = b * 128 + 128;
      for (let c = b * 128; c < c1; c += 2) {
        const w0 = W[wo + c]; const w1 = W[wo + c + 1];
        p0 += w0 * A[a0 + c] + w1 * A[a0 + c + 1];
        p1 += w0 * A[a1 + c] + w1 * A[a1 + c + 1];
        p2 += w0 * A[a2 + c] + w1 * A[a2 + c + 1];
        p3 += w0 * A[a3 + c] + w1 * A[a3 + c + 1];
      }
      const sw = sW[so + b];
      t0 = fr(t0 + fr(fr(p0) * fr(sA[r * kb + b] * sw)));
      t1 = fr(t1 + fr(fr(p1) * fr(sA[(r + 1) * kb + b] * sw)));
      t2 = fr(t2 + fr(fr(p2) * fr(sA[(r + 2) * kb + b] * sw)));
      t3 = fr(t3 + fr(fr(p3) * fr(sA[(r + 3) * kb + b] * sw)));
    }
    const o = outOff + r * outStride + n;
    out[o] = bf16(t0); out[o + outStride] = bf16(t1); out[o + 2 * outStride] = bf16(t2); out[o + 3 * outStride] = bf16(t3);
  }
}

function fp8Row1(A: Float32Array, sA: Float32Array, r: number, lin: Fp8Linear, out: Float32Array, outOff: number, outStride: number): void {
  const K = lin.in; const N = lin.out; const kb = K / 128; const W = lin.w; const sW = lin.s;
  const ao = r * K;
  for (let n = 0; n < N; n++) {
    const wo = n * K; const so = (n >> 7) * kb;
    let total = 0;
    for (let b = 0; b < kb; b++) {
      let p0 = 0; let p1 = 0; let p2 = 0; let p3 = 0;
      const c0 = b * 128;
      for (let c = c0; c < c0 + 128; c += 4) {
        p0 += W[wo + c] * A[ao + c]; p1 += W[wo + c + 1] * A[ao + c + 1];
        p2 += W[wo + c + 2] * A[ao + c + 2]; p3 += W[wo + c + 3] * A[ao + c + 3];
      }
      total = fr(total + fr(fr((p0 + p1) + (p2 + p3)) * fr(sA[r * kb + b] * sW[so + b])));
    }
    out[outOff + r * outStride + n] = bf16(total);
  }
}

/**
 * Plain linear out = x . W^T for f32/bf16 weights [N, K]: f64 accumulation, f32 result (bf16 when `toBF16`).
 * Two activation rows share each weight load.
 */
export function linear(x: Float32Array, rows: number, W: Float32Array, N: number, K: number, out: Float32Array, toBF16: boolean,
  xOff = 0, xStride = K, outOff = 0, outStride = N, wOff = 0): void {
  let r = 0;
  for (; r + 2 <= rows; r += 2) {
    const a0 = xOff + r * xStride; const a1 = a0 + xStride;
    for (let n = 0; n < N; n++) {
      const wo = wOff + n * K;
      let p0 = 0; let p1 = 0; let q0 = 0; let q1 = 0;
      let c = 0;
      for (; c + 2 <= K; c += 2) {
        const w0 = W[wo + c]; const w1 = W[wo + c + 1];
        p0 += w0 * x[a0 + c]; p1 += w1 * x[a0 + c + 1];
        q0 += w0 * x[a1 + c]; q1 += w1 * x[a1 + c + 1];
      }
      for (; c < K; c++) { p0 += W[wo + c] * x[a0 + c]; q0 += W[wo + c] * x[a1 + c]; }
      const o0 = outOff + r * outStride + n;
      out[o0] = toBF16 ? bf16(p0 + p1) : p0 + p1;
      out[o0 + outStride] = toBF16 ? bf16(q0 + q1) : q0 + q1;
    }
  }
  for (; r < rows; r++) {
    const a0 = xOff + r * xStride;
    for (let n = 0; n < N; n++) {
      const wo = wOff + n * K;
      let p0 = 0; let p1 = 0; let p2 = 0; let p3 = 0;
      let c = 0;
      for (; c + 4 <= K; c += 4) {
        p0 += W[wo + c] * x[a0 + c]; p1 += W[wo + c + 1] * x[a0 + c + 1];
        p2 += W[wo + c + 2] * x[a0 + c + 2]; p3 += W[wo + c + 3] * x[a0 + c + 3];
      }
      for (; c < K; c++) p0 += W[wo + c] * x[a0 + c];
      const v = (p0 + p1) + (p2 + p3);
      out[outOff + r * outStride + n] = toBF16 ? bf16(v) : v;
    }
  }
}

export const sigmoid = (z: number): number => 1 / (1 + Math.exp(-z));
