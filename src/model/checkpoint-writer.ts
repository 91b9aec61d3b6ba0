// Whole synthetic DeepSeek-V4 checkpoints: every tensor of V4-MODEL 9 (embedding, head, final norm, hc_head, each
// layer's attention, compressor, indexer, norms and hyper-connection parameters, the MoE tensors, and the MTP
// block), in the published names and on-disk dtypes, so the loader under test (loader.ts) is the real loader.
// Written through checkpoint/synthetic.ts's job (temp folder renamed into place, shards, index.json), with this
// module's tensor plan and config.
//
// Presets (whole models):
//   tiny:  D 128, 4 heads x 128 (rope 64), q_lora 128, o_lora 128 x 2 groups, window 16, indexer 16 x 64 top-4,
//          16 experts top-4 (I 128), vocab 129280 (DeepSeek V3's tokenizer), layer ratios 0, 4, 128, 4, 128, ...;
//          layer 0 hash-routed; one MTP layer (ratio 0). The smallest dims V4-MODEL 11 allows (D and q_lora >= 128),
//          because the head GEMM over 129280 x D dominates a CPU decode step.
//   flash / pro: the published shapes (V4-MODEL 0.1), ratio pattern of V4-MODEL 0.2.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../checkpoint/checkpoint.js';
import { parseDeepSeekV4Config, type DeepSeekV4Config, type ExpertDtype } from '../checkpoint/config.js';
import { Rng } from '../util/rng.js';
import { writeTokenizerFilesSync } from '../tokenizer/files.js';
import { cacheRoot } from '../util/writable-dir.js';
import { encodeBF16 } from '../numerics/bf16.js';
import {
  drawSeedWords, fillBF16Normal, fillE4m3, fillE8m0BlockScales, makeCheckpoint, makeCheckpointSync, normalQuantile, planLayer, presetConfig,
  seededRng, PRESET_SHAPES, type CheckpointPlan, type MakeCheckpointResult, type PlannedTensor, type Preset, type PresetShape,
  ensureCachedCheckpoint,
} from '../checkpoint/synthetic.js';
import { fp8Scale, globalParams, layerParams, mtpParams, type ParamSpec } from './params.js';
import { modelConfigFrom } from './config.js';

/** V4's vocabulary: DeepSeek V3's tokenizer, 129280 ids including the specials. */
export const V4_VOCAB = 129280;

/**
 * Every whole-model checkpoint carries the real tokenizer files (src/tokenizer: DeepSeek V3's BPE + V4's special
 * tokens, tokenizer.json / tokenizer_config.json / generation_config.json), so the loader, `generate` and `serve`
 * under test read what a real V4 folder holds. `tokenizerFiles` per call replaces the writer (tests).
 */
export type TokenizerFilesWriter = (dir: string) => void;

export interface MakeModelCheckpointOptions {
  preset: Preset;
  /** Main layers (num_hidden_layers); default: tiny 3 (ratios 0, 4, 128), flash / pro 2. */
  layers?: number;
  /** MTP layers (num_nextn_predict_layers); default 1. */
  mtpLayers?: number;
  expertDtype: ExpertDtype;
  seed: number;
  out: string;
  shardSize?: number;
  force?: boolean;
  progress?: boolean;
  /** config.json keys replacing the preset's (tests: a small vocab, other ratios, window, top-k). */
  overrides?: Record<string, unknown>;
  /** Writes tokenizer files into the folder; default: the registered HOOK(tokenizer) writer, if any. */
  tokenizerFiles?: TokenizerFilesWriter;
}

const TINY_MODEL: PresetShape = {
  hidden: 128, inter: 128, experts: 16, topk: 4, shared: 1, hashLayers: 1, vocab: V4_VOCAB,
  routedScaling: 1.5, swigluLimit: 10, publishedLayers: 3,
  attention: {
    num_attention_heads: 4, num_key_value_heads: 1, head_dim: 128, qk_rope_head_dim: 64, q_lora_rank: 128,
    o_lora_rank: 128, o_groups: 2, sliding_window: 16, index_n_heads: 16, index_head_dim: 64, index_topk: 4,
    hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6, rope_theta: 10000, compress_rope_theta: 160000,
    rope_scaling: { type: 'yarn', factor: 16, original_max_position_embeddings: 65536, beta_fast: 32, beta_slow: 1 },
    max_position_embeddings: 16384,
  },
};

function modelPresetShape(preset: Preset): PresetShape {
  return preset === 'tiny' ? TINY_MODEL : PRESET_SHAPES[preset];
}

/** Layer ratios of a whole-model preset: tiny 0, 4, 128, 4, 128...; flash / pro as published; MTP layers 0. */
export function presetRatios(preset: Preset, layers: number, mtp: number): number[] {
  const main = Array.from({ length: layers }, (_, i) => {
    if (preset === 'tiny') return i === 0 ? 0 : i % 2 === 1 ? 4 : 128;
    if (i < 2) return preset === 'pro' ? 128 : 0;
    return i % 2 === 0 ? 4 : 128;
  });
  return [...main, ...Array.from({ length: mtp }, () => 0)];
}

/** The config.json of a whole-model checkpoint. */
export function modelPresetConfig(o: Pick<MakeModelCheckpointOptions, 'preset' | 'layers' | 'mtpLayers' | 'expertDtype' | 'seed' | 'overrides'>): Record<string, unknown> {
  const layers = o.layers ?? (o.preset === 'tiny' ? 3 : 2);
  const mtp = o.mtpLayers ?? 1;
  const shape = modelPresetShape(o.preset);
  const base = presetConfig(o.preset, layers, o.expertDtype, o.seed);
  const cfg: Record<string, unknown> = {
    ...base,
    hidden_size: shape.hidden, moe_intermediate_size: shape.inter, n_routed_experts: shape.experts,
    num_experts_per_tok: shape.topk, n_shared_experts: shape.shared, num_hash_layers: Math.min(shape.hashLayers, layers),
    routed_scaling_factor: shape.routedScaling, swiglu_limit: shape.swigluLimit, vocab_size: shape.vocab,
    ...shape.attention,
    num_nextn_predict_layers: mtp,
    compress_ratios: presetRatios(o.preset, layers, mtp),
    tie_word_embeddings: false,
    bos_token_id: 0, eos_token_id: 1,
    megamoe_synthetic: {
      preset: o.preset, seed: o.seed, expert_dtype: o.expertDtype, whole_model: true,
      note: 'Synthetic random weights, every tensor of the DeepSeek-V4 layout (V4-MODEL 9). Not a trained model.',
    },
    ...o.overrides,
  };
  return cfg;
}

/** Normal quantiles of (u + 0.5) / 65536, built once: bf16 fills index them with 16 random bits. */
let QUANTILES: Float64Array | undefined;
function quantiles(): Float64Array {
  if (!QUANTILES) {
    QUANTILES = new Float64Array(65536);
    for (let u = 0; u < 65536; u++) QUANTILES[u] = normalQuantile((u + 0.5) / 65536);
  }
  return QUANTILES;
}

/**
 * bf16 ~ N(mean, sigma) without a Box-Muller per element: a 65536-entry table of bf16 codes of the normal quantiles
 * (scaled for this tensor), indexed by a xorshift128 stream, two values per step. The embedding and head of a
 * 129280-token vocabulary are 16.5 M values each; this fills them in tens of milliseconds.
 */
function fillBF16Fast(out: Uint8Array, seed: Uint32Array, mean: number, sigma: number): void {
  const q = quantiles();
  const lut = new Uint16Array(65536);
  for (let u = 0; u < 65536; u++) lut[u] = encodeBF16(mean + sigma * q[u]);
  const o16 = new Uint16Array(out.buffer, out.byteOffset, out.byteLength / 2);
  let x = seed[0] | 0; let y = seed[1] | 0; let z = seed[2] | 0; let w = seed[3] | 0;
  if ((x | y | z | w) === 0) x = 1;
  let i = 0;
  for (; i + 2 <= o16.length; i += 2) {
    const t = x ^ (x << 11); x = y; y = z; z = w; w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    o16[i] = lut[w & 0xffff]; o16[i + 1] = lut[w >>> 16];
  }
  if (i < o16.length) { const t = x ^ (x << 11); w = w ^ (w >>> 19) ^ t ^ (t >>> 8); o16[i] = lut[w & 0xffff]; }
}

function fillF32(out: Uint8Array, seed: Uint32Array, mean: number, sigma: number): void {
  const rng = seededRng(seed);
  const f = new Float32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  for (let i = 0; i < f.length; i++) f[i] = mean + sigma * rng.normal();
}

/** hc base [(2+hc)*hc]: pre/post ~ N(0, 0.1), comb logits +2 on the diagonal (each stream mostly feeds itself). */
function fillHcBase(out: Uint8Array, seed: Uint32Array, hc: number): void {
  fillF32(out, seed, 0, 0.1);
  const f = new Float32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  for (let j = 0; j < hc; j++) f[2 * hc + j * hc + j] += 2;
}

function planParam(p: ParamSpec): PlannedTensor[] {
  const init = p.init;
  if (p.kind === 'fp8' || p.kind === 'fp8-or-bf16') {
    const sigma = 1 / Math.sqrt(p.shape[1]);
    return [
      { name: `${p.name}.weight`, dtype: 'F8_E4M3', shape: [...p.shape], fill: fillE4m3 },
      { name: `${p.name}.scale`, dtype: 'F8_E8M0', shape: fp8Scale(p.shape), fill: (o, s) => fillE8m0BlockScales(o, s, sigma) },
    ];
  }
  const mean = init.type === 'normal' ? init.mean ?? 0 : 0;
  const sigma = init.type === 'normal' ? init.sigma : 0;
  if (p.kind === 'bf16') {
    const big = p.shape.reduce((a, b) => a * b, 1) > 1 << 16;
    return [{ name: p.name, dtype: 'BF16', shape: [...p.shape], fill: (o, s) => (big ? fillBF16Fast(o, s, mean, sigma) : fillBF16Normal(o, s, mean, sigma)) }];
  }
  const fill = init.type === 'hc-base' ? (o: Uint8Array, s: Uint32Array) => fillHcBase(o, s, init.hc)
    : init.type === 'const' ? (o: Uint8Array) => new Float32Array(o.buffer, o.byteOffset, o.byteLength / 4).fill(init.value)
      : (o: Uint8Array, s: Uint32Array) => fillF32(o, s, mean, sigma);
  return [{ name: p.name, dtype: 'F32', shape: [...p.shape], fill }];
}

/** The whole tensor plan and config of a model checkpoint. */
export function planModelCheckpoint(o: MakeModelCheckpointOptions): CheckpointPlan & { layers: number } {
  const config = modelPresetConfig(o);
  const cfg = modelConfigFrom(parseDeepSeekV4Config(config, 'config.json (generated)'));
  // The MoE part follows the final config (overrides included).
  const moeShape: PresetShape = {
    hidden: cfg.dim, inter: cfg.base.moeIntermediateSize, experts: cfg.base.nRoutedExperts, topk: cfg.base.numExpertsPerTok,
    shared: cfg.base.nSharedExperts, hashLayers: cfg.nHashLayers, vocab: cfg.vocabSize, routedScaling: cfg.base.routedScalingFactor,
    swigluLimit: cfg.base.swigluLimit, publishedLayers: cfg.nLayers, attention: {},
  };
  const tensors: PlannedTensor[] = [];
  for (const p of globalParams(cfg)) tensors.push(...planParam(p));
  for (let i = 0; i < cfg.nLayers; i++) {
    for (const p of layerParams(cfg, i)) tensors.push(...planParam(p));
    tensors.push(...planLayer(o.preset, i, o.expertDtype, moeShape));
  }
  for (let j = 0; j < cfg.nMtpLayers; j++) {
    for (const p of mtpParams(cfg, j)) tensors.push(...planParam(p));
    const from = `layers.${cfg.nLayers + j}.`;
    for (const t of planLayer(o.preset, cfg.nLayers + j, o.expertDtype, moeShape)) tensors.push({ ...t, name: `mtp.${j}.${t.name.slice(from.length)}` });
  }
  const tokenizerFiles = o.tokenizerFiles ?? writeTokenizerFilesSync;
  const ratios = cfg.compressRatios.join(', ');
  return {
    layers: cfg.nLayers,
    config,
    tensors,
    metadata: { megamoe_whole_model: 'true' },
    readme: `# Synthetic DeepSeek-V4 model (megamoe)

Preset ${o.preset}, ${cfg.nLayers} layers (compress ratios ${ratios}; the last ${cfg.nMtpLayers} for MTP), seed ${o.seed},
${o.expertDtype} experts. Every tensor of the V4 layout: embedding, head, norms, hyper-connections, attention
(compressor, indexer), MoE, MTP. Random weights: outputs are meaningless, only well-conditioned.
tokenizer.json / tokenizer_config.json / generation_config.json: DeepSeek V3's tokenizer with V4's special tokens (src/tokenizer).
`,
    extraFiles: (dir) => {
      fs.writeFileSync(path.join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: 0, eos_token_id: 1, do_sample: true, temperature: 1.0, top_p: 1.0 }, null, 2) + '\n');
      tokenizerFiles(dir);
    },
  };
}

/**
 * The checkpoint makeModelCheckpoint would write, without writing it: a virtual Checkpoint (checkpoint.ts) whose
 * tensors are generated on read, byte for byte the files' (same plan, same per-tensor seeds), and its parsed config.
 * Load it with loader.ts loadModelWeightsFrom. A flash layer's routed experts (6.4 GB) are generated only if read:
 * `bench model` never reads them (its experts are random on the GPU).
 */
export function virtualModelCheckpoint(o: Omit<MakeModelCheckpointOptions, 'out' | 'shardSize' | 'force' | 'progress' | 'tokenizerFiles'>):
  { checkpoint: Checkpoint; config: DeepSeekV4Config } {
  const plan = planModelCheckpoint({ ...o, out: '(virtual)' });
  const master = new Rng(o.seed);
  const tensors = plan.tensors.map((t) => {
    const seed = drawSeedWords(master);
    return { name: t.name, dtype: t.dtype, shape: t.shape, fill: (out: Uint8Array) => { if (out.byteLength > 0) t.fill(out, seed); } };
  });
  const root = `(virtual ${o.preset} checkpoint, ${plan.layers} layers, seed ${o.seed})`;
  return { checkpoint: Checkpoint.virtual(root, tensors), config: parseDeepSeekV4Config(plan.config, `${root}/config.json`) };
}

function jobOptions(o: MakeModelCheckpointOptions, layers: number) {
  return { preset: o.preset, layers, expertDtype: o.expertDtype, seed: o.seed, out: o.out, shardSize: o.shardSize, force: o.force, progress: o.progress };
}

/** Writes a whole synthetic model checkpoint (async, overlapped I/O). */
export async function makeModelCheckpoint(o: MakeModelCheckpointOptions): Promise<MakeCheckpointResult> {
  const plan = planModelCheckpoint(o);
  return makeCheckpoint(jobOptions(o, plan.layers), { plan });
}

export function makeModelCheckpointSync(o: MakeModelCheckpointOptions, keepExisting = false,
  internal: { setting?: string; beforeMove?(temp: string): void } = {}): MakeCheckpointResult {
  const plan = planModelCheckpoint(o);
  return makeCheckpointSync(jobOptions(o, plan.layers), { plan, keepExisting, ...internal });
}

// ---------------------------------------------------------------------------------------------------------------
// The embedded default: a tiny whole V4 with every layer kind (ratios 0, 4, 128; a hash layer; MTP).

export const DEFAULT_MODEL = Object.freeze({
  name: 'default-tiny-model-v2', preset: 'tiny' as Preset, layers: 3, expertDtype: 'fp8' as ExpertDtype, seed: 1,
});

export function defaultModelDir(): string {
  return path.join(cacheRoot(), DEFAULT_MODEL.name);
}

/**
 * The default tiny model, generated on first use into the cache folder (temp folder renamed into place, so a crash
 * never leaves half a checkpoint and racing processes both end with the same one). Checked by size and SHA-256
 * against the manifest written with it on every use: a damaged cache is rebuilt, not used. Returns its directory.
 */
export function ensureDefaultModel(options: { dir?: string; progress?: boolean; onRebuild?: (why: string) => void } = {}): string {
  return ensureCachedCheckpoint(path.resolve(options.dir ?? defaultModelDir()), 'default model', options.onRebuild,
    (dir, internal) => makeModelCheckpointSync({
      preset: DEFAULT_MODEL.preset, layers: DEFAULT_MODEL.layers, expertDtype: DEFAULT_MODEL.expertDtype, seed: DEFAULT_MODEL.seed,
      out: dir, progress: options.progress ?? false,
    }, true, internal));
}
