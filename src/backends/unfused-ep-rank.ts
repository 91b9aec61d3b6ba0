// One rank's unfused EP layer, set up inside a rank process the same way by `megamoe verify --ep` and
// `megamoe bench moe --ep`: the rank's block of experts with per-expert seeds (an EP subset equals those experts of
// the whole layer), its transport, rank 0 compiling every kernel first, and the teardown that waits for the peers.
// Imported dynamically by the rank programs, so their fake (no-GPU) modes load no CUDA code.
import type { RankContext } from '../dist/rank-channel.js';
import type { Transport, TransportName } from '../dist/transport.js';
import { createTransport } from '../dist/transports.js';
import { UnfusedEpRank } from './unfused-ep.js';
import type { RowTilePolicy } from './unfused-gemm.js';
import { rankExperts } from './ep-rank-experts.js';
import type { DeviceMoeWeights, UnfusedShape } from './unfused.js';

export interface EpRankOptions {
  shape: UnfusedShape;
  seed: number;
  /** the batch sizes (tokens per rank) the rank will run: the buffers hold the largest */
  tokens: readonly number[];
  transport: TransportName;
  rowTile: RowTilePolicy;
}

export interface EpRankSetup {
  ep: UnfusedEpRank;
  transport: Transport;
  /** the rank's experts (freed by close()) */
  weights: DeviceMoeWeights;
  /** the rank's share of the layer (its experts only) */
  localShape: UnfusedShape;
  maxTokens: number;
  /** Waits until every peer finished writing into this rank's buffers, then frees everything. */
  close(): Promise<void>;
}

export async function startUnfusedEpRank(ctx: RankContext, o: EpRankOptions): Promise<EpRankSetup> {
  const { shape } = o;
  const { localShape, weights } = await rankExperts(ctx, shape, o.seed);
  const maxTokens = Math.max(1, ...o.tokens);
  ctx.phase('transport');
  const transport = await createTransport(o.transport, ctx, { receiveBytes: UnfusedEpRank.receiveBytes(localShape, ctx.worldSize, maxTokens) });
  ctx.phase('build');
  // Rank 0 compiles every kernel variant first; the others then find them in the disk cache.
  if (ctx.rank !== 0) await ctx.barrier('built-0');
  const ep = await UnfusedEpRank.create(transport, weights, { maxTokens, rowTilePolicy: o.rowTile });
  if (ctx.rank === 0) await ctx.barrier('built-0');
  return {
    ep, transport, weights, localShape, maxTokens,
    async close() {
      await transport.barrier(ep.stream); // every peer finished writing into this rank's buffers
      ep.dispose();
      transport.dispose();
      weights.dispose();
    },
  };
}
