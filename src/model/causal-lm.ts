// The contract between the model (src/model/: the DeepSeek-V4 forward) and everything that drives it
// (src/generate/: sampling and the generation loop; src/server/: the engine behind the HTTP API). Written
// first so the three can grow in parallel; the model implements it, the others import only this file.
import type { SamplingParams } from '../generate/contracts.js';

/** One sequence's state inside a model: its caches (window, compressed, indexer) and its length. */
export interface ModelSequence {
  /** Tokens this sequence has consumed so far (its cache length). */
  readonly length: number;
}

export interface ModelStepItem {
  seq: ModelSequence;
  /** New tokens for this sequence: many for a prefill, one for a decode step. */
  tokens: readonly number[];
}

export interface CausalLM {
  readonly vocabSize: number;
  /** Longest sequence (prompt + generated) a sequence may reach. */
  readonly maxContext: number;
  /** A fresh, empty sequence (allocates its caches). */
  createSequence(): ModelSequence;
  /**
   * Runs the new tokens of every item (sequences may mix prefill and decode in one call), appends them to the
   * caches and returns, per item in order, the f32 logits [vocabSize] of that item's LAST new token.
   */
  step(items: readonly ModelStepItem[]): Promise<Float32Array[]>;
  /** Frees a sequence's caches at once (a finished or cancelled request). */
  releaseSequence(seq: ModelSequence): void;
}

/**
 * A CausalLM that also samples where it computes (the GPU model): a driver then never downloads logits. Each sequence
 * keeps its sampling parameters and random stream there, with src/generate/sampler.ts's semantics.
 */
export interface DeviceSamplingLM extends CausalLM {
  /** Sets a sequence's sampling and restarts its random stream from the seed (drawn when none); returns the seed. */
  setSampling(seq: ModelSequence, params: SamplingParams): number;
  /**
   * Runs the items as step() does and samples the last new token of each item with want[i] (each draw advances only
   * that sequence's stream); -1 for the others (e.g. a prompt chunk that is not the last).
   */
  stepAndSample(items: readonly ModelStepItem[], want: readonly boolean[]): Promise<Int32Array>;
}

/** Whether a model samples on its own device (DeviceSamplingLM). */
export function samplesOnDevice(model: CausalLM): model is DeviceSamplingLM {
  const m = model as Partial<DeviceSamplingLM>;
  return typeof m.setSampling === 'function' && typeof m.stepAndSample === 'function';
}
