// Block quantization to e4m3 (SPEC 3): activations per token per 128 columns, weights per 128x128 block.
// The arithmetic mirrors the GPU kernels step by step in f32 (Math.fround), so staging is bit-exact.
import { encodeE4M3, E4M3_DECODE, E4M3_MAX } from './e4m3.js';

export const QUANT_BLOCK = 128;
/** The amax floor, as the f32 constant 1e-4f that the kernels use. */
export const AMAX_FLOOR = Math.fround(1e-4);

export interface QuantizedRows {
  /** e4m3 codes [rows, cols]. */
  q: Uint8Array;
  /** f32 scales [rows, cols / 128], row-major. */
  sf: Float32Array;
}

function checkRowShape(what: string, length: number, rows: number, cols: number): void {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 0 || cols < 0) {
    throw new Error(`${what}: invalid shape [${rows}, ${cols}]`);
  }
  if (cols % QUANT_BLOCK !== 0) throw new Error(`${what}: ${cols} columns is not a multiple of ${QUANT_BLOCK}`);
  if (length !== rows * cols) throw new Error(`${what}: ${length} values do not fill [${rows}, ${cols}]`);
}

function blockAmax(x: ArrayLike<number>, start: number): number {
  let amax = 0;
  for (let i = start; i < start + QUANT_BLOCK; i++) {
    const a = Math.abs(x[i]);
    if (a > amax) amax = a;
  }
  return Math.fround(amax);
}

/**
 * The shared loop of both row quantizers: per row, per 128 columns, amax = max(|x|, 1e-4f), scale =
 * scaleOf(amax), q = e4m3(x * f32(1 / scale)). x[i] * inv is exact in f64 for f32 inputs, so encodeE4M3's
 * rounding to f32 gives the f32 product the kernels compute.
 */
function quantizeRows(what: string, x: ArrayLike<number>, rows: number, cols: number, out: QuantizedRows | undefined,
  scaleOf: (amax: number) => number): QuantizedRows {
  checkRowShape(what, x.length, rows, cols);
  const blocks = cols / QUANT_BLOCK;
  const q = out?.q ?? new Uint8Array(rows * cols);
  const sf = out?.sf ?? new Float32Array(rows * blocks);
  if (q.length !== rows * cols || sf.length !== rows * blocks) {
    throw new Error(`${what}: out holds ${q.length} codes and ${sf.length} scales, [${rows}, ${cols}] needs ${rows * cols} and ${rows * blocks}`);
  }
  for (let b = 0; b < rows * blocks; b++) {
    const start = b * QUANT_BLOCK;
    const scale = scaleOf(Math.max(blockAmax(x, start), AMAX_FLOOR));
    const inv = Math.fround(1 / scale); // exact for the power-of-two scales
    sf[b] = scale;
    for (let i = start; i < start + QUANT_BLOCK; i++) q[i] = encodeE4M3(x[i] * inv);
  }
  return { q, sf };
}

/**
 * Staging quantization: per row, per 128 columns, amax = max(|x|, 1e-4f), sf = amax / 448 (f32),
 * q = e4m3(x * (1 / sf)) with f32 products. Values are taken as given (f32/bf16 values as numbers).
 */
export function quantizeRowsF32Scale(x: ArrayLike<number>, rows: number, cols: number,
  out?: QuantizedRows): QuantizedRows {
  return quantizeRows('quantizeRowsF32Scale', x, rows, cols, out, (amax) => Math.fround(amax / E4M3_MAX));
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** 2^ceil(log2(r)) for a positive normal f32 r, read off its bits (exponent, plus one if any mantissa bit is set). */
export function pow2Ceil(r: number): number {
  f32Scratch[0] = r;
  const bits = u32Scratch[0];
  const exp = ((bits >>> 23) & 0xff) - 127;
  return 2 ** (exp + ((bits & 0x7fffff) !== 0 ? 1 : 0));
}

/**
 * Down-projection input quantization ("ue8m0" activations): per row, per 128 columns,
 * s = 2^ceil(log2(max(amax, 1e-4f) / 448)), q = e4m3(x / s).
 */
export function quantizeRowsPow2Scale(x: ArrayLike<number>, rows: number, cols: number,
  out?: QuantizedRows): QuantizedRows {
  return quantizeRows('quantizeRowsPow2Scale', x, rows, cols, out, (amax) => pow2Ceil(Math.fround(amax / E4M3_MAX)));
}

/** Dequantizes per-row-block codes back to f32: x = decode(q) * sf. */
export function dequantizeRows({ q, sf }: QuantizedRows, rows: number, cols: number): Float32Array {
  checkRowShape('dequantizeRows', q.length, rows, cols);
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < out.length; i++) out[i] = E4M3_DECODE[q[i]] * sf[(i / QUANT_BLOCK) | 0];
  return out;
}

export interface QuantizedWeight {
  /** e4m3 codes [n, k]. */
  q: Uint8Array;
  /** f32 scales [ceil(n/128), ceil(k/128)], K blocks innermost. */
  s: Float32Array;
  n: number;
  k: number;
}

export interface WeightQuantOptions {
  /** Round each block scale up to a power of two (the checkpoints' "ue8m0" scale format). */
  pow2Scales?: boolean;
}

/** 128x128 block quantization of a weight [n, k]: S = amax / 448 per block (1 for an all-zero block), q = e4m3(w / S). */
export function quantizeWeightBlocks(w: ArrayLike<number>, n: number, k: number,
  options: WeightQuantOptions = {}): QuantizedWeight {
  if (w.length !== n * k) throw new Error(`quantizeWeightBlocks: ${w.length} values do not fill [${n}, ${k}]`);
  const nb = Math.ceil(n / QUANT_BLOCK);
  const kb = Math.ceil(k / QUANT_BLOCK);
  const q = new Uint8Array(n * k);
  const s = new Float32Array(nb * kb);
  for (let bn = 0; bn < nb; bn++) {
    const r0 = bn * QUANT_BLOCK; const r1 = Math.min(n, r0 + QUANT_BLOCK);
    for (let bk = 0; bk < kb; bk++) {
      const c0 = bk * QUANT_BLOCK; const c1 = Math.min(k, c0 + QUANT_BLOCK);
      let amax = 0;
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(w[r * k + c]));
      let scale = amax > 0 ? Math.fround(amax / E4M3_MAX) : 1;
      if (options.pow2Scales) scale = pow2Ceil(scale);
      s[bn * kb + bk] = scale;
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) q[r * k + c] = encodeE4M3(w[r * k + c] / scale);
    }
  }
  return { q, s, n, k };
}

/** Dequantizes a block-quantized weight to f32 [n, k]. */
export function dequantizeWeightBlocks({ q, s, n, k }: QuantizedWeight): Float32Array {
  const kb = Math.ceil(k / QUANT_BLOCK);
  const out = new Float32Array(n * k);
  for (let r = 0; r < n; r++) {
    const srow = ((r / QUANT_BLOCK) | 0) * kb;
    for (let c = 0; c < k; c++) out[r * k + c] = E4M3_DECODE[q[r * k + c]] * s[srow + ((c / QUANT_BLOCK) | 0)];
  }
  return out;
}
