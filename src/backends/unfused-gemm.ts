// The two grouped FP8 GEMMs of the unfused layer (L1 with the fused SwiGLU + FP8 epilogue on transformed W13, L2
// with bf16 out), for both GEMM paths, bound once to the pipeline's buffers through the GEMM launcher
// (src/kernels/grouped-gemm.ts): tensor maps are encoded at construction, so every launch has the same arguments and
// a CUDA graph replays it while the routing (tile_group, num_m_tiles in device memory) changes.
import type { DeviceBuffer, StreamLike } from '../cuda/index.js';
import { GroupedGemm, GROUPED_GEMM_ROW_TILE, type BoundGroupedGemm, type GemmPath } from '../kernels/grouped-gemm.js';
import type { DeviceMoeWeights, UnfusedShape } from './unfused.js';

/** The GEMM path a forward runs with, and the row tile the dispatch pads each expert's rows to. */
export interface RowTile {
  mode: GemmPath;
  rows: number;
}

/**
 * Decode path (weights on wgmma's M side, up to 16 tokens of one expert per tile) while the average expert gets at
 * most DECODE_MAX_ROWS_PER_EXPERT rows; above that, the 128-row path, whose tiles amortise each weight tile over many
 * rows. Measured crossover (H100, flash layer, `megamoe bench moe --row-tile decode|normal`, docs/BENCHMARKS.md):
 * decode is 12% faster at 12 rows per expert (T = 512: 2.59 vs 2.94 ms), 38% slower at 24 (T = 1024), break-even
 * near 15: an expert past 16 rows takes a second 16-row tile that streams its weights again.
 */
export const DECODE_MAX_ROWS_PER_EXPERT = 14;

export function chooseRowTile(tokens: number, shape: Pick<UnfusedShape, 'topK' | 'experts'>,
  policy: RowTilePolicy = 'auto'): RowTile {
  const rowsPerExpert = (tokens * shape.topK) / shape.experts;
  const mode: GemmPath = policy !== 'auto' ? policy : rowsPerExpert <= DECODE_MAX_ROWS_PER_EXPERT ? 'decode' : 'normal';
  return { mode, rows: GROUPED_GEMM_ROW_TILE[mode] };
}

/** 'auto' picks by rows per expert (above); a fixed path is for benchmarking the heuristic. */
export type RowTilePolicy = 'auto' | GemmPath;
export const ROW_TILE_POLICIES: readonly RowTilePolicy[] = ['auto', 'decode', 'normal'];

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

/** Compiles (cached) and binds L1 and L2 for both paths. */
export async function createExpertGemms(b: ExpertGemmBuffers): Promise<ExpertGemms> {
  const { hidden: H, inter: I, experts } = b.shape;
  const groups = experts + 1; // + the shared expert
  const bindPath = async (path: GemmPath): Promise<[BoundGroupedGemm, BoundGroupedGemm]> => {
    const weightLayout = b.weights.weightLayout; // the GEMMs read the codes in whatever layout they were uploaded
    const [g1, g2] = await Promise.all([
      GroupedGemm.create({ path, epilogue: 'swiglu-fp8', n: 2 * I, k: H, weightLayout }),
      GroupedGemm.create({ path, epilogue: 'bf16', n: H, k: I, weightLayout }),
    ]);
    const l1 = g1.bind({
      a: b.a, sfa: b.sfa, weights: b.weights.w13, sfb: b.weights.s13, groups, tileGroup: b.tileGroup, numMTiles: b.numMTiles,
      out: b.act, outSf: b.actSf, rowWeight: b.rowWeight, mCap: b.maxRows, swigluLimit: b.shape.swigluLimit,
    });
    const l2 = g2.bind({
      a: b.act, sfa: b.actSf, weights: b.weights.w2, sfb: b.weights.s2, groups, tileGroup: b.tileGroup, numMTiles: b.numMTiles,
      out: b.out, mCap: b.maxRows,
    });
    return [l1, l2];
  };
  const [normal, decode] = await Promise.all([bindPath('normal'), bindPath('decode')]);
  const pick = (tile: RowTile) => (tile.mode === 'decode' ? decode : normal);
  return {
    l1: (tile, stream) => pick(tile)[0].launch(stream),
    l2: (tile, stream) => pick(tile)[1].launch(stream),
    // Nothing of its own to free: the kernels belong to the kernel-loader's module cache, the buffers to the caller.
    dispose: () => {},
  };
}
