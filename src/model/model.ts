// The DeepSeek-V4 forward pass on the CPU (V4-MODEL 1-8), implementing the CausalLM contract (causal-lm.ts).
//
// One call runs the new tokens of several sequences together: every linear and the MoE block see all rows of
// all items at once; attention, the compressors and the indexer are per row against that row's sequence caches.
// A call is "append S tokens at position P" for any S and P, which is the reference's prefill for P = 0 and its
// decode for S = 1 (V4-MODEL 4.8), and chunked prefill otherwise. Every row's numbers depend only on its own
// sequence's tokens, never on the batch, so prefill of S tokens equals S decode steps and a batch equals each
// sequence alone (bit for bit; test/model-*.test.ts).
//
// The MoE block goes through MoeBackend (default 'reference'), routed by moe/router.ts: SPEC 2-3's numbers,
// identical to `megamoe moe` on the same inputs (SPEC 3 last bullet; the V4-MODEL 5 differences are listed in
// docs/MODEL.md).
import { createBackend } from '../backends/index.js';
import type { MoeBackend } from '../moe/backend.js';
import { routeLayer } from '../moe/router.js';
import { HostTensor } from '../tensor/host.js';
import type { CausalLM, ModelSequence, ModelStepItem } from './causal-lm.js';
import type { ModelConfig } from './config.js';
import { loadModelWeights, type BlockWeights, type CompressorWeights, type HcParams, type HeadWeights, type LoadModelOptions, type ModelWeights } from './loader.js';
import { actQuant, bf16, bf16ToF32, f32ToBF16Bits, fp8Combine, type Fp8Linear, fp4SimInPlace, fp8Linear, fp8SimInPlace, hadamardInPlace, linear, QuantScratch, rmsNorm, sigmoid } from './ops.js';
import { RopeTable, ropeFrequencies } from './rope.js';
import { newWasmGemm, wasmGemm, type WasmGemm, type WasmMatrix } from '../numerics/wasm-gemm.js';

const fr = Math.fround;

/** The compressed cache of one compressor (main or indexer) of one sequence, with its pooling state. */
class CompressorCache {
  entries: Float32Array;
  count = 0;
  /** a_t and g_t (+ape) of the last c*ratio tokens, row = position mod (c*ratio) */
  readonly a: Float32Array;
  readonly g: Float32Array;
  readonly slots: number;
  readonly width: number;

  constructor(readonly w: CompressorWeights) {
    const c = w.overlap ? 2 : 1;
    this.slots = c * w.ratio;
    this.width = c * w.dc;
    this.a = new Float32Array(this.slots * this.width);
    this.g = new Float32Array(this.slots * this.width);
    this.entries = new Float32Array(16 * w.dc);
  }

  append(src: Float32Array, off: number): void {
    const dc = this.w.dc;
    if ((this.count + 1) * dc > this.entries.length) {
      const grown = new Float32Array(this.entries.length * 2);
      grown.set(this.entries);
      this.entries = grown;
    }
    this.entries.set(src.subarray(off, off + dc), this.count * dc);
    this.count++;
  }
}

class LayerCache {
  /** window ring [win, d]: position p in row p mod win (V4-MODEL 4.6) */
  readonly ring: Float32Array;
  readonly comp?: CompressorCache;
  readonly idx?: CompressorCache;
  constructor(cfg: ModelConfig, bw: BlockWeights) {
    this.ring = new Float32Array(cfg.windowSize * cfg.headDim);
    if (bw.attn.compressor) this.comp = new CompressorCache(bw.attn.compressor);
    if (bw.attn.indexer) this.idx = new CompressorCache(bw.attn.indexer.compressor);
  }
}

let nextSequenceId = 1;

/** One sequence's caches (window, compressed, indexer per layer; the MTP layers' own) and length. */
export class V4Sequence implements ModelSequence {
  readonly id = nextSequenceId++;
  length = 0;
  /** Positions the MTP layers have consumed (their own caches, V4-MODEL 7). */
  mtpLength = 0;
  released = false;
  constructor(readonly owner: DeepSeekV4Model, readonly layers: LayerCache[], readonly mtp: LayerCache[]) {}
}

export interface ForwardOptions {
  /** Logits of every new token (tests), not only the last: [S, vocab] per item. */
  allLogits?: boolean;
  /** Also return the final hyper-connection streams of every new token [S, hc, D] (the MTP's input). */
  hidden?: boolean;
  /** Skip the head (no logits; with `hidden`: the MTP input only). */
  noLogits?: boolean;
}

export interface ForwardOutput {
  /** [vocab] (last token) or [S, vocab] with allLogits; empty with noLogits */
  logits: Float32Array;
  /** [S, hc, D] final streams, with `hidden` */
  hidden?: Float32Array;
}

export interface MtpStepItem {
  seq: ModelSequence;
  /** Final streams of the main model [S, hc, D] for positions i (ForwardOptions.hidden) */
  hidden: Float32Array;
  /** The token at position i + 1 for each of those rows (V4-MODEL 7: the DeepSeek-V3 / vLLM pairing) */
  tokens: readonly number[];
}

export interface CreateModelOptions extends LoadModelOptions {
  /** MoE backend name (src/backends registry), default 'reference'. */
  backend?: string;
  /** vLLM's --enable-expert-parallel, handed to every MoE backend (mega_moe requires it). */
  enableExpertParallel?: boolean;
}

/** Rows of one call: item bookkeeping shared by every block. */
interface Rows {
  n: number;
  pos: Int32Array;
  tokens: Int32Array;
  /** item index per row */
  item: Int32Array;
  itemStart: number[];
  itemLen: number[];
  itemPos: number[];
  caches: LayerCache[][];
}

export class DeepSeekV4Model implements CausalLM {
  readonly vocabSize: number;
  readonly maxContext: number;
  readonly config: ModelConfig;
  private readonly ropePlain: RopeTable;
  private readonly ropeCompressed: RopeTable;
  private readonly qs = new QuantScratch();
  private readonly tmp64: Float64Array;
  private live = new Set<V4Sequence>();
  /**
   * WebAssembly SIMD kernels (numerics/wasm-gemm.ts) with this model's own memory (weights copied in on first use;
   * it goes with the model), undefined -> JS loops (ops.ts).
   */
  private readonly wasm: WasmGemm | undefined = wasmGemm() ? newWasmGemm() : undefined;
  private readonly mats = new Map<Float32Array | Uint16Array, WasmMatrix | null>();
  /** Test/diagnostic tap: sees each MoE block's input, token ids and output (block index: L + j for MTP j). */
  moeTap: ((block: number, x: HostTensor<'BF16'>, tokenIds: Int32Array, y: HostTensor<'BF16'>) => void) | undefined;
  /** Test/diagnostic tap: each main layer's input and output streams [rows, hc, D] of a forward() call (bf16 values). */
  blockTap: ((layer: number, input: Float32Array, output: Float32Array) => void) | undefined;
  /** Test/diagnostic tap: the indexer's selected compressed blocks of row r of a call (ratio-4 layers). */
  picksTap: ((layer: number, row: number, picks: Int32Array) => void) | undefined;
  private disposed = false;

  constructor(readonly weights: ModelWeights, readonly backends: MoeBackend[], readonly mtpBackends: MoeBackend[], readonly backendName: string) {
    const c = weights.config;
    this.config = c;
    this.vocabSize = c.vocabSize;
    this.maxContext = c.maxContext;
    // V4-MODEL 3.2: ratio-0 layers: theta, no YaRN; compressed layers: compress theta with YaRN, for everything.
    this.ropePlain = new RopeTable(c.ropeHeadDim, ropeFrequencies(c.ropeHeadDim, c.ropeTheta));
    this.ropeCompressed = new RopeTable(c.ropeHeadDim, ropeFrequencies(c.ropeHeadDim, c.compressRopeTheta, c.yarn));
    this.tmp64 = new Float64Array(Math.max(c.indexHeadDim, c.headDim, 64));
  }

  /** Loads a checkpoint and prepares one MoE backend per layer. */
  static async load(dir: string, options: CreateModelOptions = {}): Promise<DeepSeekV4Model> {
    const weights = loadModelWeights(dir, options);
    const made: MoeBackend[] = [];
    try {
      const make = async (bw: BlockWeights) => {
        const { backend } = await createBackend(options.backend ?? 'reference');
        made.push(backend);
        await backend.prepare(bw.moe, { enableExpertParallel: options.enableExpertParallel });
        return backend;
      };
      const backends: MoeBackend[] = [];
      for (const bw of weights.layers) backends.push(await make(bw));
      const mtpBackends: MoeBackend[] = [];
      for (const m of weights.mtp) mtpBackends.push(await make(m.block));
      return new DeepSeekV4Model(weights, backends, mtpBackends, options.backend ?? 'reference');
    } catch (err) {
      for (const b of made) b.dispose();
      weights.close();
      throw err;
    }
  }

  createSequence(): V4Sequence {
    this.checkLive();
    const w = this.weights;
    const seq = new V4Sequence(this, w.layers.map((bw) => new LayerCache(this.config, bw)), w.mtp.map((m) => new LayerCache(this.config, m.block)));
    this.live.add(seq);
    return seq;
  }

  releaseSequence(seq: ModelSequence): void {
    const s = seq as V4Sequence;
    if (!(s instanceof V4Sequence) || s.owner !== this) throw new Error('releaseSequence: not a sequence of this model');
    s.released = true;
    this.live.delete(s);
  }

  async step(items: readonly ModelStepItem[]): Promise<Float32Array[]> {
    return (await this.forward(items)).map((o) => o.logits);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [...this.backends, ...this.mtpBackends]) b.dispose();
    this.weights.close();
    this.live.clear();
    this.mats.clear(); // the SIMD copies go with the model's kernel memory
  }

  /**
   * A plain fp32 linear (V4-MODEL 8.1) over weight rows [rowOff, rowOff + nRows) of W [*, K]: the SIMD kernel when
   * available (the weight is copied into its memory on first use), else ops.ts's loop.
   */
  private lin(W: Float32Array | Uint16Array, N: number, K: number, x: Float32Array, rows: number, out: Float32Array, toBF16: boolean,
    xOff = 0, xStride = K, outOff = 0, outStride = N, rowOff = 0, nRows = N): void {
    const m = K % 8 === 0 ? this.matrixOf(W, W.length / K, K) : undefined;
    if (m) { m.apply(x, rows, out, toBF16, xOff, xStride, outOff, outStride, rowOff, nRows); return; }
    const Wf = W instanceof Uint16Array ? this.widened(W) : W;
    linear(x, rows, Wf, nRows, K, out, toBF16, xOff, xStride, outOff, outStride, rowOff * K);
  }

  /**
   * An FP8 linear (V4-MODEL 8.1, 8.4) on contiguous rows: act_quant, then the exact block partials from the SIMD
   * kernel when available, else ops.ts's loops; both combine the scales the same way (same bits).
   */
  private fp8(x: Float32Array, rows: number, lin: Fp8Linear, out: Float32Array): void {
    const pow2 = this.config.pow2ActScales;
    const m = this.matrixOf(lin.w, lin.out, lin.in);
    if (!m || !this.wasm) { fp8Linear(x, rows, lin, pow2, this.qs, out); return; }
    actQuant(x, rows, lin.in, pow2, this.qs);
    const P = this.wasm.fp8Partials(m, this.qs.q, rows);
    fp8Combine(P, this.qs.s, rows, lin, out);
  }

  /**
   * The weight's copy in the SIMD kernels' memory, made on first use; null (JS loops from then on) when there is
   * no WebAssembly SIMD or its 4 GB memory is full (a large model on the CPU: later weights simply run in JS).
   */
  private matrixOf(W: Float32Array | Uint16Array, n: number, k: number): WasmMatrix | undefined {
    if (!this.wasm) return undefined;
    let m = this.mats.get(W);
    if (m === undefined) {
      try { m = this.wasm.matrix(W, n, k); } catch { m = null; }
      this.mats.set(W, m);
    }
    return m ?? undefined;
  }

  private wide = new Map<Uint16Array, Float32Array>();
  private widened(W: Uint16Array): Float32Array {
    let f = this.wide.get(W);
    if (!f) { f = bf16ToF32(W); this.wide.set(W, f); }
    return f;
  }

  private checkLive(): void {
    if (this.disposed) throw new Error('the model was disposed');
  }

  private rows(items: readonly { seq: ModelSequence; tokens: readonly number[] }[], mtp: boolean): Rows {
    this.checkLive();
    const seen = new Set<V4Sequence>();
    let n = 0;
    for (const [i, it] of items.entries()) {
      const s = it.seq as V4Sequence;
      if (!(s instanceof V4Sequence) || s.owner !== this) throw new Error(`step: item ${i} holds a sequence of another model`);
      if (s.released) throw new Error(`step: item ${i}'s sequence was released`);
      if (seen.has(s)) throw new Error(`step: item ${i}'s sequence appears twice in one call; pass its tokens in one item`);
      seen.add(s);
      if (it.tokens.length === 0) throw new Error(`step: item ${i} has no tokens`);
      const start = mtp ? s.mtpLength : s.length;
      if (start + it.tokens.length > this.maxContext) {
        throw new Error(`step: item ${i} would reach ${start + it.tokens.length} tokens, past the model's context of ${this.maxContext}`);
      }
      for (const t of it.tokens) {
        if (!(Number.isInteger(t) && t >= 0 && t < this.vocabSize)) throw new Error(`step: item ${i}: token id ${t} is outside the vocabulary [0, ${this.vocabSize})`);
      }
      n += it.tokens.length;
    }
    const r: Rows = { n, pos: new Int32Array(n), tokens: new Int32Array(n), item: new Int32Array(n), itemStart: [], itemLen: [], itemPos: [], caches: [] };
    let o = 0;
    for (const [i, it] of items.entries()) {
      const s = it.seq as V4Sequence;
      const start = mtp ? s.mtpLength : s.length;
      r.itemStart.push(o); r.itemLen.push(it.tokens.length); r.itemPos.push(start);
      r.caches.push(mtp ? s.mtp : s.layers);
      for (let j = 0; j < it.tokens.length; j++, o++) { r.pos[o] = start + j; r.tokens[o] = it.tokens[j]; r.item[o] = i; }
    }
    return r;
  }

  /**
   * Calls run one at a time, in call order: a call awaits the MoE backend between layers, and a second call
   * starting then would interleave with it on the same caches (a server that does not await each step).
   */
  private queue: Promise<unknown> = Promise.resolve();
  private exclusive<T>(f: () => Promise<T>): Promise<T> {
    const run = this.queue.then(f, f);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The main model on new tokens (V4-MODEL 1): embedding, blocks, head. */
  forward(items: readonly ModelStepItem[], opts: ForwardOptions = {}): Promise<ForwardOutput[]> {
    return this.exclusive(() => this.forwardNow(items, opts));
  }

  private async forwardNow(items: readonly ModelStepItem[], opts: ForwardOptions): Promise<ForwardOutput[]> {
    const rows = this.rows(items, false);
    const c = this.config; const D = c.dim; const hc = c.hcMult;
    let Hs: Float32Array = new Float32Array(rows.n * hc * D);
    const emb = this.weights.embed;
    const u = new Uint32Array(Hs.buffer);
    for (let r = 0; r < rows.n; r++) {
      const e = rows.tokens[r] * D;
      for (let k = 0; k < hc; k++) { const o = (r * hc + k) * D; for (let i = 0; i < D; i++) u[o + i] = emb[e + i] << 16; }
    }
    for (let l = 0; l < this.weights.layers.length; l++) {
      const input = Hs;
      Hs = await this.block(this.weights.layers[l], this.backends[l], Hs, rows, l);
      this.blockTap?.(l, input, Hs);
    }
    for (const [i, it] of items.entries()) (it.seq as V4Sequence).length += rows.itemLen[i];
    return this.outputs(Hs, rows, this.weights.finalHead, opts);
  }

  /**
   * The MTP layer j (V4-MODEL 7): hidden streams of positions i with the tokens of positions i + 1 predict the
   * tokens of i + 2. Its window cache is the sequence's own (positions counted by mtpLength).
   */
  mtpForward(items: readonly MtpStepItem[], opts: ForwardOptions = {}, j = 0): Promise<ForwardOutput[]> {
    return this.exclusive(() => this.mtpNow(items, opts, j));
  }

  private async mtpNow(items: readonly MtpStepItem[], opts: ForwardOptions, j: number): Promise<ForwardOutput[]> {
    const m = this.weights.mtp[j];
    if (!m) throw new Error(`mtpForward: the model has ${this.weights.mtp.length} MTP layers`);
    const rows = this.rows(items, true);
    const c = this.config; const D = c.dim; const hc = c.hcMult;
    for (const [i, it] of items.entries()) {
      if (it.hidden.length !== rows.itemLen[i] * hc * D) throw new Error(`mtpForward: item ${i}: hidden has ${it.hidden.length} values, expected [${rows.itemLen[i]}, ${hc}, ${D}]`);
    }
    const n = rows.n;
    const e = new Float32Array(n * D);
    const emb = this.weights.embed;
    const eu = new Uint32Array(e.buffer);
    for (let r = 0; r < n; r++) { const o = rows.tokens[r] * D; for (let i = 0; i < D; i++) eu[r * D + i] = emb[o + i] << 16; }
    rmsNorm(e, n, D, m.enorm, c.normEps, e);
    const hIn = new Float32Array(n * hc * D);
    for (const [i, it] of items.entries()) hIn.set(it.hidden, rows.itemStart[i] * hc * D);
    rmsNorm(hIn, n * hc, D, m.hnorm, c.normEps, hIn);
    const eP = new Float32Array(n * D);
    this.fp8(e, n, m.eProj, eP);
    const hP = new Float32Array(n * hc * D);
    this.fp8(hIn, n * hc, m.hProj, hP);
    let X: Float32Array = new Float32Array(n * hc * D);
    for (let r = 0; r < n; r++) {
      for (let k = 0; k < hc; k++) {
        const o = (r * hc + k) * D;
        for (let i = 0; i < D; i++) X[o + i] = bf16(eP[r * D + i] + hP[o + i]);
      }
    }
    X = await this.block(m.block, this.mtpBackends[j], X, rows, j);
    for (const [i, it] of items.entries()) (it.seq as V4Sequence).mtpLength += rows.itemLen[i];
    return this.outputs(X, rows, m.head, opts);
  }

  private outputs(Hs: Float32Array, rows: Rows, head: HeadWeights, opts: ForwardOptions): ForwardOutput[] {
    const c = this.config; const D = c.dim; const hc = c.hcMult; const V = c.vocabSize;
    const out: ForwardOutput[] = [];
    for (let i = 0; i < rows.itemStart.length; i++) {
      const s0 = rows.itemStart[i]; const len = rows.itemLen[i];
      const first = opts.allLogits ? s0 : s0 + len - 1;
      const m = s0 + len - first;
      let logits: Float32Array = new Float32Array(0);
      if (!opts.noLogits) {
        const y = new Float32Array(m * D);
        this.hcHead(Hs, first, m, head.hc, y);
        rmsNorm(y, m, D, head.norm, c.normEps, y);
        logits = new Float32Array(m * V);
        this.lin(this.weights.head, V, D, y, m, logits, false);
      }
      out.push({ logits, hidden: opts.hidden ? Hs.slice(s0 * hc * D, (s0 + len) * hc * D) : undefined });
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------------------------
  // One block (V4-MODEL 1): hc_pre -> attn_norm -> attention -> hc_post -> hc_pre -> ffn_norm -> MoE -> hc_post

  private async block(bw: BlockWeights, backend: MoeBackend, Hs: Float32Array, rows: Rows, cacheIndex: number): Promise<Float32Array> {
    const c = this.config; const D = c.dim; const hc = c.hcMult; const n = rows.n;
    const x = new Float32Array(n * D);
    const post = new Float32Array(n * hc);
    const comb = new Float32Array(n * hc * hc);
    this.hcPre(Hs, n, bw.hcAttn, x, post, comb);
    rmsNorm(x, n, D, bw.attnNorm, c.normEps, x);
    const caches = rows.caches.map((cs) => cs[cacheIndex]);
    const a = this.attention(bw, x, rows, caches);
    let H2 = this.hcPost(a, Hs, n, post, comb);

    this.hcPre(H2, n, bw.hcFfn, x, post, comb);
    rmsNorm(x, n, D, bw.ffnNorm, c.normEps, x);
    const xt = new HostTensor('BF16', [n, D], f32ToBF16Bits(x, n * D));
    const routing = routeLayer(bw.moe, xt, rows.tokens);
    const res = await backend.forward(xt, routing.topkIds, routing.topkWeights);
    this.moeTap?.(bw.index, xt, rows.tokens, res.y);
    const f = new Float32Array(n * D);
    const fu = new Uint32Array(f.buffer);
    const yb = res.y.data;
    for (let i = 0; i < n * D; i++) fu[i] = yb[i] << 16;
    H2 = this.hcPost(f, H2, n, post, comb);
    return H2;
  }

  /** hc_pre (V4-MODEL 2.1) over n rows: the mixing logits fn . X by the linear kernel, then hcMix per row. */
  private hcPre(Hs: Float32Array, n: number, p: HcParams, y: Float32Array, post: Float32Array, comb: Float32Array): void {
    const c = this.config; const W = c.hcMult * c.dim; const mixN = (2 + c.hcMult) * c.hcMult;
    const mixAll = new Float32Array(n * mixN);
    this.lin(p.fn, mixN, W, Hs, n, mixAll, false);
    hcMix(Hs, mixAll, n, c.hcMult, c.dim, p, c.hcSinkhornIters, c.hcEps, c.normEps, y, post, comb);
  }

  private hcPost(f: Float32Array, R: Float32Array, n: number, post: Float32Array, comb: Float32Array): Float32Array {
    return hcPost(f, R, n, this.config.hcMult, this.config.dim, post, comb);
  }

  /** hc_head (V4-MODEL 2.4) for rows first..first+m-1: sigmoid-only weights, no post/comb. */
  private hcHead(Hs: Float32Array, first: number, m: number, p: HcParams, y: Float32Array): void {
    const c = this.config; const D = c.dim; const hc = c.hcMult; const W = hc * D;
    const mix = new Float32Array(m * hc);
    this.lin(p.fn, hc, W, Hs, m, mix, false, first * W);
    hcHeadMix(Hs, mix, first, m, hc, D, p, c.hcEps, c.normEps, y);
  }

  // -------------------------------------------------------------------------------------------------------------
  // Attention (V4-MODEL 4)

  private attention(bw: BlockWeights, x: Float32Array, rows: Rows, caches: LayerCache[]): Float32Array {
    const c = this.config; const D = c.dim; const n = rows.n;
    const H = c.nHeads; const d = c.headDim; const rd = c.ropeHeadDim; const nope = d - rd;
    const A = bw.attn;
    const rope = bw.ratio > 0 ? this.ropeCompressed : this.ropePlain;

    // 4.1 query path
    const qr = new Float32Array(n * c.qLoraRank);
    this.fp8(x, n, A.wqA, qr);
    rmsNorm(qr, n, c.qLoraRank, A.qNorm, c.normEps, qr);
    const q = new Float32Array(n * H * d);
    this.fp8(qr, n, A.wqB, q);
    for (let r = 0; r < n; r++) {
      for (let h = 0; h < H; h++) {
        const o = (r * H + h) * d;
        qHeadRenorm(q, o, d, c.normEps);
        rope.apply(q, o + nope, rows.pos[r]);
      }
    }

    // 4.2 the single K = V head
    const kv = new Float32Array(n * d);
    this.fp8(x, n, A.wkv, kv);
    rmsNorm(kv, n, d, A.kvNorm, c.normEps, kv);
    for (let r = 0; r < n; r++) {
      rope.apply(kv, r * d + nope, rows.pos[r]);
      fp8SimInPlace(kv, r * d, nope, 64);
    }

    // 4.4 compressors (they run before attention: entries completed by this call are visible to it)
    if (A.compressor) this.compress(A.compressor, x, rows, caches.map((lc) => lc.comp!), rope, false);
    let qI: Float32Array | undefined; let wI: Float32Array | undefined;
    if (A.indexer) {
      this.compress(A.indexer.compressor, x, rows, caches.map((lc) => lc.idx!), rope, true);
      // 4.5 indexer query and head weights
      const Hi = c.indexNHeads; const di = c.indexHeadDim;
      qI = new Float32Array(n * Hi * di);
      this.fp8(qr, n, A.indexer.wqB, qI);
      for (let r = 0; r < n; r++) {
        for (let h = 0; h < Hi; h++) {
          const o = (r * Hi + h) * di;
          rope.apply(qI, o + di - rd, rows.pos[r]);
          hadamardInPlace(qI, o, di, this.tmp64);
          fp4SimInPlace(qI, o, di, 32);
        }
      }
      wI = new Float32Array(n * Hi);
      this.lin(A.indexer.weightsProj, Hi, D, x, n, wI, true);
      const sc = fr(fr(1 / Math.sqrt(di)) * fr(1 / Math.sqrt(Hi)));
      for (let i = 0; i < wI.length; i++) wI[i] = bf16(wI[i] * sc);
    }

    // 4.6 / 4.7 sparse attention with sink, per row
    const o = new Float32Array(n * H * d);
    const win = c.windowSize;
    const sigma = fr(1 / Math.sqrt(d));
    const maxKeys = win + (A.compressor ? Math.max(...caches.map((lc) => lc.comp!.count)) : 0);
    const keyArr: Float32Array[] = new Array(maxKeys);
    const keyOff = new Int32Array(maxKeys);
    const scores = new Float64Array(maxKeys);
    const probs = new Float32Array(maxKeys);
    const oacc = new Float64Array(d);
    for (let r = 0; r < n; r++) {
      const it = rows.item[r]; const T = rows.pos[r]; const P = rows.itemPos[it]; const s0 = rows.itemStart[it];
      const lc = caches[it];
      let nk = 0;
      for (let p = Math.max(0, T - win + 1); p <= T; p++) {
        if (p >= P) { keyArr[nk] = kv; keyOff[nk] = (s0 + p - P) * d; } else { keyArr[nk] = lc.ring; keyOff[nk] = (p % win) * d; }
        nk++;
      }
      if (lc.comp) {
        const ratio = bw.ratio;
        const visible = Math.floor((T + 1) / ratio);
        const picks = lc.idx ? this.indexerSelect(qI!, wI!, r, lc.idx, visible) : undefined;
        if (picks) this.picksTap?.(bw.index, r, picks);
        const count = picks ? picks.length : visible;
        for (let k = 0; k < count; k++) {
          keyArr[nk] = lc.comp.entries; keyOff[nk] = (picks ? picks[k] : k) * d; nk++;
        }
      }
      for (let h = 0; h < H; h++) {
        const oo = (r * H + h) * d;
        attendHead(q, oo, d, keyArr, keyOff, nk, sigma, A.sink[h], o, oo, scores, probs, oacc);
        rope.apply(o, oo + nope, T, true); // de-rotate by the query position
      }
    }

    // window ring update: the last win rows of each item
    for (let it = 0; it < rows.itemStart.length; it++) {
      const P = rows.itemPos[it]; const len = rows.itemLen[it]; const s0 = rows.itemStart[it];
      for (let p = Math.max(P, P + len - win); p < P + len; p++) caches[it].ring.set(kv.subarray((s0 + p - P) * d, (s0 + p - P + 1) * d), (p % win) * d);
    }

    // output path: grouped wo_a (bf16 einsum), then wo_b (FP8)
    const G = c.oGroups; const gw = (H * d) / G; const ol = c.oLoraRank;
    const u = new Float32Array(n * G * ol);
    for (let g = 0; g < G; g++) this.lin(A.woA, G * ol, gw, o, n, u, true, g * gw, H * d, g * ol, G * ol, g * ol, ol);
    const out = new Float32Array(n * D);
    this.fp8(u, n, A.woB, out);
    return out;
  }

  /** Lightning-indexer top-k (V4-MODEL 4.5) for row r over the `visible` compressed blocks (indexerTopk). */
  private indexerSelect(qI: Float32Array, wI: Float32Array, r: number, idx: CompressorCache, visible: number): Int32Array {
    const c = this.config;
    return indexerTopk(qI, r * c.indexNHeads * c.indexHeadDim, wI, r * c.indexNHeads, c.indexNHeads, c.indexHeadDim, idx.entries, visible, c.indexTopk);
  }

  /**
   * The compressor (V4-MODEL 4.4) over this call's rows: a_t = wkv x_t, g_t = wgate x_t + ape[t mod ratio] (fp32),
   * pushed into each sequence's state in position order; a completed block n is pooled (per-channel softmax over
   * its tokens; overlap: block n-1's first half and block n's second half), bf16, normed, rotated at n * ratio and
   * quantisation-simulated (main: FP8 on the nope dims; indexer: Hadamard + FP4), then appended to the cache.
   */
  private compress(w: CompressorWeights, x: Float32Array, rows: Rows, caches: CompressorCache[], rope: RopeTable, indexer: boolean): void {
    const c = this.config; const D = c.dim; const n = rows.n;
    const cw = w.overlap ? 2 : 1; const dc = w.dc; const width = cw * dc; const ratio = w.ratio;
    const a = new Float32Array(n * width); const g = new Float32Array(n * width);
    this.lin(w.wkv, width, D, x, n, a, false);
    this.lin(w.wgate, width, D, x, n, g, false);
    const z = new Float32Array(dc);
    const cand = 2 * ratio;
    const ga = new Float64Array(cand); const aa = new Float64Array(cand);
    const spec: CompressorRowSpec = {
      ratio, overlap: w.overlap, dc, rd: c.ropeHeadDim, ape: w.ape, norm: w.norm, eps: c.normEps, rope, indexer,
    };
    for (let r = 0; r < n; r++) {
      const cc = caches[rows.item[r]];
      const nb = compressRow(cc, spec, a, g, r * width, rows.pos[r], z, ga, aa, this.tmp64);
      if (nb < 0) continue;
      if (cc.count !== nb) throw new Error(`internal: compressor emitted block ${nb} with ${cc.count} cached`);
      cc.append(z, 0);
    }
  }
}

/** The query's per-head RMS renorm without weight (V4-MODEL 4.1), in bf16 arithmetic: square, mean, rsqrt, multiply. */
export function qHeadRenorm(q: Float32Array, o: number, d: number, eps: number): void {
  let ss = 0;
  for (let i = 0; i < d; i++) ss += bf16(q[o + i] * q[o + i]);
  const rs = bf16(1 / Math.sqrt(bf16(bf16(ss / d) + eps)));
  for (let i = 0; i < d; i++) q[o + i] = bf16(q[o + i] * rs);
}

/**
 * One head of sparse attention with a sink (V4-MODEL 4.7): s_i = f32(sigma * (q . k_i)), m = max s_i (sink
 * excluded), p_i = bf16(e^{s_i - m} / (sum_j e^{s_j - m} + e^{sink - m})), o = bf16(sum_i p_i k_i) with K = V.
 * Keys are (array, offset) pairs in list order; scratch arrays hold at least nk (scores, probs) and d (acc) values.
 */
export function attendHead(q: Float32Array, qo: number, d: number, keyArr: Float32Array[], keyOff: Int32Array, nk: number,
  sigma: number, sink: number, o: Float32Array, oo: number, scores: Float64Array, probs: Float32Array, acc: Float64Array): void {
  let mx = -Infinity;
  for (let k = 0; k < nk; k++) {
    const K = keyArr[k]; const ko = keyOff[k];
    let s0a = 0; let s1a = 0;
    for (let i = 0; i < d; i += 2) { s0a += q[qo + i] * K[ko + i]; s1a += q[qo + i + 1] * K[ko + i + 1]; }
    const sc = fr(fr(s0a + s1a) * sigma);
    scores[k] = sc;
    if (sc > mx) mx = sc;
  }
  let denom = 0;
  for (let k = 0; k < nk; k++) { const e = fr(Math.exp(scores[k] - mx)); probs[k] = e; denom += e; }
  denom = fr(fr(denom) + fr(Math.exp(sink - mx)));
  for (let k = 0; k < nk; k++) probs[k] = bf16(probs[k] / denom);
  // P.V, keys in list order (the same order for every path, so prefill and decode agree bit for bit)
  acc.fill(0, 0, d);
  for (let k = 0; k < nk; k++) {
    const pk = probs[k]; const K = keyArr[k]; const ko = keyOff[k];
    for (let i = 0; i < d; i++) acc[i] += pk * K[ko + i];
  }
  for (let i = 0; i < d; i++) o[oo + i] = bf16(acc[i]);
}

/** A compressor state's ring: a_t and g_t (+ape) of the last `slots` tokens, `width` = c * dc each. */
export interface CompressorRing {
  readonly slots: number;
  readonly width: number;
  readonly a: Float32Array;
  readonly g: Float32Array;
}

/** What one compressor (main or indexer) of one layer needs per row: its weights' shape and the model's constants. */
export interface CompressorRowSpec {
  readonly ratio: number;
  readonly overlap: boolean;
  readonly dc: number;
  /** rope dims at the end of an entry */
  readonly rd: number;
  readonly ape: Float32Array;
  readonly norm: Float32Array;
  readonly eps: number;
  readonly rope: RopeTable;
  readonly indexer: boolean;
}

/**
 * One row of the compressor (V4-MODEL 4.4): a_t, g_t + ape[t mod ratio] (rows of a / g at offset ao) into the ring
 * slot of position t; when t completes block nb, the block is pooled into z, normed, rotated at nb * ratio and
 * quantisation-simulated (main: FP8 on the nope dims; indexer: Hadamard + FP4), and nb is returned; else -1. The
 * caller appends z. ga / aa: poolBlock's scratch; tmp64: the Hadamard's.
 */
export function compressRow(ring: CompressorRing, sp: CompressorRowSpec, a: Float32Array, g: Float32Array, ao: number,
  t: number, z: Float32Array, ga: Float64Array, aa: Float64Array, tmp64: Float64Array): number {
  const { width, slots } = ring; const { ratio, dc } = sp;
  const slot = t % slots; const apeO = (t % ratio) * width;
  for (let i = 0; i < width; i++) { ring.a[slot * width + i] = a[ao + i]; ring.g[slot * width + i] = fr(g[ao + i] + sp.ape[apeO + i]); }
  if ((t + 1) % ratio !== 0) return -1;
  const nb = (t + 1) / ratio - 1;
  poolBlock(ring.a, ring.g, width, ratio, sp.overlap, dc, nb, z, ga, aa);
  rmsNorm(z, 1, dc, sp.norm, sp.eps, z);
  sp.rope.apply(z, dc - sp.rd, nb * ratio);
  if (sp.indexer) { hadamardInPlace(z, 0, dc, tmp64); fp4SimInPlace(z, 0, dc, 32); } else fp8SimInPlace(z, 0, dc - sp.rd, 64);
  return nb;
}

/**
 * Pools compressed entry nb (V4-MODEL 4.4) from a compressor state: a, g (g with ape added) rows of `width` = c * dc
 * channels, row = position mod (c * ratio). Per channel a softmax over the candidate tokens weights their values:
 * non-overlap: block nb's tokens; overlap: block nb-1's tokens on channels [0, dc) (none for nb = 0) and block
 * nb's tokens on channels [dc, 2 dc). z[ch] = bf16(f32(sum e a) / f32(sum e)). ga / aa: scratch of 2 * ratio.
 */
export function poolBlock(a: Float32Array, g: Float32Array, width: number, ratio: number, overlap: boolean, dc: number, nb: number,
  z: Float32Array, ga: Float64Array, aa: Float64Array): void {
  for (let ch = 0; ch < dc; ch++) {
    let m = 0;
    if (overlap && nb > 0) {
      const ps = ((nb - 1) % 2) * ratio;
      for (let j = 0; j < ratio; j++) { const so = (ps + j) * width + ch; ga[m] = g[so]; aa[m] = a[so]; m++; }
    }
    const cs = overlap ? (nb % 2) * ratio : 0; const half = overlap ? dc : 0;
    for (let j = 0; j < ratio; j++) { const so = (cs + j) * width + half + ch; ga[m] = g[so]; aa[m] = a[so]; m++; }
    let mx = -Infinity;
    for (let j = 0; j < m; j++) if (ga[j] > mx) mx = ga[j];
    let se = 0; let sa = 0;
    for (let j = 0; j < m; j++) { const e = fr(Math.exp(ga[j] - mx)); se += e; sa += e * aa[j]; }
    z[ch] = bf16(fr(fr(sa) / fr(se)));
  }
}

/**
 * Lightning-indexer selection (V4-MODEL 4.5): score[n] = bf16(sum_h bf16(w[h] * relu(bf16(qI[h] . kI[n])))) over
 * the visible blocks n, the top min(k, visible) of them, ties to the lower block index, returned ascending.
 * When k >= visible every block is selected (no scores needed).
 */
export function indexerTopk(qI: Float32Array, qOff: number, w: Float32Array, wOff: number, heads: number, di: number,
  keys: Float32Array, visible: number, topk: number): Int32Array {
  const k = Math.min(topk, visible);
  if (k === visible) return Int32Array.from({ length: visible }, (_, i) => i);
  const score = new Float32Array(visible);
  for (let nb = 0; nb < visible; nb++) {
    let sum = 0;
    for (let h = 0; h < heads; h++) {
      const qo = qOff + h * di; const ko = nb * di;
      let dot = 0;
      for (let i = 0; i < di; i++) dot += qI[qo + i] * keys[ko + i];
      const rl = Math.max(bf16(dot), 0);
      sum += bf16(w[wOff + h] * rl);
    }
    score[nb] = bf16(sum);
  }
  const taken = new Uint8Array(visible);
  const picks = new Int32Array(k);
  for (let j = 0; j < k; j++) {
    let best = -1; let bv = -Infinity;
    for (let nb = 0; nb < visible; nb++) if (!taken[nb] && (best < 0 || score[nb] > bv)) { best = nb; bv = score[nb]; }
    taken[best] = 1; picks[j] = best;
  }
  return picks.sort();
}

/**
 * hc_pre (V4-MODEL 2.1) given the raw mixing logits mixAll = hc_fn . X [n, (2+hc)*hc]: r = rsqrt(mean(X^2) + eps),
 * m = mix * r; pre_j = sigmoid(m_j s0 + b_j) + hc_eps; post_j = 2 sigmoid(m_{hc+j} s1 + b_{hc+j});
 * comb = Sinkhorn(m_{2hc..} s2 + b); y = bf16(sum_j pre_j Hs_j). comb[j, k]: source j, destination k.
 */
export function hcMix(Hs: Float32Array, mixAll: Float32Array, n: number, hc: number, D: number, p: HcParams, iters: number,
  eps: number, normEps: number, y: Float32Array, post: Float32Array, comb: Float32Array): void {
  const W = hc * D; const mixN = (2 + hc) * hc;
  const m = new Float32Array(mixN);
  const pre = new Float32Array(hc);
  const C = new Float64Array(hc * hc);
  for (let r = 0; r < n; r++) {
    const o = r * W;
    let ss = 0;
    for (let i = 0; i < W; i++) { const v = Hs[o + i]; ss += v * v; }
    const rs = fr(1 / Math.sqrt(fr(fr(ss / W) + normEps)));
    for (let j = 0; j < mixN; j++) m[j] = fr(mixAll[r * mixN + j] * rs);
    for (let j = 0; j < hc; j++) {
      pre[j] = fr(fr(sigmoid(fr(fr(m[j] * p.scale[0]) + p.base[j]))) + eps);
      post[r * hc + j] = fr(2 * fr(sigmoid(fr(fr(m[hc + j] * p.scale[1]) + p.base[hc + j]))));
    }
    for (let j = 0; j < hc * hc; j++) C[j] = fr(fr(m[2 * hc + j] * p.scale[2]) + p.base[2 * hc + j]);
    sinkhorn(C, hc, iters, eps);
    for (let j = 0; j < hc * hc; j++) comb[r * hc * hc + j] = C[j];
    const yo = r * D;
    for (let i = 0; i < D; i++) {
      let acc = 0;
      for (let j = 0; j < hc; j++) acc += pre[j] * Hs[o + j * D + i];
      y[yo + i] = bf16(acc);
    }
  }
}

/**
 * hc_head (V4-MODEL 2.4) for rows first..first+m-1 given the raw mixing logits mix = hc_head_fn . X [m, hc]:
 * pre_j = sigmoid(m_j r s + b_j) + hc_eps (no post / comb), y = bf16(sum_j pre_j Hs_j).
 */
export function hcHeadMix(Hs: Float32Array, mix: Float32Array, first: number, m: number, hc: number, D: number, p: HcParams,
  hcEps: number, normEps: number, y: Float32Array): void {
  const W = hc * D;
  const pre = new Float32Array(hc);
  for (let r = 0; r < m; r++) {
    const o = (first + r) * W;
    let ss = 0;
    for (let i = 0; i < W; i++) { const v = Hs[o + i]; ss += v * v; }
    const rs = fr(1 / Math.sqrt(fr(fr(ss / W) + normEps)));
    for (let j = 0; j < hc; j++) pre[j] = fr(fr(sigmoid(fr(fr(fr(mix[r * hc + j] * rs) * p.scale[0]) + p.base[j]))) + hcEps);
    for (let i = 0; i < D; i++) {
      let acc = 0;
      for (let j = 0; j < hc; j++) acc += pre[j] * Hs[o + j * D + i];
      y[r * D + i] = bf16(acc);
    }
  }
}

/** hc_post (V4-MODEL 2.2): out_k = bf16(post_k * f + sum_j comb[j, k] * R_j), fp32 inside. */
export function hcPost(f: Float32Array, R: Float32Array, n: number, hc: number, D: number, post: Float32Array, comb: Float32Array): Float32Array {
  const out = new Float32Array(n * hc * D);
  for (let r = 0; r < n; r++) {
    const ro = r * hc * D; const fo = r * D; const co = r * hc * hc;
    for (let k = 0; k < hc; k++) {
      const pk = post[r * hc + k]; const oo = ro + k * D;
      for (let i = 0; i < D; i++) {
        let acc = pk * f[fo + i];
        for (let j = 0; j < hc; j++) acc += comb[co + j * hc + k] * R[ro + j * D + i];
        out[oo + i] = bf16(acc);
      }
    }
  }
  return out;
}

/** Sinkhorn (V4-MODEL 2.1): row softmax + eps, column normalisation, then iters-1 row/column rounds; fp32. */
export function sinkhorn(C: Float64Array, hc: number, iters: number, eps: number): void {
  for (let j = 0; j < hc; j++) {
    let mx = -Infinity;
    for (let k = 0; k < hc; k++) mx = Math.max(mx, C[j * hc + k]);
    let s = 0;
    for (let k = 0; k < hc; k++) { const e = fr(Math.exp(C[j * hc + k] - mx)); C[j * hc + k] = e; s += e; }
    s = fr(s);
    for (let k = 0; k < hc; k++) C[j * hc + k] = fr(fr(C[j * hc + k] / s) + eps);
  }
  const colNorm = () => {
    for (let k = 0; k < hc; k++) {
      let s = 0;
      for (let j = 0; j < hc; j++) s += C[j * hc + k];
      const den = fr(fr(s) + eps);
      for (let j = 0; j < hc; j++) C[j * hc + k] = fr(C[j * hc + k] / den);
    }
  };
  const rowNorm = () => {
    for (let j = 0; j < hc; j++) {
      let s = 0;
      for (let k = 0; k < hc; k++) s += C[j * hc + k];
      const den = fr(fr(s) + eps);
      for (let k = 0; k < hc; k++) C[j * hc + k] = fr(C[j * hc + k] / den);
    }
  };
  colNorm();
  for (let i = 1; i < iters; i++) { rowNorm(); colNorm(); }
}

/** Loads a model checkpoint as a CausalLM (the embedded default when `dir` is undefined: model/default). */
export async function loadCausalLM(dir: string, options: CreateModelOptions = {}): Promise<DeepSeekV4Model> {
  return DeepSeekV4Model.load(dir, options);
}
