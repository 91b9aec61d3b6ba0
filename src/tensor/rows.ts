// Row selection on 2-D host tensors, for checks that compare a sample of a batch against a slow reference.
import { Rng } from '../util/rng.js';
import { allocStorage, HostTensor } from './host.js';

/** The given rows of a 2-D host tensor, as a new tensor. */
export function rowsOf<D extends 'BF16' | 'I64' | 'F32'>(t: HostTensor<D>, rows: number[]): HostTensor<D> {
  const cols = t.shape[1];
  const out = allocStorage(t.dtype, rows.length * cols);
  const dst = out as unknown as { set(src: ArrayLike<number | bigint>, offset: number): void };
  const src = t.data as unknown as { subarray(a: number, b: number): ArrayLike<number | bigint> };
  rows.forEach((r, i) => dst.set(src.subarray(r * cols, r * cols + cols), i * cols));
  return new HostTensor(t.dtype, [rows.length, cols], out);
}

/** All rows when T <= count, else the first, the last and seeded random others (count in all), sorted. */
export function sampleRows(seed: number, T: number, count: number): number[] {
  if (T <= count) return Array.from({ length: T }, (_, i) => i);
  const rng = new Rng(seed);
  const set = new Set<number>([0, T - 1]);
  while (set.size < count) set.add(rng.int(T));
  return [...set].sort((a, b) => a - b);
}
