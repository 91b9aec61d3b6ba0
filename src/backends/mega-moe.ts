// The `mega_moe` backend (vLLM: deep_gemm_mega_moe): the whole MoE layer in ONE fused launch on a Hopper GPU
// (src/kernels/mega_moe.cu): staging, dispatch, L1 + SwiGLU + FP8 requantization, L2, combine, with the shared
// expert as one more group of the same launch. Numerically the unfused pipeline's twin (same device functions,
// same GEMM bodies), so the two agree to SPEC 5's 3e-5 and each is run-to-run deterministic.
//
// Memory: one symmetric buffer per rank (src/kernels/mega-moe-layout.ts) sized exactly for maxTokens tokens per rank;
// expert weights uploaded once (DeviceMoeWeights, tiled layout, L1 transformed). The layer's shape per T is fixed, so
// each decode size is one CUDA graph (captureGraph); the control block needs no reset between launches.
import {
  cudaStatus, CudaGraph, DeviceBuffer, DeviceTensor, ensureContext, findNvcc, Stream, type StreamLike,
} from '../cuda/index.js';
import { MegaMoeKernel } from '../kernels/mega-moe.js';
import {
  decode32RowsRange, decode64RowsRange, decodeMegaCtl, formatBytes, MEGA_CTL_BYTES, MEGA_ROW_TILE, megaBufferLayout, smallTokens, type MegaBufferLayout, type MegaMoePath, type MegaNormalKernel, type MegaNormalPolicy, type RowsRange,
} from '../kernels/mega-moe-layout.js';
import type { MoeForwardResult, PrepareOptions } from '../moe/backend.js';
import {
  checkMegaMoeSupport, checkSharedExpertAsGroup, checkTokenCapacity, GuardError,
} from '../moe/guards.js';
import { DeviceMoeBackend, type GuardDevice } from './device-backend.js';
import type { MoeLayerWeights } from '../moe/types.js';
import { SymmetricMemory, type SymmetricExchange } from '../dist/symmetric-memory.js';
import { HostTensor } from '../tensor/host.js';
import type { BackendProvider } from './index.js';
import { chooseRowTile, type RowTilePolicy } from './unfused-gemm.js';
import {
  DeviceMoeWeights, downloadLayerOutputs, uploadLayerInputs, type UnfusedIo, type UnfusedShape,
} from './unfused.js';

/**
 * The fused kernel's path for T tokens: the unfused backend's rows-per-expert rule (chooseRowTile: 16-token decode
 * tiles up to 14 rows per expert, else 128-row tiles), except that under the 'auto' policy an average in
 * decode32's (min, max] rows per expert takes the 32-token decode tiles (measured: docs/MEGA_MOE.md), and then one in
 * decode64's the 64-token ones.
 */
export function megaPath(tokens: number, shape: Pick<UnfusedShape, 'topK' | 'experts'>, policy: RowTilePolicy,
  decode32: RowsRange | undefined, decode64?: RowsRange): MegaMoePath {
  const mode = chooseRowTile(tokens, shape, policy).mode;
  if (policy !== 'auto') return mode;
  const perExpert = (tokens * shape.topK) / shape.experts;
  const within = (r: RowsRange | undefined) => r !== undefined && perExpert > r.min && perExpert <= r.max;
  return within(decode32) ? 'decode32' : within(decode64) ? 'decode64' : mode;
}

function allocMegaIo(maxTokens: number, H: number, K: number, keep: <T extends { dispose(): void }>(t: T) => T): UnfusedIo {
  return {
    x: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
    ids: keep(DeviceTensor.zeros('I64', [maxTokens, K])),
    weights: keep(DeviceTensor.zeros('F32', [maxTokens, K])),
    yRouted: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
    y: keep(DeviceTensor.zeros('BF16', [maxTokens, H])),
  };
}

/**
 * One symmetric buffer and io for many fused layers of one shape on one GPU (a model's layers: they run one after
 * another on one stream). The buffer is scratch between launches, and every launch's flags carry the epoch kept in
 * its control block, which all sharers bump, so no layer can take another's stale flag for its own. A buffer is
 * hundreds of MB at flash for a prefill chunk (`megamoe info` reports it): one per layer would not fit a whole model.
 * The owner (the model's layer context) disposes it after the layers.
 */
export class MegaMoeShared {
  readonly layout: MegaBufferLayout;
  readonly buffer: DeviceBuffer;
  readonly io: UnfusedIo;
  readonly maxTokens: number;
  private readonly owned: Array<{ dispose(): void }>;
  disposed = false;

  private constructor(layout: MegaBufferLayout, buffer: DeviceBuffer, io: UnfusedIo, maxTokens: number, owned: Array<{ dispose(): void }>) {
    this.layout = layout; this.buffer = buffer; this.io = io; this.maxTokens = maxTokens; this.owned = owned;
  }

  static create(shape: { hidden: number; inter: number; experts: number; topK: number }, maxTokens: number): MegaMoeShared {
    ensureContext();
    const layout = megaBufferLayout(shape, maxTokens, 1);
    const owned: Array<{ dispose(): void }> = [];
    const keep = <T extends { dispose(): void }>(o: T): T => { owned.push(o); return o; };
    try {
      let buffer: DeviceBuffer;
      try {
        buffer = keep(DeviceBuffer.alloc(layout.totalBytes));
      } catch (err) {
        throw new GuardError('TOKEN_CAPACITY', `mega_moe: the shared buffer for ${maxTokens} tokens needs ${formatBytes(layout.totalBytes)} of GPU memory and could not be allocated (${(err as Error).message})`,
          'use fewer rows per call (maxRows / --max-num-batched-tokens) or free GPU memory');
      }
      buffer.memset8(0);
      const rt = layout.regions.rankTable;
      buffer.copyFromHost(new BigUint64Array([buffer.ptr]), { offset: rt.offset, bytes: rt.bytes });
      const io = allocMegaIo(maxTokens, shape.hidden, shape.topK, keep);
      ensureContext().synchronize();
      return new MegaMoeShared(layout, buffer, io, maxTokens, owned);
    } catch (err) {
      for (const o of owned.reverse()) o.dispose();
      throw err;
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const o of this.owned.reverse()) o.dispose();
  }
}

/** The fused layer on the device: symmetric buffer, io, kernel; enqueue / graph capture for T tokens. */
export class MegaMoe {
  readonly shape: UnfusedShape;
  readonly weights: DeviceMoeWeights;
  readonly maxTokens: number;
  readonly layout: MegaBufferLayout;
  /** this rank's symmetric buffer (one allocation; regions at layout.regions offsets) */
  readonly buffer: DeviceBuffer;
  /** expert parallelism: the buffer shared with the other ranks through CUDA IPC (undefined at EP1) */
  readonly symmetric: SymmetricMemory | undefined;
  readonly io: UnfusedIo;
  readonly stream: Stream;
  private readonly kernel: MegaMoeKernel;
  private readonly owned: Array<{ dispose(): void }>;
  private readonly ownsWeights: boolean;
  /** Which kernel path forwards use: 'auto' (by rows per expert) unless a benchmark pins one. */
  rowTilePolicy: RowTilePolicy = 'auto';
  /** Rows per expert for which 'auto' runs the 32-token decode tiles (MEGAMOE_DECODE32_ROWS, read at create). */
  private readonly decode32Rows = decode32RowsRange();
  private readonly decode64Rows = decode64RowsRange();

  private constructor(p: {
    shape: UnfusedShape; weights: DeviceMoeWeights; maxTokens: number; layout: MegaBufferLayout; buffer: DeviceBuffer;
    io: UnfusedIo; stream: Stream; kernel: MegaMoeKernel; owned: Array<{ dispose(): void }>; ownsWeights: boolean;
    symmetric: SymmetricMemory | undefined;
  }) {
    this.symmetric = p.symmetric;
    this.shape = p.shape; this.weights = p.weights; this.maxTokens = p.maxTokens; this.layout = p.layout; this.buffer = p.buffer;
    this.io = p.io; this.stream = p.stream; this.kernel = p.kernel; this.owned = p.owned; this.ownsWeights = p.ownsWeights;
  }

  /**
   * `ep`: expert parallelism, collective (every rank calls it at once with the same shape and maxTokens): `weights`
   * are this rank's experts (rank r holds experts [r E/N, (r + 1) E/N) of the layer, ids given to forwards are global);
   * the symmetric buffer is shared with every rank through CUDA IPC (src/dist/symmetric-memory.ts). Every rank then
   * runs every forward, with the same token count, in the same order; release it with close(ep).
   */
  static async create(weights: DeviceMoeWeights, maxTokens: number,
    options: { ownsWeights?: boolean; ep?: SymmetricExchange; shared?: MegaMoeShared } = {}): Promise<MegaMoe> {
    const shape = weights.shape;
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) {
      throw new GuardError('BAD_INPUT', `mega_moe: max tokens ${maxTokens} is not a positive integer`, 'prepare with maxTokens >= 1');
    }
    if (weights.weightLayout !== 'tiled') {
      throw new GuardError('BAD_INPUT', 'mega_moe: the fused kernel reads tiled expert weights', 'upload the layer with DeviceMoeWeights.fromLayer(..., "tiled") (the default)');
    }
    ensureContext();
    const { hidden: H, topK: K } = shape;
    const ep = options.ep;
    const layout = megaBufferLayout({ hidden: H, inter: shape.inter, experts: shape.experts, topK: K }, maxTokens, ep?.worldSize ?? 1);
    const owned: Array<{ dispose(): void }> = [];
    const keep = <T extends { dispose(): void }>(o: T): T => { owned.push(o); return o; };
    const shared = options.shared;
    if (shared) {
      if (ep) throw new GuardError('BAD_INPUT', 'mega_moe: a shared symmetric buffer is for one GPU', 'give expert-parallel layers their own buffers (leave out shared)');
      if (shared.disposed || shared.maxTokens !== maxTokens || shared.layout.totalBytes !== layout.totalBytes) {
        throw new GuardError('BAD_INPUT', `mega_moe: the shared buffer is for ${shared.maxTokens} tokens (${formatBytes(shared.layout.totalBytes)})${shared.disposed ? ', disposed' : ''}; this layer needs ${maxTokens} (${formatBytes(layout.totalBytes)})`,
          'share a MegaMoeShared made for the same layer shape and maxTokens');
      }
    }
    try {
      const stream = keep(Stream.create());
      let buffer: DeviceBuffer;
      let symmetric: SymmetricMemory | undefined;
      const tooBig = (err: unknown) => new GuardError('TOKEN_CAPACITY', `mega_moe: the symmetric buffer for ${maxTokens} tokens per rank needs ${formatBytes(layout.totalBytes)} of GPU memory and could not be allocated (${(err as Error).message})`,
        'prepare with a smaller maxTokens (--max-tokens) or free GPU memory');
      if (ep) {
        // Allocated and zeroed by SymmetricMemory (flags start cleared), then mapped into every peer.
        try {
          symmetric = keep(await SymmetricMemory.create(ep, layout.totalBytes, { key: 'mega_moe' }));
        } catch (err) {
          if (/out of memory/i.test((err as Error).message)) throw tooBig(err);
          throw err;
        }
        if (!(symmetric.local instanceof DeviceBuffer)) throw new Error('mega_moe: the symmetric buffer is not a device allocation');
        buffer = symmetric.local;
      } else if (shared) {
        buffer = shared.buffer;  // zeroed and its rank table written by MegaMoeShared.create
      } else {
        try {
          buffer = keep(DeviceBuffer.alloc(layout.totalBytes));
        } catch (err) {
          throw tooBig(err);
        }
        // Zero once: flags (epoch 0 never matches a launch's epoch >= 1), the control block, every pool.
        buffer.memset8(0);
      }
      const rt = layout.regions.rankTable;
      const table = symmetric ? symmetric.addressTable() : new BigUint64Array([buffer.ptr]);
      buffer.copyFromHost(table, { offset: rt.offset, bytes: rt.bytes });
      const io: UnfusedIo = shared ? shared.io : allocMegaIo(maxTokens, H, K, keep);
      const kernel = await MegaMoeKernel.create({ hidden: H, inter: shape.inter, experts: shape.experts, topK: K }, {
        layout, base: buffer, x: io.x.buffer, ids: io.ids.buffer, weights: io.weights.buffer, yRouted: io.yRouted.buffer, y: io.y.buffer,
        w13: weights.w13, s13: weights.s13, w2: weights.w2, s2: weights.s2, weightLayout: weights.weightLayout, swigluLimit: shape.swigluLimit,
        rank: ep?.rank ?? 0,
      });
      // The fills ran on the legacy stream; our stream is non-blocking and would not wait for them.
      ensureContext().synchronize();
      return new MegaMoe({ shape, weights, maxTokens, layout, buffer, io, stream, kernel, owned, ownsWeights: options.ownsWeights ?? false, symmetric });
    } catch (err) {
      for (const o of owned.reverse()) o.dispose();
      throw err;
    }
  }

  /** Whether the normal path can run as 2-CTA clusters with weight multicast on this GPU (MegaMoeKernel.multicast). */
  get multicast(): boolean { return this.kernel.multicast; }
  /** Rows per expert from which the normal path runs its clustered kernel, and up to which its dynamic one below that. */
  get normalPolicy(): MegaNormalPolicy { return this.kernel.normalPolicy; }
  /** The normal path's kernel T tokens run with (when path(T) is 'normal'): MegaMoeKernel.normalKernel. */
  normalKernel(tokens: number): MegaNormalKernel { return this.kernel.normalKernel(tokens); }

  /** The kernel path T tokens run with (megaPath). */
  path(tokens: number): MegaMoePath {
    return megaPath(tokens, this.shape, this.rowTilePolicy, this.decode32Rows, this.decode64Rows);
  }

  /** Queues the layer for the first `tokens` rows of io (results in io.yRouted / io.y). T = 0 queues nothing. */
  enqueue(tokens: number, stream: StreamLike = this.stream): void {
    checkTokenCapacity(tokens, this.maxTokens, 'the mega_moe backend');
    if (tokens === 0) return;
    this.kernel.launch(stream, tokens, this.path(tokens));
  }

  /** One CUDA graph of the whole layer for exactly `tokens` tokens (replay with graph.launch(moe.stream)). */
  captureGraph(tokens: number): CudaGraph {
    if (!(Number.isInteger(tokens) && tokens >= 1)) throw new RangeError(`captureGraph: tokens ${tokens} must be >= 1`);
    return CudaGraph.capture(this.stream, () => this.enqueue(tokens, this.stream));
  }

  /** Uploads host inputs (ids already LOCAL I64) into io (queued on this.stream). */
  uploadInputs(x: HostTensor<'BF16'>, localIds: BigInt64Array, weights: Float32Array): void {
    checkTokenCapacity(x.shape[0], this.maxTokens, 'the mega_moe backend');
    uploadLayerInputs(this.io, this.stream, this.shape.topK, x, localIds, weights);
  }

  /** Waits for the stream, checks the kernel's control block (throws on a reported error) and downloads y. */
  downloadOutputs(tokens: number): MoeForwardResult {
    this.stream.synchronize();
    this.checkErrors();
    return downloadLayerOutputs(this.io, this.shape.hidden, tokens);
  }

  /** Per-CTA phase stamps of later launches into `buffer` (u64 [SM count, MEGA_TRACE_SLOTS]); undefined = off. */
  setTrace(buffer: DeviceBuffer | undefined): void {
    this.kernel.trace = buffer?.ptr;
  }

  /** Throws MegaMoeKernelError if a launch since the last check reported a spin that gave up (call after a sync). */
  checkErrors(): void {
    this.kernel.checkErrors(this.buffer);
  }

  /**
   * The dispatch bookkeeping of the last forward (tests): slot_row [T, K], group offsets, the tile count, and whether
   * it was the small-T direct layout (every touched expert one 16-row tile of all T tokens: mega_moe.cu
   * dispatch_small_direct; only slot rows, the tile count and the rows' combine places are then defined).
   */
  debugDispatch(tokens: number): { slotRow: Int32Array; groupOffset: Int32Array; numMTiles: number; rowDest: Int32Array; direct: boolean } {
    this.stream.synchronize();
    const r = this.layout.regions;
    const slotRow = new Int32Array(tokens * this.shape.topK);
    if (tokens > 0) this.buffer.copyToHost(slotRow, { offset: r.slotRow.offset, bytes: slotRow.byteLength });
    const groupOffset = new Int32Array(this.layout.capacity.groups + 1);
    this.buffer.copyToHost(groupOffset, { offset: r.groupOffset.offset, bytes: groupOffset.byteLength });
    const n = new Int32Array(1);
    this.buffer.copyToHost(n, { offset: r.numMTiles.offset, bytes: 4 });
    const ctl = new Uint8Array(MEGA_CTL_BYTES);
    this.buffer.copyToHost(ctl, { offset: r.ctl.offset, bytes: MEGA_CTL_BYTES });
    const direct = tokens >= 1 && tokens <= smallTokens() && this.path(tokens) !== 'normal' && this.layout.ranks === 1 && decodeMegaCtl(ctl).smallDirect;
    // Every row of the live tiles: where L2 writes it in the combine buffer (-1: nowhere).
    const rowDest = new Int32Array(tokens > 0 ? n[0] * MEGA_ROW_TILE[this.path(tokens)] : 0);
    if (rowDest.length > 0) this.buffer.copyToHost(rowDest, { offset: r.rowDest.offset, bytes: rowDest.byteLength });
    return { slotRow, groupOffset, numMTiles: n[0], rowDest, direct };
  }

  /**
   * Expert parallelism: collective teardown (every rank): waits until no peer can still read this rank's buffer
   * (SymmetricMemory.close's barrier), then dispose(). At EP1 the same as dispose().
   */
  async close(ep?: SymmetricExchange): Promise<void> {
    if (this.symmetric && !this.symmetric.disposed) {
      if (!ep) throw new Error('MegaMoe.close: an expert-parallel layer closes collectively: pass the rank context');
      this.stream.synchronize();
      await this.symmetric.close(ep);
    }
    this.dispose();
  }

  /** Routed rows the last forward gave this rank's experts (under expert parallelism: from every rank). */
  routedRows(): number {
    this.stream.synchronize();
    const counts = new Int32Array(this.shape.experts);
    this.buffer.copyToHost(counts, { offset: this.layout.regions.groupCount.offset, bytes: counts.byteLength });
    return counts.reduce((x, y) => x + y, 0);
  }

  dispose(): void {
    if (this.owned.length === 0) return;
    this.stream.synchronize();
    for (const o of this.owned.reverse()) o.dispose();
    this.owned.length = 0;
    if (this.ownsWeights) this.weights.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** The MoeBackend over MegaMoe: the seed's guards, upload at prepare(), host in / host out forward() (device-backend.ts). */
export class MegaMoeBackend extends DeviceMoeBackend<MegaMoe> {
  readonly name = 'mega_moe';

  protected checkDevice(layer: MoeLayerWeights, opts: PrepareOptions, device: GuardDevice): void {
    checkMegaMoeSupport({ arch: device, enableExpertParallel: opts.enableExpertParallel, layer });
    checkSharedExpertAsGroup(layer, 'mega_moe');
    if (layer.shape.hiddenSize % 256 !== 0) {
      throw new GuardError('DIM_NOT_ALIGNED', `layer ${layer.layer}: hidden_size ${layer.shape.hiddenSize} is not a multiple of 256`,
        'the fused kernel tiles H in 256-column pairs; use --backend unfused for this shape');
    }
  }

  protected async createPipeline(layer: MoeLayerWeights, localIds: number[], maxTokens: number): Promise<MegaMoe> {
    const weights = DeviceMoeWeights.fromLayer(layer, localIds, undefined, 'tiled');
    try {
      return await MegaMoe.create(weights, maxTokens, { ownsWeights: true });
    } catch (err) {
      weights.dispose();
      throw err;
    }
  }
}

/** Registry entry (src/backends/index.ts loads this module lazily and reads `provider`). */
export const provider: BackendProvider = {
  name: 'mega_moe',
  description: 'GPU, the fused FP8 MegaMoE kernel: the whole layer (staging, dispatch, L1 + SwiGLU, L2, combine, shared expert) in one launch',
  probe: async () => {
    const st = cudaStatus();
    if (!st.available) return { ok: false, reason: st.reason };
    if (!findNvcc()) return { ok: false, reason: 'nvcc not found (the fused kernel is compiled for the layer\'s shape at first use): install the CUDA toolkit or set CUDA_HOME' };
    const d = st.devices[0];
    if (d.computeCapability.major !== 9) return { ok: false, reason: `${d.name} is sm_${d.computeCapability.major}${d.computeCapability.minor}: the fused FP8 kernel is for Hopper (sm_90)` };
    return { ok: true, reason: `${d.name} (${d.arch}); needs --enable-expert-parallel` };
  },
  create: () => new MegaMoeBackend(),
};
