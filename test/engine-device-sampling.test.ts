// The engine over a model that samples where it computes (DeviceSamplingLM, as the GPU model does): no logits
// reach the engine and the engine's own samplers are never made. A test double wraps the toy model of
// server-fixture.ts and draws with the real CPU sampler per sequence, so the results must equal the engine's CPU-side
// sampling path token for token (greedy and seeded). Also checked:
// - draws are asked only for items whose prompt is complete (a prompt chunk that is not the last draws nothing);
// - a request the device sampler refuses gets a 400-class InvalidRequestError, and its sequence is released.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine } from '../src/engine/engine.js';
import { InvalidRequestError } from '../src/engine/errors.js';
import type { SamplingParams } from '../src/generate/contracts.js';
import { Sampler } from '../src/generate/sampler.js';
import type { DeviceSamplingLM, ModelSequence, ModelStepItem } from '../src/model/causal-lm.js';
import { samplesOnDevice } from '../src/model/causal-lm.js';
import { makeParts, ToyLM } from './server-fixture.js';

class DeviceToyLM implements DeviceSamplingLM {
  readonly samplers = new Map<ModelSequence, Sampler>();
  readonly wants: boolean[][] = [];
  constructor(readonly toy: ToyLM) {}
  get vocabSize(): number { return this.toy.vocabSize; }
  get maxContext(): number { return this.toy.maxContext; }
  createSequence(): ModelSequence { return this.toy.createSequence(); }
  releaseSequence(seq: ModelSequence): void { this.samplers.delete(seq); this.toy.releaseSequence(seq); }
  step(items: readonly ModelStepItem[]): Promise<Float32Array[]> { return this.toy.step(items); }
  setSampling(seq: ModelSequence, params: SamplingParams): number {
    if (params.topK > 100) throw new Error(`top_k = ${params.topK} exceeds this sampler's 100 candidates`);
    this.samplers.set(seq, new Sampler(params));
    return params.seed ?? 0;
  }
  async stepAndSample(items: readonly ModelStepItem[], want: readonly boolean[]): Promise<Int32Array> {
    this.wants.push([...want]);
    const logits = await this.toy.step(items);
    return Int32Array.from(items, (it, i) => (want[i] ? this.samplers.get(it.seq)!.sample(logits[i]) : -1));
  }
}

const requests: Array<{ text: string; sampling: SamplingParams; maxTokens: number }> = [
  { text: 'hello there', sampling: { temperature: 0, topK: 0, topP: 1 }, maxTokens: 10 },
  { text: 'a longer prompt, in three chunks of the token budget', sampling: { temperature: 1, topK: 0, topP: 1, seed: 5 }, maxTokens: 8 },
  { text: 'seeded top-k and top-p', sampling: { temperature: 0.9, topK: 20, topP: 0.9, seed: 11 }, maxTokens: 8 },
];

async function runAll(device: boolean): Promise<{ outs: number[][]; model?: DeviceToyLM; samplersMade: number }> {
  const { parts, toy } = await makeParts();
  let samplersMade = 0;
  const createSampler = parts.createSampler;
  const model = device ? new DeviceToyLM(toy!) : undefined;
  const e = new Engine({ ...parts, model: model ?? toy!, createSampler: (p) => { samplersMade++; return createSampler(p); } },
    { maxNumSeqs: 4, maxQueue: 4, maxModelLen: 512, maxBatchedTokens: 20 });
  const rs = await Promise.all(requests.map((r) => e.submit({ promptIds: parts.tokenizer.encode(r.text), sampling: r.sampling, maxTokens: r.maxTokens })));
  await e.shutdown(0);
  return { outs: rs.map((r) => r.tokenIds), model, samplersMade };
}

test('engine + a device-sampling model: the CPU path\'s tokens; draws only where a prompt is complete; no engine samplers', async () => {
  const cpu = await runAll(false);
  const dev = await runAll(true);
  assert.ok(samplesOnDevice(dev.model!));
  assert.deepEqual(dev.outs, cpu.outs, 'same tokens as the engine sampling the downloaded logits');
  assert.equal(cpu.samplersMade, 3);
  assert.equal(dev.samplersMade, 0, 'the engine makes no sampler of its own');
  // A 20-token budget: the long prompt is prefilled over several steps, and only its last chunk draws.
  const steps = dev.model!.toy.steps;
  assert.equal(steps.length, dev.model!.wants.length);
  let undrawnChunks = 0;
  for (const want of dev.model!.wants) undrawnChunks += want.filter((w) => !w).length;
  assert.ok(undrawnChunks >= 1, 'some prompt chunk drew nothing');
  assert.equal(dev.model!.toy.live.size, 0, 'every sequence released');
});

test('engine + a device-sampling model: a refused sampling setting is the request\'s error; its sequence is released', async () => {
  const { parts, toy } = await makeParts();
  const model = new DeviceToyLM(toy!);
  const e = new Engine({ ...parts, model }, { maxNumSeqs: 2, maxQueue: 2, maxModelLen: 512 });
  await assert.rejects(e.submit({ promptIds: parts.tokenizer.encode('hi'), sampling: { temperature: 1, topK: 500, topP: 1 }, maxTokens: 4 }),
    (err: unknown) => err instanceof InvalidRequestError && err.param === 'top_k' && /exceeds this sampler's 100 candidates/.test(err.message));
  assert.equal(toy!.live.size, 0);
  const ok = await e.submit({ promptIds: parts.tokenizer.encode('hi'), sampling: { temperature: 0, topK: 0, topP: 1 }, maxTokens: 4 });
  assert.equal(ok.completionTokens, 4);
  await e.shutdown(0);
});
