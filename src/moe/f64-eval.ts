// An f64 evaluation of the expert half of the MoE block WITHOUT activation quantization: the yardstick for
// accuracy figures (SPEC 5: the reference and every backend against this, calc_diff <= 1e-3).
// Same routing (the caller passes the reference router's ids and weights), weights dequantized exactly
// (q * S, which is what the checkpoint means), x taken as its bf16 values, and every step in f64: no staging,
// no bf16 rounding of o_j, y_routed or y_shared, no e4m3 rounding of the SwiGLU output.
import { decodeBF16Array } from '../numerics/bf16.js';
import { QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import type { HostTensor } from '../tensor/host.js';
import { codeWords, rowBlockPartials } from './block-partials.js';
import { checkExpertWeights, checkForwardInputs, checkHiddenStatesFinite, type TopkIdsTensor } from './guards.js';
import { slotsByExpert, type ReferenceRunOptions } from './experts.js';
import type { ExpertWeights, MoeLayerWeights } from './types.js';

/** out[i * outStride + r] = sum_kb S[r / 128, kb] * (sum_{c in kb} dec(q[r, c]) * act[i, c]): q * S times act, in f64. */
function gemmF64(w: QuantizedWeight, act: Float64Array, n: number, out: Float64Array, outStride: number): void {
  const kBlocks = w.k / QUANT_BLOCK;
  const words = codeWords(w.q);
  const partials = new Float64Array(n * kBlocks);
  for (let r = 0; r < w.n; r++) {
    rowBlockPartials(words, r, w.k, act, n, partials);
    const sOff = (r >> 7) * kBlocks;
    for (let i = 0; i < n; i++) {
      let total = 0;
      for (let kb = 0; kb < kBlocks; kb++) total += partials[i * kBlocks + kb] * w.s[sOff + kb];
      out[i * outStride + r] = total;
    }
  }
}

/** One FFN in f64 for rows of x (tokens[i], weight[i]); adds the weighted outputs into out's token rows. */
function ffnF64(ffn: ExpertWeights, xs: Float64Array, H: number, tokens: number[], weights: number[],
  limit: number, out: Float64Array): void {
  const inter = ffn.w1.n;
  const n = tokens.length;
  const xin = new Float64Array(n * H);
  for (let i = 0; i < n; i++) xin.set(xs.subarray(tokens[i] * H, tokens[i] * H + H), i * H);
  const g = new Float64Array(n * inter);
  const u = new Float64Array(n * inter);
  gemmF64(ffn.w1, xin, n, g, inter);
  gemmF64(ffn.w3, xin, n, u, inter);
  const a = new Float64Array(n * inter);
  for (let i = 0; i < n; i++) {
    for (let c = i * inter; c < (i + 1) * inter; c++) {
      let gv = g[c];
      let uv = u[c];
      if (limit > 0) { gv = Math.min(gv, limit); uv = Math.min(Math.max(uv, -limit), limit); }
      a[c] = (gv / (1 + Math.exp(-gv))) * uv * weights[i];
    }
  }
  const o = new Float64Array(n * H);
  gemmF64(ffn.w2, a, n, o, H);
  for (let i = 0; i < n; i++) {
    const dst = tokens[i] * H;
    for (let h = 0; h < H; h++) out[dst + h] += o[i * H + h];
  }
}

export interface F64EvalResult {
  /** f64 [T, H] sum of the routed experts this rank owns */
  yRouted: Float64Array;
  /** f64 [T, H] shared expert */
  yShared: Float64Array;
  /** f64 [T, H] yRouted + yShared */
  y: Float64Array;
}

/** The f64 evaluation for a batch; inputs as for runExpertsReference. */
export function evalMoeF64(layer: MoeLayerWeights, x: HostTensor<'BF16'>, topkIds: TopkIdsTensor,
  topkWeights: HostTensor<'F32'>, options: ReferenceRunOptions = {}): F64EvalResult {
  const shape = layer.shape;
  const T = checkForwardInputs(shape, x, topkIds, topkWeights);
  checkHiddenStatesFinite(x);
  const H = shape.hiddenSize;
  const K = shape.numExpertsPerTok;
  const xs = Float64Array.from(decodeBF16Array(x.data));
  const yRouted = new Float64Array(T * H);
  const experts = slotsByExpert(layer, topkIds, T * K);
  let total = T;
  for (const slots of experts.values()) total += slots.length;
  let done = 0;
  for (const [id, slots] of experts) {
    const ffn = layer.experts.get(id);
    checkExpertWeights(`layers.${layer.layer}.ffn.experts.${id}`, ffn, H, shape.moeIntermediateSize);
    ffnF64(ffn, xs, H, slots.map((s) => (s / K) | 0), slots.map((s) => topkWeights.data[s]), shape.swigluLimit, yRouted);
    done += slots.length;
    options.onProgress?.(done, total);
  }
  const yShared = new Float64Array(T * H);
  checkExpertWeights(`layers.${layer.layer}.ffn.shared_experts`, layer.sharedExpert, H, layer.sharedExpert.w1.n);
  ffnF64(layer.sharedExpert, xs, H, Array.from({ length: T }, (_, t) => t), new Array<number>(T).fill(1),
    shape.swigluLimit, yShared);
  options.onProgress?.(total, total);
  const y = new Float64Array(T * H);
  for (let i = 0; i < y.length; i++) y[i] = yRouted[i] + yShared[i];
  return { yRouted, yShared, y };
}
