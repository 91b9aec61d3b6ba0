// `megamoe bench model`'s pure half: the options and their checks, the plan of what runs (decode batches x contexts,
// prefill lengths, the model's capacities), and the roofline of one step from the model config alone: the bytes of
// weights and caches a step must touch and its FLOPs by kind. No GPU, no I/O: tested on the CPU
// (test/bench-model-plan.test.ts); src/bench/model.ts runs the plan on the GPU.
//
// What the roofline counts (each byte once per call, as a lower bound):
//  * weights: every dense weight of every layer (FP8 codes + f32 128x128 block scales; bf16 wo_a, compressors,
//    weights_proj, router gate; f32 hc / norms / ape / sink), the head (bf16 [V, D]) and the embedding rows of the call;
//    the MoE's routed experts the call touches (measured from the routing where the run downloads it, else the
//    expectation under uniform top-K routing) plus the shared expert, as bench moe counts them (expertWeightBytes).
//    A prefill chunked into calls of `chunk` tokens reads the weights once per call.
//  * caches: per sequence and layer, what attention reads at its position: the window rows, on ratio-4 layers the
//    indexer's compressed keys (all of them) and the top-k compressed rows, on other compressed layers every
//    compressed row; plus the compressor states' traffic (a / g rows written, the pool read once per ratio tokens).
//    A prefill call reads the sequence's cache as it stands at the call's end once.
//  * FLOPs: FP8 GEMMs (wq_a, wq_b, wkv, wo_b, the indexer's wq_b, the MoE's routed and shared experts), bf16 GEMMs
//    (wo_a, compressors, weights_proj, the router gate, the logits), attention (QK and PV over the attended keys, the
//    indexer's scores). The hc mixing (f64 on CUDA cores, ~0.8 MFLOP per token per sub-block) and element-wise work
//    are not counted. Roofline time = max(bytes / HBM peak, FP8 FLOPs / FP8 peak + other FLOPs / BF16 peak), where
//    the BF16 peak is half the FP8 peak (Hopper's dense tensor-core rates: H100 datasheet 989 vs 1979 TFLOPS): a
//    bound whatever the kernels use (attention runs on CUDA cores today).
import { parseDeepSeekV4Config } from '../checkpoint/config.js';
import { layerKind, modelConfigFrom, type ModelConfig } from '../model/config.js';
import { modelPresetConfig } from '../model/checkpoint-writer.js';
import { expertWeightBytes, type DeviceCeilings } from './report.js';
import { parseList } from './staging-routing.js';

import type { GpuMoeBackend } from '../gpu-model/layer.js';

export const MODEL_BENCH_PRESETS = ['flash', 'pro'] as const;
export type ModelBenchPreset = (typeof MODEL_BENCH_PRESETS)[number];
export const MODEL_BENCH_DEFAULTS = Object.freeze({
  batches: '1,8,64,256', contexts: '1k,32k', prefill: '4k,32k', prefillChunk: 4096, layers: 4, warmup: 2, runs: 10, prefillRuns: 3, profileRuns: 3,
});
/** How decode contexts are filled: 'skip' (positions advanced without computing them: cache rows hold zeros) or 'prefill'. */
export const KV_FILLS = ['skip', 'prefill'] as const;
export type KvFill = (typeof KV_FILLS)[number];

/** The (validated) options of one run. */
export interface ModelBenchOptions {
  preset: ModelBenchPreset;
  layers: number;
  batches: number[];
  contexts: number[];
  prefill: number[];
  prefillChunk: number;
  kvFill: KvFill;
  warmup: number;
  runs: number;
  /** timed prefills per prompt length */
  prefillRuns: number;
  /** profiled steps (CUDA events at every layer's parts) per decode row; 0 = no per-layer breakdown */
  profileRuns: number;
  seed: number;
  out: string;
  commit?: string;
  command?: string;
  /** every layer's MoE backend (default unfused) */
  moeBackend?: GpuMoeBackend;
  /** decode steps as CUDA graphs (GpuModelOptions.decodeGraphs) */
  decodeGraphs?: boolean;
  /** GiB the caches are planned from (GpuModelOptions.cacheBytes); default the device's free memory */
  kvCacheGib?: number;
}

/** "4096", "4k" or "32K" (x 1024): a positive integer. */
export function parseSize(flag: string, text: string): number {
  const m = /^\s*(\d+)\s*([kK]?)\s*$/.exec(text);
  const v = m ? Number(m[1]) * (m[2] ? 1024 : 1) : NaN;
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`--${flag}: "${text}" is not a positive integer (e.g. 4096 or 4k)`);
  return v;
}

/** A comma list of sizes (parseSize), sorted, duplicates dropped; "none" = an empty list. */
export function parseSizeList(flag: string, text: string): number[] {
  if (text.trim() === 'none') return [];
  return [...new Set(parseList(flag, text).map((p) => parseSize(flag, p)))].sort((a, b) => a - b);
}

/** Checks the options against each other; throws an Error naming the flag and the fix. */
export function validateModelBenchOptions(o: ModelBenchOptions): ModelBenchOptions {
  if (!MODEL_BENCH_PRESETS.includes(o.preset)) throw new Error(`--preset: unknown "${o.preset}" (known: ${MODEL_BENCH_PRESETS.join(', ')})`);
  if (!(Number.isInteger(o.layers) && o.layers >= 1)) throw new Error(`--layers ${o.layers}: give a positive number of decoder layers`);
  if (o.batches.length > 0 && o.contexts.length === 0) throw new Error('--contexts none with decode batches: give a context (e.g. --contexts 1k) or --batches none');
  if (o.contexts.length > 0 && o.batches.length === 0) throw new Error('--batches none with decode contexts: give a batch (e.g. --batches 1) or --contexts none');
  if (o.batches.length === 0 && o.prefill.length === 0) throw new Error('nothing to run: --batches none and --prefill none; give at least one');
  if (!(Number.isInteger(o.prefillChunk) && o.prefillChunk >= 1)) throw new Error(`--prefill-chunk ${o.prefillChunk}: give a positive number of tokens per call`);
  const maxBatch = Math.max(0, ...o.batches);
  if (maxBatch > o.prefillChunk) {
    throw new Error(`--batches ${maxBatch} exceeds --prefill-chunk ${o.prefillChunk}: one call holds at most that many tokens (the model's maxRows); raise --prefill-chunk to ${maxBatch}`);
  }
  if (!(o.runs >= 1)) throw new Error(`--runs ${o.runs}: give at least 1`);
  if (!(o.prefillRuns >= 1)) throw new Error(`--prefill-runs ${o.prefillRuns}: give at least 1`);
  if (!KV_FILLS.includes(o.kvFill)) throw new Error(`--kv-fill: unknown "${o.kvFill}" (known: ${KV_FILLS.join(', ')})`);
  if (o.kvCacheGib !== undefined && !(Number.isFinite(o.kvCacheGib) && o.kvCacheGib > 0)) {
    throw new Error(`--kv-cache-gib ${o.kvCacheGib}: give a positive number of GiB (e.g. 8), or leave it out to plan the caches from the free memory`);
  }
  return o;
}

/** Most tokens `--kv-fill prefill` prefills for one decode row before the row is reported as not run instead. */
export const MAX_FILL_TOKENS = 1 << 20;

/**
 * Why a decode row is not run, or undefined: with `--kv-fill prefill` its B x C tokens of prefill past
 * MAX_FILL_TOKENS (hours at the GPU model's prefill rate today), with the fix.
 */
export function decodeFillRefusal(kvFill: KvFill, batch: number, context: number): string | undefined {
  const n = batch * context;
  if (kvFill !== 'prefill' || n <= MAX_FILL_TOKENS) return undefined;
  return `--kv-fill prefill would prefill ${batch} x ${context} = ${n} tokens first (more than ${MAX_FILL_TOKENS}); use --kv-fill skip for this row`;
}

/** The whole-model config of a preset with L layers (no MTP), exactly the one virtualModelCheckpoint builds. */
export function benchModelConfig(preset: ModelBenchPreset, layers: number, seed = 1): ModelConfig {
  const raw = modelPresetConfig({ preset, layers, mtpLayers: 0, expertDtype: 'fp8', seed });
  return modelConfigFrom(parseDeepSeekV4Config(raw, `${preset} preset config`));
}

/** The GpuModel capacities a run needs: sequences and rows of a call, logit rows, the longest sequence. */
export interface ModelBenchCapacity {
  maxSequences: number;
  maxRows: number;
  maxContext: number;
}

/** Steps a decode row takes beyond its context: warm-up, timed and profiled steps. */
export function decodeSteps(o: Pick<ModelBenchOptions, 'warmup' | 'runs' | 'profileRuns'>): number {
  return o.warmup + o.runs + o.profileRuns;
}

export function planCapacity(o: ModelBenchOptions, c: ModelConfig): ModelBenchCapacity {
  const longest = Math.max(0, ...o.prefill, ...o.contexts.map((ctx) => ctx + decodeSteps(o)));
  if (longest > c.maxContext) throw new Error(`a sequence would reach ${longest} tokens, past the ${o.preset} config's context of ${c.maxContext}; use shorter --contexts / --prefill`);
  // rounded up to the cache's 64-row blocks
  return { maxSequences: Math.max(1, ...o.batches), maxRows: o.prefillChunk, maxContext: Math.min(c.maxContext, Math.ceil(longest / 64) * 64) };
}

/** What one call must touch and compute (see the header). */
export interface StepCost {
  weightBytes: number;
  cacheBytes: number;
  fp8Flops: number;
  /** bf16 GEMM and attention FLOPs, priced at the BF16 tensor-core rate */
  otherFlops: number;
  /** routed experts touched per layer (measured or expected) */
  expertsTouched: number[];
}

const fp8Bytes = (n: number, k: number) => n * k + Math.ceil(n / 128) * Math.ceil(k / 128) * 4;

/** Expected distinct experts under uniform top-K routing (K distinct per token) of `tokens` tokens. */
export function expectedTouchedExperts(tokens: number, experts: number, topK: number): number {
  return experts * (1 - (1 - topK / experts) ** tokens);
}

/** Bytes of layer i's dense (non-expert) weights as the GPU holds them. */
export function layerDenseBytes(c: ModelConfig, i: number): number {
  const D = c.dim; const H = c.nHeads; const d = c.headDim; const hc = c.hcMult; const kind = layerKind(c, i);
  let b = fp8Bytes(c.qLoraRank, D) + fp8Bytes(H * d, c.qLoraRank) + fp8Bytes(d, D) + fp8Bytes(D, c.oGroups * c.oLoraRank);
  b += c.oGroups * c.oLoraRank * ((H * d) / c.oGroups) * 2; // wo_a bf16
  b += 2 * (2 + hc) * hc * hc * D * 4 + (2 * D + c.qLoraRank + d + H) * 4; // hc_attn / hc_ffn fn, norms, sink
  const compressor = (dc: number, ratio: number, overlap: boolean) => { const w = (overlap ? 2 : 1) * dc; return 2 * w * D * 2 + ratio * w * 4 + dc * 4; };
  if (kind.ratio > 0) b += compressor(d, kind.ratio, kind.overlap);
  if (kind.indexer) b += fp8Bytes(c.indexNHeads * c.indexHeadDim, c.qLoraRank) + c.indexNHeads * D * 2 + compressor(c.indexHeadDim, 4, true);
  const m = c.base;
  b += m.nRoutedExperts * D * 2 + m.nRoutedExperts * 4; // router gate bf16 + bias
  return b;
}

/** Bytes of one layer's MoE experts: `touched` routed experts plus the shared expert(s). */
export function layerExpertBytes(c: ModelConfig, touched: number): number {
  const m = c.base;
  return touched * expertWeightBytes(c.dim, m.moeIntermediateSize) + expertWeightBytes(c.dim, m.moeIntermediateSize * m.nSharedExperts);
}

/** Bytes the GPU holds for the model's weights (all experts): the plan's memory check. */
export function residentWeightBytes(c: ModelConfig): number {
  let b = 2 * c.vocabSize * c.dim * 2 + (c.hcMult * c.hcMult * c.dim + c.dim) * 4;
  for (let i = 0; i < c.nLayers; i++) b += layerDenseBytes(c, i) + layerExpertBytes(c, c.base.nRoutedExperts);
  return b;
}

/** Keys attended by the token at position `pos` in layer i: window rows + compressed rows (ratio-4: the indexer's top-k). */
function attendedKeys(c: ModelConfig, i: number, pos: number): { window: number; compressed: number; indexed: number } {
  const { ratio, indexer } = layerKind(c, i);
  const window = Math.min(pos + 1, c.windowSize);
  if (ratio === 0) return { window, compressed: 0, indexed: 0 };
  const blocks = Math.floor((pos + 1) / ratio);
  return indexer ? { window, compressed: Math.min(c.indexTopk, blocks), indexed: blocks } : { window, compressed: blocks, indexed: 0 };
}

/** Compressor-state bytes one token moves in layer i (a / g rows written; the pool read once per `ratio` tokens). */
function stateBytesPerToken(c: ModelConfig, i: number): number {
  const { ratio, indexer } = layerKind(c, i);
  if (ratio === 0) return 0;
  const one = (dc: number, overlap: boolean) => { const cw = overlap ? 2 : 1; return 2 * cw * dc * 4 * (1 + cw); };
  return one(c.headDim, ratio === 4) + (indexer ? one(c.indexHeadDim, true) : 0);
}

/** Cache bytes one call reads for a sequence whose cache holds `len` positions, in layer i. */
function cacheReadBytes(c: ModelConfig, i: number, len: number): number {
  const k = attendedKeys(c, i, len - 1);
  return (k.window + k.compressed) * c.headDim * 2 + k.indexed * c.indexHeadDim * 2;
}

/** Per-token FLOPs of layer i at position pos, split FP8 / other. */
function tokenFlops(c: ModelConfig, i: number, pos: number): { fp8: number; other: number } {
  const D = c.dim; const H = c.nHeads; const d = c.headDim; const kind = layerKind(c, i); const m = c.base;
  let fp8 = 2 * (c.qLoraRank * D + H * d * c.qLoraRank + d * D + D * c.oGroups * c.oLoraRank);
  fp8 += 2 * 3 * D * m.moeIntermediateSize * (m.numExpertsPerTok + m.nSharedExperts);
  let other = 2 * c.oLoraRank * H * d + 2 * m.nRoutedExperts * D; // wo_a, router gate
  if (kind.ratio > 0) other += 2 * 2 * (kind.overlap ? 2 : 1) * d * D;
  if (kind.indexer) {
    fp8 += 2 * c.indexNHeads * c.indexHeadDim * c.qLoraRank;
    other += 2 * c.indexNHeads * D + 2 * 2 * 2 * c.indexHeadDim * D;
  }
  const k = attendedKeys(c, i, pos);
  other += 4 * H * d * (k.window + k.compressed) + 2 * c.indexNHeads * c.indexHeadDim * k.indexed;
  return { fp8, other };
}

/**
 * One decode step: `batch` sequences, each with `context` positions cached, one new token each. `touched`: routed
 * experts per layer from the routing (else the uniform expectation).
 */
export function decodeStepCost(c: ModelConfig, batch: number, context: number, touched?: readonly number[]): StepCost {
  return callCost(c, Array.from({ length: batch }, () => ({ pos: context, len: 1 })), touched);
}

/** A prefill of `tokens` positions from 0 in calls of `chunk` tokens (the sum over its calls). */
export function prefillCost(c: ModelConfig, tokens: number, chunk: number): StepCost {
  const total: StepCost = { weightBytes: 0, cacheBytes: 0, fp8Flops: 0, otherFlops: 0, expertsTouched: new Array(c.nLayers).fill(0) };
  for (let pos = 0; pos < tokens; pos += chunk) {
    const s = callCost(c, [{ pos, len: Math.min(chunk, tokens - pos) }]);
    total.weightBytes += s.weightBytes; total.cacheBytes += s.cacheBytes; total.fp8Flops += s.fp8Flops; total.otherFlops += s.otherFlops;
    s.expertsTouched.forEach((t, i) => { total.expertsTouched[i] += t; });
  }
  return total;
}

/** One call of items (each: its first new position and token count), one logit row per item. */
function callCost(c: ModelConfig, items: ReadonlyArray<{ pos: number; len: number }>, touched?: readonly number[]): StepCost {
  const m = c.base;
  const tokens = items.reduce((a, it) => a + it.len, 0);
  const expertsTouched = Array.from({ length: c.nLayers }, (_, i) => touched?.[i] ?? expectedTouchedExperts(tokens, m.nRoutedExperts, m.numExpertsPerTok));
  let weightBytes = c.vocabSize * c.dim * 2 + tokens * c.dim * 2 + (c.hcMult * c.hcMult * c.dim + c.dim) * 4; // head, embedding rows, hc_head
  let cacheBytes = 0; let fp8Flops = 0;
  let otherFlops = 2 * items.length * c.vocabSize * c.dim; // logits
  for (let i = 0; i < c.nLayers; i++) {
    weightBytes += layerDenseBytes(c, i) + layerExpertBytes(c, expertsTouched[i]);
    for (const it of items) {
      cacheBytes += cacheReadBytes(c, i, it.pos + it.len) + it.len * stateBytesPerToken(c, i);
      for (let p = it.pos; p < it.pos + it.len; p++) {
        const f = tokenFlops(c, i, p);
        fp8Flops += f.fp8; otherFlops += f.other;
      }
    }
  }
  return { weightBytes, cacheBytes, fp8Flops, otherFlops, expertsTouched };
}

/** The roofline of a cost on this GPU's ceilings, microseconds, and which term binds. */
export function stepRoofline(s: StepCost, ceil: Pick<DeviceCeilings, 'hbmPeakTBs' | 'fp8DensePeakTflops' | 'copyTBs'>):
  { rooflineUs: number; bound: 'HBM' | 'compute'; hbmUs: number; computeUs: number; copyUs?: number } {
  const hbmUs = ((s.weightBytes + s.cacheBytes) / (ceil.hbmPeakTBs * 1e12)) * 1e6;
  const fp8 = ceil.fp8DensePeakTflops * 1e12;
  const computeUs = (s.fp8Flops / fp8 + s.otherFlops / (fp8 / 2)) * 1e6;
  const copyUs = ceil.copyTBs !== undefined && ceil.copyTBs > 0 ? ((s.weightBytes + s.cacheBytes) / (ceil.copyTBs * 1e12)) * 1e6 : undefined;
  return { rooflineUs: Math.max(hbmUs, computeUs), bound: hbmUs >= computeUs ? 'HBM' : 'compute', hbmUs, computeUs, ...(copyUs === undefined ? {} : { copyUs }) };
}
