// Routing and row sampling shared by the GPU backend tests (gpu-unfused-correctness, gpu-mega-moe).
import { allocStorage, HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

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

/** The given rows of a 2-D host tensor, as a new tensor. */
export function rowsOf<D extends 'BF16' | 'I64' | 'F32'>(t: HostTensor<D>, rows: number[]): HostTensor<D> {
  const cols = t.shape[1];
  const out = allocStorage(t.dtype, rows.length * cols);
  const dst = out as unknown as { set(src: ArrayLike<number | bigint>, offset: number): void };
  const src = t.data as unknown as { subarray(a: number, b: number): ArrayLike<number | bigint> };
  rows.forEach((r, i) => dst.set(src.subarray(r * cols, r * cols + cols), i * cols));
  return new HostTensor(t.dtype, [rows.length, cols], out);
}

/** All rows when T <= count, else the first, the last and random others, sorted. */
export function sampleRows(seed: number, T: number, count: number): number[] {
  if (T <= count) return Array.from({ length: T }, (_, i) => i);
  const rng = new Rng(seed);
  const set = new Set<number>([0, T - 1]);
  while (set.size < count) set.add(rng.int(T));
  return [...set].sort((a, b) => a - b);
}

