// The hot loop of the CPU expert math: per 128-wide K block, the dot product of one e4m3 weight row (codes,
// decoded through a table, scale NOT applied) with several activation rows. Callers combine the per-block
// partials with their own scales and rounding (experts.ts: SPEC 3's f32 steps; f64-eval.ts: plain f64).
//
// Why this shape: with e4m3 activations too (the reference), every product has <= 8 significant bits within
// 2^-18..2^18, so the f64 sum of a block is EXACT in any order. That frees the loop to use several independent
// accumulators and to read four codes per 32-bit load, and the result still equals the correctly rounded
// block sum that the SPEC's "accumulate each 128-wide K block" means. Four activation rows share each decoded
// weight, so a row of weights is decoded once per four tokens and never written to memory.
import { E4M3_DECODE } from '../numerics/e4m3.js';
import { QUANT_BLOCK } from '../numerics/quant.js';

const DEC = Float64Array.from(E4M3_DECODE);

/**
 * The codes as 32-bit words (4 codes each, little-endian: code k is byte k % 4 of word k / 4). A view when the
 * buffer is 4-byte aligned, else an aligned copy.
 */
export function codeWords(q: Uint8Array): Uint32Array {
  if (q.length % 4 !== 0) throw new Error(`codeWords: ${q.length} codes is not a multiple of 4`);
  if (q.byteOffset % 4 === 0) return new Uint32Array(q.buffer, q.byteOffset, q.length / 4);
  const copy = new Uint8Array(q.length);
  copy.set(q);
  return new Uint32Array(copy.buffer, 0, q.length / 4);
}

/**
 * Block partials of weight row `row` (of a [*, k] code matrix given as words) against n activation rows
 * act[i * k .. i * k + k): out[i * kBlocks + kb] = sum_{c in block kb} dec(q[row, c]) * act[i * k + c].
 * Four rows at a time, then one at a time: two separate loops in two functions, so each keeps stable type
 * feedback in the JIT (one function with both loops was deoptimized when its first big batch arrived).
 */
export function rowBlockPartials(words: Uint32Array, row: number, k: number, act: Float64Array, n: number,
  out: Float64Array): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) partialsFour(words, row, k, act, i, out);
  for (; i < n; i++) partialsOne(words, row, k, act, i, out);
}

/** Rows i..i+3: each decoded weight is used four times. */
function partialsFour(words: Uint32Array, row: number, k: number, act: Float64Array, i: number, out: Float64Array): void {
  const kBlocks = k / QUANT_BLOCK;
  const w0 = (row * k) >> 2;
  const a0 = i * k; const a1 = a0 + k; const a2 = a1 + k; const a3 = a2 + k;
  for (let kb = 0; kb < kBlocks; kb++) {
    let p0 = 0; let p1 = 0; let p2 = 0; let p3 = 0;
    const end = (kb + 1) * QUANT_BLOCK;
    for (let c = kb * QUANT_BLOCK; c < end; c += 4) {
      const w = words[w0 + (c >> 2)];
      const d0 = DEC[w & 255]; const d1 = DEC[(w >>> 8) & 255]; const d2 = DEC[(w >>> 16) & 255]; const d3 = DEC[w >>> 24];
      p0 += d0 * act[a0 + c] + d1 * act[a0 + c + 1] + d2 * act[a0 + c + 2] + d3 * act[a0 + c + 3];
      p1 += d0 * act[a1 + c] + d1 * act[a1 + c + 1] + d2 * act[a1 + c + 2] + d3 * act[a1 + c + 3];
      p2 += d0 * act[a2 + c] + d1 * act[a2 + c + 1] + d2 * act[a2 + c + 2] + d3 * act[a2 + c + 3];
      p3 += d0 * act[a3 + c] + d1 * act[a3 + c + 1] + d2 * act[a3 + c + 2] + d3 * act[a3 + c + 3];
    }
    out[i * kBlocks + kb] = p0;
    out[(i + 1) * kBlocks + kb] = p1;
    out[(i + 2) * kBlocks + kb] = p2;
    out[(i + 3) * kBlocks + kb] = p3;
  }
}

/** Row i alone: four independent accumulators (the sum is exact, so their order does not matter). */
function partialsOne(words: Uint32Array, row: number, k: number, act: Float64Array, i: number, out: Float64Array): void {
  const kBlocks = k / QUANT_BLOCK;
  const w0 = (row * k) >> 2;
  const a0 = i * k;
  for (let kb = 0; kb < kBlocks; kb++) {
    let p0 = 0; let p1 = 0; let p2 = 0; let p3 = 0;
    const end = (kb + 1) * QUANT_BLOCK;
    for (let c = kb * QUANT_BLOCK; c < end; c += 4) {
      const w = words[w0 + (c >> 2)];
      p0 += DEC[w & 255] * act[a0 + c];
      p1 += DEC[(w >>> 8) & 255] * act[a0 + c + 1];
      p2 += DEC[(w >>> 16) & 255] * act[a0 + c + 2];
      p3 += DEC[w >>> 24] * act[a0 + c + 3];
    }
    out[i * kBlocks + kb] = (p0 + p1) + (p2 + p3);
  }
}
