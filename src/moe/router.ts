// The router (SPEC 2 steps 1-4), shared by every backend: routing is computed once, on the host, here.
//
// Numerics, chosen to be reproducible by a GPU kernel step by step:
// - Logits: x (bf16) and Wg (bf16) are widened exactly; each dot product is accumulated in f64 and rounded once
//   to f32. That is the most accurate f32 logit; a GPU GEMM accumulating in f32 differs by a few ulps, which is
//   why the GPU routing kernel is compared against `routeFromLogits` applied to the SAME logits, not against
//   `routerLogits`.
// - Everything after the logits is f32, each operation rounded (Math.fround), in this order:
//     sp = max(l, 0) + log1p(exp(-|l|))      (stable softplus; exp, log1p, + each rounded)
//     s  = sqrt(sp)
//     b  = s + bias[e]                        (selection key; bias only on score-routed layers)
//   Selection: K passes, each taking the largest b not yet taken, ties to the LOWER expert index
//   (so ids come out in descending b order). Hash layers take tid2eid[token_id] as is, in table order.
//     w_j = s[id_j]                           (the unbiased score)
//     sum = ((w_0 + w_1) + w_2) + ...         (slot order, masked slots skipped)
//     w_j = w_j / max(sum, f32(1e-20))        (if norm_topk_prob)
//     w_j = w_j * f32(routed_scaling_factor)
//   A GPU's expf/log1pf may differ from the correctly rounded JS functions by an ulp, so scores and weights
//   match a GPU to ~1e-7 relative, and ids match except at exact near-ties of b.
// - A masked slot (id -1, e.g. in a tid2eid row) gets weight 0 and is left out of the sum.
import { decodeBF16Array } from '../numerics/bf16.js';
import { HostTensor } from '../tensor/host.js';
import { checkScoringFunc, GuardError } from './guards.js';
import type { MoeLayerWeights, MoeShape } from './types.js';

const fr = Math.fround;
const NORM_FLOOR = Math.fround(1e-20);

export interface RoutingResult {
  /** [T, K] expert ids (descending biased score for score-routed layers; table order for hash layers), -1 = masked. */
  topkIds: HostTensor<'I32'>;
  /** [T, K] f32 routing weights (0 for masked slots). */
  topkWeights: HostTensor<'F32'>;
}

/**
 * Router logits l[t, e] = sum_h x[t, h] * Wg[e, h], f64 accumulation rounded once to f32.
 * x: bf16 bits [T, H]; gate: bf16 bits [E, H]. Returns f32 [T, E].
 */
export function routerLogits(x: Uint16Array, gate: Uint16Array, T: number, H: number, E: number): Float32Array {
  if (x.length !== T * H) throw new GuardError('BAD_INPUT', `routerLogits: x has ${x.length} values, expected [${T}, ${H}]`, 'pass bf16 bits [T, H]');
  if (gate.length !== E * H) throw new GuardError('BAD_INPUT', `routerLogits: gate has ${gate.length} values, expected [${E}, ${H}]`, 'pass gate.weight bf16 bits [E, H]');
  const xf = decodeBF16Array(x);
  const gf = decodeBF16Array(gate);
  const out = new Float32Array(T * E);
  for (let t = 0; t < T; t++) {
    const xo = t * H;
    for (let e = 0; e < E; e++) {
      const go = e * H;
      let acc = 0;
      for (let h = 0; h < H; h++) acc += xf[xo + h] * gf[go + h];
      out[t * E + e] = acc; // the Float32Array store rounds to f32 (nearest even)
    }
  }
  return out;
}

/** Stable softplus in f32: max(z, 0) + log1p(exp(-|z|)), each step rounded to f32. */
export function softplusF32(z: number): number {
  return fr(Math.max(z, 0) + fr(Math.log1p(fr(Math.exp(-Math.abs(z))))));
}

/** The score s = sqrt(softplus(l)) in f32. */
export function sqrtSoftplusF32(z: number): number {
  return fr(Math.sqrt(softplusF32(z)));
}

export interface RouteOptions {
  shape: MoeShape;
  /** Selection bias [E] (score-routed layers); absent means zero. */
  bias?: Float32Array;
  /** Hash table [vocab, K] (hash layers): its presence makes this a hash-routed call. */
  tid2eid?: Int32Array;
  /** Token ids [T] (hash layers only). */
  tokenIds?: ArrayLike<number | bigint>;
}

/** SPEC 2 steps 2-4 on given f32 logits [T, E]. */
export function routeFromLogits(logits: Float32Array, opts: RouteOptions): RoutingResult {
  const { shape, bias, tid2eid, tokenIds } = opts;
  checkScoringFunc(shape);
  const E = shape.nRoutedExperts;
  const K = shape.numExpertsPerTok;
  if (!(K > 0 && K <= E)) throw new GuardError('BAD_INPUT', `num_experts_per_tok ${K} with ${E} experts`, 'need 0 < K <= E');
  if (logits.length % E !== 0) {
    throw new GuardError('BAD_INPUT', `router logits have ${logits.length} values, not a multiple of n_routed_experts ${E}`, 'pass logits [T, E]');
  }
  const T = logits.length / E;
  if (bias && bias.length !== E) throw new GuardError('BAD_INPUT', `gate bias has ${bias.length} values, expected ${E}`, 'pass gate.bias [E]');
  if (tid2eid) {
    if (!tokenIds || tokenIds.length !== T) {
      throw new GuardError('BAD_INPUT', `a hash layer needs one token id per token (${T}), got ${tokenIds ? tokenIds.length : 'none'}`, 'pass tokenIds [T]');
    }
    if (tid2eid.length % K !== 0) throw new GuardError('BAD_INPUT', `tid2eid has ${tid2eid.length} values, not [vocab, ${K}]`, 'pass gate.tid2eid [vocab, K]');
  }
  const ids = new Int32Array(T * K);
  const weights = new Float32Array(T * K);
  const scores = new Float32Array(E);
  const keys = new Float32Array(E);
  const taken = new Uint8Array(E);
  const scale = fr(shape.routedScalingFactor);

  for (let t = 0; t < T; t++) {
    for (let e = 0; e < E; e++) {
      const l = logits[t * E + e];
      if (!Number.isFinite(l)) {
        throw new GuardError('BAD_INPUT', `router logit [token ${t}, expert ${e}] is ${l}`, 'the hidden states or gate weights contain NaN/Inf; check the input');
      }
      scores[e] = sqrtSoftplusF32(l);
    }
    const row = t * K;
    if (tid2eid) {
      const tok = Number(tokenIds![t]);
      const vocab = tid2eid.length / K;
      if (!(Number.isInteger(tok) && tok >= 0 && tok < vocab)) {
        throw new GuardError('BAD_INPUT', `token id ${tok} (token ${t}) is outside the vocabulary [0, ${vocab})`, 'pass token ids from the model vocabulary');
      }
      for (let j = 0; j < K; j++) {
        const id = tid2eid[tok * K + j];
        if (!(id === -1 || (id >= 0 && id < E))) {
          throw new GuardError('BAD_INPUT', `tid2eid[${tok}, ${j}] = ${id} is not an expert id`, `hash table entries must be in [0, ${E}) or -1`);
        }
        ids[row + j] = id;
      }
    } else {
      for (let e = 0; e < E; e++) keys[e] = bias ? fr(scores[e] + bias[e]) : scores[e];
      taken.fill(0);
      for (let j = 0; j < K; j++) {
        let best = -1;
        let bestKey = -Infinity;
        for (let e = 0; e < E; e++) {
          // Strict '>' keeps the first (lowest-index) expert among equal keys.
          if (!taken[e] && (best < 0 || keys[e] > bestKey)) { best = e; bestKey = keys[e]; }
        }
        taken[best] = 1;
        ids[row + j] = best;
      }
    }
    let sum = 0;
    for (let j = 0; j < K; j++) {
      const id = ids[row + j];
      const w = id < 0 ? 0 : scores[id];
      weights[row + j] = w;
      if (id >= 0) sum = fr(sum + w);
    }
    if (shape.normTopkProb) {
      const denom = Math.max(sum, NORM_FLOOR);
      for (let j = 0; j < K; j++) weights[row + j] = fr(weights[row + j] / denom);
    }
    for (let j = 0; j < K; j++) weights[row + j] = fr(weights[row + j] * scale);
  }
  return {
    topkIds: new HostTensor('I32', [T, K], ids),
    topkWeights: new HostTensor('F32', [T, K], weights),
  };
}

/** Routes hidden states x (BF16 [T, H]) through a layer's gate: logits, then routeFromLogits. */
export function routeLayer(layer: MoeLayerWeights, x: HostTensor<'BF16'>, tokenIds?: ArrayLike<number | bigint>):
  RoutingResult & { logits: Float32Array } {
  const s = layer.shape;
  if (x.dtype !== 'BF16' || x.shape.length !== 2 || x.shape[1] !== s.hiddenSize) {
    throw new GuardError('BAD_INPUT', `hidden states x is ${x.describe()}, expected BF16[T, ${s.hiddenSize}]`, 'pass x as BF16 [tokens, hidden_size]');
  }
  if (layer.isHashLayer && !layer.tid2eid) {
    throw new GuardError('BAD_INPUT', `layer ${layer.layer} is a hash layer without gate.tid2eid`, 'load the layer with its gate.tid2eid table');
  }
  const T = x.shape[0];
  const logits = routerLogits(x.data, layer.gateWeight.data, T, s.hiddenSize, s.nRoutedExperts);
  const r = routeFromLogits(logits, layer.isHashLayer
    ? { shape: s, tid2eid: layer.tid2eid, tokenIds }
    : { shape: s, bias: layer.gateBias });
  return { ...r, logits };
}

/** Ids widened to I64, the dtype the GPU staging takes and the dump files hold. */
export function idsToI64(ids: HostTensor<'I32'>): HostTensor<'I64'> {
  const out = new BigInt64Array(ids.data.length);
  for (let i = 0; i < out.length; i++) out[i] = BigInt(ids.data[i]);
  return new HostTensor('I64', ids.shape, out);
}
