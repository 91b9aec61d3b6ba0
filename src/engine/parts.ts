// What the engine needs from the tokenizer/generation layer, one request at a time. The real implementations are
// being written in src/tokenizer/ and src/generate/ at the same time as this engine; these interfaces are the
// smallest per-step surface the scheduler drives, so the lead plugs the real ones in at merge with a few lines of
// adapter (src/engine/README in docs/SERVER.md, "Plugging in the parts"), and the engine never depends on how
// they are built. Everything here is synchronous and per token: the scheduler calls it between model steps.
import type { CausalLM } from '../model/causal-lm.js';
import type { ChatMessage, SamplingParams, TextTokenizer } from '../generate/contracts.js';

/** Picks the next token from one sequence's logits. One instance per request (it owns the seeded RNG state). */
export interface TokenSampler {
  sample(logits: Float32Array): number;
}
export type SamplerFactory = (params: SamplingParams) => TokenSampler;

/**
 * Turns ids into text as they arrive: `push` returns only whole UTF-8 characters (a partial multi-byte
 * sequence stays inside until its last byte comes), `flush` whatever is left at the end. One per request.
 */
export interface StreamingDetokenizer {
  push(tokenId: number): string;
  flush(): string;
}
export type DetokenizerFactory = (tokenizer: TextTokenizer) => StreamingDetokenizer;

/**
 * Holds back text that may be the start of a stop string. `push` returns the text now safe to emit and whether a
 * stop string was completed (the stop string itself and anything after it are never emitted); `flush` returns
 * the held-back tail when generation ends for another reason. One per request.
 */
export interface StopStringMatcher {
  push(text: string): { text: string; stopped: boolean };
  flush(): string;
}
export type StopMatcherFactory = (stopStrings: readonly string[]) => StopStringMatcher;

/** A chat's messages as prompt ids, with the model's chat template (BOS and the assistant turn opener included). */
export type ChatEncoder = (messages: readonly ChatMessage[]) => number[];

/** Everything an Engine is built from. */
export interface EngineParts {
  model: CausalLM;
  tokenizer: TextTokenizer;
  createSampler: SamplerFactory;
  createDetokenizer: DetokenizerFactory;
  createStopMatcher: StopMatcherFactory;
  encodeChat: ChatEncoder;
}
