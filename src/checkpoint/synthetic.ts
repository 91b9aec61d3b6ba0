// Synthetic DeepSeek-V4 checkpoints: config.json + safetensors in the published layout, random weights stored
// the way the real ones are, so the loader under test is the real loader. Only the MoE tensors of each layer
// are written (ffn_norm, gate, shared expert, routed experts); the attention side is out of scope (the config
// still carries the attention keys, and the README in the checkpoint says so).
//
// What is stored, per layer i (prefix "layers.{i}."):
//   ffn_norm.weight BF16 [H]                         ~ 1 + N(0, 0.05)
//   ffn.gate.weight BF16 [E, H]                      ~ N(0, 1/sqrt(H))  (router logits ~ N(0, 1) for RMS-1 x)
//   ffn.gate.bias F32 [E] (i >= num_hash_layers)     ~ N(0, 0.02)       (selection bias, small)
//   ffn.gate.tid2eid I64 [vocab, K] (i < num_hash)   K distinct experts per row, uniform
//   ffn.shared_experts.w{1,2,3}: e4m3 + 128x128 scales: F32 in "fp8" checkpoints (as Flash-Base), F8_E8M0
//                                (powers of two) in "fp4" checkpoints (as V4-Flash ships its FP8 linears)
//   ffn.experts.{e}.w{1,2,3}: "fp8": F8_E4M3 [N, K] + F32 [N/128, K/128]; "fp4": I8 [N, K/2] packed e2m1
//                             (low nibble first) + F8_E8M0 [N, K/32]
// Every weight is ~ N(0, 1/sqrt(fan_in)) after dequantization, so a token's expert outputs stay O(1).
//
// Speed: a flash layer is 6.5 GB of expert codes. Quantizing normal floats element by element is far too slow,
// so codes come straight from lookup tables: a u16 from a xorshift128 stream indexes a 65536-entry table
// holding the e4m3 code of the matching normal quantile, already quantized at a typical block scale
// (amax = 4 sigma -> 448); the block scale then carries sigma (with a little per-block jitter, as real amax
// varies). FP4 works the same way with two e2m1 nibbles per u16 and per-32 e8m0 scales around sigma/2.
// Every tensor gets its own xorshift128 state, drawn from Rng(seed) in tensor order: same seed, same bytes,
// whatever the shard size.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { encodeBF16 } from '../numerics/bf16.js';
import { E2M1_DECODE } from '../numerics/e2m1.js';
import { encodeE4M3, E4M3_MAX } from '../numerics/e4m3.js';
import { DTYPE_BYTES, numel } from '../tensor/host.js';
import { Rng } from '../util/rng.js';
import { createProgress } from '../util/progress.js';
import { ensureFreeSpace } from '../util/disk-space.js';
import { cleanStaleTemps, OWNER_MARKER, registerTemp, writeOwnerMarker } from '../util/temp-dirs.js';
import { cacheRoot, ensureWritableDir } from '../util/writable-dir.js';
import { checkReplaceableCheckpoint } from './replace-check.js';
import { MANIFEST_FILE, verifyManifest, writeManifest } from './manifest.js';
import { CheckpointWriter } from './checkpoint.js';
import type { ExpertDtype } from './config.js';
import { CheckpointError } from './errors.js';
import { moeLayerNames, PROJECTIONS } from './names.js';
import type { TensorSpec } from './safetensors.js';

export type Preset = 'tiny' | 'flash' | 'pro';
export const PRESETS: readonly Preset[] = ['tiny', 'flash', 'pro'];

export interface PresetShape {
  hidden: number; inter: number; experts: number; topk: number; shared: number; hashLayers: number;
  vocab: number; routedScaling: number; swigluLimit: number; publishedLayers: number;
  attention: Record<string, unknown>;
}

/** MoE shapes of the presets: flash and pro as published (SPEC 1), tiny small enough for CI. */
export const PRESET_SHAPES: Readonly<Record<Preset, PresetShape>> = {
  tiny: {
    hidden: 256, inter: 128, experts: 16, topk: 4, shared: 1, hashLayers: 1, vocab: 1024,
    routedScaling: 1.5, swigluLimit: 10, publishedLayers: 4,
    attention: {
      num_attention_heads: 4, num_key_value_heads: 1, head_dim: 128, qk_rope_head_dim: 64, q_lora_rank: 64,
      o_lora_rank: 64, o_groups: 2, sliding_window: 8, index_n_heads: 16, index_head_dim: 64, index_topk: 4,
      hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6, rope_theta: 10000, compress_rope_theta: 160000,
    },
  },
  flash: {
    hidden: 4096, inter: 2048, experts: 256, topk: 6, shared: 1, hashLayers: 3, vocab: 129280,
    routedScaling: 1.5, swigluLimit: 10, publishedLayers: 43,
    attention: {
      num_attention_heads: 64, num_key_value_heads: 1, head_dim: 512, qk_rope_head_dim: 64, q_lora_rank: 1024,
      o_lora_rank: 1024, o_groups: 8, sliding_window: 128, index_n_heads: 64, index_head_dim: 128, index_topk: 512,
      hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6, rope_theta: 10000, compress_rope_theta: 160000,
      rope_scaling: { type: 'yarn', factor: 16, original_max_position_embeddings: 65536, beta_fast: 32, beta_slow: 1 },
      max_position_embeddings: 1048576, num_nextn_predict_layers: 1,
    },
  },
  pro: {
    hidden: 7168, inter: 3072, experts: 384, topk: 6, shared: 1, hashLayers: 3, vocab: 129280,
    routedScaling: 2.5, swigluLimit: 10, publishedLayers: 61,
    attention: {
      num_attention_heads: 128, num_key_value_heads: 1, head_dim: 512, qk_rope_head_dim: 64, q_lora_rank: 1536,
      o_lora_rank: 1024, o_groups: 16, sliding_window: 128, index_n_heads: 64, index_head_dim: 128, index_topk: 1024,
      hc_mult: 4, hc_sinkhorn_iters: 20, hc_eps: 1e-6, rope_theta: 10000, compress_rope_theta: 160000,
      rope_scaling: { type: 'yarn', factor: 16, original_max_position_embeddings: 65536, beta_fast: 32, beta_slow: 1 },
      max_position_embeddings: 1048576, num_nextn_predict_layers: 1,
    },
  },
};

/** Per-layer compression ratios in the published pattern (V4-MODEL 0.2); pass-through only. */
function compressRatios(preset: Preset, layers: number): number[] {
  const first = preset === 'pro' ? [128, 128] : [0, 0];
  return Array.from({ length: layers }, (_, i) => (i < 2 ? first[i] : i % 2 === 0 ? 4 : 128));
}

/** The config.json of a synthetic checkpoint with `layers` MoE layers. */
export function presetConfig(preset: Preset, layers: number, expertDtype: ExpertDtype, seed = 0): Record<string, unknown> {
  const p = PRESET_SHAPES[preset];
  if (!p) throw new Error(`unknown preset "${preset}"; use one of ${PRESETS.join(', ')}`);
  return {
    architectures: ['DeepseekV4ForCausalLM'],
    model_type: 'deepseek_v4',
    hidden_size: p.hidden,
    moe_intermediate_size: p.inter,
    n_routed_experts: p.experts,
    num_experts_per_tok: p.topk,
    n_shared_experts: p.shared,
    num_hidden_layers: layers,
    num_hash_layers: p.hashLayers,
    scoring_func: 'sqrtsoftplus',
    topk_method: 'noaux_tc',
    norm_topk_prob: true,
    routed_scaling_factor: p.routedScaling,
    swiglu_limit: p.swigluLimit,
    vocab_size: p.vocab,
    rms_norm_eps: 1e-6,
    expert_dtype: expertDtype,
    quantization_config: {
      quant_method: 'fp8', fmt: 'e4m3', weight_block_size: [128, 128], scale_fmt: 'ue8m0', activation_scheme: 'dynamic',
    },
    ...p.attention,
    // No MTP block is written, so none is declared (the published flash/pro configs have 1).
    num_nextn_predict_layers: 0,
    compress_ratios: compressRatios(preset, layers),
    megamoe_synthetic: {
      preset, seed, expert_dtype: expertDtype, published_num_hidden_layers: p.publishedLayers,
      published_num_nextn_predict_layers: p.attention.num_nextn_predict_layers ?? 0,
      note: 'Synthetic random weights. Only the MoE tensors (ffn_norm, ffn.gate, ffn.shared_experts, ffn.experts) are present; the attention keys are carried for completeness and their tensors are absent.',
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Fast code generation

/** Inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5; const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

/** A block's typical amax in sigmas (the max of 16384 normal samples is about 4 sigma). */
const E4M3_AMAX_SIGMAS = 4;
/** e2m1 units per sigma: MX scales put a 32-value group's max (~2.5 sigma) near 4..6. */
const E2M1_UNITS_PER_SIGMA = 2;

/** The e2m1 code nearest to x (ties to the even code), saturating at +-6; negative values keep the sign (-0 too). */
function encodeE2M1(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 8 : 0;
  const a = Math.abs(x);
  let best = 0;
  for (let c = 1; c < 8; c++) {
    const dBest = Math.abs(E2M1_DECODE[best] - a); const dc = Math.abs(E2M1_DECODE[c] - a);
    if (dc < dBest || (dc === dBest && (c & 1) === 0)) best = c;
  }
  return sign | best;
}

/** u16 -> e4m3 code of the normal quantile (u + 0.5) / 65536, at the typical block scale. */
const E4M3_FROM_U16: Uint8Array = (() => {
  const t = new Uint8Array(65536);
  const k = E4M3_MAX / E4M3_AMAX_SIGMAS;
  for (let u = 0; u < 65536; u++) t[u] = encodeE4M3(normalQuantile((u + 0.5) / 65536) * k);
  return t;
})();

/** u16 -> one packed byte of two e2m1 codes (each nibble from 8 bits of the u16). */
const E2M1_PAIR_FROM_U16: Uint8Array = (() => {
  const nib = new Uint8Array(256);
  for (let u = 0; u < 256; u++) nib[u] = encodeE2M1(normalQuantile((u + 0.5) / 256) * E2M1_UNITS_PER_SIGMA);
  const t = new Uint8Array(65536);
  for (let u = 0; u < 65536; u++) t[u] = nib[u & 0xff] | (nib[u >> 8] << 4);
  return t;
})();

/** Fills `out` with bytes lut[u16], two u16 per xorshift128 step, four bytes per store. */
function fillFromLut(out: Uint8Array, lut: Uint8Array, seed: Uint32Array): void {
  let x = seed[0] | 0; let y = seed[1] | 0; let z = seed[2] | 0; let w = seed[3] | 0;
  if ((x | y | z | w) === 0) x = 1;
  const words = out.byteOffset % 4 === 0 ? out.length >>> 2 : 0;
  const o32 = new Uint32Array(out.buffer, out.byteOffset, words);
  for (let i = 0; i < words; i++) {
    let t = x ^ (x << 11); x = y; y = z; z = w; w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    const a = w;
    t = x ^ (x << 11); x = y; y = z; z = w; w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    const b = w;
    o32[i] = lut[a & 0xffff] | (lut[a >>> 16] << 8) | (lut[b & 0xffff] << 16) | (lut[b >>> 16] << 24);
  }
  for (let i = words * 4; i < out.length; i++) {
    const t = x ^ (x << 11); x = y; y = z; z = w; w = w ^ (w >>> 19) ^ t ^ (t >>> 8);
    out[i] = lut[w & 0xffff];
  }
}

export function seededRng(seed: Uint32Array): Rng {
  return new Rng((seed[0] ^ Math.imul(seed[1], 0x9e3779b1) ^ Math.imul(seed[2], 0x85ebca6b) ^ seed[3]) >>> 0);
}

/** e4m3 codes for a weight with f32 block scales around 4 sigma / 448. */
export const fillE4m3 = (out: Uint8Array, seed: Uint32Array) => fillFromLut(out, E4M3_FROM_U16, seed);

function fillF32BlockScales(out: Uint8Array, seed: Uint32Array, sigma: number): void {
  const rng = seededRng(seed);
  const f = new Float32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  const base = (sigma * E4M3_AMAX_SIGMAS) / E4M3_MAX;
  for (let i = 0; i < f.length; i++) f[i] = base * (0.85 + 0.3 * rng.uniform());
}

/**
 * Powers of two 2^b (as e8m0 codes) whose mean square is target^2: b is floor(log2 target) or one more, the
 * upper one with probability (4^frac - 1) / 3. Rounding every scale to the nearest power of two instead would
 * change a tensor's standard deviation by up to sqrt(2); real pow-2 scales also straddle two binades.
 */
export function fillPow2Scales(out: Uint8Array, seed: Uint32Array, target: number): void {
  const rng = seededRng(seed);
  const t = Math.log2(target);
  const lower = Math.floor(t);
  const pUpper = (4 ** (t - lower) - 1) / 3;
  for (let i = 0; i < out.length; i++) out[i] = 127 + lower + (rng.uniform() < pUpper ? 1 : 0);
}

/** Power-of-two 128x128 block scales (e8m0) around 4 sigma / 448. */
export const fillE8m0BlockScales = (out: Uint8Array, seed: Uint32Array, sigma: number) =>
  fillPow2Scales(out, seed, (sigma * E4M3_AMAX_SIGMAS) / E4M3_MAX);

/** Per-32 e8m0 sub-scales of an MXFP4 weight, around sigma / 2 (so e2m1 values of ~2 sigma-units land at 4..6). */
const fillMxfp4Scales = (out: Uint8Array, seed: Uint32Array, sigma: number) =>
  fillPow2Scales(out, seed, sigma / E2M1_UNITS_PER_SIGMA);

export const fillE2m1 = (out: Uint8Array, seed: Uint32Array) => fillFromLut(out, E2M1_PAIR_FROM_U16, seed);

export function fillBF16Normal(out: Uint8Array, seed: Uint32Array, mean: number, sigma: number): void {
  const rng = seededRng(seed);
  const u = new Uint16Array(out.buffer, out.byteOffset, out.byteLength / 2);
  for (let i = 0; i < u.length; i++) u[i] = encodeBF16(mean + sigma * rng.normal());
}

export function fillF32Normal(out: Uint8Array, seed: Uint32Array, sigma: number): void {
  const rng = seededRng(seed);
  const f = new Float32Array(out.buffer, out.byteOffset, out.byteLength / 4);
  for (let i = 0; i < f.length; i++) f[i] = sigma * rng.normal();
}

/** [vocab, k] I64: each row k distinct experts in [0, experts). */
function fillTid2eid(out: Uint8Array, seed: Uint32Array, k: number, experts: number): void {
  const rng = seededRng(seed);
  const v = new BigInt64Array(out.buffer, out.byteOffset, out.byteLength / 8);
  const row = new Int32Array(k);
  for (let r = 0; r < v.length / k; r++) {
    for (let j = 0; j < k; j++) {
      let e: number;
      do { e = rng.int(experts); } while (row.subarray(0, j).includes(e));
      row[j] = e;
      v[r * k + j] = BigInt(e);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The tensor plan

export interface PlannedTensor extends TensorSpec {
  fill(out: Uint8Array, seed: Uint32Array): void;
}

/**
 * The next tensor's xorshift128 state from the checkpoint's master Rng(seed): four words per tensor, drawn in plan
 * order for every tensor (even empty ones), so a tensor's bytes depend only on the seed and its place in the plan.
 */
export function drawSeedWords(master: Rng, out = new Uint32Array(4)): Uint32Array {
  for (let i = 0; i < 4; i++) out[i] = master.nextU32();
  return out;
}

/** The MoE tensors of one layer; `shape` replaces the preset's (src/model/checkpoint-writer.ts: whole models). */
export function planLayer(preset: Preset, layer: number, expertDtype: ExpertDtype, shape?: PresetShape): PlannedTensor[] {
  const p = shape ?? PRESET_SHAPES[preset];
  const H = p.hidden; const I = p.inter; const E = p.experts; const K = p.topk;
  const names = moeLayerNames(layer);
  const out: PlannedTensor[] = [];
  out.push({ name: names.ffnNorm, dtype: 'BF16', shape: [H], fill: (o, s) => fillBF16Normal(o, s, 1, 0.05) });
  out.push({ name: names.gateWeight, dtype: 'BF16', shape: [E, H], fill: (o, s) => fillBF16Normal(o, s, 0, 1 / Math.sqrt(H)) });
  if (layer < p.hashLayers) {
    out.push({ name: names.tid2eid, dtype: 'I64', shape: [p.vocab, K], fill: (o, s) => fillTid2eid(o, s, K, E) });
  } else {
    out.push({ name: names.gateBias, dtype: 'F32', shape: [E], fill: (o, s) => fillF32Normal(o, s, 0.02) });
  }
  const fp8 = (n: number, k: number, scaleDtype: 'F32' | 'F8_E8M0', w: string, sc: string) => {
    const sigma = 1 / Math.sqrt(k);
    out.push({ name: w, dtype: 'F8_E4M3', shape: [n, k], fill: fillE4m3 });
    out.push({
      name: sc, dtype: scaleDtype, shape: [Math.ceil(n / 128), Math.ceil(k / 128)],
      fill: scaleDtype === 'F32' ? (o, s) => fillF32BlockScales(o, s, sigma) : (o, s) => fillE8m0BlockScales(o, s, sigma),
    });
  };
  const Is = I * p.shared;
  for (const proj of PROJECTIONS) {
    const [n, k] = proj === 'w2' ? [H, Is] : [Is, H];
    const { weight, scale } = names.shared(proj);
    fp8(n, k, expertDtype === 'fp8' ? 'F32' : 'F8_E8M0', weight, scale);
  }
  for (let e = 0; e < E; e++) {
    for (const proj of PROJECTIONS) {
      const [n, k] = proj === 'w2' ? [H, I] : [I, H];
      const { weight, scale } = names.expert(e, proj);
      if (expertDtype === 'fp8') {
        fp8(n, k, 'F32', weight, scale);
      } else {
        const sigma = 1 / Math.sqrt(k);
        out.push({ name: weight, dtype: 'I8', shape: [n, k / 2], fill: fillE2m1 });
        out.push({ name: scale, dtype: 'F8_E8M0', shape: [n, k / 32], fill: (o, s) => fillMxfp4Scales(o, s, sigma) });
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// makeCheckpoint

export interface MakeCheckpointOptions {
  preset: Preset;
  /** How many MoE layers (layers 0..N-1); becomes num_hidden_layers. */
  layers: number;
  expertDtype: ExpertDtype;
  seed: number;
  /** Output directory; must not exist or be empty unless `force`. */
  out: string;
  /** Start a new shard past this many bytes (index.json written when there are several). Default: one file. */
  shardSize?: number;
  /** Replace an existing non-empty output directory. */
  force?: boolean;
  /** Progress bar on stderr (default: when stderr is a terminal). */
  progress?: boolean;
}

export interface MakeCheckpointResult {
  dir: string;
  files: string[];
  tensors: number;
  /** Tensor bytes written. */
  bytes: number;
  seconds: number;
  /** bytes / seconds, in MB/s (1e6 bytes). */
  mbPerSecond: number;
}

function validateOptions(o: MakeCheckpointOptions): void {
  const bad = (what: string) => new CheckpointError({ file: o.out ?? '(no --out)' }, what);
  if (!PRESETS.includes(o.preset)) throw bad(`unknown preset "${o.preset}"; use one of ${PRESETS.join(', ')}`);
  if (!Number.isSafeInteger(o.layers) || o.layers < 1) throw bad(`layers must be a positive integer, got ${o.layers}`);
  if (o.expertDtype !== 'fp8' && o.expertDtype !== 'fp4') throw bad(`expert dtype must be "fp8" or "fp4", got "${o.expertDtype}"`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0 || o.seed > 0xffffffff) throw bad(`seed must be an integer in [0, 2^32), got ${o.seed}`);
  if (!o.out) throw bad('an output directory is required');
  if (o.shardSize !== undefined && !(Number.isSafeInteger(o.shardSize) && o.shardSize > 0)) throw bad(`shard size must be a positive number of bytes, got ${o.shardSize}`);
}

function isNonEmptyDir(p: string): boolean {
  try { return fs.readdirSync(p).length > 0; } catch { return false; }
}

/** Moves the finished temp dir into place; with `keepExisting`, a target that appeared meanwhile wins. */
function moveIntoPlace(temp: string, target: string, force: boolean, keepExisting: boolean): void {
  if (fs.existsSync(target)) {
    if (!isNonEmptyDir(target)) fs.rmSync(target, { recursive: true, force: true });
    else if (keepExisting) { fs.rmSync(temp, { recursive: true, force: true }); return; }
    else if (force) {
      checkReplaceableCheckpoint(target);
      const old = `${target}.old-${process.pid}-${Date.now()}`;
      fs.renameSync(target, old);
      writeOwnerMarker(old); // a run killed right here leaves `old` for cleanStaleTemps, never a user's folder
      fs.renameSync(temp, target);
      fs.rmSync(old, { recursive: true, force: true });
      return;
    } else {
      throw new CheckpointError({ file: target }, 'appeared while the checkpoint was being written; pass --force to replace it');
    }
  }
  try {
    fs.renameSync(temp, target);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (keepExisting && (code === 'ENOTEMPTY' || code === 'EEXIST')) { fs.rmSync(temp, { recursive: true, force: true }); return; }
    throw err;
  }
}

const README = (preset: Preset, layers: number, dtype: ExpertDtype, seed: number) => `# Synthetic DeepSeek-V4 checkpoint (megamoe)

Generated by \`megamoe make-checkpoint --preset ${preset} --layers ${layers} --expert-dtype ${dtype} --seed ${seed}\`.
Random weights in the published tensor layout, MoE tensors only: \`layers.{i}.ffn_norm.weight\`,
\`layers.{i}.ffn.gate.*\`, \`layers.{i}.ffn.shared_experts.*\`, \`layers.{i}.ffn.experts.*\`.
The attention side (and embeddings, head, hyper-connections) is not present; config.json still carries
the attention keys for completeness. Not a trained model: outputs are meaningless, only well-conditioned.
`;

export interface MakeInternal {
  /** A target that exists (another process finished first) is kept and ours dropped. */
  keepExisting?: boolean;
  /** The variable or flag that chose the output folder, for error messages (default "--out"). */
  setting?: string;
  /** Called with the finished temp folder just before it is moved into place (the default's manifest). */
  beforeMove?(temp: string): void;
  /** Another tensor plan and config (whole models: src/model/checkpoint-writer.ts), written the same safe way. */
  plan?: CheckpointPlan;
}

/** What a Job writes instead of the MoE-only preset plan. */
export interface CheckpointPlan {
  config: Record<string, unknown>;
  readme: string;
  tensors: PlannedTensor[];
  metadata?: Record<string, string>;
  /** Writes further files (tokenizer, generation config) into the temp folder before it is renamed into place. */
  extraFiles?: (dir: string) => void;
}

/** One run of the generator: the temp folder, the writer, the tensor plan and the seed stream. */
class Job {
  readonly target: string;
  readonly temp: string;
  readonly tensors: PlannedTensor[] = [];
  readonly writer: CheckpointWriter;
  readonly maxTensorBytes: number;
  private readonly tempGuard: { release(): void };
  private readonly started = process.hrtime.bigint();
  private readonly master: Rng;
  private readonly seedWords = new Uint32Array(4);

  constructor(readonly options: MakeCheckpointOptions, readonly internal: MakeInternal) {
    validateOptions(options);
    this.target = path.resolve(options.out);
    if (isNonEmptyDir(this.target) && !options.force && !internal.keepExisting) {
      throw new CheckpointError({ file: this.target }, 'already exists and is not empty; pass --force to replace it or choose another --out');
    }
    if (fs.existsSync(this.target) && !fs.statSync(this.target).isDirectory()) throw new CheckpointError({ file: this.target }, 'exists and is not a directory');
    // --force replaces a checkpoint folder, never a folder holding anything else (checked before any work).
    if (isNonEmptyDir(this.target) && options.force && !internal.keepExisting) checkReplaceableCheckpoint(this.target);
    const { preset, layers, expertDtype, seed } = options;
    const plan = internal.plan;
    const setting = internal.setting ?? '--out';
    const parent = ensureWritableDir(path.dirname(this.target), setting, setting.startsWith('--') ? 'output folder' : 'cache folder');
    // Temp folders of earlier runs of ours that were killed (their process is gone) are removed first.
    cleanStaleTemps(parent, /\.(partial|old)-\d+-\d+$/);
    // Free space, before planning every layer (--layers may be huge): a whole-model plan is summed as it is; the
    // MoE-only preset plan from one hash and one score-routed layer. Headers are ~100 bytes a tensor; 1 MB covers
    // config.json, README.md, the index and the tokenizer files.
    let needed = plan ? 1e6 + 20e6 : 1e6;
    if (plan) {
      for (const t of plan.tensors) needed += numel(t.shape) * DTYPE_BYTES[t.dtype] + 256;
    } else {
      const hashLayers = Math.min(layers, PRESET_SHAPES[preset].hashLayers);
      const kinds = [[0, hashLayers], [PRESET_SHAPES[preset].hashLayers, layers - hashLayers]] as const;
      for (const [layer, count] of kinds) {
        if (count > 0) for (const t of planLayer(preset, layer, expertDtype)) needed += count * (numel(t.shape) * DTYPE_BYTES[t.dtype] + 256);
      }
    }
    ensureFreeSpace(parent, needed,
      internal.setting ? `free space there or ${internal.setting.startsWith('--') ? 'pass' : 'set'} ${internal.setting} to another folder` : 'free space there or choose another --out');
    if (plan) this.tensors.push(...plan.tensors);
    else for (let layer = 0; layer < layers; layer++) this.tensors.push(...planLayer(preset, layer, expertDtype));
    this.maxTensorBytes = this.tensors.reduce((m, t) => Math.max(m, numel(t.shape) * DTYPE_BYTES[t.dtype]), 0);
    this.master = new Rng(seed);
    this.temp = `${this.target}.partial-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
    fs.mkdirSync(this.temp);
    this.tempGuard = registerTemp(this.temp); // removed if SIGINT/SIGTERM/SIGHUP arrives before finish()
    try {
      writeOwnerMarker(this.temp);
      fs.writeFileSync(path.join(this.temp, 'config.json'), JSON.stringify(plan?.config ?? presetConfig(preset, layers, expertDtype, seed), null, 2) + '\n');
      fs.writeFileSync(path.join(this.temp, 'README.md'), plan?.readme ?? README(preset, layers, expertDtype, seed));
      plan?.extraFiles?.(this.temp);
      this.writer = CheckpointWriter.create(this.temp, this.tensors, {
        maxShardBytes: options.shardSize,
        metadata: { format: 'pt', megamoe_synthetic: 'true', preset, seed: String(seed), expert_dtype: expertDtype, ...plan?.metadata },
      });
    } catch (err) {
      fs.rmSync(this.temp, { recursive: true, force: true });
      this.tempGuard.release();
      throw err;
    }
  }

  /** Fills tensor t's bytes into `scratch` (seeds are drawn for every tensor, in order, even empty ones). */
  generate(t: PlannedTensor, scratch: Uint8Array): Uint8Array {
    drawSeedWords(this.master, this.seedWords);
    const buf = scratch.subarray(0, numel(t.shape) * DTYPE_BYTES[t.dtype]);
    if (buf.byteLength > 0) t.fill(buf, this.seedWords);
    return buf;
  }

  progress() {
    return createProgress({ label: `make-checkpoint ${this.options.preset}`, total: this.writer.totalBytes, unit: 'bytes', enabled: this.options.progress });
  }

  finish(): MakeCheckpointResult {
    const written = this.writer.close();
    fs.rmSync(path.join(this.temp, OWNER_MARKER), { force: true });
    this.internal.beforeMove?.(this.temp);
    moveIntoPlace(this.temp, this.target, Boolean(this.options.force), Boolean(this.internal.keepExisting));
    this.tempGuard.release();
    const seconds = Number(process.hrtime.bigint() - this.started) / 1e9;
    const bytes = this.writer.totalBytes;
    return {
      dir: this.target,
      files: ['config.json', 'README.md', ...written.map((f) => path.basename(f))].map((f) => path.join(this.target, f)),
      tensors: this.tensors.length, bytes, seconds, mbPerSecond: bytes / 1e6 / seconds,
    };
  }

  fail(): void {
    this.writer.abort();
    fs.rmSync(this.temp, { recursive: true, force: true });
    this.tempGuard.release();
  }
}

/**
 * Writes a synthetic checkpoint (config.json, README.md, safetensors, index.json when sharded). Generation of
 * the next tensor overlaps the write of the previous one (two buffers, writes on libuv's thread pool).
 */
export async function makeCheckpoint(options: MakeCheckpointOptions, internal: MakeInternal = {}): Promise<MakeCheckpointResult> {
  const job = new Job(options, internal);
  const progress = job.progress();
  let inFlight: Promise<void> | undefined;
  try {
    const buffers = [new Uint8Array(job.maxTensorBytes), new Uint8Array(job.maxTensorBytes)];
    let done = 0;
    for (let i = 0; i < job.tensors.length; i++) {
      const t = job.tensors[i];
      const buf = job.generate(t, buffers[i & 1]); // the other buffer may still be being written
      await inFlight;
      progress.update(done);
      inFlight = buf.byteLength > 0 ? job.writer.writeAsync(t.name, buf) : undefined;
      done += buf.byteLength;
    }
    await inFlight;
    progress.update(done);
    progress.stop();
    return job.finish();
  } catch (err) {
    progress.stop();
    // Let a write still on the thread pool finish (or fail) before fail() closes its file descriptor; a write
    // rejected after that would be an unhandled rejection.
    await inFlight?.catch(() => undefined);
    job.fail();
    throw err;
  }
}

/** makeCheckpoint without overlap, for callers that cannot await (small checkpoints such as the default). */
export function makeCheckpointSync(options: MakeCheckpointOptions, internal: MakeInternal = {}): MakeCheckpointResult {
  const job = new Job(options, internal);
  const progress = job.progress();
  try {
    const scratch = new Uint8Array(job.maxTensorBytes); // reused: write() copies it out before returning
    let done = 0;
    for (const t of job.tensors) {
      const buf = job.generate(t, scratch);
      if (buf.byteLength > 0) job.writer.write(t.name, buf);
      done += buf.byteLength;
      progress.update(done);
    }
    progress.stop();
    return job.finish();
  } catch (err) {
    progress.stop();
    job.fail();
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The embedded default checkpoint

/** What the default checkpoint is; bump the version in the folder name when the generator's bytes change. */
export const DEFAULT_CHECKPOINT = Object.freeze({
  name: 'default-tiny-v1', preset: 'tiny' as Preset, layers: 2, expertDtype: 'fp8' as ExpertDtype, seed: 1,
});

/** `$MEGAMOE_CACHE_DIR/default-tiny-v1`, or `~/.cache/megamoe/default-tiny-v1`. */
export function defaultCheckpointDir(): string {
  return path.join(cacheRoot(), DEFAULT_CHECKPOINT.name);
}

/**
 * The default tiny checkpoint (2 layers: layer 0 hash-routed, layer 1 score-routed), generated on first use
 * into the cache folder. Generation goes to a temp folder renamed into place, so a crash never leaves a half
 * checkpoint and two processes racing both end up with the same, complete one. Returns its directory.
 * `options.dir` replaces the cache folder and is treated as megamoe's own: if it exists without a config.json,
 * it is deleted and regenerated, so never point it at a folder holding anything else.
 */
export function ensureDefaultCheckpoint(options: { dir?: string; progress?: boolean; onRebuild?: (why: string) => void } = {}): string {
  return ensureCachedCheckpoint(path.resolve(options.dir ?? defaultCheckpointDir()), 'default checkpoint', options.onRebuild,
    (dir, internal) => makeCheckpointSync({
      preset: DEFAULT_CHECKPOINT.preset, layers: DEFAULT_CHECKPOINT.layers, expertDtype: DEFAULT_CHECKPOINT.expertDtype,
      seed: DEFAULT_CHECKPOINT.seed, out: dir, progress: options.progress ?? false,
    }, { keepExisting: true, ...internal }));
}

/**
 * A checkpoint megamoe keeps in its cache (the embedded defaults): used as it is while it matches its size +
 * SHA-256 manifest, else removed and rebuilt by `make` (which writes to a temp folder renamed into place, with the
 * manifest, so a crash never leaves half a checkpoint and racing processes both end with the same one).
 */
export function ensureCachedCheckpoint(dir: string, what: string, onRebuild: ((why: string) => void) | undefined,
  make: (dir: string, internal: { setting: string; beforeMove: (temp: string) => void }) => unknown): string {
  if (fs.existsSync(path.join(dir, 'config.json'))) {
    const damage = verifyManifest(dir);
    if (damage === undefined) return dir;
    (onRebuild ?? ((why: string) => console.error(why.startsWith(MANIFEST_FILE)
      ? `megamoe: the cached ${what} ${dir} has no manifest (an older megamoe wrote it); rebuilding it once`
      : `megamoe: the cached ${what} ${dir} is damaged (${why}); rebuilding it`)))(damage);
  }
  // Finished checkpoints arrive by rename, so a folder that fails its manifest or has no config.json is debris in
  // our own cache: clear it.
  if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
  make(dir, { setting: 'MEGAMOE_CACHE_DIR', beforeMove: writeManifest });
  return dir;
}
