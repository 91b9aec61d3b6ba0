// The whole DeepSeek-V4 forward step on the GPU (V4-MODEL 1, 2.4, 6; issue 11), assembled from the pieces of this
// folder in the CPU forward's order (src/model/model.ts forwardNow + outputs):
//
//   embedding (hc identical copies)          GpuRowOps.embed                    model.ts forwardNow's row copy
//   every decoder layer                      GpuDecoderLayer.forward (layer.ts) model.ts block()
//   hc_head + final norm (chosen rows)       GpuRowOps.hcHead (srcRows, fused)  model.ts outputs: hcHead, rmsNorm
//   logits f32 = y . head^T                  GpuLogits (cuBLASLt bf16 -> f32)   model.ts outputs: the head linear
//   sampling (optional, on the device)       GpuSampler, one row per sequence   src/generate/sampler.ts
//
// GpuModel implements CausalLM (step: logits of each item's last token, downloaded), so the generation loop and
// `megamoe generate --device gpu` drive it as they drive the CPU model; `forward(items, { allLogits })` returns every
// new position's logits (tests); `sample(items)` runs the step and samples each item's next token on the device with
// that sequence's own parameters and random stream (setSampling).
//
// One call is any mix of prefills and decodes (items one after another, GpuAttention's row layout), at most maxRows
// tokens and maxItems sequences; a longer prompt must be chunked by the caller (one item of a sequence at its
// position: chunked prefill works like any call). Everything is queued on one stream; the call syncs the host once, at
// the end, to download.
//
// Not here: the MTP layer (its block is a ratio-0 layer and `mtpCombine` exists, but the e_proj / h_proj wiring, the
// MTP's cache positions and the head-hidden hand-over are not built: GpuModel loads without it), chunked-prefill
// scheduling (the caller's), expert parallelism (one GPU holds every expert). Decode steps as CUDA graphs exist behind
// decodeGraphs (off by default here; loadModel, so serve --device gpu, turns it on unless --enforce-eager).
import { CudaGraph, DeviceTensor, ensureContext } from '../cuda/index.js';
import type { CausalLM, DeviceSamplingLM, ModelSequence, ModelStepItem } from '../model/causal-lm.js';
import type { ModelConfig } from '../model/config.js';
import { loadModelWeights, type ModelWeights } from '../model/loader.js';
import type { SamplingParams } from '../generate/contracts.js';
import { HostTensor } from '../tensor/host.js';
import { GpuAttention } from './attention.js';
import { GpuModelArgumentError } from './errors.js';
import { checkDecodeGraphSizes, decodeGraphSize, decodePadSlots, defaultDecodeGraphSizes } from './graph-sizes.js';
import { KvCacheCapacityError } from './kv-allocator.js';
import type { KvSequence } from './kv-allocator.js';
import { GpuKvCache } from './kv-cache.js';
import { bf16WeightBits, GpuDecoderLayer, GpuLayerContext, type GpuDecoderLayerOptions } from './layer.js';
import { GpuLogits } from './logits.js';
import { uploadHcParams, type DeviceHcParams } from './row-ops.js';
import { GpuSampler, SAMPLE_STATUS } from './sampler.js';

export interface GpuModelOptions {
  /** Concurrent sequences (cache slots and sampler rows); default 8. */
  maxSequences?: number;
  /** Most tokens of one call over all items (prefill chunk + decodes); default 512. */
  maxRows?: number;
  /** Most items (sequences) of one call; default maxSequences. */
  maxItems?: number;
  /** Most logit rows of one call (allLogits needs one per token); default maxItems. */
  maxLogitRows?: number;
  /** Longest sequence; default the config's maxContext capped at 65536 (the caches' tables and scratch scale with it). */
  maxContext?: number;
  /** Rows per cache block (default 64). */
  blockRows?: number;
  /** Plan the caches from this many bytes instead of the device's free memory after the weights are uploaded. */
  cacheBytes?: number;
  /** Share of the free bytes the caches may take (default 0.9). */
  memoryFraction?: number;
  /**
   * Bytes kept back from the caches: default 256 MiB (cuBLASLt workspaces, late allocations) plus the layers' estimated
   * size (estimateLayerBytes) when planning from free memory; 0 by default with cacheBytes.
   */
  reserveBytes?: number;
  /** Cap on any cache kind's blocks (tests). */
  maxBlocksPerKind?: number;
  /** Every layer's MoE device weights from this instead of its experts (GpuDecoderLayerOptions; `bench model`). */
  moeWeights?: GpuDecoderLayerOptions['moeWeights'];
  /** Every layer's MoE backend (default unfused; mega_moe: the fused kernel). */
  moeBackend?: GpuDecoderLayerOptions['moeBackend'];
  /**
   * Decode calls of sample() / stepAndSample() (one token per item) replay one CUDA graph per (items, context bucket:
   * decodeContextBucket) instead of launching each kernel: the attention launches take the bucket's shapes
   * (GpuAttention.begin shapeContext). Default off (loadModel turns it on); measured in docs/GPU-MODEL.md.
   */
  decodeGraphs?: boolean;
  /**
   * With decodeGraphs: the batch sizes captured (vLLM's cudagraph capture sizes). A decode call of n items replays
   * the graph of the smallest size >= n, padded with rows on reserved cache slots (their outputs dropped); a call
   * above the largest runs eagerly. Default 1, 2, 4, multiples of 8 and the most items of one call
   * (graph-sizes.ts defaultDecodeGraphSizes).
   */
  decodeGraphSizes?: readonly number[];
}

/** The context bucket of a decode graph: the smallest power of two >= max(longest, 1024), at most maxContext. */
export function decodeContextBucket(longest: number, maxContext: number): number {
  let b = 1024;
  while (b < longest) b *= 2;
  return Math.min(b, maxContext);
}

let nextGpuSequenceId = 1;

/** One sequence of a GpuModel: its paged-cache slot and length. */
export class GpuSequence implements ModelSequence {
  readonly id = nextGpuSequenceId++;
  length = 0;
  released = false;
  /** Set when a call failed after it began changing this sequence's caches: its state is undefined from then on. */
  failed: string | undefined;
  constructor(readonly owner: GpuModel, readonly kv: KvSequence) {}
}

export interface GpuForwardOptions {
  /** Logits of every new token [len, V] per item, not only the last [V]. */
  allLogits?: boolean;
}

/** The f32 logits of rows in item order, [rows, V]; per item a view. */
function splitRows(all: Float32Array, counts: readonly number[], V: number): Float32Array[] {
  const out: Float32Array[] = [];
  let o = 0;
  for (const c of counts) { out.push(all.slice(o * V, (o + c) * V)); o += c; }
  return out;
}

const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, seed: 0 };

export class GpuModel implements DeviceSamplingLM, Disposable {
  readonly config: ModelConfig;
  readonly vocabSize: number;
  readonly maxContext: number;
  readonly maxRows: number;
  readonly maxItems: number;
  readonly maxLogitRows: number;
  readonly cache: GpuKvCache;
  readonly attention: GpuAttention;
  readonly ctx: GpuLayerContext;
  readonly layers: readonly GpuDecoderLayer[];
  private readonly embedTable: DeviceTensor<'BF16'>;
  private readonly head: DeviceTensor<'BF16'>;
  private readonly headHc: DeviceHcParams;
  private readonly finalNorm: DeviceTensor<'F32'>;
  private readonly logits: GpuLogits;
  /** I32 [mCap] token ids of a call (the embedding's input; ctx.tokenIds holds them as I64 for the hash router). */
  private readonly ids: DeviceTensor<'I32'>;
  /** int32 [1]: ids outside the vocabulary seen by the embedding (never, the host checks first; a device guard). */
  private readonly badIds: DeviceTensor<'I32'>;
  /** BF16 [mCap, hc, D]: the residual streams, updated in place by every layer. */
  readonly hs: DeviceTensor<'BF16'>;
  private readonly srcRows: DeviceTensor<'I32'>;
  private readonly y: DeviceTensor<'BF16'>;
  private readonly logitsBuf: DeviceTensor<'F32'>;
  /** One sampler row per cache slot (the sequence's parameters and random stream) and the rows of one call. */
  private readonly slotSampler: GpuSampler;
  /** The sampler row (sequence slot) of each item of a sample() call: one upload, one launch (no per-row copies). */
  private readonly sampleSlots: DeviceTensor<'I32'>;
  private readonly owned: Array<{ dispose(): void }>;
  private readonly live = new Set<GpuSequence>();
  private queue: Promise<unknown> = Promise.resolve();
  private lastRows = 0;
  private disposed = false;
  private readonly decodeGraphs: boolean;
  /** The captured batch sizes (decodeGraphSizes, sorted), and one reserved cache slot per padding item they may need. */
  readonly decodeGraphSizes: readonly number[];
  private readonly padSlots: readonly KvSequence[];
  /** Sequences a caller may hold at once (the cache has padSlots more). */
  private readonly maxSequences: number;
  /** Captured decode steps by "items/bucket" (decodeGraphs), and the keys run once eagerly before their capture. */
  private readonly graphs = new Map<string, CudaGraph>();
  private readonly warmed = new Set<string>();

  private constructor(p: {
    config: ModelConfig; maxContext: number; maxRows: number; maxItems: number; maxLogitRows: number; cache: GpuKvCache; attention: GpuAttention;
    ctx: GpuLayerContext; layers: GpuDecoderLayer[]; embedTable: DeviceTensor<'BF16'>; head: DeviceTensor<'BF16'>; headHc: DeviceHcParams;
    finalNorm: DeviceTensor<'F32'>; logits: GpuLogits; ids: DeviceTensor<'I32'>; badIds: DeviceTensor<'I32'>; hs: DeviceTensor<'BF16'>;
    srcRows: DeviceTensor<'I32'>; y: DeviceTensor<'BF16'>; logitsBuf: DeviceTensor<'F32'>; slotSampler: GpuSampler; sampleSlots: DeviceTensor<'I32'>;
    owned: Array<{ dispose(): void }>; decodeGraphs: boolean; decodeGraphSizes: readonly number[]; padSlots: readonly KvSequence[]; maxSequences: number;
  }) {
    this.config = p.config; this.vocabSize = p.config.vocabSize; this.maxContext = p.maxContext;
    this.maxRows = p.maxRows; this.maxItems = p.maxItems; this.maxLogitRows = p.maxLogitRows;
    this.cache = p.cache; this.attention = p.attention; this.ctx = p.ctx; this.layers = p.layers;
    this.embedTable = p.embedTable; this.head = p.head; this.headHc = p.headHc; this.finalNorm = p.finalNorm; this.logits = p.logits;
    this.ids = p.ids; this.badIds = p.badIds; this.hs = p.hs; this.srcRows = p.srcRows; this.y = p.y; this.logitsBuf = p.logitsBuf;
    this.slotSampler = p.slotSampler; this.sampleSlots = p.sampleSlots; this.owned = p.owned;
    this.decodeGraphs = p.decodeGraphs;
    this.decodeGraphSizes = p.decodeGraphSizes; this.padSlots = p.padSlots; this.maxSequences = p.maxSequences;
  }

  /** Loads a checkpoint folder (without its MTP layers) and builds the model on the GPU; the host copy is closed after upload. */
  static async load(dir: string, options: GpuModelOptions = {}): Promise<GpuModel> {
    ensureContext(); // no GPU: refuse before reading the checkpoint
    const weights = loadModelWeights(dir, { mtp: false });
    try {
      return await GpuModel.build(weights, options, true);
    } catch (err) {
      weights.close();
      throw err;
    }
  }

  /**
   * Builds the model from loaded weights (a CPU model's `weights`: the tests run both on one load). The weights stay
   * the caller's (not closed); MTP layers in them are ignored.
   */
  static create(weights: ModelWeights, options: GpuModelOptions = {}): Promise<GpuModel> {
    return GpuModel.build(weights, options, false);
  }

  private static async build(weights: ModelWeights, o: GpuModelOptions, ownsWeights: boolean): Promise<GpuModel> {
    const c = weights.config;
    const maxSequences = o.maxSequences ?? 8;
    const maxRows = o.maxRows ?? 512;
    const maxItems = o.maxItems ?? maxSequences;
    const maxLogitRows = o.maxLogitRows ?? maxItems;
    const maxContext = o.maxContext ?? Math.min(c.maxContext, 65536);
    const pos = (name: string, v: number, fix: string) => {
      if (!(Number.isInteger(v) && v >= 1)) throw new GpuModelArgumentError('GpuModel', `${name} = ${v} is not a positive integer`, fix);
    };
    pos('maxSequences', maxSequences, 'pass the number of concurrent sequences');
    pos('maxRows', maxRows, 'pass the most tokens of one call');
    pos('maxItems', maxItems, 'pass the most sequences of one call');
    pos('maxLogitRows', maxLogitRows, 'pass the most logit rows of one call');
    if (maxItems > maxSequences) throw new GpuModelArgumentError('GpuModel', `maxItems ${maxItems} > maxSequences ${maxSequences}`, 'a call holds each sequence at most once');
    if (maxItems > maxRows) throw new GpuModelArgumentError('GpuModel', `maxItems ${maxItems} > maxRows ${maxRows}`, 'every item brings at least one token');
    if (maxContext > c.maxContext) throw new GpuModelArgumentError('GpuModel', `maxContext ${maxContext} exceeds the model's ${c.maxContext}`, 'pass at most the config\'s context');
    if (weights.layers.length !== c.nLayers) throw new GpuModelArgumentError('GpuModel', `the weights hold ${weights.layers.length} of ${c.nLayers} layers`, 'load the whole model');
    const decodeGraphs = o.decodeGraphs ?? false;
    // a padded call's rows are items and logit rows too
    const graphCap = Math.min(maxItems, maxLogitRows);
    const decodeGraphSizes = decodeGraphs ? checkDecodeGraphSizes(o.decodeGraphSizes ?? defaultDecodeGraphSizes(graphCap), graphCap) : [];
    const nPad = decodeGraphs ? decodePadSlots(decodeGraphSizes) : 0;
    ensureContext();
    const owned: Array<{ dispose(): void }> = [];
    const keep = <T extends { dispose(): void }>(t: T): T => { owned.push(t); return t; };
    const D = c.dim; const hc = c.hcMult; const V = c.vocabSize;
    try {
      // weights first: the caches are planned from the memory left after them
      const embedTable = keep(DeviceTensor.fromHost(new HostTensor('BF16', [V, D], weights.embed)));
      const headBits = weights.head instanceof Uint16Array ? weights.head : bf16WeightBits('head.weight', weights.head);
      const head = keep(DeviceTensor.fromHost(new HostTensor('BF16', [V, D], headBits)));
      const headHc = uploadHcParams(weights.finalHead.hc, hc, hc * D);
      keep(headHc.fn); keep(headHc.base); keep(headHc.scale);
      const finalNorm = keep(DeviceTensor.fromHost(new HostTensor('F32', [D], weights.finalHead.norm)));
      const logits = keep(new GpuLogits(V, D));
      const slotSampler = keep(await GpuSampler.create(maxSequences + nPad, V));
      const sampleSlots = keep(DeviceTensor.zeros('I32', [maxItems]));

      // The layers need the context, the context the attention, the attention the cache: the cache is planned with a
      // budget estimated before the layer weights are uploaded, so it is given explicitly, or from free memory minus
      // the layers' size estimate (reserve).
      const cacheOpts = {
        maxSequences: maxSequences + nPad, blockRows: o.blockRows, maxContext, memoryFraction: o.memoryFraction,
        reserveBytes: o.cacheBytes === undefined ? (o.reserveBytes ?? 256 * 2 ** 20) + estimateLayerBytes(weights, maxRows) : (o.reserveBytes ?? 0),
        maxBlocksPerKind: o.maxBlocksPerKind, freeBytes: o.cacheBytes,
      };
      const cache = keep(GpuKvCache.create(c, cacheOpts));
      // the padding rows' slots, one position each (never grown: every padded call writes their position 0 again)
      const padSlots = Array.from({ length: nPad }, () => cache.admit(1));
      const attention = keep(GpuAttention.createSync(c, cache, { maxRows, maxItems }));
      const ctx = keep(await GpuLayerContext.create(c, attention, { maxRows }));
      const layers: GpuDecoderLayer[] = [];
      for (const bw of weights.layers) layers.push(keep(await GpuDecoderLayer.create(ctx, bw, { moeWeights: o.moeWeights, moeBackend: o.moeBackend })));
      const m = ctx.mCap;
      const ids = keep(DeviceTensor.zeros('I32', [m]));
      const badIds = keep(DeviceTensor.zeros('I32', [1]));
      const hs = keep(DeviceTensor.zeros('BF16', [m, hc, D]));
      const srcRows = keep(DeviceTensor.zeros('I32', [maxLogitRows]));
      const y = keep(DeviceTensor.zeros('BF16', [maxLogitRows, D]));
      const logitsBuf = keep(DeviceTensor.zeros('F32', [maxLogitRows, V]));
      ensureContext().synchronize(); // uploads on the legacy stream before ctx.stream (non-blocking) reads them
      const model = new GpuModel({
        config: c, maxContext, maxRows, maxItems, maxLogitRows, cache, attention, ctx, layers, embedTable, head, headHc, finalNorm, logits,
        ids, badIds, hs, srcRows, y, logitsBuf, slotSampler, sampleSlots, owned, decodeGraphs, decodeGraphSizes, padSlots, maxSequences,
      });
      if (ownsWeights) weights.close(); // every layer's weights (experts included) are on the device now
      return model;
    } catch (err) {
      for (const t of owned.reverse()) { try { t.dispose(); } catch { /* keep freeing */ } }
      throw err;
    }
  }

  /** A fresh sequence: a cache slot (KvCacheCapacityError when all are taken), greedy sampling until setSampling. */
  createSequence(): GpuSequence {
    this.checkLive();
    if (this.live.size >= this.maxSequences) {
      throw new KvCacheCapacityError(`createSequence: all ${this.maxSequences} sequences of this model are in use`,
        'wait for or release a sequence, or build the model with a larger maxSequences');
    }
    const kv = this.cache.admit(0);
    const seq = new GpuSequence(this, kv);
    this.slotSampler.setRow(kv.slot, GREEDY);
    this.live.add(seq);
    return seq;
  }

  releaseSequence(seq: ModelSequence): void {
    const s = this.own(seq, 'releaseSequence');
    if (s.released) return;
    s.released = true;
    this.cache.release(s.kv);
    this.live.delete(s);
  }

  /** Sets a sequence's sampling for sample() and restarts its random stream from the seed; returns the seed. */
  setSampling(seq: ModelSequence, params: SamplingParams): number {
    const s = this.own(seq, 'setSampling');
    if (s.released) throw new Error(`setSampling: sequence ${s.id} was released`);
    return this.slotSampler.setRow(s.kv.slot, params);
  }

  /**
   * CausalLM: runs every item's new tokens, returns the f32 logits [V] of each item's last new token. A single item
   * longer than maxRows (a long prompt) runs as consecutive chunks of maxRows tokens (chunked prefill, the same
   * numbers); a batch past maxRows is refused.
   */
  async step(items: readonly ModelStepItem[]): Promise<Float32Array[]> {
    if (items.length === 1 && items[0].tokens.length > this.maxRows) {
      const { seq, tokens } = items[0];
      let out: Float32Array[] = [];
      for (let o = 0; o < tokens.length; o += this.maxRows) out = await this.forward([{ seq, tokens: tokens.slice(o, o + this.maxRows) }]);
      return out;
    }
    return this.forward(items);
  }

  /** Runs the items; logits per item: [V] of the last token, or [len, V] with allLogits. */
  forward(items: readonly ModelStepItem[], opts: GpuForwardOptions = {}): Promise<Float32Array[]> {
    return this.exclusive(async () => {
      const counts = this.run(items, opts.allLogits ?? false);
      const total = counts.reduce((a, b) => a + b, 0);
      const host = new Float32Array(total * this.vocabSize);
      this.logitsBuf.buffer.copyToHost(host, { bytes: host.byteLength });
      return splitRows(host, counts, this.vocabSize);
    });
  }

  /**
   * Runs the items and samples each item's next token on the device with that sequence's sampling (setSampling;
   * greedy by default) and random stream. Returns the tokens in item order (not yet fed back: pass each as its
   * sequence's next step, as with step()).
   */
  sample(items: readonly ModelStepItem[]): Promise<Int32Array> {
    return this.stepAndSample(items, items.map(() => true));
  }

  /**
   * DeviceSamplingLM (the engine's path): runs the items and samples only those with want[i], each with its
   * sequence's sampling and stream; -1 for the others (a prompt chunk that is not the last draws nothing, so each
   * sequence's stream advances once per generated token, as with the CPU sampler).
   */
  stepAndSample(items: readonly ModelStepItem[], want: readonly boolean[]): Promise<Int32Array> {
    if (want.length !== items.length) throw new Error(`GpuModel.stepAndSample: ${want.length} want flags for ${items.length} items`);
    return this.exclusive(async () => {
      const rows = items.length;
      const st = this.ctx.stream;
      const slots = Int32Array.from(items, (it, i) => (want[i] ? (it.seq as GpuSequence).kv.slot : -1));
      this.run(items, false, slots);
      const { tokens, status } = this.slotSampler.download(rows, st);
      for (let r = 0; r < rows; r++) {
        if (!want[r]) { tokens[r] = -1; continue; }
        if (status[r] === SAMPLE_STATUS.NAN_LOGIT) throw new Error(`GpuModel.sample: item ${r} (sequence ${(items[r].seq as GpuSequence).id}) has a NaN logit`);
        if (status[r] === SAMPLE_STATUS.ALL_NEG_INF) throw new Error(`GpuModel.sample: item ${r} (sequence ${(items[r].seq as GpuSequence).id}): every logit is -Infinity`);
      }
      return tokens;
    });
  }

  /** The logit rows of the last call ([rows, V] in item order: after sample(), each item's last token; tests, diagnostics). */
  lastLogits(): Float32Array {
    this.checkLive();
    const host = new Float32Array(this.lastRows * this.vocabSize);
    this.ctx.stream.synchronize();
    this.logitsBuf.buffer.copyToHost(host, { bytes: host.byteLength });
    return host;
  }

  /**
   * One call, synchronously (the caller holds the queue): checks, cache growth and metadata (ctx.begin), embedding,
   * the layers, hc_head + final norm on the output rows, the logits into logitsBuf, and with `itemSlots` (each
   * item's sampler row, -1: none) the device sampling. Returns the logit rows per item. Synchronizes the stream at the
   * end.
   */
  private run(items: readonly ModelStepItem[], allLogits: boolean, itemSlots?: Int32Array): number[] {
    this.checkLive();
    const c = this.config; const V = this.vocabSize; const st = this.ctx.stream;
    if (items.length === 0) throw new Error('GpuModel.step: no items');
    if (items.length > this.maxItems) throw new Error(`GpuModel.step: ${items.length} items exceed maxItems ${this.maxItems}; split the batch`);
    const seen = new Set<GpuSequence>();
    const tokens: number[] = [];
    const counts: number[] = [];
    for (const [i, it] of items.entries()) {
      const s = this.own(it.seq, `step: item ${i}`);
      if (s.released) throw new Error(`step: item ${i}'s sequence was released`);
      if (s.failed) throw new Error(`step: item ${i}'s sequence is unusable after a failed call (${s.failed}); release it`);
      if (seen.has(s)) throw new Error(`step: item ${i}'s sequence appears twice in one call; pass its tokens in one item`);
      seen.add(s);
      if (it.tokens.length === 0) throw new Error(`step: item ${i} has no tokens`);
      if (s.length + it.tokens.length > this.maxContext) {
        throw new Error(`step: item ${i} would reach ${s.length + it.tokens.length} tokens, past the context of ${this.maxContext}`);
      }
      for (const t of it.tokens) {
        if (!(Number.isInteger(t) && t >= 0 && t < V)) throw new Error(`step: item ${i}: token id ${t} is outside the vocabulary [0, ${V})`);
      }
      tokens.push(...it.tokens);
      counts.push(allLogits ? it.tokens.length : 1);
    }
    const outRows = counts.reduce((a, b) => a + b, 0);
    if (outRows > this.maxLogitRows) {
      throw new Error(`GpuModel.step: ${outRows} logit rows exceed maxLogitRows ${this.maxLogitRows}; build the model with a larger maxLogitRows or ask for fewer positions`);
    }
    const seqs = items.map((it) => it.seq as GpuSequence);
    this.lastRows = 0;
    // A decode call with the step's sampling replays a graph when decodeGraphs is on (not while profiling), padded to
    // the next captured size; above the largest it runs eagerly.
    const graphSize = this.decodeGraphs && itemSlots !== undefined && !allLogits && !this.ctx.profiler && items.every((it) => it.tokens.length === 1)
      ? decodeGraphSize(this.decodeGraphSizes, items.length) : undefined;
    const graphed = graphSize !== undefined;
    const shapeContext = graphed ? decodeContextBucket(Math.max(...seqs.map((s) => s.length + 1)), this.maxContext) : undefined;
    const callItems = seqs.map((s, i) => ({ seq: s.kv, pos: s.length, len: items[i].tokens.length }));
    // padding items: token 0 at position 0 of a reserved slot each (one row each; their logits are not sampled)
    const nPad = graphed ? graphSize - items.length : 0;
    for (let j = 0; j < nPad; j++) { callItems.push({ seq: this.padSlots[j], pos: 0, len: 1 }); tokens.push(0); }
    const launchedOut = outRows + nPad;
    // ctx.begin checks rows <= maxRows and the caches' room before it changes anything (a refusal leaves every sequence as it was)
    const plan = this.ctx.begin(callItems, tokens, { shapeContext });
    try {
      const n = plan.rows;
      this.ids.buffer.copyFromHost(Int32Array.from(tokens), { stream: st, bytes: n * 4 });
      const src = new Int32Array(launchedOut);
      let r = 0; let first = 0;
      for (const it of items) {
        const len = it.tokens.length;
        if (allLogits) for (let j = 0; j < len; j++) src[r++] = first + j;
        else src[r++] = first + len - 1;
        first += len;
      }
      for (let j = 0; j < nPad; j++) src[r++] = first + j;
      this.srcRows.buffer.copyFromHost(src, { stream: st, bytes: src.byteLength });
      // before the step's launches (a decode graph replays them; the uploads stay outside)
      if (itemSlots) {
        const slots = new Int32Array(launchedOut).fill(-1);
        slots.set(itemSlots);
        this.sampleSlots.buffer.copyFromHost(slots, { stream: st, bytes: slots.byteLength });
      }

      const launches = () => {
        // V4-MODEL 1: h0 = Embed(ids), hc identical copies
        this.ctx.ops.embed(this.ids, this.embedTable, this.hs, { copies: c.hcMult, tokens: n, bad: this.badIds, stream: st });
        for (const layer of this.layers) layer.forward(this.hs, this.ctx);
        // V4-MODEL 2.4: hc_head over the output rows (srcRows gathers them), the final norm fused; then the head
        this.ctx.ops.hcHead(this.hs, this.headHc, this.y, { normEps: c.normEps, hcEps: c.hcEps, normWeight: this.finalNorm, srcRows: this.srcRows, rows: launchedOut, mixScratch: this.ctx.s.hcMix, stream: st });
        this.logits.run(this.y, this.head, this.logitsBuf, launchedOut, st);
        if (itemSlots) this.slotSampler.sample(this.logitsBuf, launchedOut, { paramRows: this.sampleSlots, stream: st });
      };
      const graph = graphed ? this.decodeGraph(n, shapeContext!, launches) : undefined;
      if (graph) graph.launch(st);
      else launches();
      st.synchronize();
      for (const layer of this.layers) layer.checkMoe(n);
      const bad = new Int32Array(1);
      this.badIds.buffer.copyToHost(bad);
      if (bad[0] !== 0) {
        this.badIds.buffer.memset32(0);
        throw new Error(`internal: the embedding saw ${bad[0]} token ids outside [0, ${V}) although the host checked them`);
      }
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      for (const s of seqs) s.failed = why;
      throw err;
    }
    for (const [i, s] of seqs.entries()) s.length += items[i].tokens.length;
    this.lastRows = outRows;
    return counts;
  }

  /** Decode graphs captured so far (decodeGraphs; tests, diagnostics). */
  get graphCount(): number { return this.graphs.size; }

  /**
   * The captured decode step for `rows` one-token items in context bucket `bucket`, or undefined on the key's first
   * call: that one runs eagerly (with the bucket's shapes), so GEMM plans, workspaces and kernel modules are made
   * outside a capture, where allocations are not allowed; the second call captures.
   */
  private decodeGraph(rows: number, bucket: number, record: () => void): CudaGraph | undefined {
    const key = `${rows}/${bucket}`;
    let g = this.graphs.get(key);
    if (!g) {
      if (!this.warmed.has(key)) {
        this.warmed.add(key);
        return undefined;
      }
      try {
        g = CudaGraph.capture(this.ctx.stream, record);
      } catch (err) {
        throw new Error(`GpuModel: capturing the decode step (${rows} items, context bucket ${bucket}) failed: ${err instanceof Error ? err.message : String(err)}; `
          + 'build the model without decodeGraphs');
      }
      this.graphs.set(key, g);
    }
    return g;
  }

  private own(seq: ModelSequence, what: string): GpuSequence {
    const s = seq as GpuSequence;
    if (!(s instanceof GpuSequence) || s.owner !== this) throw new Error(`${what}: not a sequence of this GPU model`);
    return s;
  }

  private exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(f, f);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private checkLive(): void {
    if (this.disposed) throw new Error('the GPU model was disposed');
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    try { this.ctx.stream.synchronize(); } catch { /* disposing after a failure: free what we can */ }
    for (const g of this.graphs.values()) { try { g.dispose(); } catch { /* keep freeing */ } }
    this.graphs.clear();
    for (const t of [...this.owned].reverse()) { try { t.dispose(); } catch { /* keep freeing */ } }
    this.owned.length = 0;
    this.live.clear();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * Device bytes the decoder layers will take (weights as uploaded: FP8 projections + scales, bf16 wo_a / compressors /
 * weights_proj, f32 hc / norms, the MoE's experts as e4m3 + scales, its gate), plus per-layer MoE buffers for maxRows,
 * an estimate the cache plan keeps back when it plans from free memory before the layers exist.
 */
export function estimateLayerBytes(weights: ModelWeights, maxRows: number): number {
  const c = weights.config;
  let bytes = 0;
  for (const bw of weights.layers) {
    const A = bw.attn;
    for (const lin of [A.wqA, A.wqB, A.wkv, A.woB, ...(A.indexer ? [A.indexer.wqB] : [])]) bytes += lin.out * lin.in * 1.02;
    bytes += A.woA.length * 2;
    for (const cw of [A.compressor, A.indexer?.compressor]) if (cw) bytes += (cw.wkv.length + cw.wgate.length) * 2 + cw.ape.length * 4;
    if (A.indexer) bytes += A.indexer.weightsProj.length * 2;
    bytes += (bw.hcAttn.fn.length + bw.hcFfn.fn.length) * 4;
    const s = bw.moe.shape;
    const perExpert = 3 * s.moeIntermediateSize * s.hiddenSize * 1.02;
    bytes += (s.nRoutedExperts + s.nSharedExperts) * perExpert + s.nRoutedExperts * s.hiddenSize * 2;
    bytes += maxRows * (s.numExpertsPerTok + 1) * (s.hiddenSize * 3 + s.moeIntermediateSize * 2) + maxRows * s.hiddenSize * 8;
  }
  return Math.ceil(bytes + maxRows * c.nHeads * c.headDim * 8);
}
