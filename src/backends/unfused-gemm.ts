// The two grouped FP8 GEMMs of the unfused layer (L1 with the fused SwiGLU + FP8 epilogue, L2 with bf16 out), bound
// once to the pipeline's buffers: tensor maps are encoded at construction, so every launch has the same arguments
// and a CUDA graph can replay it while the routing (tile_group, num_m_tiles in device memory) changes.
//
// The kernel is src/kernels/grouped_gemm_fp8.cu (the GEMM engineer's; its header defines the ABI used here):
//   (tmap_a, tmap_b, tmap_sfa, sfb, tile_group, num_m_tiles, out, out_sf, row_weight, swiglu_limit, m_cap)
// specialised by -DGG_SWAP (0 normal 128-row tiles, 1 decode 16-token tiles), -DGG_EPI (0 bf16, 1 SwiGLU-FP8),
// -DGG_N, -DGG_K, -DGG_SUB, -DGG_STAGES; persistent (grid = SM count). The variants and shared-memory plans below
// are the ones the GEMM harness (tools/gemm-harness/harness.cu) validates; the kernel traps on a launch with less
// shared memory than its plan, so a mismatch can never corrupt memory silently.
import {
  arg, ensureContext, loadKernel, registerKernel, tensorMap2D, type DeviceBuffer, type Kernel, type StreamLike, type TensorMap,
} from '../cuda/index.js';
import type { DeviceMoeWeights, UnfusedShape } from './unfused.js';

export type GemmMode = 'normal' | 'decode';

/** The GEMM path a forward runs with, and the row tile the dispatch pads each expert's rows to. */
export interface RowTile {
  mode: GemmMode;
  rows: 128 | 16;
}

/**
 * Decode path (weights on wgmma's M side, up to 16 tokens of one expert per tile) while the average expert gets at
 * most 4 rows, so nearly every expert fits one 16-token tile and its weights stream once; above that, the 128-row
 * path, whose tiles amortise each weight tile over many rows.
 */
export function chooseRowTile(tokens: number, shape: Pick<UnfusedShape, 'topK' | 'experts'>): RowTile {
  const rowsPerExpert = (tokens * shape.topK) / shape.experts;
  return rowsPerExpert <= 4 ? { mode: 'decode', rows: 16 } : { mode: 'normal', rows: 128 };
}

interface Variant { sub: number; stages: number; threads: number; smem: number }

/** Shared-memory plan of grouped_gemm_fp8.cu (NormalPlan / DecodePlan), in bytes. */
function plan(mode: GemmMode, epi: 0 | 1): Variant {
  if (mode === 'normal') {
    const sub = 2; const stages = 4;
    const a = 128 * 128; const b = 128 * sub * 128; const sfa = 128 * 4;
    return { sub, stages, threads: 384, smem: stages * (a + b + sfa) + 2 * stages * 8 };
  }
  const sub = epi === 1 ? 4 : 1; const stages = epi === 1 ? 6 : 16;
  const b = 64 * sub * 128; const a = 16 * 128; const sfaSlot = 128;
  return { sub, stages, threads: 256, smem: stages * (b + a + sfaSlot) + 2 * stages * 8 + 4 * 16 * 4 };
}

export function gemmDefines(mode: GemmMode, epi: 0 | 1, n: number, k: number): Record<string, number> {
  const v = plan(mode, epi);
  return { GG_SWAP: mode === 'decode' ? 1 : 0, GG_EPI: epi, GG_N: n, GG_K: k, GG_SUB: v.sub, GG_STAGES: v.stages };
}

/** Every variant the unfused presets launch (so `megamoe kernels --check` compiles them in CI). */
const PRESETS = [
  { label: 'tiny', hidden: 256, inter: 128 },
  { label: 'flash', hidden: 4096, inter: 2048 },
  { label: 'pro', hidden: 7168, inter: 3072 },
];
registerKernel({
  name: 'unfused_grouped_gemm',
  source: 'grouped_gemm_fp8.cu',
  entry: 'grouped_gemm_fp8',
  variants: PRESETS.flatMap((p) => (['normal', 'decode'] as const).flatMap((mode) => [
    { label: `${p.label}-L1-${mode}`, defines: gemmDefines(mode, 1, 2 * p.inter, p.hidden) },
    { label: `${p.label}-L2-${mode}`, defines: gemmDefines(mode, 0, p.hidden, p.inter) },
  ])),
});

/** One specialised GEMM bound to its buffers. */
class BoundGemm {
  constructor(private readonly kernel: Kernel, private readonly grid: number, private readonly v: Variant,
    private readonly args: Parameters<Kernel['launch']>[1]) {}

  launch(stream: StreamLike): void {
    this.kernel.launch({ grid: this.grid, block: this.v.threads, sharedMemBytes: this.v.smem, stream }, this.args);
  }
}

export interface ExpertGemmBuffers {
  shape: UnfusedShape;
  /** rows of every per-row buffer (m_cap) */
  maxRows: number;
  weights: DeviceMoeWeights;
  /** dispatch outputs: A e4m3 [m_cap, H], sfa f32 [H/128, m_cap], tile_group, num_m_tiles, row_weight [m_cap] */
  a: DeviceBuffer;
  sfa: DeviceBuffer;
  tileGroup: DeviceBuffer;
  numMTiles: DeviceBuffer;
  rowWeight: DeviceBuffer;
  /** L1 out: e4m3 [m_cap, I] + scales [I/128, m_cap]; L2 out: bf16 [m_cap, H] */
  act: DeviceBuffer;
  actSf: DeviceBuffer;
  out: DeviceBuffer;
}

export interface ExpertGemms {
  l1(tile: RowTile, stream: StreamLike): void;
  l2(tile: RowTile, stream: StreamLike): void;
  dispose(): void;
}

async function bind(mode: GemmMode, epi: 0 | 1, b: ExpertGemmBuffers): Promise<BoundGemm> {
  const { hidden: H, inter: I, experts } = b.shape;
  const G = experts + 1;
  const n = epi === 1 ? 2 * I : H;
  const k = epi === 1 ? H : I;
  const v = plan(mode, epi);
  const kernel = await loadKernel({ source: 'grouped_gemm_fp8.cu', entry: 'grouped_gemm_fp8', defines: gemmDefines(mode, epi, n, k) });
  kernel.setMaxDynamicSharedMemory(v.smem);
  const rowsBox = mode === 'decode' ? 16 : 128;
  const bBox = mode === 'decode' ? 64 * v.sub : 128 * v.sub;
  const aBuf = epi === 1 ? b.a : b.act;
  const sfaBuf = epi === 1 ? b.sfa : b.actSf;
  const bBuf = epi === 1 ? b.weights.w13 : b.weights.w2;
  const sfb = epi === 1 ? b.weights.s13 : b.weights.s2;
  const m = b.maxRows;
  const maps: TensorMap[] = [
    tensorMap2D({ dataType: 'uint8', globalAddress: aBuf, rows: m, cols: k, boxRows: rowsBox, boxCols: 128, swizzle: '128B', l2Promotion: '256B' }),
    tensorMap2D({ dataType: 'uint8', globalAddress: bBuf, rows: G * n, cols: k, boxRows: bBox, boxCols: 128, swizzle: '128B', l2Promotion: '256B' }),
    tensorMap2D({ dataType: 'f32', globalAddress: sfaBuf, rows: k / 128, cols: m, boxRows: 1, boxCols: rowsBox, swizzle: 'none', l2Promotion: '256B' }),
  ];
  const grid = ensureContext().properties().smCount;
  const args = [
    maps[0], maps[1], maps[2], sfb, b.tileGroup, b.numMTiles,
    epi === 1 ? b.act : b.out, epi === 1 ? b.actSf : 0n, b.rowWeight, arg.f32(b.shape.swigluLimit > 0 ? b.shape.swigluLimit : 0), arg.i32(m),
  ];
  return new BoundGemm(kernel, grid, v, args);
}

/** Compiles (cached) and binds L1 and L2 for both paths. */
export async function createExpertGemms(b: ExpertGemmBuffers): Promise<ExpertGemms> {
  const [l1n, l2n, l1d, l2d] = await Promise.all([
    bind('normal', 1, b), bind('normal', 0, b), bind('decode', 1, b), bind('decode', 0, b),
  ]);
  return {
    l1: (tile, stream) => (tile.mode === 'decode' ? l1d : l1n).launch(stream),
    l2: (tile, stream) => (tile.mode === 'decode' ? l2d : l2n).launch(stream),
    dispose: () => {},
  };
}
