// config.json of a DeepSeek-V4 checkpoint -> a typed, validated config, and the MoeShape a MoE layer needs.
//
// Both spellings are accepted: the Hugging Face config (hidden_size, moe_intermediate_size, ...) and the
// reference inference config (dim, moe_inter_dim, ...; V4-MODEL 0.1). If both spellings of a key are present
// they must agree. Every key the MoE depends on is REQUIRED: the reference ModelArgs defaults are not the real
// values (route_scale 1, swiglu_limit 0, 8 experts...), so guessing would silently compute another model.
// Two documented exceptions, both describing the only behaviour the V4 reference code has:
//   - norm_topk_prob defaults to true, topk_method to "noaux_tc" (the inference config does not carry them);
//   - expert_dtype defaults to "fp8": in the reference code every Linear without an explicit dtype takes the
//     model dtype ("fp8"), and Flash-Base ships FP8 experts; V4-Flash declares "fp4" explicitly. The layer loader
//     also checks the stored expert dtype against this, and when the key is absent and the tensors are packed
//     FP4 (I8) it follows the tensors (see moe-layer.ts), so a config without the key still loads correctly.
// The attention keys (SPEC 1) are parsed when present and passed through; megamoe does not use them yet.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MoeShape } from '../moe/types.js';
import { CheckpointError } from './errors.js';

export type ExpertDtype = 'fp8' | 'fp4';

export interface QuantizationConfig {
  quantMethod?: string;
  fmt?: string;
  /** [128, 128] for every published V4 checkpoint. */
  weightBlockSize?: [number, number];
  scaleFmt?: string;
  activationScheme?: string;
}

/** Attention-side and other whole-model keys; optional, parsed for completeness, not used by the MoE. */
export interface AttentionConfig {
  numAttentionHeads?: number;
  numKeyValueHeads?: number;
  headDim?: number;
  qkRopeHeadDim?: number;
  qLoraRank?: number;
  oLoraRank?: number;
  oGroups?: number;
  slidingWindow?: number;
  compressRatios?: number[];
  indexNHeads?: number;
  indexHeadDim?: number;
  indexTopk?: number;
  hcMult?: number;
  hcSinkhornIters?: number;
  hcEps?: number;
  ropeTheta?: number;
  compressRopeTheta?: number;
  rmsNormEps?: number;
  maxPositionEmbeddings?: number;
  ropeScaling?: Record<string, unknown>;
}

/** Every MoeShape key (moeShapeFromConfig picks them out) plus the whole-model keys. */
export interface DeepSeekV4Config extends MoeShape {
  /** Where it was read from (for error messages). */
  source: string;
  numHiddenLayers: number;
  /** Multi-token-prediction blocks after the main stack (`mtp.{j}.`), 0 when absent. */
  numNextnPredictLayers: number;
  expertDtype: ExpertDtype;
  /** False when expert_dtype was absent and "fp8" is the default. */
  expertDtypeDeclared: boolean;
  quantization?: QuantizationConfig;
  attention: AttentionConfig;
  /** The whole parsed JSON, for keys this module does not model. */
  raw: Readonly<Record<string, unknown>>;
}

type Kind = 'positive-int' | 'non-negative-int' | 'number' | 'string' | 'boolean';

class Reader {
  constructor(readonly source: string, readonly raw: Record<string, unknown>) {}

  /** The value under the first present alias; if several aliases are present they must agree. */
  private pick(aliases: readonly string[]): { key: string; value: unknown } | undefined {
    let found: { key: string; value: unknown } | undefined;
    for (const key of aliases) {
      if (!Object.prototype.hasOwnProperty.call(this.raw, key) || this.raw[key] === null) continue;
      const value = this.raw[key];
      if (found && JSON.stringify(found.value) !== JSON.stringify(value)) {
        throw new CheckpointError({ file: this.source, key }, `disagrees with "${found.key}" (${JSON.stringify(value)} vs ${JSON.stringify(found.value)}); remove one of them`);
      }
      found ??= { key, value };
    }
    return found;
  }

  private check(key: string, value: unknown, kind: Kind): void {
    const bad = (what: string) => new CheckpointError({ file: this.source, key }, `must be ${what}, got ${JSON.stringify(value)} (${Array.isArray(value) ? 'array' : typeof value})`);
    switch (kind) {
      case 'positive-int': if (!(typeof value === 'number' && Number.isSafeInteger(value) && value > 0)) throw bad('a positive integer'); break;
      case 'non-negative-int': if (!(typeof value === 'number' && Number.isSafeInteger(value) && value >= 0)) throw bad('a non-negative integer'); break;
      case 'number': if (!(typeof value === 'number' && Number.isFinite(value))) throw bad('a finite number'); break;
      case 'string': if (typeof value !== 'string') throw bad('a string'); break;
      case 'boolean': if (typeof value !== 'boolean') throw bad('true or false'); break;
    }
  }

  required<T>(aliases: readonly string[], kind: Kind): T {
    const found = this.pick(aliases);
    if (!found) {
      const spelled = aliases.length > 1 ? ` (or ${aliases.slice(1).map((a) => `"${a}"`).join(', ')})` : '';
      throw new CheckpointError({ file: this.source, key: aliases[0] }, `missing${spelled}; megamoe never guesses a MoE setting (the reference defaults are not the model's values), add it to config.json`);
    }
    this.check(found.key, found.value, kind);
    return found.value as T;
  }

  optional<T>(aliases: readonly string[], kind: Kind): T | undefined {
    const found = this.pick(aliases);
    if (!found) return undefined;
    this.check(found.key, found.value, kind);
    return found.value as T;
  }

  intArray(key: string): number[] | undefined {
    const value = this.raw[key];
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value) || !value.every((v) => Number.isSafeInteger(v) && v >= 0)) {
      throw new CheckpointError({ file: this.source, key }, `must be an array of non-negative integers, got ${JSON.stringify(value)}`);
    }
    return value as number[];
  }
}

function parseQuantization(source: string, value: unknown): QuantizationConfig | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new CheckpointError({ file: source, key: 'quantization_config' }, `must be an object, got ${JSON.stringify(value)}`);
  }
  const r = new Reader(source, value as Record<string, unknown>);
  const q: QuantizationConfig = {
    quantMethod: r.optional(['quant_method'], 'string'),
    fmt: r.optional(['fmt'], 'string'),
    scaleFmt: r.optional(['scale_fmt'], 'string'),
    activationScheme: r.optional(['activation_scheme'], 'string'),
  };
  const wbs = r.intArray('weight_block_size');
  if (wbs !== undefined) {
    if (wbs.length !== 2 || wbs[0] !== 128 || wbs[1] !== 128) {
      throw new CheckpointError({ file: source, key: 'quantization_config.weight_block_size' }, `is ${JSON.stringify(wbs)}; megamoe supports 128x128 weight blocks only (every DeepSeek-V4 checkpoint uses [128, 128])`);
    }
    q.weightBlockSize = [wbs[0], wbs[1]];
  }
  // The FP8 format changes the math: anything but e4m3 weights with dynamic per-128 activation scales is refused.
  const only = (key: string, value: string | undefined, allowed: readonly string[], why: string) => {
    if (value !== undefined && !allowed.includes(value)) {
      throw new CheckpointError({ file: source, key: `quantization_config.${key}` }, `is ${JSON.stringify(value)}; megamoe supports ${allowed.map((a) => JSON.stringify(a)).join(' or ')} only (${why})`);
    }
  };
  only('quant_method', q.quantMethod, ['fp8'], 'block-scaled FP8 as every DeepSeek-V4 checkpoint ships');
  only('fmt', q.fmt, ['e4m3'], 'the kernels and the reference decode e4m3fn codes; e5m2 or other codes would be misread');
  only('scale_fmt', q.scaleFmt, ['ue8m0'], 'SPEC 3 activation scales; remove the key or use "ue8m0"');
  only('activation_scheme', q.activationScheme, ['dynamic'], 'activations are quantized per token per 128 columns at run time; static scales are not read');
  return q;
}

/** Config keys whose other values would change the MoE math that megamoe implements; refused, not ignored. */
function checkSupported(source: string, raw: Record<string, unknown>, topkMethod: string, swigluLimit: number): void {
  const refuse = (key: string, problem: string) => new CheckpointError({ file: source, key }, problem);
  if (swigluLimit < 0) {
    throw new CheckpointError({ file: source, key: 'swiglu_limit' }, `is ${swigluLimit}; it must be >= 0 (0 = no clamp, DeepSeek-V4 uses 10.0)`);
  }
  if (topkMethod !== 'noaux_tc') {
    throw new CheckpointError({ file: source, key: 'topk_method' }, `is ${JSON.stringify(topkMethod)}; megamoe implements "noaux_tc" only (top-k of score + gate.bias, DeepSeek-V4), remove the key or set it to "noaux_tc"`);
  }
  const modelType = raw.model_type;
  if (modelType !== undefined && modelType !== null && modelType !== 'deepseek_v4') {
    throw new CheckpointError({ file: source, key: 'model_type' }, `is ${JSON.stringify(modelType)}; megamoe runs DeepSeek-V4 checkpoints (model_type "deepseek_v4") only`);
  }
  // Group-limited selection (DeepSeek-V3's n_group / topk_group) is not what V4 does; refuse it when it would bite.
  const nGroup = raw.n_group ?? raw.n_expert_groups;
  const topkGroup = raw.topk_group ?? raw.n_limited_groups;
  if (typeof nGroup === 'number' && nGroup > 1 && !(typeof topkGroup === 'number' && topkGroup >= nGroup)) {
    throw refuse(raw.n_group !== undefined ? 'n_group' : 'n_expert_groups', `is ${nGroup} with topk_group ${JSON.stringify(topkGroup)}: group-limited expert selection is not implemented (DeepSeek-V4 selects over all experts); use n_group 1`);
  }
  const act = raw.hidden_act;
  if (act !== undefined && act !== null && act !== 'silu') {
    throw refuse('hidden_act', `is ${JSON.stringify(act)}; the experts are SwiGLU (silu), the only activation implemented`);
  }
  // The reference inference config carries the FP8 settings at the top level (V4-MODEL 0.1).
  if (raw.scale_fmt !== undefined && raw.scale_fmt !== null && raw.scale_fmt !== 'ue8m0') {
    throw refuse('scale_fmt', `is ${JSON.stringify(raw.scale_fmt)}; megamoe supports "ue8m0" (or no key) only`);
  }
}

/** Validates a parsed config.json object. `source` names the file in errors. */
export function parseDeepSeekV4Config(json: unknown, source = 'config.json'): DeepSeekV4Config {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new CheckpointError({ file: source }, 'config must be a JSON object');
  }
  const raw = json as Record<string, unknown>;
  const r = new Reader(source, raw);

  const hiddenSize = r.required<number>(['hidden_size', 'dim'], 'positive-int');
  const moeIntermediateSize = r.required<number>(['moe_intermediate_size', 'moe_inter_dim'], 'positive-int');
  const nRoutedExperts = r.required<number>(['n_routed_experts'], 'positive-int');
  const numExpertsPerTok = r.required<number>(['num_experts_per_tok', 'n_activated_experts'], 'positive-int');
  const nSharedExperts = r.required<number>(['n_shared_experts'], 'non-negative-int');
  const numHiddenLayers = r.required<number>(['num_hidden_layers', 'n_layers'], 'positive-int');
  const numHashLayers = r.required<number>(['num_hash_layers', 'n_hash_layers'], 'non-negative-int');
  const scoringFunc = r.required<string>(['scoring_func', 'score_func'], 'string');
  const routedScalingFactor = r.required<number>(['routed_scaling_factor', 'route_scale'], 'number');
  const swigluLimit = r.required<number>(['swiglu_limit'], 'number');
  const vocabSize = r.required<number>(['vocab_size'], 'positive-int');
  const normTopkProb = r.optional<boolean>(['norm_topk_prob'], 'boolean') ?? true;
  const topkMethod = r.optional<string>(['topk_method'], 'string') ?? 'noaux_tc';
  const declared = r.optional<string>(['expert_dtype'], 'string');

  if (numExpertsPerTok > nRoutedExperts) {
    throw new CheckpointError({ file: source, key: 'num_experts_per_tok' }, `is ${numExpertsPerTok}, more than n_routed_experts (${nRoutedExperts})`);
  }
  if (!(routedScalingFactor > 0)) {
    throw new CheckpointError({ file: source, key: 'routed_scaling_factor' }, `must be positive, got ${routedScalingFactor}`);
  }
  checkSupported(source, raw, topkMethod, swigluLimit);
  if (declared !== undefined && declared !== 'fp8' && declared !== 'fp4') {
    throw new CheckpointError({ file: source, key: 'expert_dtype' }, `must be "fp8" or "fp4", got ${JSON.stringify(declared)}`);
  }

  const attention: AttentionConfig = {
    numAttentionHeads: r.optional(['num_attention_heads', 'n_heads'], 'positive-int'),
    numKeyValueHeads: r.optional(['num_key_value_heads'], 'positive-int'),
    headDim: r.optional(['head_dim'], 'positive-int'),
    qkRopeHeadDim: r.optional(['qk_rope_head_dim', 'rope_head_dim'], 'positive-int'),
    qLoraRank: r.optional(['q_lora_rank'], 'positive-int'),
    oLoraRank: r.optional(['o_lora_rank'], 'positive-int'),
    oGroups: r.optional(['o_groups'], 'positive-int'),
    slidingWindow: r.optional(['sliding_window', 'window_size'], 'positive-int'),
    compressRatios: r.intArray('compress_ratios'),
    indexNHeads: r.optional(['index_n_heads'], 'positive-int'),
    indexHeadDim: r.optional(['index_head_dim'], 'positive-int'),
    indexTopk: r.optional(['index_topk'], 'positive-int'),
    hcMult: r.optional(['hc_mult'], 'positive-int'),
    hcSinkhornIters: r.optional(['hc_sinkhorn_iters'], 'non-negative-int'),
    hcEps: r.optional(['hc_eps'], 'number'),
    ropeTheta: r.optional(['rope_theta'], 'number'),
    compressRopeTheta: r.optional(['compress_rope_theta'], 'number'),
    rmsNormEps: r.optional(['rms_norm_eps', 'norm_eps'], 'number'),
    maxPositionEmbeddings: r.optional(['max_position_embeddings'], 'positive-int'),
  };
  const numNextnPredictLayers = r.optional<number>(['num_nextn_predict_layers', 'n_mtp_layers'], 'non-negative-int') ?? 0;
  const ropeScaling = raw.rope_scaling;
  if (ropeScaling !== undefined && ropeScaling !== null) {
    if (typeof ropeScaling !== 'object' || Array.isArray(ropeScaling)) {
      throw new CheckpointError({ file: source, key: 'rope_scaling' }, `must be an object, got ${JSON.stringify(ropeScaling)}`);
    }
    attention.ropeScaling = { ...(ropeScaling as Record<string, unknown>) };
  }

  return {
    source,
    hiddenSize, moeIntermediateSize, nRoutedExperts, numExpertsPerTok, nSharedExperts, numHiddenLayers,
    numNextnPredictLayers, numHashLayers, scoringFunc, topkMethod, normTopkProb, routedScalingFactor, swigluLimit, vocabSize,
    expertDtype: (declared as ExpertDtype | undefined) ?? 'fp8',
    expertDtypeDeclared: declared !== undefined,
    quantization: parseQuantization(source, raw.quantization_config),
    attention,
    raw: Object.freeze({ ...raw }),
  };
}

/** Reads and validates config.json; `p` is the file or the checkpoint directory holding it. */
export function loadDeepSeekV4Config(p: string): DeepSeekV4Config {
  let file = path.resolve(p);
  if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new CheckpointError({ file }, 'cannot read config.json (is this a checkpoint directory?)');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new CheckpointError({ file }, `not valid JSON: ${(err as Error).message}`);
  }
  return parseDeepSeekV4Config(json, file);
}

/** The MoE-relevant part of the config, as moe/ consumes it. */
export function moeShapeFromConfig(cfg: DeepSeekV4Config): MoeShape {
  return {
    hiddenSize: cfg.hiddenSize,
    moeIntermediateSize: cfg.moeIntermediateSize,
    nRoutedExperts: cfg.nRoutedExperts,
    numExpertsPerTok: cfg.numExpertsPerTok,
    nSharedExperts: cfg.nSharedExperts,
    numHashLayers: cfg.numHashLayers,
    scoringFunc: cfg.scoringFunc,
    topkMethod: cfg.topkMethod,
    normTopkProb: cfg.normTopkProb,
    routedScalingFactor: cfg.routedScalingFactor,
    swigluLimit: cfg.swigluLimit,
    vocabSize: cfg.vocabSize,
  };
}
