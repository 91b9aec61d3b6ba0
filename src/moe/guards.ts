// The one place that decides whether a MoE layer, a device and a batch can run (SPEC 4). Every backend calls
// these checks (the reference included), so a refusal reads the same whichever backend hit it, and every
// refusal says what to change. Nothing here throws anything but GuardError.
import { QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import type { HostTensor } from '../tensor/host.js';
import type { ExpertWeights, MoeLayerWeights, MoeShape } from './types.js';

export type GuardCode =
  | 'NOT_SM90'
  | 'EXPERT_PARALLEL_DISABLED'
  | 'SCORING_FUNC'
  | 'DIM_NOT_ALIGNED'
  | 'SCALE_DTYPE'
  | 'SCALE_SHAPE'
  | 'WEIGHT_SHAPE'
  | 'TOKEN_CAPACITY'
  | 'EXPERT_DTYPE'
  | 'BAD_INPUT';

/** A refusal: `code` for programs, `fix` for people; the message already contains the fix. */
export class GuardError extends Error {
  readonly code: GuardCode;
  readonly fix: string;
  constructor(code: GuardCode, problem: string, fix: string) {
    super(`${problem}: ${fix}`);
    this.name = 'GuardError';
    this.code = code;
    this.fix = fix;
  }
}

/** A GPU as the guards see it: compute capability and a name for messages. */
export interface DeviceArch {
  major: number;
  minor: number;
  name?: string;
}

function archLabel(arch: DeviceArch): string {
  return `sm_${arch.major}${arch.minor}${arch.name ? ` (${arch.name})` : ''}`;
}

/** The fused FP8 MegaMoE kernel is written for sm_90a (Hopper wgmma/TMA); anything else is refused. */
export function checkSm90(arch: DeviceArch | undefined, backend = 'mega_moe'): void {
  if (!arch) {
    throw new GuardError('NOT_SM90', `backend ${backend} needs an sm_90 (Hopper) GPU and none was found`,
      'run on a Hopper GPU (H100/H200/H800/H20) or choose --backend reference (CPU)');
  }
  if (arch.major === 10) {
    throw new GuardError('NOT_SM90', `backend ${backend} is megamoe's Hopper FP8 kernel and this GPU is ${archLabel(arch)} (Blackwell)`,
      'the Blackwell FP8 x FP4 MegaMoE path (DeepGEMM sm_100) is not part of megamoe: run on a Hopper GPU, or choose --backend reference (CPU)');
  }
  if (arch.major !== 9 || arch.minor !== 0) {
    throw new GuardError('NOT_SM90', `backend ${backend} needs an sm_90 (Hopper) GPU, this one is ${archLabel(arch)}`,
      'run on a Hopper GPU (H100/H200/H800/H20) or choose --backend reference (CPU)');
  }
}

/** The fused kernel owns whole experts per rank and exchanges tokens itself: it only exists with EP on. */
export function checkExpertParallel(enabled: boolean | undefined, backend = 'mega_moe'): void {
  if (!enabled) {
    throw new GuardError('EXPERT_PARALLEL_DISABLED', `backend ${backend} needs expert parallelism, which is not enabled`,
      'pass --enable-expert-parallel (with --ep-size 1 on a single GPU), or choose --backend unfused or reference');
  }
}

/** The router and every kernel implement sqrt(softplus(l)) scores only (DeepSeek-V4). */
export function checkScoringFunc(shape: Pick<MoeShape, 'scoringFunc'>): void {
  if (shape.scoringFunc !== 'sqrtsoftplus') {
    throw new GuardError('SCORING_FUNC', `scoring_func is "${shape.scoringFunc}", only "sqrtsoftplus" is implemented`,
      'use a DeepSeek-V4 config.json (scoring_func "sqrtsoftplus"); other scoring functions are not supported');
  }
}

/** FP8 staging and the 128x128 block scales need H and I to be whole multiples of 128. */
export function checkMoeDims(shape: Pick<MoeShape, 'hiddenSize' | 'moeIntermediateSize'>): void {
  const bad: string[] = [];
  if (!(Number.isInteger(shape.hiddenSize) && shape.hiddenSize > 0 && shape.hiddenSize % QUANT_BLOCK === 0)) {
    bad.push(`hidden_size ${shape.hiddenSize}`);
  }
  if (!(Number.isInteger(shape.moeIntermediateSize) && shape.moeIntermediateSize > 0
    && shape.moeIntermediateSize % QUANT_BLOCK === 0)) {
    bad.push(`moe_intermediate_size ${shape.moeIntermediateSize}`);
  }
  if (bad.length > 0) {
    throw new GuardError('DIM_NOT_ALIGNED', `${bad.join(' and ')} not a positive multiple of ${QUANT_BLOCK}`,
      `choose sizes that are multiples of ${QUANT_BLOCK} (FP8 staging and 128x128 weight blocks need it)`);
  }
}

/** A scale tensor as a checkpoint describes it, before it becomes a Float32Array. */
export interface ScaleDescriptor {
  dtype: string;
  shape: readonly number[];
}

/**
 * A weight [n, k] needs f32 block scales shaped [E, ceil(n/128), ceil(k/128)] (stacked experts) or
 * [ceil(n/128), ceil(k/128)] (one expert). `experts` is E when a stacked tensor is expected.
 */
export function checkWeightScale(name: string, scale: ScaleDescriptor, n: number, k: number, experts?: number): void {
  if (scale.dtype !== 'F32') {
    throw new GuardError('SCALE_DTYPE', `${name}: weight scale is ${scale.dtype}, the FP8 kernels need F32`,
      'load the checkpoint through checkpoint/ (it widens e8m0 scales to f32 and converts fp4 experts), or store F32 scales');
  }
  const nb = Math.ceil(n / QUANT_BLOCK);
  const kb = Math.ceil(k / QUANT_BLOCK);
  const perExpert = [nb, kb];
  const stacked = experts === undefined ? undefined : [experts, nb, kb];
  const same = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
  if (same(scale.shape, perExpert) || (stacked && same(scale.shape, stacked))) return;
  const want = stacked ? `[${stacked.join(', ')}] or [${perExpert.join(', ')}]` : `[${perExpert.join(', ')}]`;
  throw new GuardError('SCALE_SHAPE', `${name}: weight scale shape [${scale.shape.join(', ')}] does not match weight [${n}, ${k}]`,
    `expected ${want} (one f32 scale per 128x128 block, K blocks innermost)`);
}

/** Checks one QuantizedWeight against the [n, k] it must have, codes and scales. */
export function checkQuantizedWeight(name: string, w: QuantizedWeight, n: number, k: number): void {
  if (w.n !== n || w.k !== k || w.q.length !== n * k) {
    throw new GuardError('WEIGHT_SHAPE', `${name}: weight is [${w.n}, ${w.k}] with ${w.q.length} codes, expected [${n}, ${k}]`,
      'check that config.json (hidden_size, moe_intermediate_size) matches the checkpoint tensors');
  }
  if (!(w.s instanceof Float32Array)) {
    throw new GuardError('SCALE_DTYPE', `${name}: weight scale is not a Float32Array`, 'give f32 block scales');
  }
  const nb = Math.ceil(n / QUANT_BLOCK);
  const kb = Math.ceil(k / QUANT_BLOCK);
  checkWeightScale(name, { dtype: 'F32', shape: w.s.length === nb * kb ? [nb, kb] : [w.s.length] }, n, k);
}

/** One FFN: w1, w3 [inter, H], w2 [H, inter]. */
export function checkExpertWeights(name: string, e: ExpertWeights, hidden: number, inter: number): void {
  checkQuantizedWeight(`${name}.w1`, e.w1, inter, hidden);
  checkQuantizedWeight(`${name}.w3`, e.w3, inter, hidden);
  checkQuantizedWeight(`${name}.w2`, e.w2, hidden, inter);
}

/** A backend built for at most `capacity` tokens per forward refuses more, instead of overrunning buffers. */
export function checkTokenCapacity(tokens: number, capacity: number | undefined, backend = 'this backend'): void {
  if (capacity !== undefined && tokens > capacity) {
    throw new GuardError('TOKEN_CAPACITY', `a batch of ${tokens} tokens exceeds the capacity of ${capacity} tokens ${backend} was prepared for`,
      `prepare it with maxTokens >= ${tokens}, or split the batch`);
  }
}

export type ExpertPath = 'fp8-native' | 'fp4-to-fp8-conversion' | 'fp4-sm100';

/**
 * Which path an expert checkpoint takes on a device (SPEC 4): fp8 runs as is; fp4 (MXFP4) goes to the sm_100
 * FP4 path on Blackwell and through the load-time FP4 -> FP8 conversion on Hopper (and on the CPU).
 * Not an error for fp4: the result says which path and why.
 */
export function expertDtypePath(expertDtype: string, arch?: DeviceArch): { path: ExpertPath; note: string } {
  if (expertDtype === 'fp8') return { path: 'fp8-native', note: 'fp8 experts run as stored (e4m3, 128x128 f32 scales)' };
  if (expertDtype === 'fp4') {
    if (arch && arch.major === 10) {
      return { path: 'fp4-sm100', note: `fp4 experts on ${archLabel(arch)}: the sm_100 FP4 path (not implemented here)` };
    }
    return {
      path: 'fp4-to-fp8-conversion',
      note: `fp4 experts on ${arch ? archLabel(arch) : 'the CPU'}: converted at load to e4m3 with 128x128 f32 scales (Hopper has no FP4 tensor cores)`,
    };
  }
  throw new GuardError('EXPERT_DTYPE', `expert_dtype "${expertDtype}" is not known`, 'use "fp8" or "fp4" in config.json');
}

/** Everything about a layer that every backend relies on: scoring, alignment, K <= E, tensor shapes. */
export function checkLayer(layer: MoeLayerWeights): void {
  const s = layer.shape;
  checkScoringFunc(s);
  checkMoeDims(s);
  const H = s.hiddenSize;
  const E = s.nRoutedExperts;
  const K = s.numExpertsPerTok;
  if (!(Number.isInteger(E) && E > 0 && Number.isInteger(K) && K > 0 && K <= E)) {
    throw new GuardError('BAD_INPUT', `layer ${layer.layer}: num_experts_per_tok ${K} with n_routed_experts ${E}`,
      'need 0 < num_experts_per_tok <= n_routed_experts in config.json');
  }
  const g = layer.gateWeight;
  if (g.dtype !== 'BF16' || g.shape.length !== 2 || g.shape[0] !== E || g.shape[1] !== H) {
    throw new GuardError('WEIGHT_SHAPE', `layer ${layer.layer}: gate.weight is ${g.describe()}, expected BF16[${E}, ${H}]`,
      'check that config.json matches the checkpoint');
  }
  if (layer.isHashLayer) {
    if (!layer.tid2eid || layer.tid2eid.length !== s.vocabSize * K) {
      throw new GuardError('WEIGHT_SHAPE', `layer ${layer.layer} is a hash layer but gate.tid2eid is ${layer.tid2eid ? `${layer.tid2eid.length} values` : 'missing'}`,
        `give gate.tid2eid [${s.vocabSize}, ${K}] (vocab_size x num_experts_per_tok)`);
    }
  } else if (layer.gateBias && layer.gateBias.length !== E) {
    throw new GuardError('WEIGHT_SHAPE', `layer ${layer.layer}: gate.bias has ${layer.gateBias.length} values, expected ${E}`,
      'check that config.json matches the checkpoint');
  }
  const sharedInter = layer.sharedExpert.w1.n;
  if (sharedInter % QUANT_BLOCK !== 0) {
    throw new GuardError('DIM_NOT_ALIGNED', `layer ${layer.layer}: shared expert intermediate size ${sharedInter} is not a multiple of ${QUANT_BLOCK}`,
      'use n_shared_experts * moe_intermediate_size that is a multiple of 128');
  }
  checkExpertWeights(`layers.${layer.layer}.ffn.shared_experts`, layer.sharedExpert, H, sharedInter);
}

/**
 * The GPU backends run the shared expert as one more group of the routed experts' GEMMs, so its intermediate size
 * must be the routed one (n_shared_experts = 1).
 */
export function checkSharedExpertAsGroup(layer: MoeLayerWeights, backend: string): void {
  const inter = layer.shape.moeIntermediateSize;
  if (layer.sharedExpert.w1.n !== inter) {
    throw new GuardError('WEIGHT_SHAPE',
      `layer ${layer.layer}: the shared expert's intermediate size ${layer.sharedExpert.w1.n} differs from moe_intermediate_size ${inter}`,
      `the ${backend} backend runs the shared expert as one more group of the routed experts' GEMMs, so it needs n_shared_experts = 1 (or use --backend reference)`);
  }
}

/** Ids may come as I32 or I64; these read them uniformly. */
export type TopkIdsTensor = HostTensor<'I32'> | HostTensor<'I64'>;

/**
 * Generic forward() input checks: x BF16 [T, H], topk ids I32/I64 [T, K] with values in [0, E) or -1 (masked),
 * topk weights F32 [T, K], all finite. Returns T.
 */
export function checkForwardInputs(shape: MoeShape, x: HostTensor, topkIds: HostTensor, topkWeights: HostTensor): number {
  const H = shape.hiddenSize;
  const K = shape.numExpertsPerTok;
  const E = shape.nRoutedExperts;
  if (x.dtype !== 'BF16' || x.shape.length !== 2 || x.shape[1] !== H) {
    throw new GuardError('BAD_INPUT', `hidden states x is ${x.describe()}, expected BF16[T, ${H}]`,
      `pass x as a BF16 tensor of shape [tokens, hidden_size=${H}]`);
  }
  const T = x.shape[0];
  if ((topkIds.dtype !== 'I32' && topkIds.dtype !== 'I64') || topkIds.shape.length !== 2
    || topkIds.shape[0] !== T || topkIds.shape[1] !== K) {
    throw new GuardError('BAD_INPUT', `topk_ids is ${topkIds.describe()}, expected I32 or I64 [${T}, ${K}]`,
      'pass the router output ids, one row of num_experts_per_tok ids per token');
  }
  if (topkWeights.dtype !== 'F32' || topkWeights.shape.length !== 2 || topkWeights.shape[0] !== T || topkWeights.shape[1] !== K) {
    throw new GuardError('BAD_INPUT', `topk_weights is ${topkWeights.describe()}, expected F32[${T}, ${K}]`,
      'pass the router output weights, one row of num_experts_per_tok f32 weights per token');
  }
  const ids = topkIds.data as Int32Array | BigInt64Array;
  for (let i = 0; i < ids.length; i++) {
    const id = Number(ids[i]);
    if (!(id === -1 || (Number.isInteger(id) && id >= 0 && id < E))) {
      throw new GuardError('BAD_INPUT', `topk_ids[${Math.floor(i / K)}, ${i % K}] = ${id} is out of range`,
        `ids must be in [0, ${E}) or -1 for a masked slot`);
    }
  }
  const w = topkWeights.data as Float32Array;
  for (let i = 0; i < w.length; i++) {
    if (!Number.isFinite(w[i])) {
      throw new GuardError('BAD_INPUT', `topk_weights[${Math.floor(i / K)}, ${i % K}] = ${w[i]} is not finite`,
        'the router produced a non-finite weight: check the hidden states and gate weights for NaN/Inf');
    }
  }
  return T;
}

/**
 * x BF16 [T, H] holds no NaN/Inf. A host pass over T x H values (~40 ms at T 8192, H 4096 on one core), so the CPU
 * paths (reference, f64 evaluation) run it and GPU forwards do not: a GPU backend's non-finite input shows up as a
 * non-finite output, which moe/output-check.ts reports.
 */
export function checkHiddenStatesFinite(x: HostTensor): void {
  const xb = x.data as Uint16Array;
  const H = x.shape[1] || 1;
  for (let i = 0; i < xb.length; i++) {
    if ((xb[i] & 0x7f80) === 0x7f80) {
      throw new GuardError('BAD_INPUT', `hidden states x[${Math.floor(i / H)}, ${i % H}] is not finite (bf16 bits 0x${xb[i].toString(16)})`,
        'the hidden states contain NaN/Inf: check what produced them (the previous layer or the input)');
    }
  }
}

/** The fused backend's full list (SPEC 4), in the SPEC's order: device, EP, scoring, alignment, scales, capacity. */
export interface MegaMoeSupportQuery {
  arch: DeviceArch | undefined;
  enableExpertParallel: boolean | undefined;
  layer: MoeLayerWeights;
  tokens?: number;
  capacity?: number;
}

export function checkMegaMoeSupport(q: MegaMoeSupportQuery): void {
  checkSm90(q.arch, 'mega_moe');
  checkExpertParallel(q.enableExpertParallel, 'mega_moe');
  checkLayer(q.layer);
  if (q.tokens !== undefined) checkTokenCapacity(q.tokens, q.capacity, 'mega_moe');
}
