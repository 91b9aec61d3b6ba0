// The `unfused` backend: the MoE layer on one Hopper GPU as a short sequence of kernels (SPEC 2-3):
//
//   staging (bf16 x -> e4m3 + f32 per-128 scales, ids, weights)          src/kernels/staging.ts
//   -> dispatch (per-expert grouping into the GEMM's A/sfa layout)         src/kernels/moe-dispatch.ts
//   -> L1 grouped GEMM on transformed W13, fused epilogue: clamp-SwiGLU x routing weight -> pow2 per-128 FP8
//   -> L2 grouped GEMM -> bf16 per (token, slot)                           src/kernels/grouped-gemm.ts
//   -> combine (f32 sum of the K rows -> bf16 y_routed; + shared -> y)   src/kernels/moe-combine.ts
//
// The shared expert rides the same grouped GEMMs as one extra group (index E, weight 1, every token), so a layer is
// 2 GEMM launches whatever its routing. Every launch has a shape fixed by T alone and reads the routing from device
// memory, so the whole layer is captured in one CUDA graph per decode size (captureGraph).
//
// Weights are uploaded once at prepare(): W13 [E+1, 2I, H] in the transformed (gate/up interleaved) layout with its
// natural f32 scales [E+1, 2I/128, H/128], and W2 [E+1, H, I] with [E+1, H/128, I/128]. The codes are stored in the
// GEMM weight layout EXPERT_WEIGHT_LAYOUT ('rows', or 'tiled' = 128 x 128 tiles, src/kernels/weight-layout.ts);
// scales never change layout.
import {
  cudaStatus, CudaGraph, findNvcc, DeviceBuffer, DeviceTensor, ensureContext, Stream, type StreamLike,
} from '../cuda/index.js';
import { MoeCombine } from '../kernels/moe-combine.js';
import {
  DispatchBuffers, dispatchCapacity, MoeDispatch, type DispatchCapacity, type DispatchPlan, type DispatchShape,
} from '../kernels/moe-dispatch.js';
import { RANDOM_CODE_STD, RandomFill } from '../kernels/random-fill.js';
import { tileWeights, untileWeights, type WeightLayout } from '../kernels/weight-layout.js';
import { Stager } from '../kernels/staging.js';
import {
  chooseRowTile, createExpertGemms, type ExpertGemms, type RowTile, type RowTilePolicy,
} from './unfused-gemm.js';
import type { MoeForwardResult, PrepareOptions } from '../moe/backend.js';
import { checkLayer, checkSharedExpertAsGroup, checkSm90, checkTokenCapacity, GuardError } from '../moe/guards.js';
import { DeviceMoeBackend, type GuardDevice } from './device-backend.js';
import { concatL1, interleaveGateUpRows, transformL1 } from '../moe/transform.js';
import type { ExpertWeights, MoeLayerWeights } from '../moe/types.js';
import { QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import { HostTensor } from '../tensor/host.js';
import type { BackendProvider } from './index.js';

/** What the device pipeline is specialised on. */
export interface UnfusedShape {
  hidden: number;
  inter: number;
  /** routed experts held on this GPU (all E without expert parallelism) */
  experts: number;
  topK: number;
  /** SPEC 2 step 5; <= 0 means no clamp */
  swigluLimit: number;
}

/**
 * The GEMM weight layout device weights use unless told otherwise: 'tiled' (each 128 x 128 block one contiguous
 * 16 KB run). Measured on the H100 against 'rows' (docs/GEMM.md, "Tiled weights"): grouped GEMM 32 x 128 rows 2.4-4.3%
 * faster (ncu DRAM 83% -> 85.5% of peak), decode GEMMs 0-3% faster, 4 x 8192 equal; flash layer T = 4096 2.7% faster.
 * Both layouts give the same results. Host cost: fromLayer tiles each expert on the CPU (~2 GB/s, ~3 s for flash).
 */
export const EXPERT_WEIGHT_LAYOUT: WeightLayout = 'tiled';

function groupsOf(shape: UnfusedShape): number {
  return shape.experts + 1; // + the shared expert
}

/** Expert weights on the device, stacked by group (routed experts 0..E-1, then the shared expert as group E). */
export class DeviceMoeWeights {
  readonly shape: UnfusedShape;
  /** e4m3 [G, 2I, H], gate/up interleaved in granules of 8 rows (SPEC "Weight transform") */
  readonly w13: DeviceBuffer;
  /** f32 [G, 2I/128, H/128], natural layout (gate blocks, then up blocks) */
  readonly s13: DeviceBuffer;
  /** e4m3 [G, H, I] */
  readonly w2: DeviceBuffer;
  /** f32 [G, H/128, I/128] */
  readonly s2: DeviceBuffer;
  /** How w13 and w2 hold their codes (the GEMMs are specialised on it): 'rows' [G, N, K] or 'tiled' [G, N/128, K/128, 128, 128]. */
  readonly weightLayout: WeightLayout;

  private constructor(shape: UnfusedShape, weightLayout: WeightLayout) {
    if (weightLayout !== 'rows' && weightLayout !== 'tiled') {
      throw new RangeError(`DeviceMoeWeights: weightLayout "${String(weightLayout)}" is not 'rows' or 'tiled'`);
    }
    this.shape = shape;
    this.weightLayout = weightLayout;
    const G = groupsOf(shape);
    const { hidden: H, inter: I } = shape;
    const made: DeviceBuffer[] = [];
    const alloc = (bytes: number) => { const b = DeviceBuffer.alloc(bytes); made.push(b); return b; };
    try {
      this.w13 = alloc(G * 2 * I * H);
      this.s13 = alloc(G * ((2 * I) / QUANT_BLOCK) * (H / QUANT_BLOCK) * 4);
      this.w2 = alloc(G * H * I);
      this.s2 = alloc(G * (H / QUANT_BLOCK) * (I / QUANT_BLOCK) * 4);
    } catch (err) {
      for (const b of made) b.dispose();
      throw err;
    }
  }

  /** Bytes of one expert's L1 codes, L1 scales, L2 codes, L2 scales. */
  private strides(): { w13: number; s13: number; w2: number; s2: number } {
    const { hidden: H, inter: I } = this.shape;
    return {
      w13: 2 * I * H,
      s13: ((2 * I) / QUANT_BLOCK) * (H / QUANT_BLOCK) * 4,
      w2: H * I,
      s2: (H / QUANT_BLOCK) * (I / QUANT_BLOCK) * 4,
    };
  }

  /** Uploads one FFN as group `g`, transforming its L1 weight on the way. */
  private upload(g: number, ffn: ExpertWeights): void {
    const st = this.strides();
    const { hidden: H, inter: I } = this.shape;
    const l1 = transformL1(concatL1(ffn.w1, ffn.w3));
    const tiled = this.weightLayout === 'tiled';
    // One expert tiles on its own: experts are the outermost dimension of both layouts.
    this.w13.copyFromHost(tiled ? tileWeights(l1.q, 1, 2 * I, H) : l1.q, { offset: g * st.w13 });
    this.s13.copyFromHost(l1.s, { offset: g * st.s13 });
    this.w2.copyFromHost(tiled ? tileWeights(ffn.w2.q, 1, H, I) : ffn.w2.q, { offset: g * st.w2 });
    this.s2.copyFromHost(ffn.w2.s, { offset: g * st.s2 });
  }

  /**
   * Uploads a layer's experts: `localIds` (ascending global ids this GPU holds) become groups 0..E-1, the shared
   * expert group E.
   */
  static fromLayer(layer: MoeLayerWeights, localIds: readonly number[], onExpert?: (done: number, total: number) => void,
    weightLayout: WeightLayout = EXPERT_WEIGHT_LAYOUT): DeviceMoeWeights {
    const s = layer.shape;
    const w = new DeviceMoeWeights({
      hidden: s.hiddenSize, inter: s.moeIntermediateSize, experts: localIds.length, topK: s.numExpertsPerTok, swigluLimit: s.swigluLimit,
    }, weightLayout);
    try {
      localIds.forEach((id, g) => {
        w.upload(g, layer.experts.get(id));
        onExpert?.(g + 1, localIds.length + 1);
      });
      w.upload(localIds.length, layer.sharedExpert);
      onExpert?.(localIds.length + 1, localIds.length + 1);
    } catch (err) {
      w.dispose();
      throw err;
    }
    return w;
  }

  /**
   * Random weights generated on the GPU (benchmarks, large-shape tests): codes ~ e4m3(N(0,1) * RANDOM_CODE_STD),
   * block scales chosen so W ~ N(0, 1/fan_in)-ish. Seeded: the same seed gives the same bytes (the codes are i.i.d.,
   * so they need no tiling: downloadExpert reads them back in the buffer's layout).
   */
  static async random(shape: UnfusedShape, seed: number, stream?: StreamLike,
    weightLayout: WeightLayout = EXPERT_WEIGHT_LAYOUT): Promise<DeviceMoeWeights> {
    const fill = await RandomFill.create();
    const w = new DeviceMoeWeights(shape, weightLayout);
    try {
      const { hidden: H, inter: I } = shape;
      const rms = RANDOM_CODE_STD * 0.9; // RMS of the e4m3 codes, close enough for a plausible scale
      fill.e4m3(w.w13, seed * 4 + 1, { stream });
      fill.e4m3(w.w2, seed * 4 + 2, { stream });
      fill.scales(w.s13, seed * 4 + 3, 1 / Math.sqrt(H) / rms, { stream });
      fill.scales(w.s2, seed * 4 + 4, 1 / Math.sqrt(I) / rms, { stream });
      // The fills may run on the legacy stream, which a non-blocking pipeline stream does not wait for.
      ensureContext().synchronize();
    } catch (err) {
      w.dispose();
      throw err;
    }
    return w;
  }

  /**
   * Random weights expert by expert: group g gets the bytes of GLOBAL expert ids[g] (seeded by seed and that id), the
   * shared group (index ids.length) those of id `sharedId` (by convention the layer's E). So an expert-parallel
   * rank's subset is byte for byte the same experts as the whole layer made with the same seed (the EP tests and
   * `megamoe verify --ep N` compare EP=N with EP=1 on them). shape.experts must be ids.length.
   */
  static async randomExperts(shape: UnfusedShape, seed: number, ids: readonly number[], sharedId: number, stream?: StreamLike,
    weightLayout: WeightLayout = EXPERT_WEIGHT_LAYOUT): Promise<DeviceMoeWeights> {
    if (ids.length !== shape.experts) throw new RangeError(`randomExperts: ${ids.length} ids for a shape of ${shape.experts} experts`);
    const fill = await RandomFill.create();
    const w = new DeviceMoeWeights(shape, weightLayout);
    try {
      const { hidden: H, inter: I } = shape;
      const st = w.strides();
      const rms = RANDOM_CODE_STD * 0.9;
      [...ids, sharedId].forEach((id, g) => {
        if (!Number.isSafeInteger(id) || id < 0) throw new RangeError(`randomExperts: expert id ${id} is not a non-negative integer`);
        const base = (seed * 65536 + id) * 4; // distinct per (seed, expert, tensor); < 2^53 for any seed < 2^33
        fill.e4m3(w.w13, base + 1, { offset: g * st.w13, bytes: st.w13, stream });
        fill.e4m3(w.w2, base + 2, { offset: g * st.w2, bytes: st.w2, stream });
        fill.scales(w.s13, base + 3, 1 / Math.sqrt(H) / rms, { offset: g * st.s13, count: st.s13 / 4, stream });
        fill.scales(w.s2, base + 4, 1 / Math.sqrt(I) / rms, { offset: g * st.s2, count: st.s2 / 4, stream });
      });
      ensureContext().synchronize();
    } catch (err) {
      w.dispose();
      throw err;
    }
    return w;
  }

  /** Downloads group g as a natural-layout FFN (inverse transform of W13): what the CPU reference needs. */
  downloadExpert(g: number): ExpertWeights {
    const G = groupsOf(this.shape);
    if (!(Number.isInteger(g) && g >= 0 && g < G)) throw new RangeError(`expert group ${g} is outside [0, ${G})`);
    const st = this.strides();
    const { hidden: H, inter: I } = this.shape;
    const tiled = this.weightLayout === 'tiled';
    const q13d = new Uint8Array(st.w13);
    this.w13.copyToHost(q13d, { offset: g * st.w13 });
    const q13t = tiled ? untileWeights(q13d, 1, 2 * I, H) : q13d;
    const q13 = interleaveGateUpRows(q13t, 2 * I, H, new Uint8Array(st.w13), 1, true);
    const s13 = new Float32Array(st.s13 / 4);
    this.s13.copyToHost(s13, { offset: g * st.s13 });
    const q2d = new Uint8Array(st.w2);
    this.w2.copyToHost(q2d, { offset: g * st.w2 });
    const q2 = tiled ? untileWeights(q2d, 1, H, I) : q2d;
    const s2 = new Float32Array(st.s2 / 4);
    this.s2.copyToHost(s2, { offset: g * st.s2 });
    const half = (I / QUANT_BLOCK) * (H / QUANT_BLOCK);
    const w1: QuantizedWeight = { q: q13.slice(0, I * H), s: s13.slice(0, half), n: I, k: H };
    const w3: QuantizedWeight = { q: q13.slice(I * H), s: s13.slice(half), n: I, k: H };
    return { w1, w3, w2: { q: q2, s: s2, n: H, k: I } };
  }

  dispose(): void {
    this.w13.dispose(); this.s13.dispose(); this.w2.dispose(); this.s2.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** Device-side inputs and outputs of one layer, capacity-sized (a graph replays the same addresses). */
export interface UnfusedIo {
  /** bf16 [cap, H] */
  x: DeviceTensor<'BF16'>;
  /** I64 [cap, K], local expert ids (-1 = masked) */
  ids: DeviceTensor<'I64'>;
  /** F32 [cap, K] */
  weights: DeviceTensor<'F32'>;
  /** bf16 [cap, H] */
  yRouted: DeviceTensor<'BF16'>;
  /** bf16 [cap, H] */
  y: DeviceTensor<'BF16'>;
}

/** Queues the upload of T tokens' host inputs (ids already LOCAL I64) into a layer's io (both GPU backends). */
export function uploadLayerInputs(io: UnfusedIo, stream: StreamLike, topK: number, x: HostTensor<'BF16'>,
  localIds: BigInt64Array, weights: Float32Array): void {
  const T = x.shape[0];
  if (T === 0) return;
  io.x.buffer.copyFromHost(x.data, { stream, bytes: x.data.byteLength });
  io.ids.buffer.copyFromHost(localIds, { stream, bytes: T * topK * 8 });
  io.weights.buffer.copyFromHost(weights, { stream, bytes: T * topK * 4 });
}

/** Downloads y_routed and y of the first `tokens` tokens of a layer's io (after its stream finished). */
export function downloadLayerOutputs(io: UnfusedIo, hidden: number, tokens: number): MoeForwardResult {
  const yRouted = new Uint16Array(tokens * hidden);
  const y = new Uint16Array(tokens * hidden);
  if (tokens > 0) {
    io.yRouted.buffer.copyToHost(yRouted, { bytes: yRouted.byteLength });
    io.y.buffer.copyToHost(y, { bytes: y.byteLength });
  }
  return { yRouted: new HostTensor('BF16', [tokens, hidden], yRouted), y: new HostTensor('BF16', [tokens, hidden], y) };
}

/** The unfused MoE layer on the device: buffers, kernels, and enqueue / graph capture for T tokens. */
export class UnfusedMoe {
  readonly shape: UnfusedShape;
  readonly weights: DeviceMoeWeights;
  readonly maxTokens: number;
  readonly capacity: DispatchCapacity;
  readonly io: UnfusedIo;
  readonly stream: Stream;
  private readonly stager: Stager;
  private readonly dispatch: MoeDispatch;
  private readonly dispatchBuffers: DispatchBuffers;
  private readonly combine: MoeCombine;
  private readonly gemms: ExpertGemms;
  /** L1 output: e4m3 [maxRows, I] and its scales MN-major [I/128, maxRows]; L2 output bf16 [maxRows, H]. */
  private readonly act: DeviceBuffer;
  private readonly actSf: DeviceBuffer;
  private readonly expertOut: DeviceBuffer;
  private readonly owned: Array<{ dispose(): void }>;
  private readonly ownsWeights: boolean;

  private constructor(p: {
    shape: UnfusedShape; weights: DeviceMoeWeights; maxTokens: number; capacity: DispatchCapacity; io: UnfusedIo; stream: Stream;
    stager: Stager; dispatch: MoeDispatch; dispatchBuffers: DispatchBuffers; combine: MoeCombine; gemms: ExpertGemms;
    act: DeviceBuffer; actSf: DeviceBuffer; expertOut: DeviceBuffer; owned: Array<{ dispose(): void }>; ownsWeights: boolean;
  }) {
    this.shape = p.shape; this.weights = p.weights; this.maxTokens = p.maxTokens; this.capacity = p.capacity; this.io = p.io;
    this.stream = p.stream; this.stager = p.stager; this.dispatch = p.dispatch; this.dispatchBuffers = p.dispatchBuffers;
    this.combine = p.combine; this.gemms = p.gemms; this.act = p.act; this.actSf = p.actSf; this.expertOut = p.expertOut;
    this.owned = p.owned; this.ownsWeights = p.ownsWeights;
  }

  /** Builds the pipeline for `maxTokens` tokens per forward over already-uploaded weights. */
  static async create(weights: DeviceMoeWeights, maxTokens: number, options: { ownsWeights?: boolean } = {}): Promise<UnfusedMoe> {
    const shape = weights.shape;
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) {
      throw new GuardError('BAD_INPUT', `unfused: max tokens ${maxTokens} is not a positive integer`, 'prepare with maxTokens >= 1');
    }
    if (maxTokens > 65535) {
      throw new GuardError('TOKEN_CAPACITY', `unfused: ${maxTokens} tokens per forward is above the combine's limit of 65535`, 'split the batch');
    }
    ensureContext();
    const { hidden: H, inter: I, topK: K } = shape;
    const dShape: DispatchShape = { experts: shape.experts, topK: K, hidden: H, shared: true };
    const capacity = dispatchCapacity(dShape, maxTokens);
    const owned: Array<{ dispose(): void }> = [];
    const keep = <T extends { dispose(): void }>(o: T): T => { owned.push(o); return o; };
    try {
      const stream = keep(Stream.create());
      const [stager, dispatch, combine] = await Promise.all([
        Stager.create({ hiddenSize: H, topk: K }, maxTokens),
        MoeDispatch.create(dShape),
        MoeCombine.create({ hidden: H, topK: K, experts: shape.experts, shared: true }),
      ]);
      keep(stager);
      const dispatchBuffers = keep(new DispatchBuffers(dShape, capacity));
      const act = keep(DeviceBuffer.alloc(capacity.maxRows * I));
      const actSf = keep(DeviceBuffer.alloc((I / QUANT_BLOCK) * capacity.maxRows * 4));
      const expertOut = keep(DeviceBuffer.alloc(capacity.maxRows * H * 2));
      act.memset8(0); actSf.memset32(0); expertOut.memset8(0);
      const io: UnfusedIo = {
        x: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
        ids: keep(DeviceTensor.zeros('I64', [maxTokens, K])),
        weights: keep(DeviceTensor.zeros('F32', [maxTokens, K])),
        yRouted: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
        y: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
      };
      const gemms = keep(await createExpertGemms({
        shape, maxRows: capacity.maxRows, weights,
        a: dispatchBuffers.a, sfa: dispatchBuffers.sfa, tileGroup: dispatchBuffers.tileGroup, numMTiles: dispatchBuffers.numMTiles,
        rowWeight: dispatchBuffers.rowWeight, act, actSf, out: expertOut,
      }));
      // The zero-fills above ran on the legacy stream; our stream is non-blocking and would not wait for them.
      ensureContext().synchronize();
      return new UnfusedMoe({
        shape, weights, maxTokens, capacity, io, stream, stager, dispatch, dispatchBuffers, combine, gemms, act, actSf, expertOut,
        owned, ownsWeights: options.ownsWeights ?? false,
      });
    } catch (err) {
      for (const o of owned.reverse()) o.dispose();
      throw err;
    }
  }

  /** The staging outputs (e4m3 rows, f32 scales) of the last forward: the EP baseline sends them from here. */
  get staged(): { readonly xFp8: { readonly ptr: bigint }; readonly xSf: { readonly ptr: bigint } } {
    return this.stager.out;
  }

  /** The L2 GEMM's bf16 rows [maxRows, H] of the last forward (the EP baseline copies the shared expert's rows). */
  get expertRows(): DeviceBuffer { return this.expertOut; }

  /** Which GEMM path forwards use: 'auto' (by rows per expert) unless a benchmark pins one. */
  rowTilePolicy: RowTilePolicy = 'auto';

  /** The row tile (GEMM kernel variant) T tokens run with. */
  rowTile(tokens: number): RowTile {
    return chooseRowTile(tokens, this.shape, this.rowTilePolicy);
  }

  /**
   * Queues the layer for the first `tokens` rows of io.x / io.ids / io.weights on `stream` (default: this.stream);
   * results land in io.yRouted / io.y. No host synchronisation: capturable. T = 0 queues nothing.
   */
  enqueue(tokens: number, stream: StreamLike = this.stream): void {
    checkTokenCapacity(tokens, this.maxTokens, 'the unfused backend');
    if (tokens === 0) return;
    const io = this.io;
    this.stager.stage(io.x, io.ids, io.weights, { tokens, stream });
    const tile = this.rowTile(tokens);
    const o = this.stager.out;
    this.dispatch.launch(stream, { xFp8: o.xFp8.ptr, xSf: o.xSf.ptr, ids: o.topkIds.ptr, weights: o.topkWeights.ptr },
      this.dispatchBuffers, tokens, tile.rows);
    this.gemms.l1(tile, stream);
    this.gemms.l2(tile, stream);
    this.combine.launch(stream, {
      expertOut: this.expertOut, slotRow: this.dispatchBuffers.slotRow, groupOffset: this.dispatchBuffers.groupOffset,
      yRouted: io.yRouted, y: io.y,
    }, tokens);
  }

  /** Captures the whole layer for exactly `tokens` tokens into one CUDA graph (replay with graph.launch(moe.stream)). */
  captureGraph(tokens: number): CudaGraph {
    if (!(Number.isInteger(tokens) && tokens >= 1)) throw new RangeError(`captureGraph: tokens ${tokens} must be >= 1`);
    return CudaGraph.capture(this.stream, () => this.enqueue(tokens, this.stream));
  }

  /** Uploads host inputs (ids already LOCAL I64) into io (queued on this.stream). */
  uploadInputs(x: HostTensor<'BF16'>, localIds: BigInt64Array, weights: Float32Array): void {
    checkTokenCapacity(x.shape[0], this.maxTokens, 'the unfused backend');
    uploadLayerInputs(this.io, this.stream, this.shape.topK, x, localIds, weights);
  }

  /** Waits for the stream and downloads y_routed and y of the first `tokens` tokens. */
  downloadOutputs(tokens: number): MoeForwardResult {
    this.stream.synchronize();
    return downloadLayerOutputs(this.io, this.shape.hidden, tokens);
  }

  /** The dispatch's index outputs of the last forward (tests). */
  downloadDispatchPlan(tokens: number): DispatchPlan {
    this.stream.synchronize();
    return this.dispatchBuffers.downloadPlan(tokens);
  }

  /**
   * Every intermediate of the last forward of `tokens` tokens (tests, debugging): the staged tokens, the dispatch's
   * plan and grouped A / sfa, and the L2 GEMM's bf16 rows. With these the tests check the dispatch and the combine
   * bit for bit, independently of the GEMMs' accumulation order.
   */
  debugSnapshot(tokens: number): {
    plan: DispatchPlan; staged: { xFp8: Uint8Array; xSf: Float32Array }; a: Uint8Array; sfa: Float32Array;
    sfaStrides: { row: number; kb: number }; expertOut: Uint16Array;
  } {
    const plan = this.downloadDispatchPlan(tokens);
    const rows = plan.groupOffset[plan.groupOffset.length - 1];
    const H = this.shape.hidden;
    const staged = this.stager.download(tokens);
    const a = new Uint8Array(rows * H);
    this.dispatchBuffers.a.copyToHost(a, { bytes: a.byteLength });
    const sfa = new Float32Array(this.dispatchBuffers.sfa.byteLength / 4);
    this.dispatchBuffers.sfa.copyToHost(sfa);
    const expertOut = new Uint16Array(rows * H);
    this.expertOut.copyToHost(expertOut, { bytes: expertOut.byteLength });
    return { plan, staged, a, sfa, sfaStrides: this.dispatchBuffers.sfaStrides, expertOut };
  }

  dispose(): void {
    if (this.owned.length === 0) return; // disposed already (the stream is gone)
    this.stream.synchronize();
    for (const o of this.owned.reverse()) o.dispose();
    this.owned.length = 0;
    if (this.ownsWeights) this.weights.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * A MoeLayerWeights view of device weights for the CPU reference: each expert is downloaded (and its L1 transform
 * undone) on first use, so checking a few tokens of a 256-expert layer downloads only the experts they touch.
 * The gate is zeros (routing is given explicitly to forward(), never computed from it).
 */
export function layerFromDeviceWeights(weights: DeviceMoeWeights, cacheLimit = 64): MoeLayerWeights {
  const s = weights.shape;
  const E = s.experts;
  const cache = new Map<number, ExpertWeights>();
  const get = (id: number): ExpertWeights => {
    let e = cache.get(id);
    if (!e) {
      e = weights.downloadExpert(id);
      if (cache.size >= cacheLimit) cache.delete(cache.keys().next().value as number);
      cache.set(id, e);
    }
    return e;
  };
  const ids = Array.from({ length: E }, (_, i) => i);
  return {
    layer: 0,
    shape: {
      hiddenSize: s.hidden, moeIntermediateSize: s.inter, nRoutedExperts: E, numExpertsPerTok: s.topK, nSharedExperts: 1,
      numHashLayers: 0, scoringFunc: 'sqrtsoftplus', topkMethod: 'noaux_tc', normTopkProb: true, routedScalingFactor: 1.5,
      swigluLimit: s.swigluLimit, vocabSize: 1024,
    },
    isHashLayer: false,
    gateWeight: new HostTensor('BF16', [E, s.hidden]),
    experts: { ids, has: (id: number) => id >= 0 && id < E, get, conversion: () => undefined },
    sharedExpert: weights.downloadExpert(E),
    epRank: 0,
    epSize: 1,
  };
}

// The expert id map and the default capacity live with the GPU backends' shared lifecycle (device-backend.ts).
export { DEFAULT_MAX_TOKENS, localIdMap, toLocalIds } from './device-backend.js';

/** The MoeBackend over UnfusedMoe: its guards, upload at prepare(), host in / host out forward() (device-backend.ts). */
export class UnfusedBackend extends DeviceMoeBackend<UnfusedMoe> {
  readonly name = 'unfused';

  protected override checkHost(layer: MoeLayerWeights): void { checkLayer(layer); }

  protected checkDevice(layer: MoeLayerWeights, _opts: PrepareOptions, device: GuardDevice): void {
    checkSm90(device, 'unfused');
    checkSharedExpertAsGroup(layer, 'unfused');
  }

  protected async createPipeline(layer: MoeLayerWeights, localIds: number[], maxTokens: number): Promise<UnfusedMoe> {
    const weights = DeviceMoeWeights.fromLayer(layer, localIds);
    try {
      return await UnfusedMoe.create(weights, maxTokens, { ownsWeights: true });
    } catch (err) {
      weights.dispose();
      throw err;
    }
  }
}

/** Registry entry (src/backends/index.ts loads this module lazily and reads `provider`). */
export const provider: BackendProvider = {
  name: 'unfused',
  description: 'GPU, one launch per stage (staging, dispatch, 2 grouped FP8 GEMMs, combine); CUDA-graph capturable',
  probe: async () => {
    const st = cudaStatus();
    if (!st.available) return { ok: false, reason: st.reason };
    if (!findNvcc()) return { ok: false, reason: 'nvcc not found (the unfused kernels are compiled for the layer\'s shape at first use): install the CUDA toolkit or set CUDA_HOME' };
    const d = st.devices[0];
    return { ok: true, reason: `${d.name} (${d.arch})` };
  },
  create: () => new UnfusedBackend(),
};
