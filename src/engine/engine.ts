// The continuous-batching engine: one loop over CausalLM.step that every request shares. Independent of HTTP
// (src/server/ drives it; a benchmark or a test can too).
//
// Each iteration (one model step):
//   1. requests whose deadline passed while waiting are refused; waiting requests are admitted up to
//      maxNumSeqs (a ModelSequence, i.e. its caches, exists only for an admitted request, so memory is bounded);
//   2. one step is built: every decoding sequence feeds its last sampled token (decodes first, as vLLM's
//      chunked prefill does, so running streams keep their pace), then prefilling sequences take chunks of their
//      prompts from what is left of the per-step token budget (maxBatchedTokens): prefill and decode mix freely;
//   3. after the step, each sequence whose prompt is complete samples one token (on the model's device when it
//      samples there, DeviceSamplingLM: then no logits come back at all), which goes through the
//      streaming detokenizer and the stop matcher; a finished request (stop id, stop string, max_tokens, context
//      full, deadline) leaves at once and its sequence is released;
//   4. the loop yields to the event loop (setImmediate) so sockets are written, disconnects seen and new
//      requests queued before the next step.
// A cancelled request (its AbortSignal fired: the client went away) is released immediately when no step is in
// flight, otherwise right when the step that holds it returns (a step cannot drop a sequence halfway).
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { samplesOnDevice, type DeviceSamplingLM, type ModelSequence, type ModelStepItem } from '../model/causal-lm.js';
import type { FinishReason, GenerationChunk, SamplingParams } from '../generate/contracts.js';
import {
  ContextLengthError, EngineShutdownError, EngineStepError, InvalidRequestError, QueueFullError, QueueTimeoutError,
} from './errors.js';
import type { EngineParts, StopStringMatcher, StreamingDetokenizer, TokenSampler } from './parts.js';

export interface EngineOptions {
  /** Requests generating at once (vLLM's --max-num-seqs). */
  maxNumSeqs: number;
  /** Requests allowed to wait for a slot beyond those; one more is refused with QueueFullError (HTTP 429). */
  maxQueue: number;
  /** Longest prompt + completion (vLLM's --max-model-len); at most the model's maxContext. */
  maxModelLen: number;
  /** Tokens fed to one model step, decodes included (vLLM's --max-num-batched-tokens); default max(maxModelLen, 2048). */
  maxBatchedTokens?: number;
  /** What QueueFullError tells the client to wait (Retry-After), seconds. Default 1. */
  retryAfterSeconds?: number;
  observer?: EngineObserver;
}

/** Hooks for metrics (src/server/metrics.ts); all optional, all synchronous, none may throw. */
export interface EngineObserver {
  /** A request's whole prompt has been fed to the model. */
  onPromptDone?(promptTokens: number, queuedSeconds: number): void;
  onFirstToken?(ttftSeconds: number): void;
  /** Time between two consecutive tokens of one request. */
  onInterToken?(seconds: number): void;
  onStep?(scheduledTokens: number, items: number): void;
  onFinished?(result: EngineResult): void;
}

export interface EngineRequest {
  promptIds: readonly number[];
  sampling: SamplingParams;
  /** Undefined: as many as the context allows (vLLM's default). */
  maxTokens?: number;
  stopStrings?: readonly string[];
  /** Ids that end generation (the tokenizer's EOS is added unless ignoreEos). The id's text is not emitted. */
  stopIds?: readonly number[];
  ignoreEos?: boolean;
  /** Per-request deadline, milliseconds from submission: ends the request with finishReason 'deadline'. */
  timeoutMs?: number;
  /** Cancels the request (a client that disconnected): its sequence is released at once. */
  signal?: AbortSignal;
  /** Every sampled token, with the text it made safe to show ('' while a character or a stop string is pending). */
  onChunk?: (chunk: GenerationChunk) => void;
}

/** 'deadline': the per-request deadline ended it (the HTTP layer reports it as 'length', as llama.cpp does). */
export type EngineFinishReason = FinishReason | 'deadline';

export interface EngineResult {
  text: string;
  tokenIds: number[];
  promptTokens: number;
  completionTokens: number;
  finishReason: EngineFinishReason;
  /** Milliseconds: waiting for a slot, submission to first token (undefined if none), submission to the end. */
  queuedMs: number;
  ttftMs: number | undefined;
  e2eMs: number;
}

interface Active {
  req: EngineRequest;
  prompt: readonly number[];
  maxTokens: number;
  stopIds: ReadonlySet<number>;
  submittedAt: number;
  deadlineAt: number;
  admittedAt: number;
  seq: ModelSequence | undefined;
  /** Prompt tokens fed so far. */
  fed: number;
  /** The last sampled token, to be fed by the next step. */
  pending: number | undefined;
  out: number[];
  text: string;
  firstTokenAt: number | undefined;
  lastTokenAt: number;
  sampler: TokenSampler | undefined;
  detok: StreamingDetokenizer | undefined;
  stop: StopStringMatcher | undefined;
  done: boolean;
  cancelRequested: boolean;
  inStep: boolean;
  resolve: (r: EngineResult) => void;
  reject: (e: unknown) => void;
  onAbort: (() => void) | undefined;
}

export class Engine {
  readonly options: Readonly<Required<Omit<EngineOptions, 'observer'>>>;
  private readonly parts: EngineParts;
  /** The model when it samples on its own device (DeviceSamplingLM): then the engine makes no samplers. */
  private readonly deviceSampler: DeviceSamplingLM | undefined;
  private readonly observer: EngineObserver;
  private readonly waiting: Active[] = [];
  private running: Active[] = [];
  private looping = false;
  private closing = false;
  private idleWaiters: Array<() => void> = [];
  private stepsRun = 0;

  constructor(parts: EngineParts, options: EngineOptions) {
    const { model } = parts;
    if (!(Number.isInteger(options.maxNumSeqs) && options.maxNumSeqs >= 1)) throw new RangeError(`maxNumSeqs must be a positive integer, got ${options.maxNumSeqs}`);
    if (!(Number.isInteger(options.maxQueue) && options.maxQueue >= 0)) throw new RangeError(`maxQueue must be a non-negative integer, got ${options.maxQueue}`);
    if (!(Number.isInteger(options.maxModelLen) && options.maxModelLen >= 2)) throw new RangeError(`maxModelLen must be an integer >= 2, got ${options.maxModelLen}`);
    if (options.maxModelLen > model.maxContext) {
      throw new RangeError(`max model length ${options.maxModelLen} exceeds the model's context of ${model.maxContext} tokens: pass --max-model-len ${model.maxContext} or less`);
    }
    const maxBatchedTokens = options.maxBatchedTokens ?? Math.max(options.maxModelLen, 2048);
    if (!(Number.isInteger(maxBatchedTokens) && maxBatchedTokens >= options.maxNumSeqs)) {
      // Every running sequence feeds at least its one decode token a step (vLLM refuses the same settings).
      throw new RangeError(`max batched tokens ${maxBatchedTokens} is below max num seqs ${options.maxNumSeqs}: each running sequence feeds one token a step; `
        + 'pass --max-num-batched-tokens >= --max-num-seqs');
    }
    this.parts = parts;
    this.deviceSampler = samplesOnDevice(model) ? model : undefined;
    this.observer = options.observer ?? {};
    this.options = {
      maxNumSeqs: options.maxNumSeqs,
      maxQueue: options.maxQueue,
      maxModelLen: options.maxModelLen,
      maxBatchedTokens,
      retryAfterSeconds: options.retryAfterSeconds ?? 1,
    };
  }

  get numRunning(): number { return this.running.length; }
  get numWaiting(): number { return this.waiting.length; }
  get steps(): number { return this.stepsRun; }
  get isShuttingDown(): boolean { return this.closing; }

  /**
   * Fraction of the engine's token capacity (maxNumSeqs sequences of maxModelLen tokens) that the running
   * sequences' caches hold: the CausalLM contract exposes no allocator, so this is the closest honest figure for
   * vLLM's kv_cache_usage_perc (0..1).
   */
  get kvCacheUsage(): number {
    let used = 0;
    for (const a of this.running) used += a.seq?.length ?? 0;
    return used / (this.options.maxNumSeqs * this.options.maxModelLen);
  }

  /**
   * Checks that a request can fit the context (prompt + max_tokens <= maxModelLen) and returns its effective
   * max_tokens. Throws ContextLengthError or InvalidRequestError; callers use it before answering anything.
   */
  checkFits(promptTokens: number, maxTokens: number | undefined): number {
    const L = this.options.maxModelLen;
    if (promptTokens < 1) throw new InvalidRequestError('the prompt is empty (it must have at least one token)', 'prompt');
    if (maxTokens !== undefined) {
      if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new InvalidRequestError(`max_tokens must be a positive integer, got ${maxTokens}`, 'max_tokens');
      if (promptTokens + maxTokens > L) throw new ContextLengthError(L, promptTokens, maxTokens);
      return maxTokens;
    }
    if (promptTokens >= L) throw new ContextLengthError(L, promptTokens, undefined);
    return L - promptTokens;
  }

  /**
   * Queues a request. Refuses synchronously (before anything is sent to a client) with EngineShutdownError,
   * QueueFullError, ContextLengthError or InvalidRequestError; the promise then settles with the result (a
   * cancelled request resolves with finishReason 'cancelled'), or rejects with QueueTimeoutError /
   * EngineStepError.
   */
  submit(req: EngineRequest): Promise<EngineResult> {
    if (this.closing) throw new EngineShutdownError();
    const maxTokens = this.checkFits(req.promptIds.length, req.maxTokens);
    const vocab = this.parts.model.vocabSize;
    for (const id of req.promptIds) {
      if (!(Number.isInteger(id) && id >= 0 && id < vocab)) throw new InvalidRequestError(`prompt token id ${id} is outside the vocabulary [0, ${vocab})`, 'prompt');
    }
    const free = this.options.maxNumSeqs - this.running.length;
    if (this.waiting.length >= this.options.maxQueue + Math.max(0, free)) {
      throw new QueueFullError(this.options.maxQueue, this.options.retryAfterSeconds);
    }
    if (req.signal?.aborted) {
      return Promise.resolve(this.emptyResult(req.promptIds.length, 'cancelled', performance.now()));
    }
    const stopIds = new Set(req.stopIds ?? []);
    if (!req.ignoreEos) stopIds.add(this.parts.tokenizer.eosId);
    const now = performance.now();
    return new Promise<EngineResult>((resolve, reject) => {
      const a: Active = {
        req, prompt: req.promptIds, maxTokens, stopIds, submittedAt: now,
        deadlineAt: req.timeoutMs !== undefined ? now + req.timeoutMs : Infinity, admittedAt: now,
        seq: undefined, fed: 0, pending: undefined, out: [], text: '', firstTokenAt: undefined, lastTokenAt: now,
        sampler: undefined, detok: undefined, stop: undefined,
        done: false, cancelRequested: false, inStep: false, resolve, reject, onAbort: undefined,
      };
      if (req.signal) {
        a.onAbort = () => this.cancel(a);
        req.signal.addEventListener('abort', a.onAbort, { once: true });
      }
      this.waiting.push(a);
      this.kick();
    });
  }

  /**
   * Stops taking requests, lets the admitted and queued ones finish for up to graceMs, then cancels what is
   * left (finishReason 'cancelled') and resolves when the loop has stopped and every sequence is released.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.closing = true;
    if (!this.idle()) {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), Math.max(0, graceMs)); });
      const outcome = await Promise.race([this.whenIdle(), timedOut]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        for (const a of [...this.waiting, ...this.running]) this.cancel(a);
        await this.whenIdle();
      }
    }
  }

  private idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0 && !this.looping;
  }

  private whenIdle(): Promise<void> {
    if (this.idle()) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    // Started on a fresh tick so submit() returns (and its caller can attach handlers) before any step runs.
    void yieldToEventLoop().then(() => this.loop());
  }

  private async loop(): Promise<void> {
    try {
      while (this.waiting.length > 0 || this.running.length > 0) {
        this.expireWaiting();
        this.admit();
        if (this.running.length === 0) break;
        await this.stepOnce();
        await yieldToEventLoop();
      }
    } finally {
      this.looping = false;
      if (this.waiting.length > 0) this.kick();
      else this.maybeIdle();
    }
  }

  private expireWaiting(): void {
    const now = performance.now();
    for (const a of [...this.waiting]) {
      if (now >= a.deadlineAt) {
        this.removeWaiting(a);
        this.detach(a);
        a.done = true;
        a.reject(new QueueTimeoutError(now - a.submittedAt));
      }
    }
  }

  private admit(): void {
    while (this.running.length < this.options.maxNumSeqs && this.waiting.length > 0) {
      const a = this.waiting.shift()!;
      try {
        const dev = this.deviceSampler;
        if (!dev) a.sampler = this.parts.createSampler(a.req.sampling);
        a.detok = this.parts.createDetokenizer(this.parts.tokenizer);
        a.stop = this.parts.createStopMatcher(a.req.stopStrings ?? []);
        a.seq = this.parts.model.createSequence();
        if (dev) {
          try {
            dev.setSampling(a.seq, a.req.sampling);
          } catch (err) {
            dev.releaseSequence(a.seq);
            a.seq = undefined;
            // The device sampler's limits (e.g. top_k past its candidates) are the request's to fix.
            throw new InvalidRequestError(err instanceof Error ? err.message : String(err), 'top_k');
          }
        }
      } catch (err) {
        this.detach(a);
        a.done = true;
        a.reject(err instanceof InvalidRequestError ? err : new EngineStepError(err));
        continue;
      }
      a.admittedAt = performance.now();
      this.running.push(a);
    }
  }

  private async stepOnce(): Promise<void> {
    const items: ModelStepItem[] = [];
    const owners: Active[] = [];
    let budget = this.options.maxBatchedTokens;
    for (const a of this.running) {
      if (a.pending !== undefined) {
        items.push({ seq: a.seq!, tokens: [a.pending] });
        owners.push(a);
        budget -= 1;
      }
    }
    for (const a of this.running) {
      if (a.pending === undefined && a.fed < a.prompt.length) {
        // Every prefilling sequence gets at least one token when nothing decodes, so the loop always progresses.
        const n = Math.min(a.prompt.length - a.fed, Math.max(budget, items.length === 0 ? 1 : 0));
        if (n <= 0) continue;
        items.push({ seq: a.seq!, tokens: a.prompt.slice(a.fed, a.fed + n) });
        owners.push(a);
        budget -= n;
      }
    }
    if (items.length === 0) return;
    let scheduled = 0;
    for (const it of items) scheduled += it.tokens.length;
    for (const a of owners) a.inStep = true;
    // A model that samples on its device returns the tokens (of the items whose prompt is complete after this step);
    // otherwise the logits come back and each request's sampler draws here.
    const dev = this.deviceSampler;
    let logits: Float32Array[] = [];
    let tokens: Int32Array | undefined;
    try {
      if (dev) {
        const want = owners.map((a, i) => a.pending !== undefined || a.fed + items[i].tokens.length >= a.prompt.length);
        tokens = await dev.stepAndSample(items, want);
        if (tokens.length !== items.length) throw new Error(`stepAndSample returned ${tokens.length} tokens for ${items.length} items`);
      } else {
        logits = await this.parts.model.step(items);
        if (logits.length !== items.length) throw new Error(`step returned ${logits.length} logits rows for ${items.length} items`);
      }
    } catch (err) {
      for (const a of owners) a.inStep = false;
      const e = new EngineStepError(err);
      for (const a of owners) this.finish(a, undefined, e);
      return;
    } finally {
      this.stepsRun++;
    }
    for (const a of owners) a.inStep = false;
    this.observer.onStep?.(scheduled, items.length);
    const now = performance.now();
    for (let i = 0; i < owners.length; i++) {
      const a = owners[i];
      if (a.done) continue;
      if (a.cancelRequested) { this.finish(a, 'cancelled'); continue; }
      const fedNow = items[i].tokens.length;
      if (a.pending !== undefined) {
        a.pending = undefined;
      } else {
        a.fed += fedNow;
        if (a.fed < a.prompt.length) continue; // a chunk of the prompt: its logits predict nothing we need
        this.observer.onPromptDone?.(a.prompt.length, (a.admittedAt - a.submittedAt) / 1000);
      }
      try {
        this.advance(a, tokens ? tokens[i] : a.sampler!.sample(logits[i]), now);
      } catch (err) {
        this.finish(a, undefined, new EngineStepError(err));
      }
    }
  }

  /** One sampled token for a request whose prompt is complete: emit it, then decide whether it is done. */
  private advance(a: Active, id: number, now: number): void {
    a.out.push(id);
    if (a.firstTokenAt === undefined) {
      a.firstTokenAt = now;
      this.observer.onFirstToken?.((now - a.submittedAt) / 1000);
    } else {
      this.observer.onInterToken?.((now - a.lastTokenAt) / 1000);
    }
    a.lastTokenAt = now;

    let reason: EngineFinishReason | undefined;
    let text: string;
    if (a.stopIds.has(id)) {
      // A stop id (EOS): its own text is never shown, but what the detokenizer and stop matcher held back is.
      reason = 'stop';
      text = this.flushTail(a);
    } else {
      const r = a.stop!.push(a.detok!.push(id));
      text = r.text;
      if (r.stopped) {
        reason = 'stop'; // the text ends where the stop string begins: nothing held back is released
      } else if (a.out.length >= a.maxTokens || a.prompt.length + a.out.length >= this.options.maxModelLen) {
        reason = 'length';
        text += this.flushTail(a);
      } else if (now >= a.deadlineAt) {
        reason = 'deadline';
        text += this.flushTail(a);
      }
    }
    a.text += text;
    a.req.onChunk?.({ tokenId: id, text });
    if (reason !== undefined) this.finish(a, reason);
    else a.pending = id;
  }

  /** What the detokenizer and the stop matcher still hold when generation ends for a reason other than a stop string. */
  private flushTail(a: Active): string {
    const r = a.stop!.push(a.detok!.flush());
    return r.stopped ? r.text : r.text + a.stop!.flush();
  }

  private cancel(a: Active): void {
    if (a.done) return;
    a.cancelRequested = true;
    if (this.removeWaiting(a)) {
      this.detach(a);
      a.done = true;
      a.resolve(this.emptyResult(a.prompt.length, 'cancelled', a.submittedAt));
      this.maybeIdle();
      return;
    }
    // Not inside a step: its caches can go now. Inside one, stepOnce releases it when the step returns.
    if (!a.inStep) this.finish(a, 'cancelled');
  }

  private finish(a: Active, reason: EngineFinishReason | undefined, error?: unknown): void {
    if (a.done) return;
    a.done = true;
    this.detach(a);
    if (a.seq) {
      try { this.parts.model.releaseSequence(a.seq); } catch { /* a failed release must not stop the others */ }
      a.seq = undefined;
    }
    this.running = this.running.filter((r) => r !== a);
    if (error !== undefined) {
      a.reject(error);
    } else {
      const now = performance.now();
      const result: EngineResult = {
        text: a.text, tokenIds: a.out, promptTokens: a.prompt.length, completionTokens: a.out.length,
        finishReason: reason!, queuedMs: a.admittedAt - a.submittedAt,
        ttftMs: a.firstTokenAt === undefined ? undefined : a.firstTokenAt - a.submittedAt, e2eMs: now - a.submittedAt,
      };
      this.observer.onFinished?.(result);
      a.resolve(result);
    }
    this.maybeIdle();
  }

  private maybeIdle(): void {
    if (this.idle()) {
      const ws = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of ws) w();
    }
  }

  private detach(a: Active): void {
    if (a.onAbort && a.req.signal) a.req.signal.removeEventListener('abort', a.onAbort);
    a.onAbort = undefined;
  }

  private removeWaiting(a: Active): boolean {
    const i = this.waiting.indexOf(a);
    if (i < 0) return false;
    this.waiting.splice(i, 1);
    return true;
  }

  private emptyResult(promptTokens: number, finishReason: EngineFinishReason, submittedAt: number): EngineResult {
    const e2e = performance.now() - submittedAt;
    return { text: '', tokenIds: [], promptTokens, completionTokens: 0, finishReason, queuedMs: e2e, ttftMs: undefined, e2eMs: e2e };
  }
}
