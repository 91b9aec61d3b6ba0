// Test parts for the server tests: the REAL sampler, streaming detokenizer and stop matcher of the generation
// layer (src/generate/engine-parts.ts, as `megamoe serve` builds them), around two test doubles that stay until
// the DeepSeek-V4 model (src/model/) lands: a byte-level tokenizer and a tiny deterministic CausalLM (with its
// `role: content` chat template). They stay in test/ on purpose (no fake model in src/).
//
// Why the tokenizer and the chat encoding are still doubles: the real tokenizer has 129280 ids (and the V4 chat
// encoding emits special-token ids past 128000), while the toy model's vocabulary is the byte tokenizer's 258 ids,
// so the engine would refuse every real prompt id as outside the model's vocabulary; and the toy model's greedy
// text is written per byte, which the tests read back (the `toy` helpers). The sampler, detokenizer and stop
// matcher do not depend on the vocabulary and are the real ones (the detokenizer takes the byte tokenizer's
// token bytes, the path it takes for the real BPE).
//
// To run every server test on the real embedded model instead, change the one line in makeParts() marked SWAP
// (to `return loadEngineParts(ensureDefaultCheckpoint(), { backend: 'reference', enableExpertParallel: false })`);
// that needs src/model/index.ts (loadModel), and an embedded default that carries the tokenizer files
// (writeTokenizerFiles) and the real vocabulary: today's default-tiny-v1 has vocab_size 1024 and no tokenizer.json,
// so createEngineParts refuses it. The tests assert behaviour against the parts' own tokenizer and never on the
// toy model's text, except where they say so (the `toy` helpers).
import type { CausalLM, ModelSequence, ModelStepItem } from '../src/model/causal-lm.js';
import type { ChatMessage, SamplingParams, TextTokenizer } from '../src/generate/contracts.js';
import { Engine, type EngineOptions } from '../src/engine/engine.js';
// Imported for the SWAP line in makeParts() (the real parts), so the swap is that one line.
import { ensureDefaultCheckpoint } from '../src/checkpoint/synthetic.js';
import { loadEngineParts } from '../src/engine/load-parts.js';
import type { EngineParts } from '../src/engine/parts.js';
import { engineParts } from '../src/generate/engine-parts.js';
import { buildServer, type ServerOptions } from '../src/server/app.js';
import { createMetrics } from '../src/server/metrics.js';

export const BOS = 256;
export const EOS = 257;

/** Bytes are tokens 0..255; BOS and EOS are 256, 257. */
export class ByteTokenizer implements TextTokenizer {
  readonly vocabSize = 258;
  readonly bosId = BOS;
  readonly eosId = EOS;
  encode(text: string): number[] { return [...Buffer.from(text, 'utf8')]; }
  /** ByteLevelTokenizer: the bytes a token stands for (none for BOS and EOS), so StreamDecoder streams by bytes. */
  tokenBytes(id: number): Uint8Array { return id < 256 ? Uint8Array.of(id) : new Uint8Array(0); }
  isSpecial(id: number): boolean { return id >= 256; }
  decode(ids: readonly number[], opts?: { skipSpecial?: boolean }): string {
    let out = '';
    let bytes: number[] = [];
    const flush = () => { out += Buffer.from(bytes).toString('utf8'); bytes = []; };
    for (const id of ids) {
      if (id < 256) { bytes.push(id); continue; }
      flush();
      if (!opts?.skipSpecial) out += id === BOS ? '<bos>' : '<eos>';
    }
    flush();
    return out;
  }
  tokenId(token: string): number | undefined {
    if (token === '<bos>') return BOS;
    if (token === '<eos>') return EOS;
    const b = Buffer.from(token, 'utf8');
    return b.length === 1 ? b[0] : undefined;
  }
}

/** The toy model's greedy text walks through this, by absolute position in the sequence. */
export const TOY_TEXT = 'the quick brown fox jumps over the lazy dog. ';
const ALPHABET = [...Buffer.from('abcdefghijklmnopqrstuvwxyz .')];

/** What the toy model writes greedily after a prompt of `promptLen` tokens (n tokens, no EOS). */
export function toyGreedy(promptLen: number, n: number): string {
  let out = '';
  for (let i = 0; i < n; i++) out += TOY_TEXT[(promptLen + i) % TOY_TEXT.length];
  return out;
}

interface ToySeq extends ModelSequence {
  length: number;
  id: number;
}

/**
 * A deterministic CausalLM: the most likely token after position p is TOY_TEXT[p mod its length]; the rest of
 * the alphabet has lower, equal logits (so seeded sampling at temperature 1 differs from greedy and between
 * seeds); a last token '!' makes EOS the most likely. Optional delay per step (so concurrency is real), and a
 * record of every step (to check batching) and of the live sequences (to check release).
 */
export class ToyLM implements CausalLM {
  readonly vocabSize = 258;
  readonly maxContext: number;
  stepDelayMs: number;
  readonly live = new Set<ToySeq>();
  readonly steps: Array<Array<{ seq: number; tokens: number }>> = [];
  private next = 0;
  constructor(opts: { maxContext?: number; stepDelayMs?: number } = {}) {
    this.maxContext = opts.maxContext ?? 512;
    this.stepDelayMs = opts.stepDelayMs ?? 0;
  }
  createSequence(): ModelSequence {
    const s: ToySeq = { length: 0, id: this.next++ };
    this.live.add(s);
    return s;
  }
  releaseSequence(seq: ModelSequence): void {
    if (!this.live.delete(seq as ToySeq)) throw new Error('released a sequence twice or one that is not live');
  }
  async step(items: readonly ModelStepItem[]): Promise<Float32Array[]> {
    this.steps.push(items.map((it) => ({ seq: (it.seq as ToySeq).id, tokens: it.tokens.length })));
    if (this.stepDelayMs > 0) await new Promise((r) => setTimeout(r, this.stepDelayMs));
    return items.map((it) => {
      const s = it.seq as ToySeq;
      if (!this.live.has(s)) throw new Error('step on a released sequence');
      if (s.length + it.tokens.length > this.maxContext) throw new Error('context overflow');
      s.length += it.tokens.length;
      const logits = new Float32Array(this.vocabSize).fill(-30);
      for (const b of ALPHABET) logits[b] = 0;
      if (it.tokens[it.tokens.length - 1] === 0x21 /* '!' */) logits[EOS] = 8;
      else logits[TOY_TEXT.charCodeAt(s.length % TOY_TEXT.length)] = 4;
      return logits;
    });
  }
}

export function toyChat(tok: TextTokenizer) {
  return (messages: readonly ChatMessage[]): number[] =>
    [tok.bosId, ...tok.encode(messages.map((m) => `${m.role}: ${m.content}\n`).join('') + 'assistant: ')];
}

export interface Fixture {
  parts: EngineParts;
  /** The toy model when the parts are the doubles (undefined on the real model). */
  toy: ToyLM | undefined;
}

export async function makeParts(opts: { stepDelayMs?: number; maxContext?: number } = {}): Promise<Fixture> {
  // SWAP (uncomment to run the server tests on the real embedded model once src/model and the generation parts land):
  // return { parts: await loadEngineParts(ensureDefaultCheckpoint(), { backend: 'reference', enableExpertParallel: false }), toy: undefined };
  void loadEngineParts; void ensureDefaultCheckpoint;
  const tokenizer = new ByteTokenizer();
  const toy = new ToyLM(opts);
  // The real sampler, detokenizer and stop matcher; the tokenizer and chat encoding stay the toy model's (see the top).
  const real = engineParts(tokenizer);
  return {
    toy,
    parts: {
      model: toy, tokenizer, createSampler: real.createSampler, createDetokenizer: real.createDetokenizer,
      createStopMatcher: real.createStopMatcher, encodeChat: toyChat(tokenizer),
    },
  };
}

export const MODEL = 'toy';

export interface TestServer extends Fixture {
  url: string;
  engine: Engine;
  close(): Promise<void>;
}

/** A real fastify server on 127.0.0.1 (a free port) over a real Engine. */
export async function startTestServer(
  engineOpts: Partial<EngineOptions> = {},
  serverOpts: Partial<Pick<ServerOptions, 'apiKey' | 'requestTimeoutMs' | 'modelNames'>> = {},
  partsOpts: { stepDelayMs?: number; maxContext?: number } = {},
): Promise<TestServer> {
  const fx = await makeParts(partsOpts);
  const metrics = createMetrics(MODEL);
  const engine = new Engine(fx.parts, {
    maxNumSeqs: 4, maxQueue: 16, maxModelLen: fx.parts.model.maxContext, observer: metrics.observer, ...engineOpts,
  });
  metrics.bind(engine);
  const app = buildServer({ engine, parts: fx.parts, modelNames: [MODEL], metrics, version: '0.1.0-test', ...serverOpts });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return {
    ...fx, url, engine,
    async close() {
      const closed = app.close();
      await engine.shutdown(0);
      // As serve's shutdown: sockets the client keeps alive would hold close() for the client's keep-alive time.
      app.server.closeAllConnections();
      await closed;
    },
  };
}

/** Polls until cond() holds (or fails the test after timeoutMs). */
export async function waitFor(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
