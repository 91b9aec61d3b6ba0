// The whole-model config of DeepSeek-V4 (V4-MODEL 0.1), typed and validated.
//
// The MoE keys come from checkpoint/config.ts (required there: no guessing). The attention, hyper-connection,
// RoPE and indexer keys are read here in both spellings V4-MODEL 0.1 lists (HF config / inference config); where a
// key is absent the PUBLISHED V4-Flash value is used (never the ModelArgs defaults, which are not the model's values:
// V4-MODEL 0.1 "Danger"). Constraints of V4-MODEL 11 are checked so a bad config fails here, by key, and not in
// the middle of a forward pass.
import { CheckpointError } from '../checkpoint/errors.js';
import type { DeepSeekV4Config } from '../checkpoint/config.js';

export interface YarnConfig {
  factor: number;
  originalSeqLen: number;
  betaFast: number;
  betaSlow: number;
}

export interface ModelConfig {
  source: string;
  /** The MoE/checkpoint-level config this was built from. */
  base: DeepSeekV4Config;
  vocabSize: number;
  /** D */
  dim: number;
  nLayers: number;
  nMtpLayers: number;
  nHashLayers: number;
  /** H */
  nHeads: number;
  /** d (K = V width) */
  headDim: number;
  /** rd: the last rd dims of a head carry RoPE */
  ropeHeadDim: number;
  qLoraRank: number;
  oGroups: number;
  oLoraRank: number;
  windowSize: number;
  /** One per layer, then one per MTP layer (V4-MODEL 0.2). */
  compressRatios: number[];
  ropeTheta: number;
  compressRopeTheta: number;
  yarn: YarnConfig;
  indexNHeads: number;
  indexHeadDim: number;
  indexTopk: number;
  hcMult: number;
  hcSinkhornIters: number;
  hcEps: number;
  normEps: number;
  /** Activation scales rounded to powers of two (quantization_config.scale_fmt "ue8m0"), else amax/448 (V4-MODEL 8.2). */
  pow2ActScales: boolean;
  /** Longest sequence a ModelSequence may reach (caches grow on demand up to it). */
  maxContext: number;
}

/** V4-Flash's published values (V4-MODEL 0.1), used where config.json has no such key. */
export const FLASH_DEFAULTS = Object.freeze({
  n_heads: 64, head_dim: 512, rope_head_dim: 64, q_lora_rank: 1024, o_groups: 8, o_lora_rank: 1024, window_size: 128,
  rope_theta: 10000, compress_rope_theta: 160000, rope_factor: 16, original_seq_len: 65536, beta_fast: 32, beta_slow: 1,
  index_n_heads: 64, index_head_dim: 128, index_topk: 512, hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6,
  norm_eps: 1e-6, n_mtp_layers: 1, max_context: 4096,
});

/** The published ratio pattern (V4-MODEL 0.2): layers 0, 1 window-only, then 4 / 128 alternating, MTP window-only. */
export function flashCompressRatios(nLayers: number, nMtp: number): number[] {
  const main = Array.from({ length: nLayers }, (_, i) => (i < 2 ? 0 : i % 2 === 0 ? 4 : 128));
  return [...main, ...Array.from({ length: nMtp }, () => 0)];
}

type Raw = Readonly<Record<string, unknown>>;

function pick(raw: Raw, source: string, aliases: readonly string[]): { key: string; value: unknown } | undefined {
  let found: { key: string; value: unknown } | undefined;
  for (const key of aliases) {
    if (!Object.prototype.hasOwnProperty.call(raw, key) || raw[key] === null || raw[key] === undefined) continue;
    if (found && JSON.stringify(found.value) !== JSON.stringify(raw[key])) {
      throw new CheckpointError({ file: source, key }, `disagrees with "${found.key}" (${JSON.stringify(raw[key])} vs ${JSON.stringify(found.value)}); remove one of them`);
    }
    found ??= { key, value: raw[key] };
  }
  return found;
}

function num(raw: Raw, source: string, aliases: readonly string[], fallback: number, kind: 'int' | 'pos-int' | 'number' | 'pos-number'): number {
  const f = pick(raw, source, aliases);
  if (!f) return fallback;
  const v = f.value;
  const ok = typeof v === 'number' && Number.isFinite(v)
    && (kind === 'number' || (kind === 'pos-number' ? v > 0 : Number.isSafeInteger(v) && (kind === 'int' ? v >= 0 : v > 0)));
  if (!ok) {
    const what = { int: 'a non-negative integer', 'pos-int': 'a positive integer', number: 'a finite number', 'pos-number': 'a positive number' }[kind];
    throw new CheckpointError({ file: source, key: f.key }, `must be ${what}, got ${JSON.stringify(v)}`);
  }
  return v as number;
}

const isPow2 = (n: number) => Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Builds and validates the whole-model config from a parsed checkpoint config. */
export function modelConfigFrom(base: DeepSeekV4Config): ModelConfig {
  const raw = base.raw;
  const src = base.source;
  const D = FLASH_DEFAULTS;
  const scaling = (typeof raw.rope_scaling === 'object' && raw.rope_scaling !== null ? raw.rope_scaling : {}) as Raw;
  const nLayers = base.numHiddenLayers;
  // num_nextn_predict_layers: absent -> 1 (ModelArgs and the published configs), but a checkpoint with no mtp.* tensors
  // declares 0 (the MoE-only synthetic checkpoints do), and then no MTP is built.
  const nMtp = num(raw, src, ['num_nextn_predict_layers', 'n_mtp_layers'], D.n_mtp_layers, 'int');
  const cfg: ModelConfig = {
    source: src,
    base,
    vocabSize: base.vocabSize,
    dim: base.hiddenSize,
    nLayers,
    nMtpLayers: nMtp,
    nHashLayers: base.numHashLayers,
    nHeads: num(raw, src, ['num_attention_heads', 'n_heads'], D.n_heads, 'pos-int'),
    headDim: num(raw, src, ['head_dim'], D.head_dim, 'pos-int'),
    ropeHeadDim: num(raw, src, ['qk_rope_head_dim', 'rope_head_dim'], D.rope_head_dim, 'pos-int'),
    qLoraRank: num(raw, src, ['q_lora_rank'], D.q_lora_rank, 'pos-int'),
    oGroups: num(raw, src, ['o_groups'], D.o_groups, 'pos-int'),
    oLoraRank: num(raw, src, ['o_lora_rank'], D.o_lora_rank, 'pos-int'),
    windowSize: num(raw, src, ['sliding_window', 'window_size'], D.window_size, 'pos-int'),
    compressRatios: [],
    ropeTheta: num(raw, src, ['rope_theta'], D.rope_theta, 'pos-number'),
    compressRopeTheta: num(raw, src, ['compress_rope_theta'], D.compress_rope_theta, 'pos-number'),
    yarn: {
      factor: num({ ...scaling, ...raw }, src, ['rope_factor', 'factor'], D.rope_factor, 'pos-number'),
      originalSeqLen: num({ ...scaling, ...raw }, src, ['original_seq_len', 'original_max_position_embeddings'], D.original_seq_len, 'int'),
      betaFast: num({ ...scaling, ...raw }, src, ['beta_fast'], D.beta_fast, 'pos-number'),
      betaSlow: num({ ...scaling, ...raw }, src, ['beta_slow'], D.beta_slow, 'pos-number'),
    },
    indexNHeads: num(raw, src, ['index_n_heads'], D.index_n_heads, 'pos-int'),
    indexHeadDim: num(raw, src, ['index_head_dim'], D.index_head_dim, 'pos-int'),
    indexTopk: num(raw, src, ['index_topk'], D.index_topk, 'pos-int'),
    hcMult: num(raw, src, ['hc_mult'], D.hc_mult, 'pos-int'),
    hcSinkhornIters: num(raw, src, ['hc_sinkhorn_iters'], D.hc_sinkhorn_iters, 'pos-int'),
    hcEps: num(raw, src, ['hc_eps'], D.hc_eps, 'pos-number'),
    normEps: num(raw, src, ['rms_norm_eps', 'norm_eps'], D.norm_eps, 'pos-number'),
    pow2ActScales: (base.quantization?.scaleFmt ?? (raw.scale_fmt as string | undefined) ?? 'ue8m0') === 'ue8m0',
    maxContext: num(raw, src, ['max_seq_len', 'max_position_embeddings'], D.max_context, 'pos-int'),
  };

  const ratios = raw.compress_ratios;
  if (ratios === undefined || ratios === null) {
    cfg.compressRatios = flashCompressRatios(nLayers, nMtp);
  } else {
    if (!Array.isArray(ratios) || !ratios.every((r) => Number.isSafeInteger(r) && r >= 0)) {
      throw new CheckpointError({ file: src, key: 'compress_ratios' }, `must be an array of non-negative integers, got ${JSON.stringify(ratios)}`);
    }
    // The reference reads compress_ratios[n_layers + j] for MTP layer j. A list of exactly n_layers entries (older
    // synthetic configs) gives the MTP layers ratio 0, which is what every published config has there.
    if (ratios.length < nLayers) {
      throw new CheckpointError({ file: src, key: 'compress_ratios' }, `has ${ratios.length} entries, num_hidden_layers is ${nLayers}: one ratio per layer (and per MTP layer) is needed`);
    }
    cfg.compressRatios = Array.from({ length: nLayers + nMtp }, (_, i) => (i < ratios.length ? ratios[i] as number : 0));
  }
  validate(cfg);
  return cfg;
}

function validate(c: ModelConfig): void {
  const bad = (key: string, why: string) => new CheckpointError({ file: c.source, key }, why);
  const nope = c.headDim - c.ropeHeadDim;
  if (c.ropeHeadDim % 2 !== 0) throw bad('qk_rope_head_dim', `is ${c.ropeHeadDim}; RoPE rotates pairs, it must be even`);
  if (nope < 0 || nope % 64 !== 0) throw bad('head_dim', `head_dim ${c.headDim} - rope dim ${c.ropeHeadDim} = ${nope} must be a non-negative multiple of 64 (the kv FP8 simulation works in blocks of 64; V4-MODEL 11)`);
  if (!isPow2(c.indexHeadDim) || c.indexHeadDim % 32 !== 0 || c.indexHeadDim < c.ropeHeadDim) {
    throw bad('index_head_dim', `is ${c.indexHeadDim}; it must be a power of two (Hadamard), a multiple of 32 (FP4 blocks) and >= the rope dim ${c.ropeHeadDim} (V4-MODEL 11)`);
  }
  for (const [key, v] of [['hidden_size', c.dim], ['q_lora_rank', c.qLoraRank]] as const) {
    if (v % 128 !== 0) throw bad(key, `is ${v}; the FP8 linears that read it need in_features divisible by 128 (V4-MODEL 11)`);
  }
  if ((c.oGroups * c.oLoraRank) % 128 !== 0) throw bad('o_lora_rank', `o_groups ${c.oGroups} x o_lora_rank ${c.oLoraRank} is wo_b's input; it must be divisible by 128`);
  if (c.nHeads % c.oGroups !== 0) throw bad('o_groups', `${c.oGroups} does not divide num_attention_heads ${c.nHeads} (V4-MODEL 11)`);
  if (c.base.moeIntermediateSize % 128 !== 0) throw bad('moe_intermediate_size', `is ${c.base.moeIntermediateSize}; the FP8 expert GEMMs need a multiple of 128`);
  if (c.base.nSharedExperts < 1) throw bad('n_shared_experts', 'is 0; the DeepSeek-V4 MoE block has a shared expert');
  if (c.hcMult < 1) throw bad('hc_mult', 'must be at least 1');
  for (let i = 0; i < c.compressRatios.length; i++) {
    const r = c.compressRatios[i];
    if (r === 1) throw bad('compress_ratios', `entry ${i} is 1; use 0 (window only), 4 (overlapping, with indexer) or a larger ratio`);
  }
  if (c.nHashLayers > c.nLayers) throw bad('num_hash_layers', `${c.nHashLayers} exceeds num_hidden_layers ${c.nLayers}`);
}

/** What kind of attention layer i (0..nLayers-1, then MTP layers) is: V4-MODEL 0.2's rule. */
export function layerKind(c: ModelConfig, i: number): { ratio: number; overlap: boolean; indexer: boolean } {
  const ratio = c.compressRatios[i];
  return { ratio, overlap: ratio === 4, indexer: ratio === 4 };
}
