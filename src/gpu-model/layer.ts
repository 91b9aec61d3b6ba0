// One whole DeepSeek-V4 decoder layer on the GPU (V4-MODEL 1-5; issue 11), composed from the existing pieces:
//
//   hc_pre + attn_norm + act_quant         GpuRowOps.hcPre (row-ops.ts)
//   wq_a -> q_norm (+ act_quant) -> wq_b   DenseFp8Linear (dense-fp8.ts) + GpuRowOps.rmsNorm
//   q per-head renorm (bf16 arithmetic)    GpuRowOps.qRenorm (model.ts qHeadRenorm, bit for bit)
//   RoPE of q and of kv                    GpuRowOps.rope
//   wkv -> kv_norm -> RoPE -> FP8 sim      DenseFp8Linear + GpuRowOps.rmsNorm + rope + GpuAttention.kvFp8Sim
//   compressor(s) a / g = wkv x, wgate x   bf16 GEMM, f32 out (ctx.gemm: skinny kernel or cuBLASLt), then GpuAttention.compress
//   indexer q (wq_b), weights_proj         DenseFp8Linear, bf16 -> bf16 GEMM, GpuAttention.indexerPrepare / Select
//   sparse attention + sink, ring update   GpuAttention.attend / storeWindow (attention.ts, over kv-cache.ts)
//   grouped wo_a (bf16) -> act_quant -> wo_b   one strided-batched bf16 -> bf16 GEMM (all groups), actQuant, DenseFp8Linear
//   hc_post                                GpuRowOps.hcPost (in place on the streams)
//   hc_pre + ffn_norm -> router -> MoE     GpuRowOps.hcPre writing the unfused MoE's input, Router (kernels/routing.ts,
//                                          score or hash-routed), UnfusedMoe (backends/unfused.ts), hc_post
//
// A call: ctx.begin(items, tokens) once per step (it grows the paged caches, uploads positions and token ids), then
// layer.forward(hs, ctx) for each layer on the residual streams hs BF16 [>= rows, hc, D], updated in place. Rows are
// laid out item after item (GpuAttention's plan): a prefill is one long item, a decode batch many one-row items.
// Everything is queued on ctx.stream: a layer makes no host round trip.
//
// Numerics against the CPU forward (model.ts block()): the row ops, RoPE, the kv / compressor / indexer stages and the
// q renorm are the CPU's bits on the same inputs; the FP8 projections and the MoE are SPEC 5's tolerance (tensor-core
// accumulation inside a 128-wide K block); the bf16 GEMMs (compressor a / g, weights_proj, wo_a) have exact products
// and another summation order; attention sums in f32 (CPU f64). So a layer's output is SPEC 5's tolerance, not bits.
import { CublasLtBf16Gemm, CublasLtBf16OutGemm, cublasLtStatus, type GemmBatch } from '../cuda/cublaslt.js';
import { DeviceTensor, ensureContext, Stream, type StreamLike } from '../cuda/index.js';
import { DeviceMoeWeights, UnfusedMoe } from '../backends/unfused.js';
import { MegaMoe, MegaMoeShared } from '../backends/mega-moe.js';
import { GROUPED_GEMM_ROW_TILE } from '../kernels/grouped-gemm.js';
import { SkinnyBf16Gemm, skinnyBf16Supported } from '../kernels/bf16-skinny.js';
import { Router } from '../kernels/routing.js';
import type { ModelConfig } from '../model/config.js';
import type { BlockWeights, CompressorWeights } from '../model/loader.js';
import { ropeFrequencies } from '../model/rope.js';
import { HostTensor } from '../tensor/host.js';
import type { AttnCallItem, AttnCallPlan, GpuAttention } from './attention.js';
import { BoundDenseFp8, DenseFp8Linear, uploadFp8Linear, type DeviceFp8Weight } from './dense-fp8.js';
import { GpuModelArgumentError } from './errors.js';
import { allocFp8Activations, allocHcMixScratch, GpuRowOps, uploadHcParams, type DeviceHcParams, type Fp8Activations } from './row-ops.js';

type Bf16Gemm = CublasLtBf16Gemm | CublasLtBf16OutGemm | SkinnyBf16Gemm;

/** bf16 bits of a weight the CPU holds as f32 values; refuses values that are not bf16 (they need an f32 GEMM). */
export function bf16WeightBits(what: string, w: Float32Array): Uint16Array {
  const u = new Uint32Array(w.buffer, w.byteOffset, w.length);
  const out = new Uint16Array(w.length);
  for (let i = 0; i < w.length; i++) {
    if ((u[i] & 0xffff) !== 0) {
      throw new GpuModelArgumentError('GpuDecoderLayer', `${what}[${i}] = ${w[i]} is not a bf16 value`,
        'the GPU layer runs this linear as a bf16 GEMM (the checkpoint\'s bf16 tensor); an F32 checkpoint tensor needs an f32 GEMM, not built');
    }
    out[i] = u[i] >>> 16;
  }
  return out;
}

const upBF16 = (w: Float32Array, shape: number[], what: string, stream?: StreamLike) =>
  DeviceTensor.fromHost(new HostTensor('BF16', shape, bf16WeightBits(what, w)), stream);
const upF32 = (w: Float32Array, shape: number[], stream?: StreamLike) => DeviceTensor.fromHost(new HostTensor('F32', shape, w), stream);

/**
 * The points where GpuDecoderLayer.forward calls ctx.profiler (off by default: `bench model` sets one to record CUDA
 * events): the attention sub-block's start, the q renorm's start and end (one kernel), the MoE sub-block's start (hc_pre + ffn_norm, router, MoE, hc_post), the layer's end.
 */
export const LAYER_MARKS = ['attention', 'q-renorm', 'attention-rest', 'moe', 'end'] as const;
export type LayerMark = (typeof LAYER_MARKS)[number];

/** Called at each LAYER_MARKS point of every layer's forward, with the stream the layer runs on. */
export interface LayerProfiler {
  mark(layer: number, at: LayerMark, stream: Stream): void;
}

export interface GpuLayerContextOptions {
  /** Most rows (tokens over all items) of one call. */
  maxRows: number;
  /** The stream every launch goes on (default: a new non-blocking stream owned by the context). */
  stream?: Stream;
}

/**
 * What every layer of one model shares: the row-op kernels, the attention kernels over the paged cache, the compiled
 * dense GEMMs and cuBLASLt plans (shape-only, so shared), per-call device inputs (positions, token ids) and the
 * scratch of one layer's intermediates (layers run one after another on one stream).
 */
export class GpuLayerContext implements Disposable {
  readonly config: ModelConfig;
  readonly maxRows: number;
  /** Row capacity of every scratch tensor and dense GEMM (maxRows rounded up to the normal path's 128-row tile). */
  readonly mCap: number;
  readonly ops: GpuRowOps;
  readonly attention: GpuAttention;
  readonly stream: Stream;
  readonly positions: DeviceTensor<'I32'>;
  readonly tokenIds: DeviceTensor<'I64'>;
  readonly freqPlain: DeviceTensor<'F32'>;
  readonly freqComp: DeviceTensor<'F32'>;
  /** scratch */
  readonly s: {
    post: DeviceTensor<'F32'>; comb: DeviceTensor<'F32'>; x: DeviceTensor<'BF16'>; actX: Fp8Activations;
    /** hc_pre / hc_head's split mixing logits at small T (allocHcMixScratch; one stream, so the head shares it) */
    hcMix: DeviceTensor<'F64'>;
    qr: DeviceTensor<'BF16'>; actQr: Fp8Activations; q: DeviceTensor<'BF16'>; kvRaw: DeviceTensor<'BF16'>; kv: DeviceTensor<'BF16'>;
    compA: DeviceTensor<'F32'>; compG: DeviceTensor<'F32'>; qI: DeviceTensor<'BF16'>; wI: DeviceTensor<'BF16'>;
    o: DeviceTensor<'BF16'>; u: DeviceTensor<'BF16'>; actU: Fp8Activations; attnOut: DeviceTensor<'BF16'>;
  };
  /** Set to time the layers' parts (LayerProfiler); undefined (the default) costs one check per mark. */
  profiler: LayerProfiler | undefined;
  /** Compiles in flight or done, by shape (concurrent callers share one compile). */
  private readonly linears = new Map<string, Promise<DenseFp8Linear>>();
  private readonly gemms = new Map<string, Bf16Gemm>();
  private readonly megas = new Map<string, MegaMoeShared>();
  private readonly owned: Array<{ dispose(): void }> = [];
  private readonly ownsStream: boolean;
  private current: { plan: AttnCallPlan } | undefined;
  private disposed = false;

  private constructor(config: ModelConfig, attention: GpuAttention, o: GpuLayerContextOptions, ops: GpuRowOps) {
    this.config = config;
    this.attention = attention;
    this.ops = ops;
    if (!(Number.isInteger(o.maxRows) && o.maxRows >= 1)) throw new GpuModelArgumentError('GpuLayerContext', `maxRows ${o.maxRows}`, 'pass the most tokens one call runs');
    if (o.maxRows > attention.limits.maxRows) {
      throw new GpuModelArgumentError('GpuLayerContext', `maxRows ${o.maxRows} exceeds the attention's ${attention.limits.maxRows}`, 'create GpuAttention with at least as many rows');
    }
    this.maxRows = o.maxRows;
    this.mCap = Math.ceil(o.maxRows / GROUPED_GEMM_ROW_TILE.normal) * GROUPED_GEMM_ROW_TILE.normal;
    this.ownsStream = !o.stream;
    const c = config; const m = this.mCap;
    const keep = <T extends { dispose(): void }>(t: T): T => { this.owned.push(t); return t; };
    try {
      this.stream = o.stream ?? keep(Stream.create());
      const bf = (shape: number[]) => keep(DeviceTensor.zeros('BF16', shape));
      const f32 = (shape: number[]) => keep(DeviceTensor.zeros('F32', shape));
      const act = (k: number) => { const a = allocFp8Activations(m, k, c.pow2ActScales); keep(a.q); keep(a.sf); return a; };
      this.positions = keep(DeviceTensor.zeros('I32', [m]));
      this.tokenIds = keep(DeviceTensor.zeros('I64', [m]));
      const rd = c.ropeHeadDim;
      this.freqPlain = keep(DeviceTensor.fromHost(new HostTensor('F32', [rd / 2], ropeFrequencies(rd, c.ropeTheta))));
      this.freqComp = keep(DeviceTensor.fromHost(new HostTensor('F32', [rd / 2], ropeFrequencies(rd, c.compressRopeTheta, c.yarn))));
      const H = c.nHeads; const d = c.headDim; const hc = c.hcMult; const D = c.dim;
      const compWidth = Math.max(2 * d, 2 * c.indexHeadDim);
      this.s = {
        post: f32([m, hc]), comb: f32([m, hc, hc]), x: bf([m, D]), actX: act(D), hcMix: keep(allocHcMixScratch(hc, D, o.maxRows)),
        qr: bf([m, c.qLoraRank]), actQr: act(c.qLoraRank), q: bf([m, H * d]), kvRaw: bf([m, d]), kv: bf([m, d]),
        compA: f32([m * compWidth]), compG: f32([m * compWidth]),
        qI: bf([m, c.indexNHeads * c.indexHeadDim]), wI: bf([m, c.indexNHeads]),
        o: bf([m, H * d]), u: bf([m, c.oGroups * c.oLoraRank]), actU: act(c.oGroups * c.oLoraRank), attnOut: bf([m, D]),
      };
    } catch (err) {
      for (const t of this.owned.reverse()) t.dispose();
      throw err;
    }
  }

  /** The context over an attention (GpuAttention bound to the model's paged cache). */
  static async create(config: ModelConfig, attention: GpuAttention, options: GpuLayerContextOptions): Promise<GpuLayerContext> {
    const st = cublasLtStatus();
    if (!st.available) throw new GpuModelArgumentError('GpuLayerContext', `cuBLASLt is not available (${st.reason})`, 'install the CUDA toolkit\'s libcublasLt or set MEGAMOE_LIBCUBLASLT');
    return new GpuLayerContext(config, attention, options, await GpuRowOps.create(config.hcMult));
  }

  /**
   * A dense FP8 GEMM [n, k] with this context's row capacity (a multiple of 128), compiled once per shape: the
   * normal path, and the split-K decode path for calls of up to DENSE_DECODE_MAX_ROWS rows (decode steps).
   */
  linear(n: number, k: number): Promise<DenseFp8Linear> {
    const key = `${n}x${k}`;
    let l = this.linears.get(key);
    if (!l) {
      l = DenseFp8Linear.create({ n, k }, this.mCap);
      this.linears.set(key, l);
    }
    return l;
  }

  /**
   * A bf16 GEMM plan (bf16 in; f32 or bf16 out; leading dims) for m rows, shared by every layer: the skinny kernel
   * (kernels/bf16-skinny.ts) for a decode step's 1-16 rows where it takes the shape, else cuBLASLt.
   */
  gemm(out: 'f32' | 'bf16', m: number, n: number, k: number, ld: { x?: number; d?: number } = {}, batch?: GemmBatch): Bf16Gemm {
    const b = batch ? `:${batch.count}:${batch.strideX}:${batch.strideW}:${batch.strideD}` : '';
    const key = `${out}:${m}:${n}:${k}:${ld.x ?? k}:${ld.d ?? n}${b}`;
    let g = this.gemms.get(key);
    if (!g) {
      if (skinnyBf16Supported(m, n, k, ld, batch)) {
        g = new SkinnyBf16Gemm(out, m, n, k, ld, batch);
      } else if (out === 'f32') {
        if (ld.x !== undefined || ld.d !== undefined || batch) throw new Error('internal: f32-out GEMMs are contiguous here');
        g = new CublasLtBf16Gemm(m, n, k);
      } else {
        g = new CublasLtBf16OutGemm(m, n, k, ld, batch);
      }
      this.gemms.set(key, g);
    }
    return g;
  }

  /**
   * The fused MoE layers' one symmetric buffer and io (made on first use for this shape, disposed with the context):
   * the layers run one after another on this context's stream, so they share it (MegaMoeShared says why that is safe).
   */
  megaShared(shape: { hidden: number; inter: number; experts: number; topK: number }): MegaMoeShared {
    this.live();
    const key = `${shape.hidden}:${shape.inter}:${shape.experts}:${shape.topK}`;
    let m = this.megas.get(key);
    if (!m) {
      m = MegaMoeShared.create(shape, this.mCap);
      this.megas.set(key, m);
      this.owned.push(m);
    }
    return m;
  }

  /**
   * Starts a call: GpuAttention.begin (grows every sequence's cache blocks, uploads tables and row metadata; a
   * refusal changes nothing; `shapeContext`: launch shapes of that context bucket), then the rows' positions and
   * token ids.
   */
  begin(items: readonly AttnCallItem[], tokens: ArrayLike<number>, opts: { shapeContext?: number } = {}): AttnCallPlan {
    this.live();
    const rows = items.reduce((sum, it) => sum + it.len, 0);
    if (rows > this.maxRows) throw new GpuModelArgumentError('GpuLayerContext.begin', `${rows} rows exceed maxRows ${this.maxRows}`, 'chunk the prefill');
    if (tokens.length !== rows) throw new GpuModelArgumentError('GpuLayerContext.begin', `${tokens.length} token ids for ${rows} rows`, 'pass one token id per row, items in order');
    const plan = this.attention.begin(items, this.stream, opts); // checks first: a refusal changes nothing
    const ids = new BigInt64Array(plan.rows);
    for (let i = 0; i < plan.rows; i++) ids[i] = BigInt(tokens[i]);
    this.positions.buffer.copyFromHost(plan.positions, { stream: this.stream, bytes: plan.rows * 4 });
    this.tokenIds.buffer.copyFromHost(ids, { stream: this.stream, bytes: plan.rows * 8 });
    this.current = { plan };
    return plan;
  }

  /** The plan of the call begun last. */
  get plan(): AttnCallPlan {
    if (!this.current) throw new GpuModelArgumentError('GpuLayerContext', 'no call begun', 'call begin(items, tokens) first');
    return this.current.plan;
  }

  private live(): void {
    if (this.disposed) throw new GpuModelArgumentError('GpuLayerContext', 'disposed', 'create a new context');
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    try { this.stream.synchronize(); } catch { /* disposing after a failure: free what we can */ }
    for (const l of this.linears.values()) l.then((x) => x.dispose(), () => undefined);
    for (const g of this.gemms.values()) g.dispose();
    this.linears.clear(); this.gemms.clear();
    for (const t of this.owned.reverse()) if (t !== this.stream || this.ownsStream) t.dispose();
    this.owned.length = 0;
  }

  [Symbol.dispose](): void { this.dispose(); }
}

export interface GpuDecoderLayerOptions {
  /**
   * The MoE block's device weights instead of uploading the layer's experts (benchmarks: DeviceMoeWeights.random,
   * generated on the GPU; the host experts are then never read). The layer owns what it returns.
   */
  moeWeights?: (bw: BlockWeights) => Promise<DeviceMoeWeights>;
  /**
   * The MoE block's backend (default unfused): mega_moe is the fused kernel, one launch per layer; auto holds both
   * on the same weights and runs the fused kernel for calls of at least megaMoeMinRows() rows (prefill chunks), the
   * unfused pipeline below (decode steps, where the fused layer was not faster inside the step: docs/GPU-MODEL.md).
   */
  moeBackend?: GpuMoeBackend;
}

/** MoE backends a GPU layer can hold (one GPU, every expert). */
export const GPU_MOE_BACKENDS = ['unfused', 'mega_moe', 'auto'] as const;
export type GpuMoeBackend = (typeof GPU_MOE_BACKENDS)[number];

/**
 * Rows from which the auto backend runs the fused kernel (MEGAMOE_MODEL_MEGA_MIN_ROWS, default 512): prefill chunks,
 * where it was measured faster in the step; decode batches up to vLLM's default 256 sequences stay unfused, where the
 * fused layer was even at b8 / b64 and slower at b1 (docs/GPU-MODEL.md), and where b256 was not measured.
 */
export function megaMoeMinRows(): number {
  const v = process.env.MEGAMOE_MODEL_MEGA_MIN_ROWS;
  if (v === undefined || v === '') return 512;
  const n = Number(v);
  if (!(Number.isInteger(n) && n >= 0)) throw new GpuModelArgumentError('MEGAMOE_MODEL_MEGA_MIN_ROWS', `"${v}"`, 'set a non-negative integer number of rows');
  return n;
}

interface DeviceCompressor {
  ape: DeviceTensor<'F32'>;
  norm: DeviceTensor<'F32'>;
  wkv: DeviceTensor<'BF16'>;
  wgate: DeviceTensor<'BF16'>;
  width: number;
}

/** One decoder layer's weights on the GPU and its forward (see the file header). */
export class GpuDecoderLayer implements Disposable {
  readonly index: number;
  readonly ratio: number;
  readonly hashRouted: boolean;
  /** The MoE block's device pipeline (its io.x is the FFN input, io.y the output): the unfused one where held. */
  readonly moe: UnfusedMoe | MegaMoe;
  /** The auto backend's fused pipeline (calls of at least megaRows rows run it instead of `moe`). */
  private readonly mega: MegaMoe | undefined;
  private readonly megaRows: number;
  /** The router (its out.topkIds / topkWeights hold the last call's routing). */
  readonly router: Router;
  private readonly owned: Array<{ dispose(): void }>;
  private readonly w: {
    hcAttn: DeviceHcParams; hcFfn: DeviceHcParams; attnNorm: DeviceTensor<'F32'>; ffnNorm: DeviceTensor<'F32'>;
    qNorm: DeviceTensor<'F32'>; kvNorm: DeviceTensor<'F32'>; sink: DeviceTensor<'F32'>; woA: DeviceTensor<'BF16'>;
    comp?: DeviceCompressor; idx?: DeviceCompressor; weightsProj?: DeviceTensor<'BF16'>;
  };
  private readonly bound: { wqA: BoundDenseFp8; wqB: BoundDenseFp8; wkv: BoundDenseFp8; woB: BoundDenseFp8; idxWqB?: BoundDenseFp8 };
  private disposed = false;

  private constructor(p: {
    index: number; ratio: number; hashRouted: boolean; moe: UnfusedMoe | MegaMoe; mega: MegaMoe | undefined; router: Router;
    owned: Array<{ dispose(): void }>; w: GpuDecoderLayer['w']; bound: GpuDecoderLayer['bound'];
  }) {
    this.index = p.index; this.ratio = p.ratio; this.hashRouted = p.hashRouted; this.moe = p.moe; this.router = p.router;
    this.mega = p.mega; this.megaRows = p.mega ? megaMoeMinRows() : Infinity;
    this.owned = p.owned; this.w = p.w; this.bound = p.bound;
  }

  /**
   * Uploads layer `bw.index`'s weights once (the CPU model's loaded parameters: model.weights.layers[i]) and builds its
   * GEMMs and MoE pipeline for ctx.mCap rows.
   */
  static async create(ctx: GpuLayerContext, bw: BlockWeights, o: GpuDecoderLayerOptions = {}): Promise<GpuDecoderLayer> {
    const c = ctx.config; const D = c.dim; const hc = c.hcMult; const H = c.nHeads; const d = c.headDim;
    const owned: Array<{ dispose(): void }> = [];
    const keep = <T extends { dispose(): void }>(t: T): T => { owned.push(t); return t; };
    const A = bw.attn;
    const what = `layer ${bw.index}`;
    try {
      const hcUp = (p: BlockWeights['hcAttn']) => {
        const h = uploadHcParams(p, (2 + hc) * hc, hc * D); keep(h.fn); keep(h.base); keep(h.scale); return h;
      };
      const fp8 = (lin: typeof A.wqA): DeviceFp8Weight => { const w = uploadFp8Linear(lin); keep(w.w); keep(w.s); return w; };
      const comp = (cw: CompressorWeights | undefined, name: string): DeviceCompressor | undefined => {
        if (!cw) return undefined;
        const width = (cw.overlap ? 2 : 1) * cw.dc;
        return {
          ape: keep(upF32(cw.ape, [cw.ratio, width])), norm: keep(upF32(cw.norm, [cw.dc])),
          wkv: keep(upBF16(cw.wkv, [width, D], `${what} ${name}.wkv`)), wgate: keep(upBF16(cw.wgate, [width, D], `${what} ${name}.wgate`)), width,
        };
      };
      const w: GpuDecoderLayer['w'] = {
        hcAttn: hcUp(bw.hcAttn), hcFfn: hcUp(bw.hcFfn),
        attnNorm: keep(upF32(bw.attnNorm, [D])), ffnNorm: keep(upF32(bw.ffnNorm, [D])),
        qNorm: keep(upF32(A.qNorm, [c.qLoraRank])), kvNorm: keep(upF32(A.kvNorm, [d])), sink: keep(upF32(A.sink, [H])),
        woA: keep(upBF16(A.woA, [c.oGroups * c.oLoraRank, (H * d) / c.oGroups], `${what} attn.wo_a`)),
        comp: comp(A.compressor, 'attn.compressor'),
        idx: comp(A.indexer?.compressor, 'attn.indexer.compressor'),
        weightsProj: A.indexer ? keep(upBF16(A.indexer.weightsProj, [c.indexNHeads, D], `${what} attn.indexer.weights_proj`)) : undefined,
      };
      const s = ctx.s;
      // compile every projection shape of the layer at once (nvcc runs in parallel), then bind one by one
      const lins = [A.wqA, A.wkv, A.wqB, A.woB, ...(A.indexer ? [A.indexer.wqB] : [])];
      await Promise.all(lins.map((lin) => ctx.linear(lin.out, lin.in)));
      const bind = async (lin: typeof A.wqA, act: Fp8Activations, out: DeviceTensor<'BF16'>) =>
        (await ctx.linear(lin.out, lin.in)).bind(act, fp8(lin), out);
      const bound: GpuDecoderLayer['bound'] = {
        wqA: await bind(A.wqA, s.actX, s.qr),
        wkv: await bind(A.wkv, s.actX, s.kvRaw),
        wqB: await bind(A.wqB, s.actQr, s.q),
        woB: await bind(A.woB, s.actU, s.attnOut),
        idxWqB: A.indexer ? await bind(A.indexer.wqB, s.actQr, s.qI) : undefined,
      };
      // The MoE block: every expert on this GPU (no expert parallelism), routing on the device.
      const ml = bw.moe;
      const ms = ml.shape;
      const localIds = [...ml.experts.ids];
      if (localIds.length !== ms.nRoutedExperts || localIds.some((id, i) => id !== i)) {
        throw new GpuModelArgumentError('GpuDecoderLayer', `${what}: the MoE layer holds ${localIds.length} of ${ms.nRoutedExperts} experts`, 'load the model without expert parallelism (one GPU holds every expert)');
      }
      const weights = o.moeWeights ? await o.moeWeights(bw) : DeviceMoeWeights.fromLayer(ml, localIds);
      const ws = weights.shape;
      if (ws.hidden !== ms.hiddenSize || ws.inter !== ms.moeIntermediateSize || ws.experts !== ms.nRoutedExperts || ws.topK !== ms.numExpertsPerTok) {
        weights.dispose();
        throw new GpuModelArgumentError('GpuDecoderLayer', `${what}: moeWeights gave H ${ws.hidden}, I ${ws.inter}, ${ws.experts} experts, top-${ws.topK}; ` +
          `the layer is H ${ms.hiddenSize}, I ${ms.moeIntermediateSize}, ${ms.nRoutedExperts} experts, top-${ms.numExpertsPerTok}`, 'make the device weights with the layer\'s MoE shape');
      }
      const backend = o.moeBackend ?? 'unfused';
      keep(weights);  // the layer owns the weights; its pipelines (one or, for auto, two) read them
      const mega = backend === 'unfused' ? undefined
        : keep(await MegaMoe.create(weights, ctx.mCap, { shared: ctx.megaShared(weights.shape) }));
      const moe = backend === 'mega_moe' ? mega! : keep(await UnfusedMoe.create(weights, ctx.mCap));
      const gate = keep(DeviceTensor.fromHost(ml.gateWeight));
      const bias = ml.gateBias && !ml.isHashLayer ? keep(upF32(ml.gateBias, [ms.nRoutedExperts])) : undefined;
      let tid2eid: DeviceTensor<'I32'> | undefined;
      if (ml.isHashLayer) {
        if (!ml.tid2eid) throw new GpuModelArgumentError('GpuDecoderLayer', `${what} is hash-routed but has no gate.tid2eid`, 'load the layer with its gate.tid2eid table');
        tid2eid = keep(DeviceTensor.fromHost(new HostTensor('I32', [ml.tid2eid.length / ms.numExpertsPerTok, ms.numExpertsPerTok], ml.tid2eid)));
      }
      const router = keep(await Router.create({ hiddenSize: ms.hiddenSize, experts: ms.nRoutedExperts, topk: ms.numExpertsPerTok }, ctx.mCap, gate,
        { bias, tid2eid, normTopkProb: ms.normTopkProb, routedScalingFactor: ms.routedScalingFactor }));
      ensureContext().synchronize(); // uploads and zero-fills on the legacy stream, before ctx.stream (non-blocking) reads them
      return new GpuDecoderLayer({ index: bw.index, ratio: bw.ratio, hashRouted: ml.isHashLayer, moe, mega: backend === 'auto' ? mega : undefined, router, owned, w, bound });
    } catch (err) {
      for (const t of owned.reverse()) t.dispose();
      throw err;
    }
  }

  /**
   * The layer on the call begun by ctx.begin(): hs BF16 [>= rows, hc, D] (the residual streams) is replaced by the
   * layer's output. Queued on ctx.stream (no host round trip).
   */
  forward(hs: DeviceTensor<'BF16'>, ctx: GpuLayerContext): void {
    if (this.disposed) throw new GpuModelArgumentError('GpuDecoderLayer', 'disposed', 'create the layer again');
    const c = ctx.config; const plan = ctx.plan; const n = plan.rows; const st = ctx.stream; const s = ctx.s;
    const D = c.dim; const H = c.nHeads; const d = c.headDim; const rd = c.ropeHeadDim; const nope = d - rd; const hc = c.hcMult;
    const ops = ctx.ops; const attn = ctx.attention; const L = this.index; const w = this.w;
    const hcOpts = { normEps: c.normEps, hcEps: c.hcEps, sinkhornIters: c.hcSinkhornIters, rows: n, mixScratch: s.hcMix, stream: st };
    const freqs = this.ratio > 0 ? ctx.freqComp : ctx.freqPlain;
    if (hs.dtype !== 'BF16' || hs.shape.length !== 3 || hs.shape[0] < n || hs.shape[1] !== hc || hs.shape[2] !== D) {
      throw new GpuModelArgumentError('GpuDecoderLayer.forward', `hs is ${hs.describe()}`, `pass the residual streams as BF16 [>= ${n}, ${hc}, ${D}]`);
    }

    const prof = ctx.profiler;
    prof?.mark(L, 'attention', st);
    // hc_pre + attn_norm + act_quant (the input of wq_a and wkv)
    ops.hcPre(hs, w.hcAttn, { post: s.post, comb: s.comb, y: s.x }, { ...hcOpts, normWeight: w.attnNorm, quant: s.actX });

    // 4.1 query path: wq_a -> q_norm (+ act_quant) -> wq_b -> per-head renorm -> RoPE
    this.bound.wqA.run(n, st);
    ops.rmsNorm(s.qr, undefined, { weight: w.qNorm, eps: c.normEps, rows: n, quant: s.actQr, stream: st });
    this.bound.wqB.run(n, st);
    prof?.mark(L, 'q-renorm', st);
    ops.qRenorm(s.q, { heads: n * H, d, eps: c.normEps, stream: st });
    prof?.mark(L, 'attention-rest', st);
    ops.rope(s.q, ctx.positions, freqs, { heads: H, headStride: d, ropeOffset: nope, rd, rows: n, stream: st });

    // 4.2 the K = V head: wkv -> kv_norm -> RoPE -> FP8 simulation of the nope dims
    this.bound.wkv.run(n, st);
    ops.rmsNorm(s.kvRaw, s.kv, { weight: w.kvNorm, eps: c.normEps, rows: n, stream: st });
    ops.rope(s.kv, ctx.positions, freqs, { heads: 1, headStride: d, ropeOffset: nope, rd, rows: n, stream: st });
    attn.kvFp8Sim(s.kv, st);

    // 4.4 compressors (before attention: entries completed by this call are visible to it)
    if (w.comp) this.compress(ctx, w.comp, false);
    let picks: DeviceTensor<'I32'> | undefined;
    if (w.idx) {
      this.compress(ctx, w.idx, true);
      // 4.5 indexer query (wq_b of the normed qr) and head weights (weights_proj of x, bf16)
      this.bound.idxWqB!.run(n, st);
      const Hi = c.indexNHeads; const di = c.indexHeadDim;
      ctx.gemm('bf16', n, Hi, D).run(s.x, w.weightsProj!, s.wI, st);
      const qI = s.qI.reshape([ctx.mCap, Hi, di]);
      attn.indexerPrepare(qI, s.wI, st);
      picks = attn.indexerSelect(L, qI, s.wI, st);
    }

    // 4.6 / 4.7 sparse attention with sink (out de-rotated), then the window ring
    const q3 = s.q.reshape([ctx.mCap, H, d]);
    const o3 = s.o.reshape([ctx.mCap, H, d]);
    attn.attend(L, { q: q3, kv: s.kv, sink: w.sink, out: o3, picks }, st);
    attn.storeWindow(L, s.kv, st);

    // output path: grouped wo_a (bf16; every group in one strided-batched GEMM over column slices), act_quant, wo_b (FP8)
    const G = c.oGroups; const gw = (H * d) / G; const ol = c.oLoraRank;
    ctx.gemm('bf16', n, ol, gw, { x: H * d, d: G * ol }, { count: G, strideX: gw, strideW: ol * gw, strideD: ol }).run(s.o, w.woA, s.u, st);
    ops.actQuant(s.u, s.actU, { rows: n, stream: st });
    this.bound.woB.run(n, st);
    ops.hcPost(s.attnOut, hs, s.post, s.comb, hs, { rows: n, stream: st });

    // FFN: hc_pre + ffn_norm straight into the MoE input, routing on the device, the unfused MoE, hc_post
    prof?.mark(L, 'moe', st);
    const moe = n >= this.megaRows ? this.mega! : this.moe;
    const io = moe.io;
    ops.hcPre(hs, w.hcFfn, { post: s.post, comb: s.comb, y: io.x }, { ...hcOpts, normWeight: w.ffnNorm });
    this.router.route(io.x, { tokens: n, tokenIds: this.hashRouted ? ctx.tokenIds : undefined, stream: st });
    const K = moe.shape.topK;
    io.ids.buffer.copyFromDevice(this.router.out.topkIds.buffer, { bytes: n * K * 8, stream: st });
    io.weights.buffer.copyFromDevice(this.router.out.topkWeights.buffer, { bytes: n * K * 4, stream: st });
    moe.enqueue(n, st);
    ops.hcPost(io.y, hs, s.post, s.comb, hs, { rows: n, stream: st });
    prof?.mark(L, 'end', st);
  }

  /**
   * After the call's stream finished: a fused MoE kernel reports a spin that gave up in its control block, not as a
   * CUDA error, so it is read here (MegaMoeKernelError); nothing to check for the unfused backend.
   */
  checkMoe(rows: number): void {
    if (this.moe instanceof MegaMoe) this.moe.checkErrors();
    // auto: only after a call of enough rows to have run the fused kernel (each check is a blocking read of its
    // control block; done after every call, auto's decode steps read 100-170 us slower than unfused ones in session
    // 11's first run). `rows` rather than a flag set by forward(): a replayed CUDA graph does not call forward().
    if (this.mega && rows >= this.megaRows) this.mega.checkErrors();
  }

  /** a = wkv x, g = wgate x (f32, cuBLASLt), then GpuAttention.compress (pool, norm, RoPE, QAT sim, state). */
  private compress(ctx: GpuLayerContext, cw: DeviceCompressor, indexer: boolean): void {
    const n = ctx.plan.rows; const st = ctx.stream; const D = ctx.config.dim; const s = ctx.s;
    const gemm = ctx.gemm('f32', n, cw.width, D);
    gemm.run(s.x, cw.wkv, s.compA, st);
    gemm.run(s.x, cw.wgate, s.compG, st);
    const rowsCap = s.compA.numel / cw.width;
    ctx.attention.compress(this.index, {
      a: s.compA.reshape([rowsCap, cw.width]), g: s.compG.reshape([rowsCap, cw.width]), ape: cw.ape, norm: cw.norm,
    }, indexer, st);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const t of this.owned.reverse()) t.dispose();
    this.owned.length = 0;
  }

  [Symbol.dispose](): void { this.dispose(); }
}
