// Launcher of the block-scaled FP8 grouped GEMM (grouped_gemm_fp8.cu, SPEC 3): owns the shape specialisation
// (-D defines), the shared-memory plan, the TMA descriptors, the grid and the argument packing.
//
//   const gemm = await GroupedGemm.create({ path: 'normal', epilogue: 'bf16', n: 4096, k: 2048 });
//   const l2 = gemm.bind({ a, sfa, weights, sfb, groups, tileGroup, numMTiles, out, mCap });  // maps encoded once
//   l2.launch(stream);                      // same arguments every time: CUDA-graph friendly, routing lives on device
//
// Data contract (the producer kernels write exactly this):
//   a          e4m3 [mCap, K] row-major; rows grouped by expert, each group's segment starting at a multiple of
//              rowTile (128 'normal', 16 'decode'); padding rows may hold anything, their outputs are ignored.
//   sfa        f32 MN-major [K/128, mCap]: element (kb, m) at kb * mCap + m (one TMA box per row tile and K block).
//   weights    e4m3 [groups, N, K] row-major (for 'swiglu-fp8': the TRANSFORMED L1 weight, N = 2I); with
//              weightLayout 'tiled' the same codes as [groups, N/128, K/128, 128, 128] (tileWeights, weight-layout.ts).
//   sfb        f32 [groups, N/128, K/128], K blocks innermost, natural (untransformed) row order.
//   tileGroup  int32 [mCap / rowTile]: expert of each row tile, -1 = skip.  numMTiles: int32 [1], live row tiles.
//   out        'bf16': bf16 [mCap, N].  'swiglu-fp8': e4m3 [mCap, N/2] plus outSf f32 MN-major [N/256, mCap] (the
//              next GEMM's a / sfa), and rowWeight f32 [mCap] (routing weight of each row, applied before quantizing).
import {
  arg, ensureContext, loadKernel, loadKernelSync, registerKernel, tensorMap2D, type Defines, type Kernel,
  type KernelArgLike, type StreamLike, type TensorMap,
} from '../cuda/index.js';
import { GuardError } from '../moe/guards.js';
import { MOE_PRESET_SHAPES } from './presets.js';
import { WEIGHT_TILE, type WeightLayout } from './weight-layout.js';

export const GROUPED_GEMM_SOURCE = 'grouped_gemm_fp8.cu';
export const GROUPED_GEMM_ENTRY = 'grouped_gemm_fp8';

/** 'normal': 128-row tiles, 2 consumer warpgroups (prefill). 'decode': weights on wgmma's M side, 16-token tiles. */
export type GemmPath = 'normal' | 'decode';
/** 'bf16' (down projection) or 'swiglu-fp8' (up projection on transformed weights, fused SwiGLU + FP8 quantization). */
export type GemmEpilogue = 'bf16' | 'swiglu-fp8';

/** 2-CTA TMA multicast mode of the normal path (GG_MCAST 0 / 1 / 2). */
export type GemmMulticast = 'none' | 'weights' | 'activations';
const MCAST_CODE: Readonly<Record<GemmMulticast, number>> = { none: 0, weights: 1, activations: 2 };

/** Rows per tile, i.e. the alignment of every expert's row segment in `a`. */
export const GROUPED_GEMM_ROW_TILE: Readonly<Record<GemmPath, number>> = Object.freeze({ normal: 128, decode: 16 });

/** Largest dynamic shared memory a Hopper block may opt in to (227 KB). */
const SMEM_LIMIT = 232448;

export interface GroupedGemmSpec {
  path: GemmPath;
  epilogue: GemmEpilogue;
  /** Output columns (for 'swiglu-fp8' the transformed 2I rows of W13). */
  n: number;
  /** Reduction length. */
  k: number;
  /**
   * How `weights` is stored (default 'rows', the checkpoint layout; the unfused backend uploads 'tiled', see
   * EXPERT_WEIGHT_LAYOUT in src/backends/unfused.ts): 'rows' = e4m3 [G, N, K] row-major; 'tiled' = [G, N/128, K/128, 128, 128],
   * every 128-row x 128-byte block one contiguous 16 KB run (tileWeights in weight-layout.ts). Same smem image,
   * same results; only the DRAM access pattern of the weight TMA loads differs (docs/GEMM.md, "Tiled weights").
   */
  weightLayout?: WeightLayout;
  /**
   * Tuning overrides ('normal' path; defaults are the fastest measured, docs/GEMM.md). store: 'tma' stages the bf16
   * tile in shared memory and writes it with TMA stores (default; +18% at 4 x 8192 rows). multicast: CTA pairs
   * (a 2-CTA cluster) that fetch half a tile each and multicast it: 'weights' (pairs of row tiles of one expert
   * share the weight tile; default, +4% at 4 x 8192 rows, +16% at 8 x 512, -2.5% at 32 x 128), 'activations'
   * (pairs of N tiles share the row tile; needs N % 512 == 0) or 'none'. stages: pipeline depth (default: all
   * that fit).
   */
  tuning?: { store?: 'tma' | 'direct'; multicast?: GemmMulticast; stages?: number };
  /**
   * Decode path, bf16 epilogue: each (row tile, weight block) unit's K blocks are split over this many CTAs (default 1),
   * which sum their f32 totals in split order through a workspace (bind's `partial` / `arrivals`): for small-N
   * GEMMs with few units (the dense projections at decode, dense-fp8.ts). Must divide K/128.
   */
  splitK?: number;
}

/** Everything a launch needs to know about one specialisation (pure: no GPU needed). */
export interface GroupedGemmConfig {
  spec: Readonly<GroupedGemmSpec>;
  rowTile: number;
  /** normal: 128-column halves per CTA tile (NSUB); decode: 64-row weight sub-tiles per unit (MSUB). */
  sub: number;
  stages: number;
  multicast: GemmMulticast;
  store: 'tma' | 'direct';
  weightLayout: WeightLayout;
  threads: number;
  smemBytes: number;
  /** Rows of the weight / activation tensor maps' boxes. */
  weightBoxRows: number;
  activationBoxRows: number;
  splitK: number;
  defines: Defines;
}

/**
 * f32 elements of a split-K GEMM's partial workspace (GroupedGemmBuffers.partial) and its int32 arrival counters, for
 * launches with at most `rowTiles` live row tiles (*numMTiles): both are indexed by tile, not by mCap.
 */
export function splitKWorkspace(config: GroupedGemmConfig, rowTiles: number): { partialFloats: number; arrivals: number } {
  if (config.splitK === 1) return { partialFloats: 0, arrivals: 0 };
  return { partialFloats: config.splitK * rowTiles * config.rowTile * config.spec.n, arrivals: rowTiles * (config.spec.n / (64 * config.sub)) };
}

function normalPlanBytes(sub: number, stages: number, tmaStore: boolean): number {
  // NormalPlan in grouped_gemm_fp8.cu: [bf16 staging][A stages][B stages][sfa stages][full + empty barriers]
  const a = 128 * 128;
  const b = 128 * sub * 128;
  const sfa = 128 * 4;
  const d = tmaStore ? 128 * 128 * sub * 2 : 0;
  return d + stages * (a + b + sfa) + 2 * stages * 8;
}

function decodePlanBytes(sub: number, stages: number): number {
  // DecodePlan: [B stages][A stages][sfa slots][barriers][amax scratch 4 x 16 f32]
  const b = 64 * sub * 128;
  const a = 16 * 128;
  return stages * (b + a + 128) + 2 * stages * 8 + 4 * 16 * 4;
}

/** Shared-memory bytes of a plan (mirrors NormalPlan / DecodePlan; the kernel traps if a launch gives less). */
export function groupedGemmSmemBytes(path: GemmPath, sub: number, stages: number, tmaStore = false): number {
  return path === 'normal' ? normalPlanBytes(sub, stages, tmaStore) : decodePlanBytes(sub, stages);
}

function isDim(v: number): boolean {
  return Number.isInteger(v) && v > 0 && v % 128 === 0;
}

/** Picks the specialisation of a shape, or throws a GuardError / RangeError naming the problem and the fix. */
export function groupedGemmConfig(spec: GroupedGemmSpec): GroupedGemmConfig {
  const { path, epilogue, n, k } = spec;
  if (path !== 'normal' && path !== 'decode') throw new RangeError(`grouped GEMM: path "${String(path)}" is not 'normal' or 'decode'`);
  if (epilogue !== 'bf16' && epilogue !== 'swiglu-fp8') {
    throw new RangeError(`grouped GEMM: epilogue "${String(epilogue)}" is not 'bf16' or 'swiglu-fp8'`);
  }
  if (!isDim(n) || !isDim(k)) {
    const bad = [!isDim(n) ? `N = ${n}` : '', !isDim(k) ? `K = ${k}` : ''].filter(Boolean).join(' and ');
    throw new GuardError('DIM_NOT_ALIGNED', `grouped GEMM: ${bad} not a positive multiple of 128`,
      'FP8 block scales cover 128 x 128 blocks; pad the layer to multiples of 128 (H % 128 == 0 and I % 128 == 0)');
  }
  const swiglu = epilogue === 'swiglu-fp8';
  if (swiglu && n % 256 !== 0) {
    throw new GuardError('DIM_NOT_ALIGNED', `grouped GEMM: the SwiGLU epilogue needs N = 2I with I a multiple of 128, got N = ${n}`,
      'use moe_intermediate_size % 128 == 0; N is the transformed [2I, H] weight\'s row count');
  }
  if (k > 65536 || n > 65536) throw new RangeError(`grouped GEMM: N = ${n}, K = ${k} exceed the 65536 this launcher was checked for`);
  const weightLayout = spec.weightLayout ?? 'rows';
  if (weightLayout !== 'rows' && weightLayout !== 'tiled') {
    throw new RangeError(`grouped GEMM: weightLayout "${String(weightLayout)}" is not 'rows' or 'tiled'`);
  }
  const t = spec.tuning ?? {};
  const rowTile = GROUPED_GEMM_ROW_TILE[path];
  let sub: number; let stages: number; let threads: number; let weightBoxRows: number;
  let multicast: GemmMulticast = 'none';
  let store: 'tma' | 'direct' = 'direct';
  let activationBoxRows = rowTile;
  if (path === 'normal') {
    sub = n % 256 === 0 ? 2 : 1;
    multicast = t.multicast ?? (sub === 2 ? 'weights' : 'none');
    if (MCAST_CODE[multicast] === undefined) throw new RangeError(`grouped GEMM: multicast "${String(multicast)}" is not none, weights or activations`);
    if (multicast === 'weights' && sub !== 2) throw new RangeError(`grouped GEMM: the weight multicast needs N % 256 == 0, got N = ${n}`);
    if (multicast === 'activations' && n % (256 * sub) !== 0) {
      throw new RangeError(`grouped GEMM: the activation multicast pairs N tiles and needs N % ${256 * sub} == 0, got N = ${n}`);
    }
    if (multicast === 'activations') activationBoxRows = 64; // each CTA of a pair fetches half the row tile
    store = swiglu ? 'direct' : (t.store ?? 'tma');
    // As many stages as fit (4 / 3 for 256-column tiles without / with the 64 KB staging buffer), at most 6.
    const perStage = normalPlanBytes(sub, 1, false);
    stages = t.stages ?? Math.min(6, Math.floor((SMEM_LIMIT - normalPlanBytes(sub, 0, store === 'tma')) / perStage));
    threads = 384;
    weightBoxRows = 128; // the weight tile is fetched in 128-row halves (the multicast unit)
  } else {
    sub = swiglu ? 4 : 1;
    stages = t.stages ?? (swiglu ? 6 : 16);
    threads = 256;
    // A tiled box must stay inside one 128-row tile: the 256-row SwiGLU unit is fetched as two 128-row boxes.
    weightBoxRows = weightLayout === 'tiled' ? Math.min(64 * sub, WEIGHT_TILE) : 64 * sub;
    if (n % (64 * sub) !== 0) throw new RangeError(`grouped GEMM: decode path needs N % ${64 * sub} == 0, got N = ${n}`);
    if (t.multicast !== undefined && t.multicast !== 'none') throw new RangeError('grouped GEMM: the decode path has no multicast variant');
  }
  if (!Number.isInteger(stages) || stages < 2) throw new RangeError(`grouped GEMM: ${stages} pipeline stages (need >= 2)`);
  const splitK = spec.splitK ?? 1;
  if (!Number.isInteger(splitK) || splitK < 1 || (k / 128) % splitK !== 0) {
    throw new RangeError(`grouped GEMM: splitK ${splitK} must be a positive integer dividing K/128 = ${k / 128}`);
  }
  if (splitK > 1 && (path !== 'decode' || swiglu)) throw new RangeError('grouped GEMM: splitK > 1 needs the decode path and the bf16 epilogue');
  const smemBytes = groupedGemmSmemBytes(path, sub, stages, store === 'tma');
  if (smemBytes > SMEM_LIMIT) {
    throw new RangeError(`grouped GEMM: ${stages} stages need ${smemBytes} bytes of shared memory, more than the ${SMEM_LIMIT} a block may use: use fewer stages`);
  }
  return {
    spec: Object.freeze({ ...spec }), rowTile, sub, stages, multicast, store, weightLayout, threads, smemBytes, weightBoxRows,
    activationBoxRows, splitK,
    defines: {
      GG_SWAP: path === 'decode' ? 1 : 0, GG_EPI: swiglu ? 1 : 0, GG_N: n, GG_K: k, GG_SUB: sub, GG_STAGES: stages,
      GG_MCAST: MCAST_CODE[multicast], GG_STORE: store === 'tma' ? 1 : 0, GG_SMEM_BYTES: smemBytes,
      // Only the tiled variants carry the define, so the default (rows) specialisations keep their cache keys.
      ...(weightLayout === 'tiled' ? { GG_WTILED: 1 } : {}),
      ...(splitK > 1 ? { GG_SPLITK: splitK } : {}),
    },
  };
}

/** The layer presets CI compiles (`megamoe kernels --check`): L1 = SwiGLU on [2I, H], L2 = bf16 on [H, I]. */
export const GROUPED_GEMM_PRESETS: ReadonlyArray<{ label: string; hidden: number; inter: number }> = Object.freeze(
  MOE_PRESET_SHAPES.map(({ label, hidden, inter }) => ({ label, hidden, inter })));

registerKernel({
  name: 'grouped_gemm_fp8',
  source: GROUPED_GEMM_SOURCE,
  entry: GROUPED_GEMM_ENTRY,
  variants: [
    ...GROUPED_GEMM_PRESETS.flatMap((p) => (['normal', 'decode'] as const).flatMap((path) => [
      { label: `${p.label}-L1-${path}`, defines: groupedGemmConfig({ path, epilogue: 'swiglu-fp8', n: 2 * p.inter, k: p.hidden }).defines },
      { label: `${p.label}-L2-${path}`, defines: groupedGemmConfig({ path, epilogue: 'bf16', n: p.hidden, k: p.inter }).defines },
    ])),
    { label: 'bench-N4096-K4096', defines: groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 4096 }).defines },
    // The tiled weight layout (weightLayout 'tiled': what the unfused backend uploads by default), both paths.
    ...GROUPED_GEMM_PRESETS.flatMap((p) => (['normal', 'decode'] as const).flatMap((path) => [
      { label: `${p.label}-L1-${path}-tiled`, defines: groupedGemmConfig({ path, epilogue: 'swiglu-fp8', n: 2 * p.inter, k: p.hidden, weightLayout: 'tiled' }).defines },
      { label: `${p.label}-L2-${path}-tiled`, defines: groupedGemmConfig({ path, epilogue: 'bf16', n: p.hidden, k: p.inter, weightLayout: 'tiled' }).defines },
    ])),
  ],
});

type Ptr = bigint | { readonly ptr: bigint };
const addr = (p: Ptr): bigint => (typeof p === 'bigint' ? p : p.ptr);

/** Device buffers one bound GEMM reads and writes (see the data contract at the top of this file). */
export interface GroupedGemmBuffers {
  a: Ptr;
  sfa: Ptr;
  weights: Ptr;
  sfb: Ptr;
  /** Experts in `weights` (its leading dimension). */
  groups: number;
  tileGroup: Ptr;
  numMTiles: Ptr;
  out: Ptr;
  /** 'swiglu-fp8' only: f32 [N/256, mCap]. */
  outSf?: Ptr;
  /** 'swiglu-fp8' only: f32 [mCap]. */
  rowWeight?: Ptr;
  /** Rows of a / out / rowWeight and columns of sfa: a multiple of the row tile. */
  mCap: number;
  /**
   * splitK > 1 only: f32 and int32 workspaces of splitKWorkspace(config, R)'s sizes (counters zeroed once), where
   * R bounds *numMTiles on every launch: the kernel does not check it.
   */
  partial?: Ptr;
  arrivals?: Ptr;
  /** 'swiglu-fp8': clamp limit L (<= 0: no clamp). */
  swigluLimit?: number;
}

/** One specialised GEMM bound to its buffers: the same arguments on every launch. */
export class BoundGroupedGemm {
  /** @internal use GroupedGemm.bind */
  constructor(private readonly kernel: Kernel, readonly config: GroupedGemmConfig, readonly grid: number,
    private readonly args: readonly KernelArgLike[]) {}

  /** Queues the GEMM on `stream` (the legacy default stream when omitted). */
  launch(stream?: StreamLike): void {
    this.kernel.launch({ grid: this.grid, block: this.config.threads, sharedMemBytes: this.config.smemBytes, stream }, this.args);
  }
}

export class GroupedGemm {
  private constructor(readonly config: GroupedGemmConfig, private readonly kernel: Kernel) {
    kernel.setMaxDynamicSharedMemory(config.smemBytes);
  }

  /** Compiles (cached on disk) and loads the specialisation of `spec`. */
  static async create(spec: GroupedGemmSpec): Promise<GroupedGemm> {
    const config = groupedGemmConfig(spec);
    return new GroupedGemm(config, await loadKernel({ source: GROUPED_GEMM_SOURCE, entry: GROUPED_GEMM_ENTRY, defines: config.defines }));
  }

  static createSync(spec: GroupedGemmSpec): GroupedGemm {
    const config = groupedGemmConfig(spec);
    return new GroupedGemm(config, loadKernelSync({ source: GROUPED_GEMM_SOURCE, entry: GROUPED_GEMM_ENTRY, defines: config.defines }));
  }

  /** Encodes the tensor maps for these buffers and returns a launchable GEMM. */
  bind(b: GroupedGemmBuffers): BoundGroupedGemm {
    const c = this.config;
    const { n, k, epilogue } = c.spec;
    const swiglu = epilogue === 'swiglu-fp8';
    const where = `grouped GEMM (${c.spec.path}, ${epilogue}, N ${n}, K ${k})`;
    if (!(Number.isInteger(b.mCap) && b.mCap > 0 && b.mCap % c.rowTile === 0)) {
      throw new RangeError(`${where}: mCap ${b.mCap} must be a positive multiple of the ${c.rowTile}-row tile`);
    }
    if (!(Number.isInteger(b.groups) && b.groups > 0 && b.groups * n < 2 ** 31)) {
      throw new RangeError(`${where}: groups ${b.groups} must be a positive integer with groups * N < 2^31`);
    }
    const tiled = c.weightLayout === 'tiled';
    // Tiled: the map is [groups * N * K / 128, 128] and TMA row coordinates are signed 32-bit.
    if (tiled && b.groups * n * (k / WEIGHT_TILE) >= 2 ** 31) {
      throw new RangeError(`${where}: groups ${b.groups} x N x K / 128 = ${b.groups * n * (k / WEIGHT_TILE)} tiled weight rows exceed 2^31: use weightLayout 'rows' or fewer groups per GEMM`);
    }
    if (c.splitK > 1 && (b.partial === undefined || b.arrivals === undefined)) {
      throw new Error(`${where}: splitK ${c.splitK} sums through a workspace: pass partial and arrivals (splitKWorkspace sizes them)`);
    }
    if (swiglu && (b.outSf === undefined || b.rowWeight === undefined)) {
      throw new Error(`${where}: the SwiGLU epilogue writes outSf and reads rowWeight: pass both buffers`);
    }
    for (const [name, p] of [['a', b.a], ['sfa', b.sfa], ['weights', b.weights], ['out', b.out]] as const) {
      if (addr(p) % 16n !== 0n) throw new RangeError(`${where}: buffer ${name} at 0x${addr(p).toString(16)} is not 16-byte aligned (TMA needs it)`);
    }
    const m = b.mCap;
    const maps: TensorMap[] = [
      tensorMap2D({ dataType: 'uint8', globalAddress: b.a, rows: m, cols: k, boxRows: c.activationBoxRows, boxCols: 128, swizzle: '128B', l2Promotion: '256B' }),
      tiled // each 128-row x 128-byte tile is 128 consecutive 128-byte rows: a box is one contiguous run
        ? tensorMap2D({ dataType: 'uint8', globalAddress: b.weights, rows: b.groups * n * (k / WEIGHT_TILE), cols: WEIGHT_TILE, boxRows: c.weightBoxRows, boxCols: 128, swizzle: '128B', l2Promotion: '256B' })
        : tensorMap2D({ dataType: 'uint8', globalAddress: b.weights, rows: b.groups * n, cols: k, boxRows: c.weightBoxRows, boxCols: 128, swizzle: '128B', l2Promotion: '256B' }),
      tensorMap2D({ dataType: 'f32', globalAddress: b.sfa, rows: k / 128, cols: m, boxRows: 1, boxCols: c.rowTile, swizzle: 'none', l2Promotion: '256B' }),
    ];
    // The bf16 output map is only read by the TMA-store epilogue; other variants get a valid placeholder.
    maps.push(c.store === 'tma' && !swiglu
      ? tensorMap2D({ dataType: 'bf16', globalAddress: b.out, rows: m, cols: n, boxRows: 64, boxCols: 64, swizzle: '128B', l2Promotion: '256B' })
      : maps[0]);
    const grid = ensureContext().properties().smCount;
    if (c.multicast !== 'none' && grid % 2 !== 0) throw new RangeError(`${where}: the 2-CTA cluster variant needs an even SM count, got ${grid}`);
    const args: KernelArgLike[] = [
      maps[0], maps[1], maps[2], maps[3], arg.ptr(b.sfb), arg.ptr(b.tileGroup), arg.ptr(b.numMTiles), arg.ptr(b.out),
      arg.ptr(swiglu ? b.outSf : null), arg.ptr(swiglu ? b.rowWeight : null),
      arg.f32(swiglu && b.swigluLimit !== undefined && b.swigluLimit > 0 ? b.swigluLimit : 0), arg.i32(m),
      arg.ptr(c.splitK > 1 ? b.partial : null), arg.ptr(c.splitK > 1 ? b.arrivals : null),
    ];
    return new BoundGroupedGemm(this.kernel, c, grid, args);
  }
}
