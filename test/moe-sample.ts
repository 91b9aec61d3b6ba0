// Routing and row sampling shared by the GPU backend tests (gpu-unfused-correctness, gpu-mega-moe).
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

export { rowsOf, sampleRows } from '../src/tensor/rows.js';

export type Routing = { ids: HostTensor<'I64'>; weights: HostTensor<'F32'> };

/** K distinct random experts per token, weights summing to ~1.5; `masked` of the slots set to -1. */
export function randomRouting(seed: number, T: number, E: number, K: number, masked = 0): Routing {
  const rng = new Rng(seed);
  const ids = new BigInt64Array(T * K);
  const w = new Float32Array(T * K);
  const perm = Int32Array.from({ length: E }, (_, i) => i);
  for (let t = 0; t < T; t++) {
    for (let k = 0; k < K; k++) {
      const p = k + rng.int(E - k);
      const tmp = perm[k]; perm[k] = perm[p]; perm[p] = tmp;
      ids[t * K + k] = rng.uniform() < masked ? -1n : BigInt(perm[k]);
      w[t * K + k] = Math.fround((0.2 + rng.uniform()) * 1.5 / K);
    }
  }
  return { ids: new HostTensor('I64', [T, K], ids), weights: new HostTensor('F32', [T, K], w) };
}
