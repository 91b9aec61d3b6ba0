// Token sampling from one position's logits: greedy (temperature 0), temperature, top-k, top-p (nucleus), in
// that order (top-p over the top-k set renormalised, as HF and vLLM do). Seeded sampling is reproducible: the
// same seed and logits give the same tokens on every machine (xoshiro128** from util/rng, f64 arithmetic, ties
// broken by the lower id). One Sampler per sequence, so a batching engine can step sequences in any order.
import { randomBytes } from 'node:crypto';
import { Rng } from '../util/rng.js';
import type { SamplingParams } from './contracts.js';

type Logits = Float32Array | Float64Array | readonly number[];

/** Index of the largest logit; the lowest index among equals. NaN logits are an error (a broken forward). */
export function argmax(logits: Logits): number {
  let best = -1;
  let bestV = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (v !== v) throw new Error(`sampler: logit ${i} is NaN`);
    if (v > bestV || best < 0) { best = i; bestV = v; }
  }
  if (best < 0) throw new Error('sampler: empty logits');
  return best;
}

/** Checks sampling parameters; throws a message naming the field. */
export function validateSampling(p: SamplingParams): void {
  if (!(Number.isFinite(p.temperature) && p.temperature >= 0)) throw new Error(`sampling: temperature must be a finite number >= 0, got ${p.temperature}`);
  if (!(Number.isInteger(p.topK) && p.topK >= 0)) throw new Error(`sampling: topK must be an integer >= 0 (0 = off), got ${p.topK}`);
  if (!(Number.isFinite(p.topP) && p.topP > 0 && p.topP <= 1)) throw new Error(`sampling: topP must be in (0, 1] (1 = off), got ${p.topP}`);
  if (p.seed !== undefined && !(Number.isInteger(p.seed) && p.seed >= 0 && p.seed <= 0xffffffff)) throw new Error(`sampling: seed must be an integer in [0, 2^32), got ${p.seed}`);
}

/** The largest `m` ids by logit, sorted by logit descending then id ascending (a bounded min-heap, O(V log m)). */
export function topIds(logits: Logits, m: number): Int32Array {
  const V = logits.length;
  if (m >= V) {
    const all = new Int32Array(V);
    for (let i = 0; i < V; i++) all[i] = i;
    return all.sort((a, b) => logits[b] - logits[a] || a - b);
  }
  // Heap root = the worst kept candidate: lowest logit, and among equal logits the highest id.
  const heap = new Int32Array(m);
  let size = 0;
  const worse = (a: number, b: number) => logits[a] < logits[b] || (logits[a] === logits[b] && a > b);
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let w = i;
      if (l < size && worse(heap[l], heap[w])) w = l;
      if (r < size && worse(heap[r], heap[w])) w = r;
      if (w === i) return;
      const t = heap[i]; heap[i] = heap[w]; heap[w] = t; i = w;
    }
  };
  for (let id = 0; id < V; id++) {
    if (size < m) {
      let i = size++;
      heap[i] = id;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!worse(heap[i], heap[p])) break;
        const t = heap[i]; heap[i] = heap[p]; heap[p] = t; i = p;
      }
    } else if (worse(heap[0], id)) {
      heap[0] = id;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => logits[b] - logits[a] || a - b);
}

/** The distribution a Sampler draws from: candidate ids (best first) and their probabilities (summing to 1). */
export interface Distribution { ids: Int32Array; probs: Float64Array }

/**
 * The filtered, renormalised distribution for non-greedy parameters. Exposed so tests (and a server's logprobs)
 * see exactly what sample() draws from; sample() itself avoids sorting the vocabulary when it can.
 */
export function samplingDistribution(logits: Logits, p: SamplingParams): Distribution {
  validateSampling(p);
  if (p.temperature === 0) {
    const id = argmax(logits);
    return { ids: Int32Array.of(id), probs: Float64Array.of(1) };
  }
  const { ids, weights, total } = candidates(logits, p);
  const probs = new Float64Array(ids.length);
  for (let i = 0; i < ids.length; i++) probs[i] = weights[i] / total;
  return { ids, probs };
}

/** exp((l - max) / T) over the candidate set, after top-k and top-p, with their sum. */
function candidates(logits: Logits, p: SamplingParams): { ids: Int32Array; weights: Float64Array; total: number } {
  const V = logits.length;
  const max = logits[argmax(logits)];
  if (max === -Infinity) throw new Error('sampler: every logit is -Infinity');
  const invT = 1 / p.temperature;
  const w = (id: number) => Math.exp((logits[id] - max) * invT);
  let ids: Int32Array;
  let mass: number; // the mass top-p measures against: the whole vocabulary, or the top-k set
  if (p.topK > 0 && p.topK < V) {
    ids = topIds(logits, p.topK);
    mass = 0;
    for (const id of ids) mass += w(id);
  } else {
    mass = 0;
    for (let i = 0; i < V; i++) mass += w(i);
    if (p.topP >= 1) {
      ids = new Int32Array(V);
      for (let i = 0; i < V; i++) ids[i] = i;
      return { ids, weights: Float64Array.from(ids, w), total: mass };
    }
    // Nucleus without top-k: grow a sorted prefix until it holds topP of the mass (usually a few hundred ids).
    for (let m = Math.min(256, V); ; m = Math.min(m * 8, V)) {
      ids = topIds(logits, m);
      let cum = 0;
      for (const id of ids) cum += w(id);
      if (cum >= p.topP * mass || m === V) break;
    }
  }
  // Smallest best-first prefix whose mass reaches topP (the token that crosses the line is kept).
  let keep = ids.length;
  if (p.topP < 1) {
    let cum = 0;
    for (let i = 0; i < ids.length; i++) {
      cum += w(ids[i]);
      if (cum >= p.topP * mass) { keep = i + 1; break; }
    }
  }
  ids = ids.subarray(0, keep);
  const weights = Float64Array.from(ids, w);
  let total = 0;
  for (const x of weights) total += x;
  return { ids, weights, total };
}

export class Sampler {
  /** The seed in use (drawn at random when the parameters had none), so a run can be repeated. */
  readonly seed: number;
  private readonly rng: Rng;

  constructor(readonly params: SamplingParams) {
    validateSampling(params);
    this.seed = params.seed ?? randomBytes(4).readUInt32LE(0);
    this.rng = new Rng(this.seed);
  }

  /** The next token id from one position's logits. */
  sample(logits: Logits): number {
    const p = this.params;
    if (p.temperature === 0 || p.topK === 1) return argmax(logits);
    const { ids, weights, total } = candidates(logits, p);
    // Inverse CDF over the candidates in their fixed order: one uniform per token, reproducible.
    const u = this.rng.uniform() * total;
    let cum = 0;
    for (let i = 0; i < ids.length; i++) {
      cum += weights[i];
      if (u < cum) return ids[i];
    }
    // Rounding left u at the very top: the last candidate with non-zero weight.
    for (let i = ids.length - 1; i >= 0; i--) if (weights[i] > 0) return ids[i];
    return ids[0];
  }
}
