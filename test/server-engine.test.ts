// The engine on its own (no HTTP): continuous batching, chunked prefill, stop handling, cancellation,
// deadlines, the bounded queue, shutdown, and a failing step. Uses the test doubles of server-fixture.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine } from '../src/engine/engine.js';
import { ContextLengthError, EngineShutdownError, EngineStepError, QueueFullError, QueueTimeoutError } from '../src/engine/errors.js';
import { makeParts, toyGreedy, waitFor, EOS } from './server-fixture.js';

const greedy = { temperature: 0, topK: 0, topP: 1 };

test('engine: greedy generation, usage, max_tokens, stop strings, EOS', async () => {
  const { parts } = await makeParts();
  const e = new Engine(parts, { maxNumSeqs: 2, maxQueue: 4, maxModelLen: 512 });
  const prompt = parts.tokenizer.encode('hello');
  const chunks: string[] = [];
  const r = await e.submit({ promptIds: prompt, sampling: greedy, maxTokens: 12, onChunk: (c) => chunks.push(c.text) });
  assert.equal(r.finishReason, 'length');
  assert.equal(r.text, toyGreedy(prompt.length, 12));
  assert.equal(chunks.join(''), r.text);
  assert.equal(r.completionTokens, 12);
  assert.equal(r.promptTokens, prompt.length);
  assert.deepEqual(parts.tokenizer.encode(r.text), r.tokenIds);

  // "fox" is in the toy text: the output ends right before it and the matched text never streams.
  const full = toyGreedy(prompt.length, 40);
  const streamed: string[] = [];
  const s = await e.submit({ promptIds: prompt, sampling: greedy, maxTokens: 40, stopStrings: ['fox', 'zzz'], onChunk: (c) => streamed.push(c.text) });
  assert.equal(s.finishReason, 'stop');
  assert.equal(s.text, full.slice(0, full.indexOf('fox')));
  assert.equal(streamed.join(''), s.text);

  const eos = await e.submit({ promptIds: parts.tokenizer.encode('stop now!'), sampling: greedy, maxTokens: 5 });
  assert.equal(eos.finishReason, 'stop');
  assert.deepEqual(eos.tokenIds, [EOS]);
  assert.equal(eos.text, '');
  const ignored = await e.submit({ promptIds: parts.tokenizer.encode('stop now!'), sampling: greedy, maxTokens: 3, ignoreEos: true });
  assert.equal(ignored.finishReason, 'length');
  assert.equal(ignored.completionTokens, 3);
  await e.shutdown(0);
});

test('engine: requests join and leave between steps; prefill and decode share a step; chunked prefill', async () => {
  const { parts, toy } = await makeParts({ stepDelayMs: 2 });
  const e = new Engine(parts, { maxNumSeqs: 4, maxQueue: 4, maxModelLen: 512, maxBatchedTokens: 16 });
  const a = e.submit({ promptIds: parts.tokenizer.encode('a'), sampling: greedy, maxTokens: 30 });
  await waitFor(() => toy!.steps.length >= 3, 5000, 'a few decode steps');
  const longPrompt = parts.tokenizer.encode('x'.repeat(40));
  const b = e.submit({ promptIds: longPrompt, sampling: greedy, maxTokens: 5 });
  const [ra, rb] = await Promise.all([a, b]);
  assert.equal(ra.completionTokens, 30);
  assert.equal(rb.text, toyGreedy(longPrompt.length, 5));
  // Some step carried a's decode (1 token) and a chunk of b's prompt (capped by the budget 16 - 1).
  const mixed = toy!.steps.find((s) => s.length === 2 && s.some((i) => i.tokens === 1) && s.some((i) => i.tokens > 1));
  assert.ok(mixed, `no mixed step in ${JSON.stringify(toy!.steps.slice(0, 12))}`);
  assert.ok(toy!.steps.every((s) => s.reduce((n, i) => n + i.tokens, 0) <= 16), 'a step exceeded the token budget');
  assert.equal(toy!.live.size, 0, 'every sequence released');
  await e.shutdown(0);
});

test('engine: cancellation releases the sequence; queued requests cancel too', async () => {
  const { parts, toy } = await makeParts({ stepDelayMs: 2 });
  const e = new Engine(parts, { maxNumSeqs: 1, maxQueue: 4, maxModelLen: 512 });
  const ac = new AbortController();
  let n = 0;
  const running = e.submit({ promptIds: [1, 2, 3], sampling: greedy, maxTokens: 400, signal: ac.signal, onChunk: () => { n++; } });
  const queuedAc = new AbortController();
  const queued = e.submit({ promptIds: [1], sampling: greedy, maxTokens: 4, signal: queuedAc.signal });
  await waitFor(() => n >= 3, 5000, 'tokens');
  assert.equal(e.numWaiting, 1);
  queuedAc.abort();
  assert.equal((await queued).finishReason, 'cancelled');
  assert.equal(e.numWaiting, 0);
  ac.abort();
  const r = await running;
  assert.equal(r.finishReason, 'cancelled');
  assert.ok(r.completionTokens < 400);
  assert.equal(toy!.live.size, 0);
  assert.equal(e.numRunning, 0);
  await e.shutdown(0);
});

test('engine: deadlines (running: finish "deadline"; waiting: QueueTimeoutError)', async () => {
  const { parts, toy } = await makeParts({ stepDelayMs: 5 });
  const e = new Engine(parts, { maxNumSeqs: 1, maxQueue: 4, maxModelLen: 512 });
  const first = e.submit({ promptIds: [1], sampling: greedy, maxTokens: 400, timeoutMs: 80 });
  const second = e.submit({ promptIds: [1], sampling: greedy, maxTokens: 2, timeoutMs: 30 });
  await assert.rejects(second, QueueTimeoutError);
  const r = await first;
  assert.equal(r.finishReason, 'deadline');
  assert.ok(r.completionTokens > 0 && r.completionTokens < 400);
  assert.equal(toy!.live.size, 0);
  await e.shutdown(0);
});

test('engine: bounded queue, context length, shutdown drains then refuses', async () => {
  const { parts, toy } = await makeParts({ stepDelayMs: 2 });
  // A step budget below one token per running sequence is refused up front (as vLLM does).
  assert.throws(() => new Engine(parts, { maxNumSeqs: 8, maxQueue: 1, maxModelLen: 64, maxBatchedTokens: 4 }),
    /max batched tokens 4 is below max num seqs 8: .*pass --max-num-batched-tokens >= --max-num-seqs/);
  const e = new Engine(parts, { maxNumSeqs: 2, maxQueue: 1, maxModelLen: 64 });
  assert.throws(() => e.submit({ promptIds: new Array(60).fill(1), sampling: greedy, maxTokens: 10 }), ContextLengthError);
  assert.throws(() => e.submit({ promptIds: new Array(64).fill(1), sampling: greedy }), ContextLengthError);
  const ok = [0, 1, 2].map(() => e.submit({ promptIds: [1, 2], sampling: greedy, maxTokens: 8 }));
  assert.throws(() => e.submit({ promptIds: [1], sampling: greedy, maxTokens: 1 }), (err: unknown) => err instanceof QueueFullError && err.retryAfterSeconds === 1);
  const draining = e.shutdown(5000);
  assert.throws(() => e.submit({ promptIds: [1], sampling: greedy, maxTokens: 1 }), EngineShutdownError);
  await draining;
  for (const r of await Promise.all(ok)) assert.equal(r.finishReason, 'length');
  assert.equal(toy!.live.size, 0);

  // Without a grace period the rest is cancelled.
  const e2 = new Engine(parts, { maxNumSeqs: 1, maxQueue: 2, maxModelLen: 512 });
  const long = e2.submit({ promptIds: [1], sampling: greedy, maxTokens: 400 });
  const waiting = e2.submit({ promptIds: [1], sampling: greedy, maxTokens: 400 });
  await waitFor(() => e2.steps > 2);
  await e2.shutdown(20);
  assert.equal((await long).finishReason, 'cancelled');
  assert.equal((await waiting).finishReason, 'cancelled');
  assert.equal(toy!.live.size, 0);
});

test('engine: a failing step ends its requests with EngineStepError and the engine goes on', async () => {
  const { parts, toy } = await makeParts();
  const e = new Engine(parts, { maxNumSeqs: 2, maxQueue: 2, maxModelLen: 512 });
  const realStep = toy!.step.bind(toy);
  let fail = true;
  toy!.step = async (items) => { if (fail) { fail = false; throw new Error('device lost'); } return realStep(items); };
  await assert.rejects(e.submit({ promptIds: [1], sampling: greedy, maxTokens: 3 }), (err: unknown) => err instanceof EngineStepError && /device lost/.test((err as Error).message));
  const r = await e.submit({ promptIds: [1], sampling: greedy, maxTokens: 3 });
  assert.equal(r.completionTokens, 3);
  assert.equal(toy!.live.size, 0);
  await e.shutdown(0);
});
