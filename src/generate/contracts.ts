// Contracts between the tokenizer/generation layer (src/tokenizer/, src/generate/) and its users (the CLI's
// generate command, src/server/). Written first so they can grow in parallel; implementations live beside it.
import type { CausalLM } from '../model/causal-lm.js';

export interface TextTokenizer {
  readonly vocabSize: number;
  readonly bosId: number;
  readonly eosId: number;
  /** Plain text to ids; no BOS added. Special-token strings in the text are parsed as special tokens. */
  encode(text: string): number[];
  /** Ids to text (special tokens included as their strings unless skipSpecial). */
  decode(ids: readonly number[], opts?: { skipSpecial?: boolean }): string;
  /** Id of a token string (special or not), if the vocabulary has it. */
  tokenId(token: string): number | undefined;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** Seeded sampling is reproducible; absent = random seed. */
  seed?: number;
}

export interface StopParams {
  maxTokens: number;
  stopStrings: readonly string[];
  stopIds: readonly number[];
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

/** One generated piece as it streams: text is only ever whole UTF-8 characters, with stop strings held back. */
export interface GenerationChunk {
  tokenId: number;
  text: string;
}

export interface GenerationResult {
  text: string;
  tokenIds: number[];
  promptTokens: number;
  completionTokens: number;
  finishReason: FinishReason;
}

export interface GenerateRequest {
  model: CausalLM;
  tokenizer: TextTokenizer;
  promptIds: readonly number[];
  sampling: SamplingParams;
  stop: StopParams;
  onChunk?: (chunk: GenerationChunk) => void;
  signal?: AbortSignal;
}
