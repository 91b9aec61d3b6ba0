// One rank's fused MegaMoE layer under expert parallelism, set up inside a rank process by `megamoe verify --ep N
// --backend mega_moe`: the rank's block of experts with per-expert seeds (an EP subset equals those experts of the
// whole layer), rank 0 compiling the kernels first, then the symmetric buffer shared with every rank (collective) and
// the kernel bound to it. Also set up by `megamoe bench moe --ep N`, on the unfused EP rank's weights when it times
// both backends. Imported dynamically by the rank programs, so their fake (no-GPU) modes load no CUDA code.
import type { RankContext } from '../dist/rank-channel.js';
import { compileMegaMoeKernels } from '../kernels/mega-moe.js';
import { MegaMoe } from './mega-moe.js';
import type { RowTilePolicy } from './unfused-gemm.js';
import { rankExperts, rankShare } from './ep-rank-experts.js';
import type { DeviceMoeWeights, UnfusedShape } from './unfused.js';

export interface MegaEpRankOptions {
  shape: UnfusedShape;
  seed: number;
  /** the batch sizes (tokens per rank) the rank will run: the buffer holds the largest */
  tokens: readonly number[];
  rowTile: RowTilePolicy;
  /**
   * this rank's experts, already on ctx.device (the unfused EP rank's, startUnfusedEpRank): used as they are and left
   * to the caller, who frees them after close(); default: built here from `seed` and freed by close()
   */
  weights?: DeviceMoeWeights;
}

export interface MegaEpRankSetup {
  moe: MegaMoe;
  /** the rank's share of the layer (its experts only) */
  localShape: UnfusedShape;
  maxTokens: number;
  /** Collective: waits until no peer reads this rank's buffer any more, then frees everything. */
  close(): Promise<void>;
}

export async function startMegaMoeEpRank(ctx: RankContext, o: MegaEpRankOptions): Promise<MegaEpRankSetup> {
  const { shape } = o;
  const owns = o.weights === undefined;
  const { localShape, weights } = o.weights ? { localShape: rankShare(ctx, shape).localShape, weights: o.weights } : await rankExperts(ctx, shape, o.seed);
  const maxTokens = Math.max(1, ...o.tokens);
  try {
    ctx.phase('build');
    // Rank 0 compiles every variant first; the others then find them in the disk cache.
    if (ctx.rank === 0) await compileMegaMoeKernels(localShape);
    await ctx.barrier('built-0');
    ctx.phase('symmetric-memory');
    const moe = await MegaMoe.create(weights, maxTokens, { ownsWeights: owns, ep: ctx });
    moe.rowTilePolicy = o.rowTile;
    return { moe, localShape, maxTokens, close: () => moe.close(ctx) };
  } catch (err) {
    if (owns) weights.dispose();
    throw err;
  }
}
