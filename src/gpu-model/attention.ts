// Launchers of the attention-side kernels (src/kernels/attention.cu, compressor.cu, indexer.cu) over the paged caches
// of kv-cache.ts: one layer's attention of V4-MODEL 4 from the point where the projections are done (the GEMMs, norms
// and RoPE of q / kv are the ops path's) to the attention output before wo_a.
//
//   using attn = GpuAttention.createSync(config, cache, { maxRows: 4096, maxItems: 64 });
//   attn.begin([{ seq, pos, len }, ...], stream);     // grows the caches, uploads tables and row metadata
//   attn.kvFp8Sim(kv);                                // V4-MODEL 4.2's FP8 simulation, in place
//   attn.compress(layer, { a, g, ape, norm });         // main compressor (ratio > 0): pooled entries -> cache
//   attn.compress(layer, { ... }, true);               // the indexer's compressor (ratio 4)
//   attn.indexerPrepare(qI, wI); const picks = attn.indexerSelect(layer, qI, wI);   // ratio 4
//   attn.attend(layer, { q, kv, sink, out, picks });   // sparse attention with sink, out de-rotated
//   attn.storeWindow(layer, kv);                       // the ring, after attention
//
// Per call order matters and is the CPU's (model.ts attention()): compressors before attention (entries completed by
// this call are visible to it), the ring written after it. Everything is queued on one stream; nothing syncs.
// Every check below runs before a launch and throws AttentionArgError naming the fix; the pure check functions are
// exported so the CPU tests exercise them without a GPU.
import { arg, DeviceBuffer, DeviceTensor, ensureContext, loadKernelSync, type Kernel, type StreamLike } from '../cuda/index.js';
import {
  ATTENTION_ENTRIES, ATTENTION_SOURCE, ATTN_MAX_GROUP_DIMS, ATTN_MMA_DIMS, ATTN_MMA_MAX_HEADS, ATTN_MMA_THREADS, ATTN_THREADS, COMPRESSOR_ENTRIES, COMPRESSOR_MAX_DC, COMPRESSOR_SOURCE,
  COMPRESSOR_THREADS, INDEXER_ENTRIES, INDEXER_KEYS_PER_CTA, INDEXER_PREP_MAX_DI, INDEXER_PREP_THREADS, INDEXER_PREP_WARP_DIS, INDEXER_PREP_WARP_MAX_PAIRS,
  INDEXER_PREP_WARP_THREADS, INDEXER_SCORE_THREADS,
  INDEXER_SOURCE, INDEXER_TOPK_THREADS,
} from '../kernels/attention.js';
import type { ModelConfig } from '../model/config.js';
import { ropeFrequencies } from '../model/rope.js';
import type { DType } from '../tensor/host.js';
import { KvCacheCapacityError, type KvSequence } from './kv-allocator.js';
import type { GpuKvCache } from './kv-cache.js';

const fr = Math.fround;

export class AttentionArgError extends Error {
  constructor(message: string, readonly fix: string) {
    super(`${message}; ${fix}`);
    this.name = 'AttentionArgError';
  }
}

/** Shared-memory ceiling the launchers plan with (H100 / H200 opt-in limit is 227 KiB; keep headroom for statics). */
export const ATTN_SMEM_LIMIT = 220 * 1024;

/**
 * Dynamic shared memory of a CTA that leaves room for a second one on the SM: sm_90 has 228 KiB per SM and reserves
 * 1 KiB per resident CTA (CUDA C++ Programming Guide, compute capability 9.0 shared memory).
 */
export const ATTN_SMEM_TWO_CTAS = (228 * 1024) / 2 - 1024;

/** The shape facts the kernels need, from the model config. */
export interface AttnShape {
  heads: number;
  headDim: number;
  ropeDim: number;
  window: number;
  indexHeads: number;
  indexHeadDim: number;
  indexTopk: number;
  normEps: number;
  ratios: readonly number[];
  maxContext: number;
}

export function attnShapeFrom(c: ModelConfig, maxContext = c.maxContext): AttnShape {
  return {
    heads: c.nHeads, headDim: c.headDim, ropeDim: c.ropeHeadDim, window: c.windowSize, indexHeads: c.indexNHeads,
    indexHeadDim: c.indexHeadDim, indexTopk: c.indexTopk, normEps: c.normEps, ratios: c.compressRatios, maxContext,
  };
}

const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** What the straightforward kernels support; throws naming the dimension. */
export function checkAttnShape(s: AttnShape): void {
  const bad = (m: string, fix: string) => new AttentionArgError(`GPU attention: ${m}`, fix);
  if (!(isPow2(s.headDim) && s.headDim >= 64 && s.headDim <= 512)) {
    throw bad(`head_dim ${s.headDim} is not a power of two in [64, 512]`, 'the attention kernel maps dim pairs onto 256 threads; other head sizes need another thread mapping');
  }
  if (s.headDim > COMPRESSOR_MAX_DC) throw bad(`head_dim ${s.headDim} exceeds the compressor's ${COMPRESSOR_MAX_DC}`, 'raise kMaxDc in compressor.cu');
  if (s.ropeDim % 2 !== 0 || s.ropeDim > s.headDim || s.ropeDim > s.indexHeadDim) throw bad(`rope dim ${s.ropeDim} must be even and fit the head dims`, 'check qk_rope_head_dim');
  if ((s.headDim - s.ropeDim) % 64 !== 0) throw bad(`nope dims ${s.headDim - s.ropeDim} are not a multiple of 64`, 'the kv FP8 simulation works on blocks of 64');
  if (!(isPow2(s.indexHeadDim) && s.indexHeadDim >= 32 && s.indexHeadDim <= Math.min(INDEXER_PREP_MAX_DI, COMPRESSOR_MAX_DC))) {
    throw bad(`index_head_dim ${s.indexHeadDim} is not a power of two in [32, 512]`, 'the Hadamard and FP4 blocks need a power of two');
  }
  if (!(Number.isInteger(s.heads) && s.heads >= 1)) throw bad(`${s.heads} heads`, 'num_attention_heads must be a positive integer');
  if (indexerScoreSmemBytes(s.indexHeads, s.indexHeadDim) > ATTN_SMEM_LIMIT) {
    throw bad(`the indexer query (${s.indexHeads} x ${s.indexHeadDim}) does not fit one CTA's shared memory`, 'split the indexer heads over CTAs (not built)');
  }
}

/** Keys a query at position T attends (V4-MODEL 4.6): window + compressed (all visible, or the indexer's top-k). */
export function attentionKeyCount(T: number, window: number, ratio: number, topk: number, indexer: boolean): number {
  const nw = Math.min(T + 1, window);
  if (ratio <= 0) return nw;
  const visible = Math.floor((T + 1) / ratio);
  return nw + (indexer ? Math.min(topk, visible) : visible);
}

export function attentionSmemBytes(hpb: number, d: number, maxKeys: number): number {
  return maxKeys * 8 + hpb * d * 4 + hpb * maxKeys * 4;
}

/**
 * Heads per CTA: the largest power of two dividing H with hpb * d <= the kernel's register budget and the key list,
 * the group's queries and scores in shared memory, and, given the call's rows and the GPU's SM count, small enough
 * that the rows x H / hpb CTAs fill every SM where H allows (a decode step of one row ran 4 CTAs on 132 SMs:
 * docs/GPU-MODEL.md). Throws when even one head does not fit.
 */
export function chooseHeadsPerCta(H: number, d: number, maxKeys: number, smemLimit = ATTN_SMEM_LIMIT,
  fill?: { rows: number; sms: number }): number {
  for (let hpb = 64; hpb >= 1; hpb >>= 1) {
    if (H % hpb !== 0 || hpb * d > ATTN_MAX_GROUP_DIMS) continue;
    if (fill && hpb > 1 && fill.rows * (H / hpb) < fill.sms) continue;
    if (attentionSmemBytes(hpb, d, maxKeys) <= smemLimit) return hpb;
  }
  throw new AttentionArgError(`GPU attention: ${maxKeys} keys per query do not fit shared memory even one head per CTA (${attentionSmemBytes(1, d, maxKeys)} B > ${smemLimit} B)`,
    'shorten the context (a ratio-128 layer attends every compressed block: (T+1)/128 of them) or use a split-K attention kernel (not built)');
}

/** indexer.cu indexer_scores_tc's layout: qk, kk, S [256][Hi + 4] int32, qexp / qsh / ws [Hi], ukey [256], the warps' unit range [2][8]. */
const indexerTcSmemBytes = (Hi: number, di: number) =>
  Hi * di + INDEXER_KEYS_PER_CTA * di + INDEXER_KEYS_PER_CTA * (Hi + 4) * 4 + Hi * 12 + INDEXER_KEYS_PER_CTA * 4 + 2 * (INDEXER_SCORE_THREADS / 32) * 4;

/**
 * Whether attn_indexer_scores runs its tensor-core body (int8 WMMA) for this indexer shape: di 32 / 64 / 128, the
 * heads a multiple of 16 and its shared memory within the limit; else the CUDA-core one (__dp4a).
 */
export function indexerScoresOnTensorCores(Hi: number, di: number, smemLimit = ATTN_SMEM_LIMIT): boolean {
  return Hi % 16 === 0 && (di === 32 || di === 64 || di === 128) && indexerTcSmemBytes(Hi, di) <= smemLimit;
}

/**
 * Dynamic shared memory of attn_indexer_scores. Tensor-core path: one row's int8 queries, the CTA's int8 keys, the
 * int32 products tile [256, Hi + 4], the heads' units and weights, the keys' units (independent of the rows per CTA). Otherwise: the
 * int8 queries, units and weights of all its rows and the staging of its keys' int8 words.
 */
export function indexerScoreSmemBytes(Hi: number, di: number, rowsPerCta = 1): number {
  if (indexerScoresOnTensorCores(Hi, di)) return indexerTcSmemBytes(Hi, di);
  return rowsPerCta * Hi * (di + 8) + INDEXER_KEYS_PER_CTA * di;
}

/**
 * Whether attn_indexer_prepare_warp (a warp per head, bit-identical to the block-per-head attn_indexer_prepare) takes
 * this indexer shape: di of 64 / 128 / 256 (2 to 8 values a lane, RoPE pairs within a lane) and an even nope part.
 * `MEGAMOE_INDEXER_PREP=block` (read when a GpuAttention is made) keeps the block-per-head kernel (A/B).
 */
export function indexerPrepareOnWarps(di: number, rd: number): boolean {
  return INDEXER_PREP_WARP_DIS.includes(di) && (di - rd) % 2 === 0 && rd / 2 <= INDEXER_PREP_WARP_MAX_PAIRS;
}

/** Bytes the indexer's score scratch (bf16 [rows per pass, visible keys]) may take by default. */
export const INDEXER_SCORE_SCRATCH_BYTES = 64 * 2 ** 20;

/**
 * Rows per indexer scoring pass when the caller sets none: `MEGAMOE_INDEXER_CHUNK_ROWS` (an A/B knob), else 512, or
 * fewer (not below 64) where the score scratch for `maxVisible` keys would pass INDEXER_SCORE_SCRATCH_BYTES. A
 * 4096-token prefill ran 32 scoring and 64 top-k launches at 64 rows; at 512 it was 0.8 ms faster (4 layers, one H200:
 * docs/GPU-MODEL.md "Session 13").
 */
export function indexerChunkRowsDefault(env: string | undefined = process.env.MEGAMOE_INDEXER_CHUNK_ROWS, maxVisible = 0): number {
  if (env === undefined || env === '') return Math.min(512, Math.max(64, Math.floor(INDEXER_SCORE_SCRATCH_BYTES / (2 * Math.max(1, maxVisible)))));
  const n = Number(env);
  if (!(Number.isInteger(n) && n >= 1)) {
    throw new AttentionArgError(`MEGAMOE_INDEXER_CHUNK_ROWS "${env}" is not a positive integer`, 'set it to a number of rows (e.g. 512) or unset it');
  }
  return n;
}

/** Most query rows one attn_indexer_scores CTA takes (it scores its keys for each of them). */
export const INDEXER_MAX_ROWS_PER_CTA = 8;

/**
 * Query rows per attn_indexer_scores CTA: rows of one item share the CTA's keys (converted to int8 once per CTA), so
 * a prefill chunk takes several rows per CTA, as many as keep the grid at two CTAs per SM or more and fit shared
 * memory; a decode batch (one-row items) takes one.
 */
export function chooseIndexerRowsPerCta(rows: number, maxVisible: number, multiRowItems: boolean, Hi: number, di: number,
  sms: number, smemLimit = ATTN_SMEM_LIMIT): number {
  if (!multiRowItems) return 1;
  const keyCtas = Math.max(1, Math.ceil(maxVisible / INDEXER_KEYS_PER_CTA));
  for (let r = INDEXER_MAX_ROWS_PER_CTA; r > 1; r >>= 1) {
    if (indexerScoreSmemBytes(Hi, di, r) > smemLimit) continue;
    if (Math.ceil(rows / r) * keyCtas >= 2 * sms) return r;
  }
  return 1;
}

/**
 * Shared memory of attn_sparse_mma for `hpb` heads per CTA (padded to 16-row m-tiles): key pointers [keys rounded up
 * to 16], the queries of one pass of S bf16 [16 qTiles, d] (qTiles: all m-tiles, half in the "s" entries), scores
 * f32 [rows, keys rounded up to 32 + 8], and for d < 512 the P.V partials of the key-split warps f32
 * [512 / d - 1, rows, d]. Mirrors the kernel's layout.
 */
export function attentionMmaSmemBytes(hpb: number, d: number, maxKeys: number, qTiles = Math.ceil(hpb / 16)): number {
  const rows = Math.ceil(hpb / 16) * 16;
  const nk16 = Math.ceil(maxKeys / 16) * 16;
  const ss = Math.ceil(maxKeys / 32) * 32 + 8;
  return nk16 * 8 + 16 * qTiles * d * 2 + rows * ss * 4 + Math.max(0, 512 / d - 1) * rows * d * 4;
}

/**
 * Heads per CTA for the tensor-core kernel, or undefined where it does not apply (d not in ATTN_MMA_DIMS, or the
 * scores of even the smallest group do not fit shared memory: the caller falls back to attn_sparse). Heads are the
 * M dimension of 16-row mma tiles, so the group is at least min(16, the largest power of two dividing H) heads (fewer
 * would only pad the tile); the largest power of two <= 64 dividing H that fits, and, given the call's rows and the
 * SM count, small enough that rows x H / hpb CTAs fill the SMs where H allows.
 */
export function chooseHeadsPerCtaMma(H: number, d: number, maxKeys: number, smemLimit = ATTN_SMEM_LIMIT,
  fill?: { rows: number; sms: number }): number | undefined {
  if (!ATTN_MMA_DIMS.includes(d) || !(Number.isInteger(H) && H >= 1)) return undefined;
  let hmin = 1;
  while (hmin < 16 && H % (hmin * 2) === 0) hmin *= 2;
  for (let hpb = ATTN_MMA_MAX_HEADS; hpb >= hmin; hpb >>= 1) {
    if (H % hpb !== 0) continue;
    if (fill && hpb > hmin && fill.rows * (H / hpb) < fill.sms) continue;
    if (attentionMmaSmemBytes(hpb, d, maxKeys) <= smemLimit) return hpb;
  }
  return undefined;
}

export type SparseMmaEntry = 'sparseMma1' | 'sparseMma2' | 'sparseMma2s' | 'sparseMma4' | 'sparseMma4s';

/** The attn_sparse_mma entry for hpb heads per CTA: one per m-tile count (1, 2 or 4 tiles of 16 heads). */
export function sparseMmaEntry(hpb: number): 'sparseMma1' | 'sparseMma2' | 'sparseMma4' {
  return hpb <= 16 ? 'sparseMma1' : hpb <= 32 ? 'sparseMma2' : 'sparseMma4';
}

/**
 * Which sparse-attention kernel a call runs and with how many heads per CTA (MEGAMOE_ATTN_REF=1 forces attn_sparse).
 * A 2- or 4-m-tile group whose shared memory holds one CTA per SM but would hold two with half the m-tiles'
 * queries runs the "s" entry (S in two passes: the ratio-4 layer's 640 keys at d 512, 32 heads; the ratio-128 layer's
 * 185-308 keys, 64 heads, at ~7-23K tokens), unless `twoPass` is false (MEGAMOE_ATTN_QPASS=0).
 */
export function chooseSparseKernel(H: number, d: number, maxKeys: number, smemLimit = ATTN_SMEM_LIMIT,
  fill?: { rows: number; sms: number }, forceRef = false, twoPass = true): { kernel: 'mma' | 'ref'; hpb: number; smem: number; entry?: SparseMmaEntry } {
  const m = forceRef ? undefined : chooseHeadsPerCtaMma(H, d, maxKeys, smemLimit, fill);
  if (m !== undefined) {
    const entry = sparseMmaEntry(m);
    const smem = attentionMmaSmemBytes(m, d, maxKeys);
    const smemHalf = attentionMmaSmemBytes(m, d, maxKeys, Math.ceil(m / 16) / 2);
    if (twoPass && entry !== 'sparseMma1' && smem > ATTN_SMEM_TWO_CTAS && smemHalf <= ATTN_SMEM_TWO_CTAS) {
      return { kernel: 'mma', hpb: m, smem: smemHalf, entry: entry === 'sparseMma2' ? 'sparseMma2s' : 'sparseMma4s' };
    }
    return { kernel: 'mma', hpb: m, smem, entry };
  }
  const hpb = chooseHeadsPerCta(H, d, maxKeys, smemLimit, fill);
  return { kernel: 'ref', hpb, smem: attentionSmemBytes(hpb, d, maxKeys) };
}

/** One item of a call: `len` new tokens of `seq` at positions pos..pos+len-1. */
export interface AttnCallItem {
  seq: KvSequence;
  pos: number;
  len: number;
}

/** The row layout of one call (items one after another), as uploaded to the device. */
export interface AttnCallPlan {
  rows: number;
  nItems: number;
  /** int32 [nItems, 4]: slot, pos, len, first row */
  items: Int32Array;
  /** int32 [rows]: item of each row */
  rowItem: Int32Array;
  /** position of each row */
  positions: Int32Array;
  /** largest new compressed blocks of one item, per ratio (grid.y of the compressor) */
  maxPos: number;
}

export interface AttnLimits {
  maxRows: number;
  maxItems: number;
  maxContext: number;
}

/** Checks a call's items and lays out its rows (pure). */
export function planAttentionCall(items: readonly AttnCallItem[], limits: AttnLimits): AttnCallPlan {
  const bad = (m: string, fix: string) => new AttentionArgError(`GPU attention call: ${m}`, fix);
  if (items.length === 0) throw bad('no items', 'pass at least one { seq, pos, len }');
  if (items.length > limits.maxItems) throw bad(`${items.length} items exceed maxItems ${limits.maxItems}`, 'split the batch or create GpuAttention with a larger maxItems');
  let rows = 0;
  const seen = new Set<number>();
  for (const [i, it] of items.entries()) {
    if (!(Number.isInteger(it.pos) && it.pos >= 0)) throw bad(`item ${i}: pos ${it.pos} is not a non-negative integer`, 'pass the position of the first new token');
    if (!(Number.isInteger(it.len) && it.len >= 1)) throw bad(`item ${i}: len ${it.len} is not a positive integer`, 'every item brings at least one token');
    if (it.pos + it.len > limits.maxContext) throw bad(`item ${i}: positions up to ${it.pos + it.len} exceed the maximum context ${limits.maxContext}`, 'shorten the sequence or build the cache with a larger maxContext');
    if (it.seq.released) throw bad(`item ${i}: sequence ${it.seq.id} was released`, 'admit it again');
    if (seen.has(it.seq.id)) throw bad(`item ${i}: sequence ${it.seq.id} appears twice`, 'pass all of a sequence\'s new tokens in one item');
    seen.add(it.seq.id);
    rows += it.len;
  }
  if (rows > limits.maxRows) throw bad(`${rows} rows exceed maxRows ${limits.maxRows}`, 'chunk the prefill or create GpuAttention with a larger maxRows');
  const plan: AttnCallPlan = { rows, nItems: items.length, items: new Int32Array(items.length * 4), rowItem: new Int32Array(rows), positions: new Int32Array(rows), maxPos: 0 };
  let r = 0;
  for (const [i, it] of items.entries()) {
    plan.items.set([it.seq.slot, it.pos, it.len, r], i * 4);
    for (let j = 0; j < it.len; j++, r++) { plan.rowItem[r] = i; plan.positions[r] = it.pos + j; }
    plan.maxPos = Math.max(plan.maxPos, it.pos + it.len - 1);
  }
  return plan;
}

/** The most blocks an item of the call can complete at any position: ceil(len / ratio), the largest over items. */
export function maxNewBlocksOfLengths(plan: AttnCallPlan, ratio: number): number {
  let m = 0;
  for (let i = 0; i < plan.nItems; i++) m = Math.max(m, Math.ceil(plan.items[i * 4 + 2] / ratio));
  return m;
}

/** New compressed blocks an item completes: floor((P+L)/r) - floor(P/r); the largest over items (compressor grid.y). */
export function maxNewBlocks(plan: AttnCallPlan, ratio: number): number {
  let m = 0;
  for (let i = 0; i < plan.nItems; i++) {
    const P = plan.items[i * 4 + 1]; const L = plan.items[i * 4 + 2];
    m = Math.max(m, Math.floor((P + L) / ratio) - Math.floor(P / ratio));
  }
  return m;
}

interface TensorLike { dtype: DType; shape: readonly number[] }

/** dtype and shape check of one launcher argument (leading dim may be larger than the call's rows). */
export function checkTensor(what: string, t: TensorLike | undefined, dtype: DType, shape: readonly number[], fix: string): void {
  const want = `${dtype}[${shape.join(', ')}]`;
  if (!t) throw new AttentionArgError(`GPU attention: ${what} is missing, expected ${want}`, fix);
  const ok = t.dtype === dtype && t.shape.length === shape.length && t.shape.every((d, i) => (i === 0 ? d >= shape[0] : d === shape[i]));
  if (!ok) throw new AttentionArgError(`GPU attention: ${what} is ${t.dtype}[${t.shape.join(', ')}], expected ${want} (leading dim at least ${shape[0]})`, fix);
}

/** Whether layer `layer` has a compressor / an indexer (V4-MODEL 0.2). */
export function layerRatio(s: AttnShape, layer: number): { ratio: number; indexer: boolean } {
  if (!(Number.isInteger(layer) && layer >= 0 && layer < s.ratios.length)) {
    throw new AttentionArgError(`GPU attention: layer ${layer} is outside [0, ${s.ratios.length})`, 'pass a main layer index, or nLayers + j for MTP layer j');
  }
  const ratio = s.ratios[layer];
  return { ratio, indexer: ratio === 4 };
}

export interface CompressInputs {
  /** wkv x, F32 [rows, c * dc] */
  a: DeviceTensor;
  /** wgate x (without ape), F32 [rows, c * dc] */
  g: DeviceTensor;
  /** F32 [ratio, c * dc] */
  ape: DeviceTensor;
  /** F32 [dc], the compressor's RMSNorm weight */
  norm: DeviceTensor;
}

export interface AttendInputs {
  /** BF16 [rows, H, d]: renormed, rotated queries */
  q: DeviceTensor;
  /** BF16 [rows, d]: this call's K = V rows after kvFp8Sim */
  kv: DeviceTensor;
  /** F32 [H] */
  sink: DeviceTensor;
  /** BF16 [rows, H, d] */
  out: DeviceTensor;
  /** I32 [rows, indexTopk] from indexerSelect (ratio-4 layers) */
  picks?: DeviceTensor;
}

export interface GpuAttentionOptions {
  maxRows: number;
  maxItems: number;
  /** Rows per indexer scoring pass (the scores scratch holds this many rows x maxContext/4). Default indexerChunkRowsDefault's, at most maxRows. */
  indexerChunkRows?: number;
  /** Query rows per indexer scoring CTA, 1..INDEXER_MAX_ROWS_PER_CTA (tests); default chooseIndexerRowsPerCta's. */
  indexerRowsPerCta?: number;
}

/** The attention kernels of one model, bound to one cache. */
export class GpuAttention implements Disposable {
  readonly shape: AttnShape;
  readonly cache: GpuKvCache;
  readonly limits: AttnLimits;
  /** I32 [maxRows, indexTopk]: indexerSelect's output */
  readonly picks: DeviceTensor<'I32'>;
  private readonly k: Record<'kvSim' | 'store' | 'sparse' | SparseMmaEntry | 'pool' | 'state' | 'prep' | 'prepWarp' | 'scores' | 'topk', Kernel>;
  private readonly meta: DeviceBuffer;
  private readonly freqPlain: DeviceBuffer;
  private readonly freqComp: DeviceBuffer;
  private readonly scores: DeviceBuffer;
  private readonly chunkRows: number;
  /** the query preparation as a warp per head (indexerPrepareOnWarps), unless MEGAMOE_INDEXER_PREP=block */
  private readonly prepOnWarps: boolean;
  /** S in two passes where that brings two CTAs per SM (chooseSparseKernel); MEGAMOE_ATTN_QPASS=0: never (A/B). */
  private readonly qPassOn = process.env.MEGAMOE_ATTN_QPASS !== '0';
  private readonly rowsPerCta: number | undefined;
  private readonly maxVisible: number;
  private plan: AttnCallPlan | undefined;
  /** begin()'s shapeContext for this call, or undefined: launch shapes from the call's own positions. */
  private shapeContext: number | undefined;
  private disposed = false;
  /** SMs of this GPU: the sparse attention's CTAs per call should fill them (chooseHeadsPerCta). */
  private readonly sms = ensureContext().properties().smCount;

  private constructor(config: ModelConfig, cache: GpuKvCache, o: GpuAttentionOptions) {
    this.shape = attnShapeFrom(config, cache.plan.layout.maxContext);
    checkAttnShape(this.shape);
    this.cache = cache;
    for (const [k, v] of Object.entries({ maxRows: o.maxRows, maxItems: o.maxItems })) {
      if (!(Number.isInteger(v) && v >= 1)) throw new AttentionArgError(`GpuAttention: ${k} ${v} is not a positive integer`, `pass ${k}`);
    }
    this.limits = { maxRows: o.maxRows, maxItems: o.maxItems, maxContext: this.shape.maxContext };
    this.prepOnWarps = indexerPrepareOnWarps(this.shape.indexHeadDim, this.shape.ropeDim) && process.env.MEGAMOE_INDEXER_PREP !== 'block';
    const rpc = o.indexerRowsPerCta;
    if (rpc !== undefined && !(Number.isInteger(rpc) && rpc >= 1 && rpc <= INDEXER_MAX_ROWS_PER_CTA
      && indexerScoreSmemBytes(this.shape.indexHeads, this.shape.indexHeadDim, rpc) <= ATTN_SMEM_LIMIT)) {
      throw new AttentionArgError(`GpuAttention: indexerRowsPerCta ${rpc} is not an integer in [1, ${INDEXER_MAX_ROWS_PER_CTA}] whose queries fit shared memory`, 'leave it unset (the launcher chooses)');
    }
    this.rowsPerCta = rpc;
    this.maxVisible = Math.floor(this.shape.maxContext / 4);
    this.chunkRows = o.indexerChunkRows ?? Math.min(o.maxRows, indexerChunkRowsDefault(process.env.MEGAMOE_INDEXER_CHUNK_ROWS, this.maxVisible));
    const load = (source: string, entry: string) => loadKernelSync({ source, entry });
    this.k = {
      kvSim: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.kvFp8Sim),
      store: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.windowStore),
      sparse: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparse).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      sparseMma1: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparseMma1).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      sparseMma2: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparseMma2).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      sparseMma2s: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparseMma2s).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      sparseMma4: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparseMma4).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      sparseMma4s: load(ATTENTION_SOURCE, ATTENTION_ENTRIES.sparseMma4s).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      pool: load(COMPRESSOR_SOURCE, COMPRESSOR_ENTRIES.pool),
      state: load(COMPRESSOR_SOURCE, COMPRESSOR_ENTRIES.state),
      prep: load(INDEXER_SOURCE, INDEXER_ENTRIES.prepare),
      prepWarp: load(INDEXER_SOURCE, INDEXER_ENTRIES.prepareWarp),
      scores: load(INDEXER_SOURCE, INDEXER_ENTRIES.scores).setMaxDynamicSharedMemory(ATTN_SMEM_LIMIT),
      topk: load(INDEXER_SOURCE, INDEXER_ENTRIES.topk),
    };
    const made: Array<DeviceBuffer | DeviceTensor> = [];
    try {
      this.meta = DeviceBuffer.alloc((o.maxItems * 4 + o.maxRows) * 4); made.push(this.meta);
      const s = this.shape;
      this.freqPlain = DeviceBuffer.alloc(s.ropeDim * 2); made.push(this.freqPlain);
      this.freqPlain.copyFromHost(ropeFrequencies(s.ropeDim, config.ropeTheta));
      this.freqComp = DeviceBuffer.alloc(s.ropeDim * 2); made.push(this.freqComp);
      this.freqComp.copyFromHost(ropeFrequencies(s.ropeDim, config.compressRopeTheta, config.yarn));
      this.scores = DeviceBuffer.alloc(this.chunkRows * Math.max(1, this.maxVisible) * 2); made.push(this.scores);
      this.picks = DeviceTensor.empty('I32', [o.maxRows, Math.max(1, s.indexTopk)]); made.push(this.picks);
    } catch (err) {
      for (const b of made) b.dispose();
      throw err;
    }
  }

  static createSync(config: ModelConfig, cache: GpuKvCache, options: GpuAttentionOptions): GpuAttention {
    return new GpuAttention(config, cache, options);
  }

  private get itemsPtr(): bigint { return this.meta.ptr; }
  private get rowItemPtr(): bigint { return this.meta.ptr + BigInt(this.limits.maxItems * 16); }

  /** The current call's plan (after begin()). */
  get call(): AttnCallPlan {
    if (!this.plan) throw new AttentionArgError('GPU attention: no call begun', 'call begin(items) first');
    return this.plan;
  }

  /**
   * Starts a call: checks the items, grows each sequence's blocks to pos + len (KvCacheCapacityError when the pool
   * is full: nothing is allocated then), uploads changed block tables and the row metadata on `stream`.
   *
   * `shapeContext` (>= every item's pos + len, <= the cache's context): the launches are shaped as if the longest
   * sequence had that many tokens, so their grids, shared memory and scalar arguments depend only on the items'
   * lengths and this number, not on their positions. The kernels read each row's own position from the row metadata
   * and skip what lies past it; the larger grids only cost idle CTAs. What a CUDA graph of a decode step per
   * (batch, context bucket) needs.
   */
  begin(items: readonly AttnCallItem[], stream?: StreamLike, opts: { shapeContext?: number } = {}): AttnCallPlan {
    const plan = planAttentionCall(items, this.limits);
    const sc = opts.shapeContext;
    if (sc !== undefined) {
      const longest = Math.max(...items.map((it) => it.pos + it.len));
      if (!(Number.isInteger(sc) && sc >= longest && sc <= this.limits.maxContext)) {
        throw new AttentionArgError(`GPU attention: shapeContext ${sc} is outside [${longest}, ${this.limits.maxContext}] (the call's longest sequence, the cache's context)`,
          'pass a context bucket at least as long as every sequence of the call and within the cache');
      }
    }
    // check every growth first, so a refusal leaves all sequences as they were
    const need = items.map((it) => it.pos + it.len);
    const alloc = this.cache.allocator;
    for (let k = 0; k < alloc.plan.kinds.length; k++) {
      let extra = 0;
      for (const [i, it] of items.entries()) extra += Math.max(0, alloc.blocksFor(k, need[i]) - it.seq.blocks[k].length);
      if (extra > alloc.freeBlocks(k)) {
        const kp = alloc.plan.kinds[k];
        throw new KvCacheCapacityError(`GPU attention call: its ${items.length} items need ${extra} more "${kp.kind.name}" cache blocks but only ${alloc.freeBlocks(k)} of ${kp.blocks} are free`,
          "run fewer sequences in this step, release finished sequences, or give the cache more memory (memoryFraction, fewer maxSequences)");
      }
    }
    for (const [i, it] of items.entries()) alloc.ensureLength(it.seq, need[i]);
    this.cache.syncTables(stream);
    this.meta.copyFromHost(plan.items, { stream });
    this.meta.copyFromHost(plan.rowItem, { stream, offset: this.limits.maxItems * 16 });
    this.plan = plan;
    this.shapeContext = sc;
    return plan;
  }

  /** V4-MODEL 4.2: FP8 simulation of the nope dims of this call's kv rows, in place (BF16 [rows, d]). */
  kvFp8Sim(kv: DeviceTensor, stream?: StreamLike): void {
    const p = this.call; const s = this.shape;
    checkTensor('kv', kv, 'BF16', [p.rows, s.headDim], 'pass the K = V rows as BF16 [rows, head_dim]');
    const nblk = (s.headDim - s.ropeDim) / 64;
    if (nblk === 0) return;
    // One warp per 64-value block (attention.cu attn_kv_fp8_sim), 4 per 128-thread CTA.
    this.k.kvSim.launch({ grid: Math.ceil((p.rows * nblk) / 4), block: 128, stream }, [kv, arg.i32(p.rows), arg.i32(s.headDim), arg.i32(s.headDim - s.ropeDim)]);
  }

  /** The compressor of layer `layer` (main, or the indexer's with indexer = true) over this call's rows. */
  compress(layer: number, x: CompressInputs, indexer = false, stream?: StreamLike): void {
    const p = this.call; const s = this.shape;
    const { ratio, indexer: hasIdx } = layerRatio(s, layer);
    if (ratio <= 0) throw new AttentionArgError(`GPU attention: layer ${layer} is window-only (ratio 0)`, 'call compress only on compressed layers');
    if (indexer && !hasIdx) throw new AttentionArgError(`GPU attention: layer ${layer} (ratio ${ratio}) has no indexer`, 'the indexer exists on ratio-4 layers only');
    const st = this.cache.stateView(layer, indexer);
    const L = st.layout;
    const fix = `pass the compressor projections as F32 [rows, ${L.width}] (c * d_c)`;
    checkTensor('compressor a', x.a, 'F32', [p.rows, L.width], fix);
    checkTensor('compressor g', x.g, 'F32', [p.rows, L.width], fix);
    checkTensor('compressor ape', x.ape, 'F32', [ratio, L.width], `pass ape as F32 [${ratio}, ${L.width}]`);
    checkTensor('compressor norm', x.norm, 'F32', [L.dc], `pass the norm weight as F32 [${L.dc}]`);
    const pv = this.cache.paged(this.cache.compressedKind(layer, indexer), layer);
    const freqs = this.freqComp;
    // shaped: every item may complete ceil(len / ratio) blocks (the kernel returns for those it does not complete)
    const gy = this.shapeContext === undefined ? maxNewBlocks(p, ratio) : maxNewBlocksOfLengths(p, ratio);
    if (gy > 0) {
      this.k.pool.launch({ grid: [p.nItems, gy], block: COMPRESSOR_THREADS, stream }, [
        x.a, x.g, x.ape, x.norm, freqs, arg.ptr(st.ptr), arg.i32(st.slotStride),
        arg.ptr(pv.base), arg.ptr(pv.table), arg.i32(pv.tableStride), arg.i32(pv.blockRows), arg.i32(pv.layerSlot), arg.i32(pv.layersPerBlock),
        arg.ptr(this.itemsPtr), arg.i32(ratio), arg.i32(L.overlap ? 1 : 0), arg.i32(L.dc), arg.i32(s.ropeDim), arg.i32(indexer ? 1 : 0), arg.f32(s.normEps),
      ]);
    }
    const tail = Math.min(L.slots, Math.max(...Array.from({ length: p.nItems }, (_, i) => p.items[i * 4 + 2])));
    this.k.state.launch({ grid: [p.nItems, tail], block: COMPRESSOR_THREADS, stream }, [
      x.a, x.g, x.ape, arg.ptr(st.ptr), arg.i32(st.slotStride), arg.ptr(this.itemsPtr), arg.i32(ratio), arg.i32(L.overlap ? 1 : 0), arg.i32(L.dc),
    ]);
  }

  /** V4-MODEL 4.5's query side: qI BF16 [rows, Hi, di] and wI BF16 [rows, Hi] (weights_proj x), both in place. */
  indexerPrepare(qI: DeviceTensor, wI: DeviceTensor, stream?: StreamLike): void {
    const p = this.call; const s = this.shape;
    checkTensor('indexer q', qI, 'BF16', [p.rows, s.indexHeads, s.indexHeadDim], `pass qI = indexer.wq_b(qr) as BF16 [rows, ${s.indexHeads}, ${s.indexHeadDim}]`);
    checkTensor('indexer weights', wI, 'BF16', [p.rows, s.indexHeads], `pass weights_proj(x) as BF16 [rows, ${s.indexHeads}]`);
    const wscale = fr(fr(1 / Math.sqrt(s.indexHeadDim)) * fr(1 / Math.sqrt(s.indexHeads)));
    const kernel = this.prepOnWarps ? this.k.prepWarp : this.k.prep;
    kernel.launch(this.prepOnWarps ? { grid: p.rows, block: INDEXER_PREP_WARP_THREADS, stream } : { grid: [p.rows, s.indexHeads], block: INDEXER_PREP_THREADS, stream }, [
      qI, wI, arg.ptr(this.itemsPtr), arg.ptr(this.rowItemPtr), this.freqComp, arg.i32(s.indexHeads), arg.i32(s.indexHeadDim), arg.i32(s.ropeDim), arg.f32(wscale),
    ]);
  }

  /** Scores + top-k of layer `layer`'s indexer for every row of the call; returns `picks` (I32 [maxRows, topk]). */
  indexerSelect(layer: number, qI: DeviceTensor, wI: DeviceTensor, stream?: StreamLike): DeviceTensor<'I32'> {
    const p = this.call; const s = this.shape;
    if (!layerRatio(s, layer).indexer) throw new AttentionArgError(`GPU attention: layer ${layer} has no indexer`, 'the indexer exists on ratio-4 layers only');
    checkTensor('indexer q', qI, 'BF16', [p.rows, s.indexHeads, s.indexHeadDim], 'pass the prepared qI');
    checkTensor('indexer weights', wI, 'BF16', [p.rows, s.indexHeads], 'pass the prepared wI');
    const pv = this.cache.paged('indexer', layer);
    for (let rb = 0; rb < p.rows; rb += this.chunkRows) {
      const n = Math.min(this.chunkRows, p.rows - rb);
      let vis = 0;
      let multiRow = false;
      for (let r = rb; r < rb + n; r++) {
        vis = Math.max(vis, Math.floor((p.positions[r] + 1) / 4));
        if (r > rb && p.rowItem[r] === p.rowItem[r - 1]) multiRow = true;
      }
      if (this.shapeContext !== undefined) vis = Math.floor(this.shapeContext / 4);
      if (vis > s.indexTopk) {
        const rpc = this.rowsPerCta ?? chooseIndexerRowsPerCta(n, vis, multiRow, s.indexHeads, s.indexHeadDim, this.sms);
        this.k.scores.launch({
          grid: [Math.ceil(n / rpc), Math.ceil(vis / INDEXER_KEYS_PER_CTA)], block: INDEXER_SCORE_THREADS,
          sharedMemBytes: indexerScoreSmemBytes(s.indexHeads, s.indexHeadDim, rpc), stream,
        }, [
          qI, wI, arg.ptr(pv.base), arg.ptr(pv.table), arg.i32(pv.tableStride), arg.i32(pv.blockRows), arg.i32(pv.layerSlot), arg.i32(pv.layersPerBlock),
          arg.ptr(this.itemsPtr), arg.ptr(this.rowItemPtr), arg.ptr(this.scores.ptr), arg.i32(this.maxVisible), arg.i32(rb), arg.i32(n),
          arg.i32(s.indexHeads), arg.i32(s.indexHeadDim), arg.i32(4), arg.i32(s.indexTopk), arg.i32(rpc),
          arg.i32(indexerScoresOnTensorCores(s.indexHeads, s.indexHeadDim) ? 1 : 0),
        ]);
      }
      this.k.topk.launch({ grid: n, block: INDEXER_TOPK_THREADS, stream }, [
        arg.ptr(this.scores.ptr), arg.i32(this.maxVisible), arg.i32(rb), arg.ptr(this.itemsPtr), arg.ptr(this.rowItemPtr),
        this.picks, arg.i32(this.picks.shape[1]), arg.i32(4), arg.i32(s.indexTopk),
      ]);
    }
    return this.picks;
  }

  /**
   * Test aid: the scores scratch of the last indexerSelect chunk (bf16 bits; chunk row j's score of block n at
   * j * stride + n, valid for n < its visible count where that exceeds top-k). Synchronous (waits for the copy).
   */
  readIndexerScores(rows = this.chunkRows): { bits: Uint16Array; stride: number } {
    if (!(Number.isInteger(rows) && rows >= 1 && rows <= this.chunkRows)) {
      throw new AttentionArgError(`GPU attention: ${rows} score rows asked, the scratch holds ${this.chunkRows}`, 'ask for at most indexerChunkRows rows');
    }
    const stride = Math.max(1, this.maxVisible);
    const bits = new Uint16Array(rows * stride);
    this.scores.copyToHost(bits);
    return { bits, stride };
  }

  /** Sparse attention with sink over window + compressed keys, for every row of the call (V4-MODEL 4.6 / 4.7). */
  attend(layer: number, x: AttendInputs, stream?: StreamLike): void {
    const p = this.call; const s = this.shape;
    const { ratio, indexer } = layerRatio(s, layer);
    const qShape = [p.rows, s.heads, s.headDim];
    checkTensor('q', x.q, 'BF16', qShape, `pass the queries as BF16 [rows, ${s.heads}, ${s.headDim}]`);
    checkTensor('kv', x.kv, 'BF16', [p.rows, s.headDim], `pass the K = V rows as BF16 [rows, ${s.headDim}]`);
    checkTensor('sink', x.sink, 'F32', [s.heads], `pass attn_sink as F32 [${s.heads}]`);
    checkTensor('out', x.out, 'BF16', qShape, `pass an output BF16 [rows, ${s.heads}, ${s.headDim}]`);
    if (indexer) checkTensor('picks', x.picks, 'I32', [p.rows, s.indexTopk], 'pass indexerSelect()\'s result on a ratio-4 layer');
    let maxKeys = 1;
    if (this.shapeContext !== undefined) maxKeys = attentionKeyCount(this.shapeContext - 1, s.window, ratio, s.indexTopk, indexer);
    else for (let r = 0; r < p.rows; r++) maxKeys = Math.max(maxKeys, attentionKeyCount(p.positions[r], s.window, ratio, s.indexTopk, indexer));
    const plan = chooseSparseKernel(s.heads, s.headDim, maxKeys, ATTN_SMEM_LIMIT, { rows: p.rows, sms: this.sms }, process.env.MEGAMOE_ATTN_REF === '1', this.qPassOn);
    const hpb = plan.hpb;
    const win = this.cache.paged('window', layer);
    const comp = ratio > 0 ? this.cache.paged(this.cache.compressedKind(layer, false), layer) : undefined;
    const sigma = fr(1 / Math.sqrt(s.headDim));
    const kernel = plan.kernel === 'mma' ? this.k[plan.entry!] : this.k.sparse;
    kernel.launch({ grid: [p.rows, s.heads / hpb], block: plan.kernel === 'mma' ? ATTN_MMA_THREADS : ATTN_THREADS, sharedMemBytes: plan.smem, stream }, [
      x.q, x.kv, arg.ptr(win.base), arg.ptr(win.table), arg.i32(win.tableStride),
      arg.ptr(comp?.base), arg.ptr(comp?.table), arg.i32(comp?.tableStride ?? 0),
      arg.i32(win.blockRows), arg.i32(win.layerSlot), arg.i32(win.layersPerBlock), arg.i32(comp?.layerSlot ?? 0), arg.i32(comp?.layersPerBlock ?? 1),
      arg.ptr(indexer ? x.picks : null), arg.i32(indexer ? x.picks!.shape[1] : 0),
      arg.ptr(this.itemsPtr), arg.ptr(this.rowItemPtr), x.sink, ratio > 0 ? this.freqComp : this.freqPlain, x.out,
      arg.i32(s.heads), arg.i32(s.headDim), arg.i32(s.ropeDim), arg.i32(s.window), arg.i32(ratio), arg.i32(s.indexTopk),
      arg.i32(hpb), arg.i32(maxKeys), arg.f32(sigma),
    ]);
  }

  /** The window ring update (after attend): the last min(len, win) rows of each item to ring row pos mod win. */
  storeWindow(layer: number, kv: DeviceTensor, stream?: StreamLike): void {
    const p = this.call; const s = this.shape;
    layerRatio(s, layer);
    checkTensor('kv', kv, 'BF16', [p.rows, s.headDim], `pass the K = V rows as BF16 [rows, ${s.headDim}]`);
    const win = this.cache.paged('window', layer);
    const tail = Math.min(s.window, Math.max(...Array.from({ length: p.nItems }, (_, i) => p.items[i * 4 + 2])));
    this.k.store.launch({ grid: [p.nItems, tail], block: 128, stream }, [
      kv, arg.i32(s.headDim), arg.i32(s.window), arg.ptr(win.base), arg.ptr(win.table), arg.i32(win.tableStride), arg.i32(win.blockRows),
      arg.i32(win.layerSlot), arg.i32(win.layersPerBlock), arg.ptr(this.itemsPtr),
    ]);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [this.meta, this.freqPlain, this.freqComp, this.scores]) b.dispose();
    this.picks.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
