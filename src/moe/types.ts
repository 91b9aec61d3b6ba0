// The MoE layer as the math sees it: shapes, routing settings and host weights. checkpoint/ fills these in,
// moe/ and the backends consume them.
import type { QuantizedWeight } from '../numerics/quant.js';
import type { HostTensor } from '../tensor/host.js';

/** What a MoE layer needs from config.json (checkpoint/config.ts parses and validates the whole file). */
export interface MoeShape {
  /** H */
  hiddenSize: number;
  /** I */
  moeIntermediateSize: number;
  /** E */
  nRoutedExperts: number;
  /** K */
  numExpertsPerTok: number;
  nSharedExperts: number;
  numHashLayers: number;
  scoringFunc: string;
  topkMethod: string;
  normTopkProb: boolean;
  routedScalingFactor: number;
  /** <= 0 means no clamp. */
  swigluLimit: number;
  vocabSize: number;
}

/** One FFN (routed expert or shared expert) in e4m3 with f32 128x128 block scales. */
export interface ExpertWeights {
  /** gate projection [I, H] */
  w1: QuantizedWeight;
  /** up projection [I, H] */
  w3: QuantizedWeight;
  /** down projection [H, I] */
  w2: QuantizedWeight;
}

/** How an "fp4" (MXFP4) expert converted to e4m3 with 128x128 f32 scales (SPEC 3). */
export interface ConversionReport {
  blocks: number;
  inexactBlocks: number;
  /** Largest absolute error of any converted value (0 when every block was exact). */
  worstAbsError: number;
  /** Largest error relative to that block's max |value|. */
  worstRelError: number;
}

/** Gives one routed expert's weights by global expert id, loading (and converting) on first use. */
export interface ExpertStore {
  /** Global ids of the experts this rank owns, ascending. */
  readonly ids: readonly number[];
  has(globalId: number): boolean;
  get(globalId: number): ExpertWeights;
  /** Conversion statistics of the experts loaded so far (fp4 checkpoints); undefined for fp8. */
  conversion(): ConversionReport | undefined;
}

export interface MoeLayerWeights {
  layer: number;
  shape: MoeShape;
  /** Whether this layer routes by token id (layer < num_hash_layers). */
  isHashLayer: boolean;
  /** gate.weight [E, H] bf16 */
  gateWeight: HostTensor<'BF16'>;
  /** gate.bias [E] f32 (score-routed layers only) */
  gateBias?: Float32Array;
  /** gate.tid2eid [vocab, K] (hash layers only) */
  tid2eid?: Int32Array;
  experts: ExpertStore;
  sharedExpert: ExpertWeights;
  /** Expert-parallel placement this layer was loaded for. */
  epRank: number;
  epSize: number;
}
