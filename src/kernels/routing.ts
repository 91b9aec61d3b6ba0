// Launcher of the routing kernels (routing.cu): router logits on the tensor cores, then per-token scores, top-K (or
// hash-table) selection and weights, into buffers preallocated for `capacity` tokens. The ids equal the CPU router's
// (moe/router.ts routeFromLogits) on the same logits, bit for bit; the logits stay on the device in `out.logits`
// so a test can run the CPU selection on exactly the GPU's logits.
//
//   using router = await Router.create({ hiddenSize: 4096, experts: 256, topk: 6 }, 8192, gate, { bias, normTopkProb: true, routedScalingFactor: 1.5 });
//   router.route(x, { stream });                                  // x BF16 [T, H]
//   router.out.topkIds (I64 [capacity, K]), router.out.topkWeights (F32), router.out.logits (F32 [capacity, E])
import {
  arg, DeviceTensor, ensureContext, loadKernel, loadKernelSync, registerKernel, type Kernel, type StreamLike,
} from '../cuda/index.js';
import { checkTokenCapacity, GuardError } from '../moe/guards.js';
import { QUANT_BLOCK } from '../numerics/quant.js';
import { MOE_PRESET_SHAPES } from './presets.js';

export const ROUTING_SOURCE = 'routing.cu';
export const ROUTER_TOPK_ENTRY = 'megamoe_router_topk';
/** Warps (tokens) per block of the top-k kernel (routing.cu kTopkWarps). */
export const ROUTER_TOPK_WARPS = 8;
/** The most K splits of the logits GEMM (partials [S, T, E] are added by the top-k kernel). */
export const ROUTER_MAX_SPLITS = 8;

export interface RouterShape {
  /** H: a positive multiple of 128. */
  hiddenSize: number;
  /** E: a multiple of 8 (one mma n-tile). */
  experts: number;
  /** K: 1..min(E, 32). */
  topk: number;
}

/** The shapes CI compiles (`megamoe kernels --check`) and the tests/benchmarks use. */
export const ROUTER_VARIANTS: ReadonlyArray<{ label: string; shape: RouterShape }> = Object.freeze(
  MOE_PRESET_SHAPES.map((p) => ({ label: p.label, shape: { hiddenSize: p.hidden, experts: p.experts, topk: p.topK } })));

export type RouterTile = 'gemv' | 'mid' | 'prefill';

/**
 * The logits kernels' tiles (routing.cu MEGAMOE_ROUTER_LOGITS_KERNEL lines): tokens x experts per block, threads,
 * warps splitting K inside a block, and 32-column k-chunks per cp.async stage (two stages per warp).
 */
export const ROUTER_TILES: Readonly<Record<RouterTile, { entry: string; bm: number; bn: number; threads: number; warpsK: number; chunksPerStage: number }>> = Object.freeze({
  gemv: { entry: 'megamoe_router_logits_gemv', bm: 16, bn: 8, threads: 512, warpsK: 16, chunksPerStage: 2 },
  mid: { entry: 'megamoe_router_logits_mid', bm: 32, bn: 32, threads: 256, warpsK: 4, chunksPerStage: 2 },
  prefill: { entry: 'megamoe_router_logits_prefill', bm: 64, bn: 64, threads: 256, warpsK: 2, chunksPerStage: 1 },
});

/** Dynamic shared memory of one block (routing.cu router_tile_smem_bytes): 2 stages x chunks x 16 B per lane and slot. */
export function routerTileSmemBytes(tile: RouterTile): number {
  const c = ROUTER_TILES[tile];
  const warps = c.threads / 32;
  const warpsN = warps / c.warpsK;
  const slots = 2 * (c.bm / 16) + c.bn / warpsN / 8; // x rows g and g+8 per m16 tile, one gate row per n8 tile
  return warps * 2 * c.chunksPerStage * slots * 32 * 16;
}

export function checkRouterShape(shape: RouterShape): void {
  const { hiddenSize: H, experts: E, topk: K } = shape;
  if (!(Number.isInteger(H) && H > 0 && H % QUANT_BLOCK === 0)) {
    throw new GuardError('DIM_NOT_ALIGNED', `routing: hidden_size ${H} is not a positive multiple of ${QUANT_BLOCK}`,
      'use a hidden size that is a multiple of 128 (SPEC 4)');
  }
  if (!(Number.isInteger(E) && E > 0 && E % 8 === 0)) {
    throw new GuardError('DIM_NOT_ALIGNED', `routing: n_routed_experts ${E} is not a positive multiple of 8`,
      'the GPU router tiles experts by 8 (one tensor-core n-tile); use the CPU router for other expert counts');
  }
  if (!(Number.isInteger(K) && K >= 1 && K <= Math.min(E, 32))) {
    throw new GuardError('BAD_INPUT', `routing: num_experts_per_tok ${K} with ${E} experts`, 'need 1 <= K <= min(E, 32)');
  }
}

export function routingDefines(shape: RouterShape): Record<string, number> {
  return { ROUTER_HIDDEN: shape.hiddenSize, ROUTER_EXPERTS: shape.experts, ROUTER_TOPK: shape.topk };
}

registerKernel({
  name: 'routing',
  source: ROUTING_SOURCE,
  entry: [ROUTER_TILES.gemv.entry, ROUTER_TILES.mid.entry, ROUTER_TILES.prefill.entry, ROUTER_TOPK_ENTRY].join(', '),
  variants: ROUTER_VARIANTS.map((v) => ({ label: v.label, defines: routingDefines(v.shape) })),
});

export interface RouterPlan {
  tile: RouterTile;
  /** K splits: blocks along z; S > 1 writes partials [S, T, E] that the top-k kernel sums in order. */
  splits: number;
  grid: [number, number, number];
  block: number;
}

/**
 * Which logits tile and how many K splits for T tokens (heuristics live here, not in the kernel). From
 * `megamoe bench routing --compare-tiles` on H100 (docs/BENCHMARKS.md):
 * - T <= 16: gemv (16 x 8 tiles: the gate weight is streamed once, by E/8 column blocks x K splits);
 * - once 64 x 64 tiles give 1.5 blocks per SM: prefill (fewest re-reads of x and Wg per FLOP);
 * - in between: mid (32 x 32).
 * Then K splits (powers of two, at most 8, at least one k-chunk per warp) until the grid covers every SM once.
 */
export function planRouterLogits(tokens: number, shape: RouterShape, smCount: number, force?: RouterTile): RouterPlan {
  const E = shape.experts;
  const blocksOf = (t: RouterTile) => Math.ceil(E / ROUTER_TILES[t].bn) * Math.ceil(tokens / ROUTER_TILES[t].bm);
  let tile: RouterTile;
  if (force) tile = force;
  else if (tokens <= 16) tile = 'gemv';
  else if (blocksOf('prefill') >= 1.5 * smCount) tile = 'prefill';
  else tile = 'mid';
  const cfg = ROUTER_TILES[tile];
  const chunks = shape.hiddenSize / 32;
  const maxSplits = Math.max(1, Math.min(ROUTER_MAX_SPLITS, Math.floor(chunks / cfg.warpsK)));
  const base = blocksOf(tile);
  let splits = 1;
  while (splits * 2 <= maxSplits && base * splits < smCount) splits *= 2;
  return {
    tile,
    splits,
    grid: [Math.ceil(E / cfg.bn), Math.ceil(tokens / cfg.bm), splits],
    block: cfg.threads,
  };
}

/** f32 elements of split-K workspace any plan for T <= capacity can need (0 when no plan splits). */
export function routerWorkspaceFloats(capacity: number, shape: RouterShape, smCount: number): number {
  let most = 0;
  for (let t = 1; t <= capacity; t++) {
    for (const tile of [undefined, 'gemv', 'mid', 'prefill'] as const) {
      const p = planRouterLogits(t, shape, smCount, tile);
      if (p.splits > 1) most = Math.max(most, p.splits * t * shape.experts);
    }
    // Once even the largest tile (fewest blocks) fills every SM without splitting, no larger T splits either.
    if (Math.ceil(shape.experts / ROUTER_TILES.prefill.bn) * Math.ceil(t / ROUTER_TILES.prefill.bm) >= smCount) break;
  }
  return most;
}

/** Compulsory DRAM bytes of one routing of T tokens: x and Wg (and the bias) read, ids and weights written. */
export function routingTrafficBytes(tokens: number, shape: RouterShape): { read: number; written: number; total: number } {
  const { hiddenSize: H, experts: E, topk: K } = shape;
  const read = tokens * H * 2 + E * H * 2 + E * 4;
  const written = tokens * K * (8 + 4);
  return { read, written, total: read + written };
}

/** Router logits FLOPs (2 T E H): where the large-T time goes. */
export function routingFlops(tokens: number, shape: RouterShape): number {
  return 2 * tokens * shape.experts * shape.hiddenSize;
}

export interface RouterParams {
  /** Selection bias F32 [E] (score-routed layers); absent = zero. */
  bias?: DeviceTensor<'F32'>;
  /** Hash table I32 or I64 [vocab, K] (hash layers): its presence makes this router hash-routed. */
  tid2eid?: DeviceTensor<'I32'> | DeviceTensor<'I64'>;
  normTopkProb: boolean;
  routedScalingFactor: number;
}

export interface RouteOptions {
  /** Tokens to route (default x's row count). */
  tokens?: number;
  /** Token ids I64 [>= T] (hash layers only). */
  tokenIds?: DeviceTensor<'I64'>;
  stream?: StreamLike;
  /** Force a logits tile (benchmarks and tests); default: planRouterLogits' choice. */
  tile?: RouterTile;
}

export interface RouterOutputs {
  /** I64 [capacity, K]: descending biased score (score layers) or table order (hash layers); -1 = masked */
  topkIds: DeviceTensor<'I64'>;
  /** F32 [capacity, K] */
  topkWeights: DeviceTensor<'F32'>;
  /** F32 [capacity, E]: the router logits of the last route() (always written). */
  logits: DeviceTensor<'F32'>;
}

function tensorCheck(ok: boolean, problem: string, fix: string): void {
  if (!ok) throw new GuardError('BAD_INPUT', `routing: ${problem}`, fix);
}

/** The routing kernels specialised on one shape, bound to a layer's gate, with capacity-sized outputs. */
export class Router implements Disposable {
  readonly shape: RouterShape;
  readonly capacity: number;
  readonly out: RouterOutputs;
  readonly params: RouterParams;
  readonly smCount: number;
  /** The plan of the last route() (undefined before the first, or after T = 0). */
  lastPlan: RouterPlan | undefined;
  tokens = 0;
  private readonly gate: DeviceTensor<'BF16'>;
  private readonly workspace: DeviceTensor<'F32'> | null;
  private readonly logitsKernels: Record<RouterTile, Kernel>;
  private readonly topkKernel: Kernel;

  private constructor(shape: RouterShape, capacity: number, gate: DeviceTensor<'BF16'>, params: RouterParams,
    kernels: Record<RouterTile | 'topk', Kernel>) {
    this.shape = shape;
    this.capacity = capacity;
    this.gate = gate;
    this.params = params;
    this.smCount = ensureContext().properties().smCount;
    this.logitsKernels = { gemv: kernels.gemv, mid: kernels.mid, prefill: kernels.prefill };
    // The stage buffers exceed the default 48 KiB of dynamic shared memory: opt in per kernel.
    for (const tile of Object.keys(this.logitsKernels) as RouterTile[]) {
      this.logitsKernels[tile].setMaxDynamicSharedMemory(routerTileSmemBytes(tile));
    }
    this.topkKernel = kernels.topk;
    const made: DeviceTensor[] = [];
    try {
      const alloc = <D extends 'F32' | 'I64'>(dtype: D, shape2: number[]): DeviceTensor<D> => {
        const t = DeviceTensor.empty(dtype, shape2);
        made.push(t);
        return t;
      };
      this.out = {
        topkIds: alloc('I64', [capacity, shape.topk]),
        topkWeights: alloc('F32', [capacity, shape.topk]),
        logits: alloc('F32', [capacity, shape.experts]),
      };
      const ws = routerWorkspaceFloats(capacity, shape, this.smCount);
      this.workspace = ws > 0 ? alloc('F32', [ws]) : null;
    } catch (err) {
      for (const t of made) t.dispose();
      throw err;
    }
  }

  private static validate(shape: RouterShape, capacity: number, gate: DeviceTensor, params: RouterParams): void {
    checkRouterShape(shape);
    const { hiddenSize: H, experts: E, topk: K } = shape;
    tensorCheck(Number.isInteger(capacity) && capacity >= 0, `capacity ${capacity} is not a non-negative integer`, 'pass the maximum tokens per batch');
    tensorCheck(gate.dtype === 'BF16' && gate.shape.length === 2 && gate.shape[0] === E && gate.shape[1] === H,
      `gate.weight is ${gate.describe()}, expected BF16[${E}, ${H}]`, 'upload gate.weight [n_routed_experts, hidden_size] as BF16');
    tensorCheck(gate.ptr % 16n === 0n, 'gate.weight is not 16-byte aligned', 'pass a tensor at the start of a device allocation');
    if (params.bias) {
      tensorCheck(params.bias.dtype === 'F32' && params.bias.numel === E, `gate.bias is ${params.bias.describe()}, expected F32[${E}]`, 'upload gate.bias [n_routed_experts] as F32');
    }
    if (params.tid2eid) {
      const t = params.tid2eid;
      tensorCheck((t.dtype === 'I32' || t.dtype === 'I64') && t.shape.length === 2 && t.shape[1] === K && t.shape[0] > 0,
        `gate.tid2eid is ${t.describe()}, expected I32 or I64 [vocab, ${K}]`, 'upload gate.tid2eid [vocab_size, num_experts_per_tok]');
    }
    tensorCheck(Number.isFinite(params.routedScalingFactor), `routed_scaling_factor ${params.routedScalingFactor} is not finite`, 'read it from config.json');
  }

  private static entries(): Array<[RouterTile | 'topk', string]> {
    return [['gemv', ROUTER_TILES.gemv.entry], ['mid', ROUTER_TILES.mid.entry], ['prefill', ROUTER_TILES.prefill.entry], ['topk', ROUTER_TOPK_ENTRY]];
  }

  /** Compiles (cached) and loads the kernels for `shape`, and allocates outputs for `capacity` tokens. */
  static async create(shape: RouterShape, capacity: number, gate: DeviceTensor<'BF16'>, params: RouterParams): Promise<Router> {
    Router.validate(shape, capacity, gate, params);
    const kernels = {} as Record<RouterTile | 'topk', Kernel>;
    for (const [k, entry] of Router.entries()) {
      kernels[k] = await loadKernel({ source: ROUTING_SOURCE, entry, defines: routingDefines(shape) });
    }
    return new Router(shape, capacity, gate, params, kernels);
  }

  /** create(), blocking. */
  static createSync(shape: RouterShape, capacity: number, gate: DeviceTensor<'BF16'>, params: RouterParams): Router {
    Router.validate(shape, capacity, gate, params);
    const kernels = {} as Record<RouterTile | 'topk', Kernel>;
    for (const [k, entry] of Router.entries()) {
      kernels[k] = loadKernelSync({ source: ROUTING_SOURCE, entry, defines: routingDefines(shape) });
    }
    return new Router(shape, capacity, gate, params, kernels);
  }

  get isHashRouted(): boolean { return this.params.tid2eid !== undefined; }

  /** Queues logits + selection for `tokens` rows of x on `stream`. T > capacity is refused; T = 0 launches nothing. */
  route(x: DeviceTensor, options: RouteOptions = {}): void {
    const { hiddenSize: H, experts: E } = this.shape;
    const tokens = options.tokens ?? x.shape[0];
    tensorCheck(Number.isInteger(tokens) && tokens >= 0, `tokens ${tokens} is not a non-negative integer`, 'pass a token count');
    checkTokenCapacity(tokens, this.capacity, 'the router buffers');
    tensorCheck(x.dtype === 'BF16' && x.shape.length === 2 && x.shape[1] === H && x.shape[0] >= tokens,
      `x is ${x.describe()}, expected BF16[>= ${tokens}, ${H}]`, `pass the hidden states as BF16 [tokens, ${H}]`);
    tensorCheck(x.ptr % 16n === 0n, 'x is not 16-byte aligned', 'pass a tensor at the start of a device allocation (16-byte loads)');
    const ids = options.tokenIds;
    if (this.isHashRouted) {
      tensorCheck(ids !== undefined && ids.dtype === 'I64' && ids.numel >= tokens,
        `a hash-routed layer needs token ids I64 [${tokens}], got ${ids ? ids.describe() : 'none'}`, 'pass options.tokenIds');
    }
    if (options.tile !== undefined) {
      tensorCheck(Object.prototype.hasOwnProperty.call(ROUTER_TILES, options.tile), `unknown tile "${String(options.tile)}"`, `use one of ${Object.keys(ROUTER_TILES).join(', ')}`);
    }
    this.tokens = tokens;
    if (tokens === 0) { this.lastPlan = undefined; return; }

    const plan = planRouterLogits(tokens, this.shape, this.smCount, options.tile);
    this.lastPlan = plan;
    const split = plan.splits > 1;
    if (split && (!this.workspace || this.workspace.numel < plan.splits * tokens * E)) {
      throw new Error(`routing: internal: split-K workspace too small for ${plan.splits} x ${tokens} x ${E} (planner and allocation disagree)`);
    }
    const partials = split ? this.workspace! : this.out.logits;
    const stream = options.stream;
    this.logitsKernels[plan.tile].launch({ grid: plan.grid, block: plan.block, sharedMemBytes: routerTileSmemBytes(plan.tile), stream },
      [x, this.gate, partials, arg.i32(tokens)]);
    const t2e = this.params.tid2eid;
    this.topkKernel.launch({ grid: Math.ceil(tokens / ROUTER_TOPK_WARPS), block: ROUTER_TOPK_WARPS * 32, stream }, [
      partials, arg.i32(plan.splits), arg.ptr(split ? this.out.logits : null),
      arg.ptr(this.isHashRouted ? null : this.params.bias),
      arg.ptr(this.isHashRouted ? ids : null),
      arg.ptr(t2e), arg.i32(t2e?.dtype === 'I64' ? 1 : 0), arg.i64(t2e ? t2e.shape[0] : 0),
      arg.i32(this.params.normTopkProb ? 1 : 0), arg.f32(Math.fround(this.params.routedScalingFactor)),
      this.out.topkIds, this.out.topkWeights, arg.i32(tokens),
    ]);
  }

  /** Downloads the first `tokens` rows of ids, weights and logits (tests, debugging). */
  download(tokens = this.tokens, stream?: StreamLike): { topkIds: BigInt64Array; topkWeights: Float32Array; logits: Float32Array } {
    if (!(Number.isInteger(tokens) && tokens >= 0 && tokens <= this.capacity)) {
      throw new RangeError(`routing download: tokens ${tokens} must be in [0, ${this.capacity}]`);
    }
    if (stream) stream.synchronize();
    const { experts: E, topk: K } = this.shape;
    const ids = new BigInt64Array(tokens * K);
    const w = new Float32Array(tokens * K);
    const logits = new Float32Array(tokens * E);
    this.out.topkIds.buffer.copyToHost(ids, { bytes: ids.byteLength });
    this.out.topkWeights.buffer.copyToHost(w, { bytes: w.byteLength });
    this.out.logits.buffer.copyToHost(logits, { bytes: logits.byteLength });
    return { topkIds: ids, topkWeights: w, logits };
  }

  dispose(): void {
    this.out.topkIds.dispose();
    this.out.topkWeights.dispose();
    this.out.logits.dispose();
    this.workspace?.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
