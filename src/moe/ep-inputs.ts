// Seeded inputs of `megamoe verify --ep N`: each rank's hidden states and routing, reproducible by any process from
// (seed, rank, T) alone, so the ranks make their own and the verifying process makes the same ones for EP1 and the
// CPU reference without shipping them around. Pure: no GPU.
import { randomHiddenStates } from './synthetic.js';
import { HostTensor } from '../tensor/host.js';
import { Rng } from '../util/rng.js';

export type EpRoutingMode = 'uniform' | 'skewed';
export const EP_ROUTING_MODES: readonly EpRoutingMode[] = ['uniform', 'skewed'];

/** Share of the slots masked (-1) under uniform routing: masked slots must contribute nothing, at EP as at EP1. */
export const UNIFORM_MASKED_SHARE = 0.02;

export interface EpInputs {
  x: HostTensor<'BF16'>;
  /** GLOBAL expert ids [T, K], -1 masked. */
  ids: HostTensor<'I64'>;
  weights: HostTensor<'F32'>;
}

/** The rank every token goes to under skewed routing: the last (so that rank 0's own tokens travel too). */
export function skewTarget(worldSize: number): number {
  return worldSize - 1;
}

function inputSeed(seed: number, rank: number, tokens: number): number {
  return ((seed * 1_000_003 + rank * 7919 + tokens * 31) >>> 0) || 1;
}

/**
 * Rank `rank`'s T tokens: x ~ N(0, 1) in bf16; K distinct experts per token, uniformly from all E ('uniform', with
 * UNIFORM_MASKED_SHARE of the slots masked) or from the experts of rank skewTarget(N) only ('skewed': the whole world's
 * tokens land on one rank); weights in (0.3, 1.5) / K as f32.
 */
export function epInputs(seed: number, rank: number, tokens: number, shape: { hidden: number; experts: number; topK: number },
  worldSize: number, routing: EpRoutingMode): EpInputs {
  const { hidden: H, experts: E, topK: K } = shape;
  if (E % worldSize !== 0) throw new RangeError(`${E} experts cannot be split evenly over ${worldSize} ranks; use an --ep that divides ${E}`);
  const per = E / worldSize;
  if (routing === 'skewed' && per < K) {
    throw new RangeError(`skewed routing puts K = ${K} distinct experts of ONE rank on every token, but a rank holds only ${per} experts at --ep ${worldSize}`);
  }
  const s = inputSeed(seed, rank, tokens);
  const x = randomHiddenStates(s, tokens, H);
  const rng = new Rng(s ^ 0x9e3779b9);
  const lo = routing === 'skewed' ? skewTarget(worldSize) * per : 0;
  const span = routing === 'skewed' ? per : E;
  const perm = Int32Array.from({ length: span }, (_, i) => lo + i);
  const ids = new BigInt64Array(tokens * K);
  const w = new Float32Array(tokens * K);
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < K; k++) {
      const p = k + rng.int(span - k);
      const tmp = perm[k]; perm[k] = perm[p]; perm[p] = tmp;
      const masked = routing === 'uniform' && rng.uniform() < UNIFORM_MASKED_SHARE;
      ids[t * K + k] = masked ? -1n : BigInt(perm[k]);
      w[t * K + k] = Math.fround((0.2 + rng.uniform()) * 1.5 / K);
    }
  }
  return { x, ids: new HostTensor('I64', [tokens, K], ids), weights: new HostTensor('F32', [tokens, K], w) };
}
