// The contract between the model (src/model/: the DeepSeek-V4 forward) and everything that drives it
// (src/generate/: sampling and the generation loop; src/server/: the engine behind the HTTP API). Written
// first so the three can grow in parallel; the model implements it, the others import only this file.

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
