// The exact CPU reference of the expert half of the MoE block (SPEC 2 steps 5-6 with SPEC 3's FP8 rounding
// points). Every GPU backend is held to this within calc_diff 1e-5.
//
// Rounding points, in order (f32 = Math.fround):
//  1. Staging: x (bf16) per token per 128 columns -> e4m3 codes + f32 scale (numerics' quantizeRowsF32Scale).
//  2. L1 GEMMs g = x.W1^T, u = x.W3^T: per 128-wide K block the products of decoded e4m3 codes are summed.
//     Those products have <= 8 significant bits within 2^-18..2^18, so their f64 sum is EXACT in any order;
//     it is rounded once to f32 (the block partial p). Then, per block: sc = f32(x_sf * S),
//     total = f32(total + f32(p * sc)), blocks in ascending K order, total starting at 0.
//  3. SwiGLU in f32 with limit L > 0: g = min(g, L), u = min(max(u, -L), L);
//     silu = f32(g / f32(1 + f32(exp(-g)))), a = f32(f32(silu * u) * w_j).
//  4. a quantized per row per 128 columns with power-of-two scales (quantizeRowsPow2Scale).
//  5. L2 GEMM o = a.W2^T the same block-scaled way as 2; o_j rounded to bf16.
//  6. Combine: acc = f32(acc + f32(o_j)) over the token's slots j = 0..K-1 in slot order (masked slots and, with
//     expert parallelism, experts of other ranks skipped), y_routed = bf16(acc).
//  7. Shared expert: steps 1-5 with weight 1 -> bf16 y_shared; y = bf16(f32(y_routed) + f32(y_shared)).
//
// Speed: tokens are grouped by expert, so each expert is read once per forward; block-partials.ts decodes
// each weight row through a table, four codes per load, shared by four tokens at a time.
import { decodeBF16Array, encodeBF16 } from '../numerics/bf16.js';
import { E4M3_DECODE } from '../numerics/e4m3.js';
import { QUANT_BLOCK, quantizeRowsF32Scale, quantizeRowsPow2Scale, type QuantizedWeight } from '../numerics/quant.js';
import { HostTensor } from '../tensor/host.js';
import { codeWords, rowBlockPartials } from './block-partials.js';
import { wasmGemm, type WasmMatrix } from '../numerics/wasm-gemm.js';
import { checkExpertWeights, checkForwardInputs, checkHiddenStatesFinite, type TopkIdsTensor } from './guards.js';
import type { ExpertWeights, MoeLayerWeights } from './types.js';

const fr = Math.fround;
/** e4m3 decode table widened to f64 once, so the hot loops never convert. */
const DEC = Float64Array.from(E4M3_DECODE);

/**
 * Small weights (<= SIMD_MAX_CODES codes, SIMD_BUDGET_CODES in all) get a decoded f32 copy in the WebAssembly SIMD
 * kernels' memory (numerics/wasm-gemm.ts) on first use; larger ones (a flash expert is 8.4 M codes per
 * projection) keep the JS loops, whose memory use is the codes alone.
 */
const SIMD_MAX_CODES = 1 << 22;
const SIMD_BUDGET_CODES = 1 << 27;
let simdCodes = 0;
const simdWeights = new WeakMap<Uint8Array, WasmMatrix | null>();
function simdWeight(w: QuantizedWeight): WasmMatrix | undefined {
  if (!wasmGemm()) return undefined;
  let m = simdWeights.get(w.q);
  if (m === undefined) {
    m = null;
    const g = wasmGemm();
    if (g && w.q.length <= SIMD_MAX_CODES && simdCodes + w.q.length <= SIMD_BUDGET_CODES && w.k % QUANT_BLOCK === 0) {
      const dec = new Float32Array(w.q.length);
      for (let i = 0; i < dec.length; i++) dec[i] = E4M3_DECODE[w.q[i]];
      try { m = g.matrix(dec, w.n, w.k); simdCodes += w.q.length; } catch { m = null; }
    }
    simdWeights.set(w.q, m);
  }
  return m ?? undefined;
}

/** Rows of one FFN's batch: which token each row is, its routing weight and where its bf16 output goes. */
interface Assignment {
  /** token index per row */
  tokens: Int32Array;
  /** routing weight per row */
  weights: Float32Array;
  /** element offset of each row's bf16 output in the output buffer */
  outOffsets: Int32Array;
  count: number;
}

/** Reusable buffers, grown on demand: a forward allocates per expert group, never per element. */
class Scratch {
  partials = new Float64Array(0);
  actIn = new Float64Array(0);
  sfIn = new Float32Array(0);
  g = new Float32Array(0);
  u = new Float32Array(0);
  act = new Float32Array(0);
  actDec = new Float64Array(0);
  o = new Float32Array(0);
  ensure(rows: number, hidden: number, inter: number): void {
    if (this.o.length < rows * hidden) this.o = new Float32Array(rows * hidden);
    const blocks = Math.max(hidden, inter) / QUANT_BLOCK;
    if (this.partials.length < rows * blocks) this.partials = new Float64Array(rows * blocks);
    if (this.actIn.length < rows * hidden) {
      this.actIn = new Float64Array(rows * hidden);
      this.sfIn = new Float32Array(rows * (hidden / QUANT_BLOCK));
    }
    if (this.g.length < rows * inter) {
      this.g = new Float32Array(rows * inter); this.u = new Float32Array(rows * inter);
      this.act = new Float32Array(rows * inter); this.actDec = new Float64Array(rows * inter);
    }
  }
}

/**
 * out[i * outStride + r] = SPEC 3 block-scaled GEMM element for weight row r and activation row i
 * (rounding point 2): total = f32(total + f32(f32(p_kb) * f32(act_sf[i, kb] * S[r / 128, kb]))).
 */
function fp8Gemm(w: QuantizedWeight, act: Float64Array, actSf: Float32Array, n: number, partials: Float64Array,
  out: Float32Array, outStride: number): void {
  const k = w.k;
  const kBlocks = k / QUANT_BLOCK;
  const simd = simdWeight(w);
  if (simd) {
    // Same block partials (exact f64 sums of e4m3 products, so the same bits), computed by the SIMD kernel.
    const P = simd.fp8Partials(act, n);
    for (let r = 0; r < w.n; r++) {
      const sOff = (r >> 7) * kBlocks;
      for (let i = 0; i < n; i++) {
        const po = (i * w.n + r) * kBlocks;
        let total = 0;
        for (let kb = 0; kb < kBlocks; kb++) {
          const sc = fr(actSf[i * kBlocks + kb] * w.s[sOff + kb]);
          total = fr(total + fr(fr(P[po + kb]) * sc));
        }
        out[i * outStride + r] = total;
      }
    }
    return;
  }
  const words = codeWords(w.q);
  for (let r = 0; r < w.n; r++) {
    rowBlockPartials(words, r, k, act, n, partials);
    const sOff = (r >> 7) * kBlocks;
    for (let i = 0; i < n; i++) {
      let total = 0;
      for (let kb = 0; kb < kBlocks; kb++) {
        const sc = fr(actSf[i * kBlocks + kb] * w.s[sOff + kb]);
        total = fr(total + fr(fr(partials[i * kBlocks + kb]) * sc));
      }
      out[i * outStride + r] = total;
    }
  }
}

/**
 * One FFN (a routed expert or the shared expert) for a group of token rows, writing bf16 outputs (rounding
 * points 2-5). xDec/xSf: the staged activations of all tokens [T, H] (codes decoded) and their scales.
 */
function runFfn(ffn: ExpertWeights, asg: Assignment, xDec: Float64Array, xSf: Float32Array, H: number,
  swigluLimit: number, out: Uint16Array, scratch: Scratch): void {
  const inter = ffn.w1.n;
  const n = asg.count;
  const hBlocks = H / QUANT_BLOCK;
  scratch.ensure(n, H, inter);
  const { partials, actIn, sfIn, g, u, act, actDec, o } = scratch;

  // Gather the group's staged rows so the GEMM reads them contiguously.
  for (let i = 0; i < n; i++) {
    const t = asg.tokens[i];
    actIn.set(xDec.subarray(t * H, t * H + H), i * H);
    sfIn.set(xSf.subarray(t * hBlocks, t * hBlocks + hBlocks), i * hBlocks);
  }

  // L1 (rounding point 2).
  fp8Gemm(ffn.w1, actIn, sfIn, n, partials, g, inter);
  fp8Gemm(ffn.w3, actIn, sfIn, n, partials, u, inter);

  // SwiGLU with the asymmetric clamp and the routing weight (rounding point 3).
  const L = fr(swigluLimit);
  const clamp = swigluLimit > 0;
  for (let i = 0; i < n; i++) {
    const wj = asg.weights[i];
    for (let c = i * inter; c < (i + 1) * inter; c++) {
      let gv = g[c];
      let uv = u[c];
      if (clamp) {
        if (gv > L) gv = L;
        if (uv > L) uv = L; else if (uv < -L) uv = -L;
      }
      const silu = fr(gv / fr(1 + fr(Math.exp(-gv))));
      act[c] = fr(fr(silu * uv) * wj);
    }
  }

  // Down-projection input: pow2-scaled e4m3 (rounding point 4).
  const aq = quantizeRowsPow2Scale(act.subarray(0, n * inter), n, inter);
  const aDec = actDec.subarray(0, n * inter);
  for (let i = 0; i < aDec.length; i++) aDec[i] = DEC[aq.q[i]];

  // L2 (rounding point 5): o in f32, then bf16 into each row's output slot.
  fp8Gemm(ffn.w2, aDec, aq.sf, n, partials, o, H);
  for (let i = 0; i < n; i++) {
    const dst = asg.outOffsets[i];
    for (let h = 0; h < H; h++) out[dst + h] = encodeBF16(o[i * H + h]);
  }
}

/** Rows per runFfn call: bounds the scratch memory for big batches (weights are re-read once per chunk). */
const MAX_ROWS = 256;

function runFfnChunked(ffn: ExpertWeights, asg: Assignment, xDec: Float64Array, xSf: Float32Array, H: number,
  swigluLimit: number, out: Uint16Array, scratch: Scratch, tick?: (rows: number) => void): void {
  if (asg.count <= MAX_ROWS) { runFfn(ffn, asg, xDec, xSf, H, swigluLimit, out, scratch); tick?.(asg.count); return; }
  for (let r0 = 0; r0 < asg.count; r0 += MAX_ROWS) {
    const r1 = Math.min(asg.count, r0 + MAX_ROWS);
    runFfn(ffn, {
      tokens: asg.tokens.subarray(r0, r1), weights: asg.weights.subarray(r0, r1),
      outOffsets: asg.outOffsets.subarray(r0, r1), count: r1 - r0,
    }, xDec, xSf, H, swigluLimit, out, scratch);
    tick?.(r1 - r0);
  }
}

export interface ReferenceRunOptions {
  /** Called as rows of expert work finish: `done` of `total` (token, slot) rows plus one shared-expert row a token. */
  onProgress?: (done: number, total: number) => void;
}

export interface ExpertsResult {
  /** bf16 [T, H]: the combine of the routed experts this rank owns */
  yRouted: HostTensor<'BF16'>;
  /** bf16 [T, H]: the shared expert's output */
  yShared: HostTensor<'BF16'>;
  /** bf16 [T, H]: bf16(f32(y_routed) + f32(y_shared)) */
  y: HostTensor<'BF16'>;
}

/** Reads ids of either dtype as numbers. */
export function idAt(ids: TopkIdsTensor, i: number): number {
  return ids.dtype === 'I32' ? (ids.data as Int32Array)[i] : Number((ids.data as BigInt64Array)[i]);
}

/**
 * The (token, slot) indexes t * K + j routed to each expert this rank owns, experts in ascending id order, slots in
 * token order; masked slots (-1) and other ranks' experts are left out.
 */
export function slotsByExpert(layer: MoeLayerWeights, topkIds: TopkIdsTensor, slots: number): Map<number, number[]> {
  const byExpert = new Map<number, number[]>();
  for (let i = 0; i < slots; i++) {
    const id = idAt(topkIds, i);
    if (id < 0 || !layer.experts.has(id)) continue;
    let list = byExpert.get(id);
    if (!list) { list = []; byExpert.set(id, list); }
    list.push(i);
  }
  return new Map([...byExpert].sort((a, b) => a[0] - b[0]));
}

/**
 * The reference expert computation for a whole batch. x: BF16 [T, H]; topkIds [T, K] (-1 masked);
 * topkWeights F32 [T, K]. Experts the layer's store does not own (expert parallelism) contribute nothing
 * on this rank; the shared expert is computed for every token.
 */
export function runExpertsReference(layer: MoeLayerWeights, x: HostTensor<'BF16'>, topkIds: TopkIdsTensor,
  topkWeights: HostTensor<'F32'>, options: ReferenceRunOptions = {}): ExpertsResult {
  const shape = layer.shape;
  const T = checkForwardInputs(shape, x, topkIds, topkWeights);
  checkHiddenStatesFinite(x);
  const H = shape.hiddenSize;
  const K = shape.numExpertsPerTok;
  const scratch = new Scratch();
  const experts = slotsByExpert(layer, topkIds, T * K);
  let total = T;
  for (const slots of experts.values()) total += slots.length;
  let done = 0;
  const onProgress = options.onProgress;
  const tick = onProgress ? (rows: number) => { done += rows; onProgress(done, total); } : undefined;

  // 1. Staging, once for all experts.
  const staged = quantizeRowsF32Scale(decodeBF16Array(x.data), T, H);
  const xDec = new Float64Array(T * H);
  for (let i = 0; i < xDec.length; i++) xDec[i] = DEC[staged.q[i]];

  // 2-5 per routed expert: outputs land in slot buffers [T, K, H] (bf16 bits).
  const slotOut = new Uint16Array(T * K * H);
  const slotUsed = new Uint8Array(T * K);
  for (const [id, slots] of experts) {
    const asg: Assignment = {
      tokens: Int32Array.from(slots, (s) => (s / K) | 0),
      weights: Float32Array.from(slots, (s) => topkWeights.data[s]),
      outOffsets: Int32Array.from(slots, (s) => s * H),
      count: slots.length,
    };
    const ffn = layer.experts.get(id);
    checkExpertWeights(`layers.${layer.layer}.ffn.experts.${id}`, ffn, H, shape.moeIntermediateSize);
    runFfnChunked(ffn, asg, xDec, staged.sf, H, shape.swigluLimit, slotOut, scratch, tick);
    for (const s of slots) slotUsed[s] = 1;
  }

  // 6. Combine in slot order.
  const yRouted = new Uint16Array(T * H);
  const slotF32 = new Float32Array(H);
  const acc = new Float32Array(H);
  for (let t = 0; t < T; t++) {
    acc.fill(0);
    for (let j = 0; j < K; j++) {
      const s = t * K + j;
      if (!slotUsed[s]) continue;
      decodeBF16Array(slotOut.subarray(s * H, s * H + H), slotF32);
      for (let h = 0; h < H; h++) acc[h] = acc[h] + slotF32[h]; // the f32 store rounds each sum
    }
    for (let h = 0; h < H; h++) yRouted[t * H + h] = encodeBF16(acc[h]);
  }

  // 7. Shared expert, weight 1, every token; then the final bf16 sum.
  checkExpertWeights(`layers.${layer.layer}.ffn.shared_experts`, layer.sharedExpert, H, layer.sharedExpert.w1.n);
  const yShared = new Uint16Array(T * H);
  const all: Assignment = {
    tokens: Int32Array.from({ length: T }, (_, t) => t),
    weights: new Float32Array(T).fill(1),
    outOffsets: Int32Array.from({ length: T }, (_, t) => t * H),
    count: T,
  };
  if (T > 0) runFfnChunked(layer.sharedExpert, all, xDec, staged.sf, H, shape.swigluLimit, yShared, scratch, tick);
  const y = new Uint16Array(T * H);
  const yr = decodeBF16Array(yRouted);
  const ys = decodeBF16Array(yShared);
  for (let i = 0; i < y.length; i++) y[i] = encodeBF16(yr[i] + ys[i]); // encodeBF16 rounds to f32 first
  return {
    yRouted: new HostTensor('BF16', [T, H], yRouted),
    yShared: new HostTensor('BF16', [T, H], yShared),
    y: new HostTensor('BF16', [T, H], y),
  };
}
