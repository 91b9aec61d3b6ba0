// Seeded random MoE layers in memory, for tests and timing when no checkpoint is at hand.
// Two kinds: `makeRandomLayer` quantizes Gaussian weights properly (small shapes: tests), and
// `makeFlashShapedLayer` makes a V4-Flash-sized layer whose experts are generated lazily from random e4m3
// codes (generating 256 experts of 25 MB through real quantization would take minutes; timing needs only
// the right sizes and plausible values).
import { expertRange } from './placement.js';
import { encodeBF16 } from '../numerics/bf16.js';
import { quantizeWeightBlocks, QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import { HostTensor } from '../tensor/host.js';
import { Rng } from '../util/rng.js';
import type { ExpertStore, ExpertWeights, MoeLayerWeights, MoeShape } from './types.js';

/** A V4-like shape with the given sizes (scoring "sqrtsoftplus", norm on, scaling 1.5, limit 10). */
export function moeShape(sizes: { hidden: number; inter: number; experts: number; topk: number; vocab?: number;
  numHashLayers?: number }): MoeShape {
  return {
    hiddenSize: sizes.hidden,
    moeIntermediateSize: sizes.inter,
    nRoutedExperts: sizes.experts,
    numExpertsPerTok: sizes.topk,
    nSharedExperts: 1,
    numHashLayers: sizes.numHashLayers ?? 0,
    scoringFunc: 'sqrtsoftplus',
    topkMethod: 'noaux_tc',
    normTopkProb: true,
    routedScalingFactor: 1.5,
    swigluLimit: 10,
    vocabSize: sizes.vocab ?? 1024,
  };
}

/** A Map-backed store of experts, owning the ids given (all by default). */
export class MapExpertStore implements ExpertStore {
  readonly ids: readonly number[];
  private readonly make: (id: number) => ExpertWeights;
  private readonly cache = new Map<number, ExpertWeights>();
  private readonly owned: Set<number>;
  private readonly cacheLimit: number;
  /** `make` builds an expert on first use; at most `cacheLimit` stay cached (oldest dropped first). */
  constructor(ids: readonly number[], make: (id: number) => ExpertWeights, cacheLimit = Infinity) {
    this.ids = [...ids].sort((a, b) => a - b);
    this.owned = new Set(this.ids);
    this.make = make;
    this.cacheLimit = cacheLimit;
  }
  has(id: number): boolean { return this.owned.has(id); }
  get(id: number): ExpertWeights {
    if (!this.owned.has(id)) throw new Error(`expert ${id} is not on this rank (it owns ${this.ids.length} experts)`);
    let e = this.cache.get(id);
    if (!e) {
      e = this.make(id);
      if (this.cache.size >= this.cacheLimit) this.cache.delete(this.cache.keys().next().value as number);
      this.cache.set(id, e);
    }
    return e;
  }
  conversion(): undefined { return undefined; }
}


function gaussianWeight(rng: Rng, n: number, k: number, std: number): QuantizedWeight {
  const w = new Float32Array(n * k);
  rng.fillNormal(w, std);
  return quantizeWeightBlocks(w, n, k);
}

function randomFfn(rng: Rng, H: number, inter: number): ExpertWeights {
  // std 1/sqrt(fan_in) keeps g, u and o of order 1 for x ~ N(0, 1).
  return {
    w1: gaussianWeight(rng, inter, H, 1 / Math.sqrt(H)),
    w3: gaussianWeight(rng, inter, H, 1 / Math.sqrt(H)),
    w2: gaussianWeight(rng, H, inter, 1 / Math.sqrt(inter)),
  };
}

function randomGate(rng: Rng, E: number, H: number): HostTensor<'BF16'> {
  const g = new Uint16Array(E * H);
  for (let i = 0; i < g.length; i++) g[i] = encodeBF16(rng.normal() / Math.sqrt(H));
  return new HostTensor('BF16', [E, H], g);
}

export interface RandomLayerOptions {
  seed: number;
  shape: MoeShape;
  layer?: number;
  hash?: boolean;
  epRank?: number;
  epSize?: number;
}

/** A small random layer with properly quantized Gaussian weights (every expert built eagerly per seed). */
export function makeRandomLayer(o: RandomLayerOptions): MoeLayerWeights {
  const { shape } = o;
  const H = shape.hiddenSize; const I = shape.moeIntermediateSize; const E = shape.nRoutedExperts;
  const K = shape.numExpertsPerTok;
  const rng = new Rng(o.seed);
  const gateWeight = randomGate(rng, E, H);
  const gateBias = new Float32Array(E);
  for (let e = 0; e < E; e++) gateBias[e] = rng.normal() * 0.05;
  let tid2eid: Int32Array | undefined;
  if (o.hash) {
    tid2eid = new Int32Array(shape.vocabSize * K);
    const perm = Int32Array.from({ length: E }, (_, i) => i);
    for (let v = 0; v < shape.vocabSize; v++) {
      for (let j = 0; j < K; j++) { // partial Fisher-Yates: K distinct experts per token
        const p = j + rng.int(E - j);
        const tmp = perm[j]; perm[j] = perm[p]; perm[p] = tmp;
        tid2eid[v * K + j] = perm[j];
      }
    }
  }
  const epRank = o.epRank ?? 0; const epSize = o.epSize ?? 1;
  const { first: e0, end: e1 } = expertRange(E, epRank, epSize);
  const built = new Map<number, ExpertWeights>();
  for (let e = 0; e < E; e++) {
    const ffn = randomFfn(rng, H, I); // drawn for every expert, so placement does not change the weights
    if (e >= e0 && e < e1) built.set(e, ffn);
  }
  const sharedExpert = randomFfn(rng, H, I * shape.nSharedExperts);
  return {
    layer: o.layer ?? 0,
    shape,
    isHashLayer: !!o.hash,
    gateWeight,
    gateBias: o.hash ? undefined : gateBias,
    tid2eid,
    experts: new MapExpertStore([...built.keys()], (id) => built.get(id)!),
    sharedExpert,
    epRank,
    epSize,
  };
}

/** Random e4m3 codes in a moderate band (codes 0x20..0x5f: |value| in [2^-3, 30]), random sign, never NaN. */
function randomCodes(rng: Rng, count: number): Uint8Array {
  const q = new Uint8Array(count);
  for (let i = 0; i < count; i += 4) {
    let r = rng.nextU32();
    for (let b = 0; b < 4 && i + b < count; b++, r >>>= 8) q[i + b] = (r & 0x80) | (0x20 + (r & 0x3f));
  }
  return q;
}

function randomCodeWeight(rng: Rng, n: number, k: number, std: number): QuantizedWeight {
  const s = new Float32Array(Math.ceil(n / QUANT_BLOCK) * Math.ceil(k / QUANT_BLOCK));
  // The codes' RMS is about 9.57 (uniform over the 64 magnitudes of randomCodes); pick scales so the weight's
  // RMS is about `std`.
  for (let i = 0; i < s.length; i++) s[i] = Math.fround((std / 9.57) * (0.75 + 0.5 * rng.uniform()));
  return { q: randomCodes(rng, n * k), s, n, k };
}

/** A layer of the given shape whose experts are made on first use from random codes (seeded per expert). */
export function makeFlashShapedLayer(seed: number, shape: MoeShape, cacheLimit = 16): MoeLayerWeights {
  const H = shape.hiddenSize; const I = shape.moeIntermediateSize; const E = shape.nRoutedExperts;
  const rng = new Rng(seed);
  const gateBias = new Float32Array(E);
  for (let e = 0; e < E; e++) gateBias[e] = rng.normal() * 0.05;
  const ffn = (r: Rng, inter: number): ExpertWeights => ({
    w1: randomCodeWeight(r, inter, H, 1 / Math.sqrt(H)),
    w3: randomCodeWeight(r, inter, H, 1 / Math.sqrt(H)),
    w2: randomCodeWeight(r, H, inter, 1 / Math.sqrt(inter)),
  });
  return {
    layer: 0,
    shape,
    isHashLayer: false,
    gateWeight: randomGate(rng, E, H),
    gateBias,
    experts: new MapExpertStore(Array.from({ length: E }, (_, i) => i), (id) => ffn(new Rng(seed * 7919 + id + 1), I), cacheLimit),
    sharedExpert: ffn(new Rng(seed * 7919), I * shape.nSharedExperts),
    epRank: 0,
    epSize: 1,
  };
}

/** Seeded hidden states: bf16 values of N(0, 1) (x is RMS-normalised, so unit RMS is the natural scale). */
export function randomHiddenStates(seed: number, T: number, H: number): HostTensor<'BF16'> {
  const rng = new Rng(seed);
  const x = new Uint16Array(T * H);
  for (let i = 0; i < x.length; i++) x[i] = encodeBF16(rng.normal());
  return new HostTensor('BF16', [T, H], x);
}

/** Seeded token ids in [0, vocab). */
export function randomTokenIds(seed: number, T: number, vocab: number): Int32Array {
  const rng = new Rng(seed ^ 0x5bd1e995);
  return Int32Array.from({ length: T }, () => rng.int(vocab));
}
