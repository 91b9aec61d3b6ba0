// Decode steps as CUDA graphs (GpuModelOptions.decodeGraphs): one captured step per (items, context bucket), the
// attention launches shaped for the bucket (GpuAttention.begin shapeContext). Against the same model run eagerly (the
// same weights, the same calls), on the GPU host:
//   - every decode step's sampled tokens and logits: the logits within calc_diff 1e-6 (the bucket's attention launch
//     may take another kernel plan than the exact one, which sums in another order), argmax equal;
//   - prefill and mixed calls run eagerly, decode batches from the graphs (graphCount: one per (items, bucket));
//   - crossing a bucket (contexts past 1024) captures a new graph (each key's first call runs eagerly, its second
//     captures);
//   - batches of 1, 3 and 4 items with one captured size (4) pad to it: one graph, the real rows' logits and tokens as
//     the eager model's.
// Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gpuSkipReason } from '../src/cuda/index.js';
import { decodeContextBucket, GpuModel, type GpuSequence } from '../src/gpu-model/model.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { DeepSeekV4Model } from '../src/model/model.js';

const skip = gpuSkipReason();
const VOCAB = 1024;
const toks = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 13)) % VOCAB);

function calcDiff(a: Float32Array, b: Float32Array): number {
  let dot = 0; let norms = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; norms += a[i] * a[i] + b[i] * b[i]; }
  return norms === 0 ? 0 : 1 - (2 * dot) / norms;
}

test('decodeContextBucket: powers of two from 1024, capped at the context', () => {
  assert.equal(decodeContextBucket(1, 65536), 1024);
  assert.equal(decodeContextBucket(1024, 65536), 1024);
  assert.equal(decodeContextBucket(1025, 65536), 2048);
  assert.equal(decodeContextBucket(40000, 65536), 65536);
  assert.equal(decodeContextBucket(700, 512), 512);
});

test('GPU model decode steps as CUDA graphs == the eager steps (tiny, 3 layers, 2 sequences, across a context bucket)', { skip, timeout: 900_000 }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-graphs-'));
  const dir = path.join(tmp, 'tiny');
  makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 17, out: dir, overrides: { vocab_size: VOCAB } });
  const cpu = await DeepSeekV4Model.load(dir);
  const models: GpuModel[] = [];
  try {
    for (const decodeGraphs of [false, true]) {
      models.push(await GpuModel.create(cpu.weights, {
        maxSequences: 2, maxRows: 1100, maxItems: 2, maxLogitRows: 2, maxContext: 2048, blockRows: 16,
        cacheBytes: 2 ** 28, memoryFraction: 1, maxBlocksPerKind: 256, decodeGraphs,
      }));
    }
    const seqs = models.map((m) => [m.createSequence(), m.createSequence()] as GpuSequence[]);
    // prefills (eager in both), then decode steps; sequence 0 starts at 1000 so it crosses into the 2048 bucket
    const prefills = [[toks(1, 1000)], [toks(2, 30)]];
    for (const [m, model] of models.entries()) {
      await model.sample([{ seq: seqs[m][0], tokens: prefills[0][0] }]);
      await model.sample([{ seq: seqs[m][1], tokens: prefills[1][0] }]);
    }
    let next = [7, 11];
    let worst = 0; let equalBits = 0; let total = 0;
    for (let step = 0; step < 40; step++) {
      const out: Int32Array[] = []; const logits: Float32Array[] = [];
      for (const [m, model] of models.entries()) {
        out.push(await model.sample([{ seq: seqs[m][0], tokens: [next[0]] }, { seq: seqs[m][1], tokens: [next[1]] }]));
        logits.push(model.lastLogits());
      }
      const d = calcDiff(logits[0], logits[1]);
      worst = Math.max(worst, d);
      for (let i = 0; i < logits[0].length; i++) { total++; if (Object.is(logits[0][i], logits[1][i])) equalBits++; }
      assert.ok(d <= 1e-6, `step ${step}: calc_diff ${d} between the graph and the eager step`);
      assert.deepEqual(Array.from(out[1]), Array.from(out[0]), `step ${step}: sampled tokens`);
      next = Array.from(out[0]).map((v) => v % VOCAB);
    }
    t.diagnostic(`graph vs eager: worst calc_diff ${worst.toExponential(2)}, ${((100 * equalBits) / total).toFixed(2)}% of logits bit-equal`);
    assert.equal(models[0].graphCount, 0, 'the eager model captured nothing');
    assert.equal(models[1].graphCount, 2, 'one graph for 2 items in the 1024 bucket, one in the 2048 bucket');
  } finally {
    for (const m of models) m.dispose();
    cpu.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('GPU model decode graphs pad a batch to the next captured size (tiny, 2 layers, batches of 1, 3, 4 on one graph)', { skip, timeout: 900_000 }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-graph-pad-'));
  const dir = path.join(tmp, 'tiny');
  makeModelCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 23, out: dir, overrides: { vocab_size: VOCAB } });
  const cpu = await DeepSeekV4Model.load(dir);
  const models: GpuModel[] = [];
  try {
    for (const decodeGraphs of [false, true]) {
      models.push(await GpuModel.create(cpu.weights, {
        maxSequences: 4, maxRows: 256, maxItems: 4, maxContext: 1024, blockRows: 16,
        cacheBytes: 2 ** 28, memoryFraction: 1, maxBlocksPerKind: 256, decodeGraphs, decodeGraphSizes: [4],
      }));
    }
    assert.deepEqual(models[1].decodeGraphSizes, [4]);
    const seqs = models.map((m) => [0, 1, 2, 3].map(() => m.createSequence()));
    // every sequence the caller asked for is there: the padding slots are the cache's own (3 for sizes [4])
    assert.throws(() => models[1].createSequence(), /all 4 sequences of this model are in use/);
    for (const [m, model] of models.entries()) {
      for (let q = 0; q < 4; q++) await model.sample([{ seq: seqs[m][q], tokens: toks(q + 3, 20 + 9 * q) }]);
    }
    let next = [5, 6, 7, 8];
    let worst = 0;
    const batches = [[0], [0, 1, 2], [1, 2, 3, 0], [3], [2, 0, 1], [0, 1, 2, 3]];
    for (let step = 0; step < 24; step++) {
      const who = batches[step % batches.length];
      const out: Int32Array[] = []; const logits: Float32Array[] = [];
      for (const [m, model] of models.entries()) {
        out.push(await model.sample(who.map((q) => ({ seq: seqs[m][q], tokens: [next[q]] }))));
        logits.push(model.lastLogits());
      }
      assert.equal(logits[1].length, who.length * VOCAB, `step ${step}: lastLogits holds the real rows only`);
      const d = calcDiff(logits[0], logits[1]);
      worst = Math.max(worst, d);
      assert.ok(d <= 1e-6, `step ${step} (${who.length} items): calc_diff ${d} between the padded graph and the eager step`);
      assert.deepEqual(Array.from(out[1]), Array.from(out[0]), `step ${step}: sampled tokens`);
      for (const [i, q] of who.entries()) next[q] = out[0][i] % VOCAB;
    }
    t.diagnostic(`padded graph vs eager: worst calc_diff ${worst.toExponential(2)}`);
    assert.equal(models[1].graphCount, 1, 'batches of 1, 3 and 4 items replay the one graph of size 4');
  } finally {
    for (const m of models) m.dispose();
    cpu.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
