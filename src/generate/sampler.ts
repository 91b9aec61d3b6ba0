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

/** The distribution a Sampler draws from: candidate ids, in the order sample() walks them, and their probabilities. */
export interface Distribution { ids: Int32Array; probs: Float64Array }

/**
 * The filtered, renormalised distribution for given parameters. Exposed so tests (and a server's logprobs) see
 * exactly what sample() draws from.
 */
export function samplingDistribution(logits: Logits, p: SamplingParams): Distribution {
  validateSampling(p);
  if (p.temperature === 0 || p.topK === 1) {
    const id = argmax(logits);
    return { ids: Int32Array.of(id), probs: Float64Array.of(1) };
  }
  const { ids, weights, total } = candidates(logits, p);
  const probs = new Float64Array(ids.length);
  for (let i = 0; i < ids.length; i++) probs[i] = weights[i] / total;
  return { ids, probs };
}

interface Candidates { ids: Int32Array; weights: Float64Array; total: number }

/** Per-sampler buffers sized to the vocabulary, so a decode step allocates (almost) nothing. */
class Scratch {
  private w?: Float64Array;
  private b?: Uint16Array;
  weights(n: number): Float64Array { if (!this.w || this.w.length !== n) this.w = new Float64Array(n); return this.w; }
  private i?: Int32Array;
  private k?: Float64Array;
  buckets(n: number): Uint16Array { if (!this.b || this.b.length !== n) this.b = new Uint16Array(n); return this.b; }
  ids(n: number): Int32Array { if (!this.i || this.i.length !== n) this.i = new Int32Array(n); return this.i; }
  kept(n: number): Float64Array { if (!this.k || this.k.length !== n) this.k = new Float64Array(n); return this.k; }
}

/**
 * exp((l - max) / T) over the candidate set after top-k and top-p, with their sum. The kept set is always the
 * smallest best-first prefix (by logit, then lower id) whose mass reaches topP of the mass it is cut from (the
 * token that crosses the line is kept); only its order differs by path: best-first under top-k, id order
 * otherwise, which avoids sorting the vocabulary.
 */
function candidates(logits: Logits, p: SamplingParams, scratch: Scratch = new Scratch()): Candidates {
  const V = logits.length;
  const max = logits[argmax(logits)];
  if (max === -Infinity) throw new Error('sampler: every logit is -Infinity');
  const invT = 1 / p.temperature;
  if (p.topK > 0 && p.topK < V) {
    const ids = topIds(logits, p.topK);
    const weights = new Float64Array(ids.length);
    let mass = 0;
    for (let i = 0; i < ids.length; i++) { weights[i] = Math.exp((logits[ids[i]] - max) * invT); mass += weights[i]; }
    if (p.topP >= 1) return { ids, weights, total: mass };
    let cum = 0, keep = ids.length;
    for (let i = 0; i < ids.length; i++) { cum += weights[i]; if (cum >= p.topP * mass) { keep = i + 1; break; } }
    const kept = weights.subarray(0, keep);
    return { ids: ids.subarray(0, keep), weights: kept, total: sum(kept) };
  }
  const w = scratch.weights(V);
  let mass = 0;
  for (let i = 0; i < V; i++) { w[i] = Math.exp((logits[i] - max) * invT); mass += w[i]; }
  if (p.topP >= 1) {
    const ids = new Int32Array(V);
    for (let i = 0; i < V; i++) ids[i] = i;
    return { ids, weights: w.slice(), total: mass };
  }
  const cut = nucleusCut(logits, w, p.topP * mass, max, scratch.buckets(V));
  // One pass, into scratch (the caller reads the candidates before the next sample()).
  const ids = scratch.ids(V), weights = scratch.kept(V);
  let n = 0, total = 0;
  for (let i = 0; i < V; i++) {
    const l = logits[i];
    if (l > cut.logit || (l === cut.logit && i <= cut.id)) { ids[n] = i; weights[n] = w[i]; total += w[i]; n++; }
  }
  return { ids: ids.subarray(0, n), weights: weights.subarray(0, n), total };
}

function sum(a: Float64Array): number {
  let t = 0;
  for (let i = 0; i < a.length; i++) t += a[i];
  return t;
}

/**
 * The last token (logit, id) of the best-first prefix whose weight reaches target, without sorting the whole
 * vocabulary: histogram the weights by logit into buckets, find the bucket where the running mass crosses the
 * target, and sort only that bucket.
 */
function nucleusCut(logits: Logits, w: Float64Array, target: number, max: number, bucket: Uint16Array): { logit: number; id: number } {
  const V = logits.length;
  let min = max;
  for (let i = 0; i < V; i++) if (w[i] > 0 && logits[i] < min) min = logits[i];
  const NB = 4096;
  const scale = max > min ? NB / (max - min) : 0;
  const mass = new Float64Array(NB);
  for (let i = 0; i < V; i++) {
    const b = w[i] > 0 ? Math.min(NB - 1, Math.floor((max - logits[i]) * scale)) : NB; // NB: weightless, never kept
    bucket[i] = b;
    if (b < NB) mass[b] += w[i];
  }
  let cum = 0, b = 0;
  for (; b < NB - 1; b++) { if (cum + mass[b] >= target) break; cum += mass[b]; }
  const members: number[] = [];
  for (let i = 0; i < V; i++) if (bucket[i] === b) members.push(i);
  members.sort((x, y) => logits[y] - logits[x] || x - y);
  for (const id of members) { cum += w[id]; if (cum >= target) return { logit: logits[id], id }; }
  // Rounding kept the running sum a hair under target: the whole bucket is in.
  const last = members[members.length - 1];
  return { logit: logits[last], id: last };
}

export class Sampler {
  /** The seed in use (drawn at random when the parameters had none), so a run can be repeated. */
  readonly seed: number;
  private readonly rng: Rng;
  private readonly scratch = new Scratch();

  constructor(readonly params: SamplingParams) {
    validateSampling(params);
    this.seed = params.seed ?? randomBytes(4).readUInt32LE(0);
    this.rng = new Rng(this.seed);
  }

  /** The next token id from one position's logits. */
  sample(logits: Logits): number {
    const p = this.params;
    if (p.temperature === 0 || p.topK === 1) return argmax(logits);
    if ((p.topK === 0 || p.topK >= logits.length) && p.topP >= 1) return this.sampleFull(logits);
    const { ids, weights, total } = candidates(logits, p, this.scratch);
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

  /** Temperature only: inverse CDF over the whole vocabulary in id order, nothing allocated. */
  private sampleFull(logits: Logits): number {
    const max = logits[argmax(logits)];
    if (max === -Infinity) throw new Error('sampler: every logit is -Infinity');
    const invT = 1 / this.params.temperature;
    const w = this.scratch.weights(logits.length);
    let total = 0;
    for (let i = 0; i < logits.length; i++) { w[i] = Math.exp((logits[i] - max) * invT); total += w[i]; }
    const u = this.rng.uniform() * total;
    let cum = 0, last = 0;
    for (let i = 0; i < logits.length; i++) {
      if (w[i] > 0) last = i;
      cum += w[i];
      if (u < cum) return i;
    }
    return last;
  }
}
