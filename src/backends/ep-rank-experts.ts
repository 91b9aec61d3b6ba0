// One rank's block of a seeded random MoE layer, shared by the rank programs of `megamoe verify --ep` and
// `megamoe bench moe --ep` (unfused-ep-rank.ts, mega-moe-ep-rank.ts): rank r holds experts [r E/N, (r + 1) E/N)
// (placement.ts) with per-expert seeds, so an EP subset equals those experts of the whole layer byte for byte.
import { useDevice } from '../cuda/index.js';
import type { RankContext } from '../dist/rank-channel.js';
import { expertRange } from '../moe/placement.js';
import { DeviceMoeWeights, type UnfusedShape } from './unfused.js';

/** The rank's share of the layer: its experts' global ids and its local shape. */
export function rankShare(ctx: Pick<RankContext, 'rank' | 'worldSize'>, shape: UnfusedShape):
  { ids: number[]; localShape: UnfusedShape } {
  const range = expertRange(shape.experts, ctx.rank, ctx.worldSize);
  const ids = Array.from({ length: range.end - range.first }, (_, i) => range.first + i);
  return { ids, localShape: { hidden: shape.hidden, inter: shape.inter, experts: ids.length, topK: shape.topK, swigluLimit: shape.swigluLimit } };
}

/** Binds the rank to its device and generates its experts there (phases cuda-init, weights). */
export async function rankExperts(ctx: RankContext, shape: UnfusedShape, seed: number):
  Promise<{ localShape: UnfusedShape; weights: DeviceMoeWeights }> {
  ctx.phase('cuda-init');
  useDevice(ctx.device);
  ctx.phase('weights');
  const { ids, localShape } = rankShare(ctx, shape);
  return { localShape, weights: await DeviceMoeWeights.randomExperts(localShape, seed, ids, shape.experts) };
}
