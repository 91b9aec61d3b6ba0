// generate() and GenerationState against tiny deterministic CausalLMs written here (test doubles): a scripted
// model whose greedy continuation is a known token sequence, and a soft model for seeded sampling.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CausalLM, ModelSequence, ModelStepItem } from '../src/model/causal-lm.js';
import { GenerationState, defaultStop, generate, FLUSH_TOKEN_ID, type GenerationChunk, type GenerationResult, type SamplingParams } from '../src/generate/index.js';
import { v4Tokenizer } from './support/tokenizer.js';

const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

class Seq implements ModelSequence { length = 0; released = false; }

/**
 * A model whose next token, after the prompt, is script[generated so far] (logit 10, others 0), then EOS
 * forever. Records every step call so tests can check prefill / decode shapes and cache lengths.
 */
class ScriptedLM implements CausalLM {
  readonly calls: { tokens: number[]; lengthBefore: number }[][] = [];
  readonly sequences: Seq[] = [];
  failAt = -1;
  constructor(readonly vocabSize: number, readonly maxContext: number, private readonly promptLen: number, private readonly script: number[], private readonly eos = 1) {}
  createSequence(): ModelSequence { const s = new Seq(); this.sequences.push(s); return s; }
  releaseSequence(seq: ModelSequence): void { (seq as Seq).released = true; }
  async step(items: readonly ModelStepItem[]): Promise<Float32Array[]> {
    if (this.calls.length === this.failAt) throw new Error('forward failed');
    this.calls.push(items.map((it) => ({ tokens: [...it.tokens], lengthBefore: it.seq.length })));
    return items.map((it) => {
      const s = it.seq as Seq;
      s.length += it.tokens.length;
      const logits = new Float32Array(this.vocabSize);
      const k = s.length - this.promptLen;
      logits[k < this.script.length ? this.script[k] : this.eos] = 10;
      return logits;
    });
  }
}

/** A model with smooth logits over 64 tokens that depend on the last token: something to sample from. */
class SoftLM implements CausalLM {
  readonly maxContext = 4096;
  constructor(readonly vocabSize: number) {}
  createSequence(): ModelSequence { return new Seq(); }
  releaseSequence(): void {}
  async step(items: readonly ModelStepItem[]): Promise<Float32Array[]> {
    return items.map((it) => {
      (it.seq as Seq).length += it.tokens.length;
      const last = it.tokens[it.tokens.length - 1];
      const logits = new Float32Array(this.vocabSize).fill(-Infinity);
      for (let j = 0; j < 64; j++) logits[1000 + j] = Math.sin(last * 0.37 + j * 1.3) * 2;
      return logits;
    });
  }
}

test('greedy: prefill once, then one-token decode steps; the scripted text streams back whole', async () => {
  const tok = await v4Tokenizer();
  const prompt = [tok.bosId, ...tok.encode('Say it:')];
  const want = 'Hello 世界 😀 👨‍👩‍👧 done';
  const script = tok.encode(want);
  const model = new ScriptedLM(tok.vocabSize, 4096, prompt.length, script);
  const chunks: GenerationChunk[] = [];
  const r = await generate({ model, tokenizer: tok, promptIds: prompt, sampling: GREEDY, stop: defaultStop(tok, 100), onChunk: (c) => chunks.push(c) });
  assert.equal(r.text, want);
  assert.equal(r.finishReason, 'stop');
  assert.deepEqual(r.tokenIds, [...script, tok.eosId]);
  assert.equal(r.promptTokens, prompt.length);
  assert.equal(r.completionTokens, script.length + 1);
  assert.equal(chunks.map((c) => c.text).join(''), want);
  assert.deepEqual(chunks.map((c) => c.tokenId), r.tokenIds);
  for (const c of chunks) assert.ok(!c.text.includes('\ufffd'), JSON.stringify(c.text));
  // Shapes: the prompt in one call, then each sampled token alone, on a cache that grows by one.
  assert.deepEqual(model.calls[0], [{ tokens: prompt, lengthBefore: 0 }]);
  assert.equal(model.calls.length, script.length + 1);
  for (let i = 1; i < model.calls.length; i++) assert.deepEqual(model.calls[i], [{ tokens: [script[i - 1]], lengthBefore: prompt.length + i - 1 }]);
  assert.equal(model.sequences.length, 1);
  assert.ok(model.sequences[0].released);
});

test('max tokens: finishes as length with exactly N tokens; 0 tokens runs nothing', async () => {
  const tok = await v4Tokenizer();
  const script = tok.encode('one two three four five six');
  const model = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const r = await generate({ model, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: defaultStop(tok, 3) });
  assert.equal(r.finishReason, 'length');
  assert.deepEqual(r.tokenIds, script.slice(0, 3));
  assert.equal(r.text, tok.decode(script.slice(0, 3)));
  assert.equal(model.calls.length, 3);
  const none = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const z = await generate({ model: none, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: defaultStop(tok, 0) });
  assert.deepEqual([z.finishReason, z.completionTokens, z.text, none.calls.length], ['length', 0, '', 0]);
});

test('the model context caps generation (length), and a prompt that fills it is refused', async () => {
  const tok = await v4Tokenizer();
  const script = tok.encode('a b c d e f g h');
  const model = new ScriptedLM(tok.vocabSize, 5, 2, script);
  const r = await generate({ model, tokenizer: tok, promptIds: [0, 100], sampling: GREEDY, stop: defaultStop(tok, 100) });
  assert.equal(r.finishReason, 'length');
  assert.equal(r.completionTokens, 3);
  await assert.rejects(generate({ model, tokenizer: tok, promptIds: [0, 1, 2, 3, 4], sampling: GREEDY, stop: defaultStop(tok, 1) }), /leaves no room/);
  await assert.rejects(generate({ model, tokenizer: tok, promptIds: [], sampling: GREEDY, stop: defaultStop(tok, 1) }), /no tokens/);
  await assert.rejects(generate({ model, tokenizer: tok, promptIds: [0, 999999], sampling: GREEDY, stop: defaultStop(tok, 1) }), /outside the model's vocabulary/);
});

test('stop strings across tokens end generation; the stop string is never streamed', async () => {
  const tok = await v4Tokenizer();
  const script = tok.encode('The answer is 42.</answer> trailing words');
  const model = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const chunks: string[] = [];
  const r = await generate({
    model, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: { maxTokens: 100, stopStrings: ['</answer>'], stopIds: [tok.eosId] },
    onChunk: (c) => chunks.push(c.text),
  });
  assert.equal(r.text, 'The answer is 42.');
  assert.equal(r.finishReason, 'stop');
  assert.equal(chunks.join(''), 'The answer is 42.');
  assert.ok(!chunks.some((c) => c.includes('<')));
  // A held-back partial match is released when EOS ends the stream instead.
  const m2 = new ScriptedLM(tok.vocabSize, 4096, 1, tok.encode('value </ans'));
  const r2 = await generate({ model: m2, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: { maxTokens: 100, stopStrings: ['</answer>'], stopIds: [tok.eosId] } });
  assert.deepEqual([r2.text, r2.finishReason], ['value </ans', 'stop']);
});

test('stop ids: any listed id ends generation, counted but not in the text; no stop ids runs to max tokens', async () => {
  const tok = await v4Tokenizer();
  const script = tok.encode('alpha beta gamma');
  const model = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const r = await generate({ model, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: { maxTokens: 100, stopStrings: [], stopIds: [script[1]] } });
  assert.deepEqual(r.tokenIds, script.slice(0, 2));
  assert.equal(r.text, tok.decode(script.slice(0, 1)));
  const m2 = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const r2 = await generate({ model: m2, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: { maxTokens: script.length + 2, stopStrings: [], stopIds: [] } });
  assert.equal(r2.finishReason, 'length');
  assert.equal(r2.text, 'alpha beta gamma'); // the EOS that follows is special: left out of the text
  const r3 = await generate({ model: new ScriptedLM(tok.vocabSize, 4096, 1, script), tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: { maxTokens: script.length + 1, stopStrings: [], stopIds: [] }, skipSpecial: false });
  assert.equal(r3.text, 'alpha beta gamma<｜end▁of▁sentence｜>');
});

test('AbortSignal: cancelled mid-stream keeps what was made and releases the sequence', async () => {
  const tok = await v4Tokenizer();
  const script = tok.encode('one two three four five six seven eight nine ten');
  const model = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const ac = new AbortController();
  let n = 0;
  const r = await generate({ model, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: defaultStop(tok, 100), signal: ac.signal, onChunk: () => { if (++n === 3) ac.abort(); } });
  assert.equal(r.finishReason, 'cancelled');
  assert.deepEqual(r.tokenIds, script.slice(0, 3));
  assert.equal(r.text, tok.decode(script.slice(0, 3)));
  assert.ok(model.sequences[0].released);
  const pre = new AbortController();
  pre.abort();
  const m2 = new ScriptedLM(tok.vocabSize, 4096, 1, script);
  const r2 = await generate({ model: m2, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: defaultStop(tok, 100), signal: pre.signal });
  assert.deepEqual([r2.finishReason, r2.completionTokens, m2.calls.length], ['cancelled', 0, 0]);
  assert.ok(m2.sequences[0].released);
});

test('a failing forward rejects, and the sequence is still released', async () => {
  const tok = await v4Tokenizer();
  const model = new ScriptedLM(tok.vocabSize, 4096, 1, tok.encode('x y z'));
  model.failAt = 2;
  await assert.rejects(generate({ model, tokenizer: tok, promptIds: [0], sampling: GREEDY, stop: defaultStop(tok, 10) }), /forward failed/);
  assert.ok(model.sequences[0].released);
});

test('seeded sampling: same seed, same completion; another seed, another one', async () => {
  const tok = await v4Tokenizer();
  const run = async (seed: number) => (await generate({
    model: new SoftLM(tok.vocabSize), tokenizer: tok, promptIds: [0, 5000], sampling: { temperature: 1, topK: 20, topP: 0.95, seed },
    stop: { maxTokens: 40, stopStrings: [], stopIds: [] },
  })).tokenIds;
  const a = await run(123);
  assert.equal(a.length, 40);
  assert.ok(a.every((id) => id >= 1000 && id < 1064));
  assert.deepEqual(await run(123), a);
  assert.notDeepEqual(await run(124), a);
});

test('GenerationState: two sequences stepped together in one model call match generate() alone', async () => {
  const tok = await v4Tokenizer();
  const sampling: SamplingParams = { temperature: 0.9, topK: 0, topP: 1, seed: 9 };
  const prompts = [[0, 7000], [0, 9000, 9001]];
  const alone: GenerationResult[] = [];
  for (const p of prompts) alone.push(await generate({ model: new SoftLM(tok.vocabSize), tokenizer: tok, promptIds: p, sampling, stop: { maxTokens: 12, stopStrings: [], stopIds: [] } }));
  // A two-sequence engine loop: prefill both in one call, then decode both in one call per step.
  const model = new SoftLM(tok.vocabSize);
  const seqs = prompts.map(() => model.createSequence());
  const states = prompts.map(() => new GenerationState(tok, sampling, { maxTokens: 12, stopStrings: [], stopIds: [] }));
  let logits = await model.step(prompts.map((p, i) => ({ seq: seqs[i], tokens: p })));
  while (states.some((s) => !s.done)) {
    const items = [];
    const live = states.map((s, i) => [s, i] as const).filter(([s]) => !s.done);
    for (const [s, i] of live) {
      const out = s.next(logits[live.findIndex(([, j]) => j === i)]);
      if (!out.finishReason) items.push({ seq: seqs[i], tokens: [out.chunk.tokenId] });
    }
    if (items.length === 0) break;
    // Sequences that finished this step drop out; the rest keep their order.
    const stillLive = live.filter(([s]) => !s.done);
    logits = await model.step(items);
    assert.equal(logits.length, stillLive.length);
  }
  states.forEach((s, i) => { assert.deepEqual(s.tokenIds, alone[i].tokenIds); assert.equal(s.text, alone[i].text); });
});

test('GenerationState.finish releases held-back text as a flush chunk', async () => {
  const tok = await v4Tokenizer();
  const s = new GenerationState(tok, GREEDY, { maxTokens: 10, stopStrings: ['STOP'], stopIds: [] });
  const ids = tok.encode('go ST');
  for (const id of ids) s.accept(id);
  assert.equal(s.text, 'go ');
  assert.deepEqual(s.finish('cancelled'), { tokenId: FLUSH_TOKEN_ID, text: 'ST' });
  assert.equal(s.text, 'go ST');
  assert.equal(s.finishReason, 'cancelled');
  assert.throws(() => s.accept(5), /already finished/);
});
