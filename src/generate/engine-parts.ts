// The serving engine's tokenizer and generation parts (src/engine/parts.ts), built from this layer's real classes:
// the model folder's tokenizer (loadTokenizer), the seeded Sampler, the streaming detokenizer (StreamDecoder),
// the stop-string matcher (StopMatcher) and the V4 chat encoding (encodeChat). A thin adapter and nothing more:
// every behaviour lives in those classes, with the same defaults generate() uses (special tokens are not
// streamed as text; chat mode, BOS included). src/engine/load-parts.ts imports this module dynamically.
import type { CausalLM } from '../model/causal-lm.js';
import type { EngineParts } from '../engine/parts.js';
import type { ChatMessage, SamplingParams, TextTokenizer } from './contracts.js';
import { Sampler } from './sampler.js';
import { StopMatcher } from './stop.js';
import { StreamDecoder } from '../tokenizer/detokenizer.js';
import { encodeChat } from '../tokenizer/chat.js';
import { loadTokenizer } from '../tokenizer/tokenizer.js';

/**
 * The server takes any integer seed (OpenAI and vLLM do); the Sampler's RNG takes [0, 2^32). Reduced modulo 2^32,
 * exactly for every safe integer, so a seed still gives the same tokens each time.
 */
function uint32Seed(seed: number): number {
  const m = 2 ** 32;
  return ((seed % m) + m) % m;
}

export type GenerationParts = Omit<EngineParts, 'model'>;

/** The parts around an already-built tokenizer (what createEngineParts does after loading the folder's). */
export function engineParts(tokenizer: TextTokenizer): GenerationParts {
  return {
    tokenizer,
    createSampler: (params: SamplingParams) => new Sampler(params.seed === undefined ? params : { ...params, seed: uint32Seed(params.seed) }),
    createDetokenizer: (tok: TextTokenizer) => new StreamDecoder(tok, { skipSpecial: true }),
    createStopMatcher: (stopStrings: readonly string[]) => {
      const m = new StopMatcher(stopStrings);
      return { push: (text: string) => { const r = m.push(text); return { text: r.text, stopped: r.stopped }; }, flush: () => m.flush() };
    },
    encodeChat: (messages: readonly ChatMessage[]) => encodeChat(messages, tokenizer),
  };
}

/**
 * The tokenizer of `modelDir` (tokenizer.json, tokenizer_config.json, generation_config.json) and the parts
 * around it. Refuses a tokenizer with more ids than the model's embedding has rows (not this model's tokenizer),
 * as `megamoe generate` does.
 */
export async function createEngineParts(modelDir: string, model: CausalLM): Promise<GenerationParts> {
  const tokenizer = await loadTokenizer(modelDir);
  if (tokenizer.vocabSize > model.vocabSize) {
    throw new Error(`the tokenizer in ${modelDir} has ${tokenizer.vocabSize} ids but the model's embedding only ${model.vocabSize}: not this model's tokenizer`);
  }
  return engineParts(tokenizer);
}
