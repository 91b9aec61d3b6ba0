// The GPU model's benchmark hooks (no timing here): GpuModelOptions.moeWeights (device MoE weights supplied by the
// caller: `bench model` generates them on the GPU) gives the same logits as uploading the layer's experts when the
// supplied weights hold the same bytes, and the off-by-default LayerProfiler sees every LAYER_MARKS point of every
// layer in order, once per step, and nothing once unset. On a tiny virtual checkpoint (virtualModelCheckpoint, vocab
// 1024, ratios 0 / 4 / 128). Skips with the reason where no Hopper GPU and driver exist.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gpuSkipReason, type Stream } from '../src/cuda/index.js';
import { DeviceMoeWeights } from '../src/backends/unfused.js';
import { LAYER_MARKS, type LayerMark } from '../src/gpu-model/layer.js';
import { GpuModel } from '../src/gpu-model/model.js';
import { virtualModelCheckpoint } from '../src/model/checkpoint-writer.js';
import { loadModelWeightsFrom } from '../src/model/loader.js';

const skip = gpuSkipReason();
const OPTS = { maxSequences: 2, maxRows: 128, maxItems: 2, maxLogitRows: 2, maxContext: 256, blockRows: 16, cacheBytes: 2 ** 28, memoryFraction: 1, maxBlocksPerKind: 32 };

test('bench hooks: moeWeights == uploaded experts; the profiler marks every layer point in order', { skip, timeout: 600_000 }, async () => {
  const { checkpoint, config } = virtualModelCheckpoint({ preset: 'tiny', layers: 3, mtpLayers: 0, expertDtype: 'fp8', seed: 3, overrides: { vocab_size: 1024 } });
  const weights = loadModelWeightsFrom(checkpoint, config, { mtp: false });
  const models: GpuModel[] = [];
  try {
    models.push(await GpuModel.create(weights, OPTS));
    let supplied = 0;
    models.push(await GpuModel.create(weights, {
      ...OPTS, moeWeights: async (bw) => { supplied++; return DeviceMoeWeights.fromLayer(bw.moe, [...bw.moe.experts.ids]); },
    }));
    assert.equal(supplied, 3);
    const prompt = Array.from({ length: 40 }, (_, i) => (i * 37) % 1024);
    const logits = [];
    for (const m of models) {
      const seq = m.createSequence();
      try { logits.push((await m.forward([{ seq, tokens: prompt }]))[0]); } finally { m.releaseSequence(seq); }
    }
    assert.deepEqual(logits[1], logits[0], 'the same expert bytes through moeWeights give the same logits');

    const m = models[1];
    const seen: Array<[number, LayerMark]> = [];
    m.ctx.profiler = { mark: (layer: number, at: LayerMark, _s: Stream) => { seen.push([layer, at]); } };
    const seq = m.createSequence();
    try {
      await m.sample([{ seq, tokens: prompt.slice(0, 5) }]);
      assert.deepEqual(seen, [0, 1, 2].flatMap((l) => LAYER_MARKS.map((at) => [l, at])));
      m.ctx.profiler = undefined;
      await m.sample([{ seq, tokens: [7] }]);
      assert.equal(seen.length, 3 * LAYER_MARKS.length, 'no marks once the profiler is unset');
    } finally {
      m.releaseSequence(seq);
    }
  } finally {
    for (const m of models) m.dispose();
    weights.close();
  }
});
