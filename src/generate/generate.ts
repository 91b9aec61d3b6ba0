// The generation loop: prefill the prompt, then one-token decode steps on a CausalLM, sampling each token and
// streaming text as it becomes final. The per-sequence logic (sample, stop ids, detokenize, stop strings, max
// tokens) lives in GenerationState so that a continuous-batching engine, which steps many sequences in one
// model call, reuses exactly what generate() does for one.
import { StreamDecoder } from '../tokenizer/detokenizer.js';
import type { FinishReason, GenerateRequest, GenerationChunk, GenerationResult, SamplingParams, StopParams, TextTokenizer } from './contracts.js';
import { Sampler } from './sampler.js';
import { StopMatcher } from './stop.js';

/** tokenId of a chunk that carries only held-back text released at the end (no new token). */
export const FLUSH_TOKEN_ID = -1;

export interface GenerationStateOptions {
  /**
   * Leave out special tokens (BOS, EOS, placeholders, role markers...) from the text; default true. The markup
   * tokens the completion parser reads (<think>, </think>, ｜DSML｜) are not special and always stay.
   */
  skipSpecial?: boolean;
}

export interface StepOutcome {
  /** The sampled token and the text that became final with it (possibly ''). */
  chunk: GenerationChunk;
  /** Set when this token ended the sequence. */
  finishReason?: FinishReason;
}

/**
 * One sequence's sampling and text state. Feed it the logits of the sequence's last position; it samples, and
 * says what to stream and whether the sequence is done. Then the caller steps the model with chunk.tokenId.
 * Stop ids end the sequence and are counted in tokenIds but never appear in the text.
 */
export class GenerationState {
  readonly tokenIds: number[] = [];
  readonly sampler: Sampler;
  private readonly decoder: StreamDecoder;
  private readonly matcher: StopMatcher;
  private readonly stopIds: ReadonlySet<number>;
  private readonly maxTokens: number;
  private textParts: string[] = [];
  private reason: FinishReason | undefined;

  constructor(tokenizer: TextTokenizer, sampling: SamplingParams, stop: StopParams, opts: GenerationStateOptions = {}) {
    if (!(Number.isInteger(stop.maxTokens) && stop.maxTokens >= 0)) throw new Error(`stop: maxTokens must be an integer >= 0, got ${stop.maxTokens}`);
    this.sampler = new Sampler(sampling);
    this.decoder = new StreamDecoder(tokenizer, { skipSpecial: opts.skipSpecial ?? true });
    this.matcher = new StopMatcher(stop.stopStrings);
    this.stopIds = new Set(stop.stopIds);
    this.maxTokens = stop.maxTokens;
    if (this.maxTokens === 0) this.reason = 'length';
  }

  get finishReason(): FinishReason | undefined { return this.reason; }
  get done(): boolean { return this.reason !== undefined; }
  /** The text streamed so far. */
  get text(): string { return this.textParts.join(''); }

  /** Samples the next token from logits and advances the text state. */
  next(logits: Float32Array): StepOutcome {
    if (this.reason) throw new Error(`generation: the sequence already finished (${this.reason})`);
    const id = this.sampler.sample(logits);
    return this.accept(id);
  }

  /** Advances with a token chosen elsewhere (e.g. a forced or speculative token). */
  accept(id: number): StepOutcome {
    if (this.reason) throw new Error(`generation: the sequence already finished (${this.reason})`);
    this.tokenIds.push(id);
    if (this.stopIds.has(id)) {
      return this.end({ tokenId: id, text: this.release() }, 'stop');
    }
    const r = this.matcher.push(this.decoder.push(id));
    if (r.stopped) return this.end({ tokenId: id, text: r.text }, 'stop');
    if (this.tokenIds.length >= this.maxTokens) return this.end({ tokenId: id, text: r.text + this.release() }, 'length');
    this.textParts.push(r.text);
    return { chunk: { tokenId: id, text: r.text } };
  }

  /**
   * Ends the sequence from outside (cancelled, or the context is full); returns a chunk with the held-back text
   * (tokenId FLUSH_TOKEN_ID) when there is any.
   */
  finish(reason: FinishReason): GenerationChunk | undefined {
    if (this.reason) return undefined;
    const text = this.release();
    this.reason = reason;
    if (!text) return undefined;
    this.textParts.push(text);
    return { tokenId: FLUSH_TOKEN_ID, text };
  }

  /** Held-back bytes and text, released: the stream ended without completing a stop string. */
  private release(): string {
    const r = this.matcher.push(this.decoder.flush());
    return r.stopped ? r.text : r.text + this.matcher.flush();
  }

  private end(chunk: GenerationChunk, reason: FinishReason): StepOutcome {
    this.textParts.push(chunk.text);
    this.reason = reason;
    return { chunk, finishReason: reason };
  }
}

/** Stop settings most callers want: the tokenizer's EOS as the only stop id, no stop strings. */
export function defaultStop(tokenizer: TextTokenizer, maxTokens: number): StopParams {
  return { maxTokens, stopStrings: [], stopIds: [tokenizer.eosId] };
}

class Cancelled extends Error {}

/**
 * Generates from a prompt: one prefill step over promptIds, then one decode step per sampled token, until a stop
 * id, a stop string, maxTokens, the model's context or the signal ends it. Cancellation returns what was made so
 * far (finishReason 'cancelled'), it does not throw. The sequence's caches are released in every case.
 * generate() adds no stop id on its own: pass defaultStop(tokenizer, n) or the EOS id in stop.stopIds.
 */
export async function generate(req: GenerateRequest & GenerationStateOptions): Promise<GenerationResult> {
  const { model, tokenizer, promptIds, signal } = req;
  if (promptIds.length === 0) throw new Error('generate: the prompt has no tokens (a DeepSeek prompt starts with BOS)');
  for (const id of promptIds) {
    if (!(Number.isInteger(id) && id >= 0 && id < model.vocabSize)) throw new Error(`generate: prompt token ${id} is outside the model's vocabulary [0, ${model.vocabSize})`);
  }
  if (promptIds.length >= model.maxContext) throw new Error(`generate: the prompt (${promptIds.length} tokens) leaves no room in the model's context of ${model.maxContext}`);
  const room = model.maxContext - promptIds.length;
  const maxTokens = Math.min(req.stop.maxTokens, room);
  const state = new GenerationState(tokenizer, req.sampling, { ...req.stop, maxTokens }, { skipSpecial: req.skipSpecial });
  const emit = (c: GenerationChunk | undefined) => { if (c && req.onChunk) req.onChunk(c); };
  const result = (): GenerationResult => ({
    text: state.text, tokenIds: state.tokenIds.slice(), promptTokens: promptIds.length,
    completionTokens: state.tokenIds.length, finishReason: state.finishReason ?? 'cancelled',
  });

  if (state.done) return result();
  const check = () => { if (signal?.aborted) throw new Cancelled(); };
  const seq = model.createSequence();
  try {
    check();
    let [logits] = await model.step([{ seq, tokens: promptIds }]);
    for (;;) {
      check();
      const out = state.next(logits);
      emit(out.chunk);
      // A full context shows up as maxTokens (clipped above), so it finishes as 'length' too.
      if (out.finishReason) break;
      [logits] = await model.step([{ seq, tokens: [out.chunk.tokenId] }]);
    }
  } catch (err) {
    if (!(err instanceof Cancelled)) throw err;
    emit(state.finish('cancelled'));
  } finally {
    model.releaseSequence(seq);
  }
  return result();
}
