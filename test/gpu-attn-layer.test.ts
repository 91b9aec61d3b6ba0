// GPU attention kernels (src/kernels/attention.cu, compressor.cu, indexer.cu through src/gpu-model/attention.ts) against
// the CPU model's computation (test/support/attn-reference.ts: model.ts's pieces in model.ts's order) on the same random
// inputs, over the paged caches: every stage of one layer (kv FP8 simulation, compressor entries, indexer query, picks,
// sparse attention output, window ring), for window-only, ratio-4 (indexer) and ratio-128 layers, at the tiny shape and
// at a flash-like shape (d 512, 64 heads, window 128, indexer 64 x 128, top-512), with fresh prefills, chunked
// prefills, seeded long histories (up to 5000 tokens, exact score ties in the indexer) and decode batches of sequences
// of different lengths. Skips (with the reason) where no Hopper GPU and driver exist.
//
// Bounds: the rounding primitives are ported exactly (attn_common.cuh), so kv, compressor entries, indexer q / w and
// picks must match bit for bit (a stray last-bit flip from exp/cos in double vs V8 is tolerated up to 1e-4 of values);
// the attention output sums in f32 on the GPU (f64 on the CPU): SPEC 5's GPU-vs-CPU bound calc_diff <= 3e-5.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { gpuSkipReason } from '../src/cuda/index.js';
import { modelPresetConfig } from '../src/model/checkpoint-writer.js';
import { modelConfigFrom, type ModelConfig } from '../src/model/config.js';
import { formatStats, runScenario, type ScenarioOptions, type StageStats } from './support/attn-scenario.js';
import { withEnv } from './support/env.js';

const skip = gpuSkipReason();

const config = (preset: 'tiny' | 'flash' | 'pro', layers?: number, overrides?: Record<string, unknown>): ModelConfig =>
  modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset, layers, expertDtype: 'fp8', seed: 1, overrides })));

function checkStats(label: string, stats: Record<string, StageStats>): void {
  for (const [stage, s] of Object.entries(stats)) {
    if (stage === 'attention out') {
      assert.ok(s.calcDiff <= 3e-5, `${label} ${stage}: calc_diff ${s.calcDiff} > 3e-5 (max abs diff ${s.maxAbs})`);
      assert.ok(s.maxAbs <= 0.05, `${label} ${stage}: max abs diff ${s.maxAbs}`);
    } else if (stage === 'indexer picks' || stage === 'window ring' || stage === 'kv FP8 sim') {
      assert.equal(s.mismatches, 0, `${label} ${stage}: ${s.mismatches} of ${s.values} differ (max abs diff ${s.maxAbs})`);
    } else {
      assert.ok(s.mismatches <= Math.max(1, s.values * 1e-4), `${label} ${stage}: ${s.mismatches} of ${s.values} differ (max abs diff ${s.maxAbs})`);
      assert.ok(s.calcDiff <= 1e-6, `${label} ${stage}: calc_diff ${s.calcDiff}`);
    }
  }
}

// tiny: ratios 0, 4, 128 (+ MTP 0), d 128, 4 heads, window 16, indexer 16 x 64, top-4; blocks of 4 rows so every
// sequence spans many scattered blocks
const TINY_CALLS: ScenarioOptions['calls'] = [
  [{ seq: 0, len: 37 }], // fresh prefill past the window and several ratio-4 blocks
  [{ seq: 0, len: 20 }], // chunked prefill at 37
  [{ seq: 1, len: 5 }, { seq: 2, len: 3 }], // a short prefill (inside the window) with a chunk of a seeded sequence
  [{ seq: 4, len: 140 }], // past the first ratio-128 block
  ...Array.from({ length: 10 }, () => [{ seq: 0, len: 1 }, { seq: 1, len: 1 }, { seq: 2, len: 1 }, { seq: 3, len: 1 }, { seq: 4, len: 1 }]),
];
const TINY_SEQS = [{ start: 0 }, { start: 0 }, { start: 120 }, { start: 0 }, { start: 0 }];

for (const [layer, kind] of [[0, 'window-only'], [1, 'ratio 4 + indexer'], [2, 'ratio 128']] as const) {
  test(`GPU attention == CPU, tiny ${kind} layer ${layer}: prefill, chunked prefill, decode batch of 5 (lengths 1..160)`, { skip }, (t) => {
    const stats = runScenario({ config: config('tiny'), layer, blockRows: 4, seed: 11 + layer, seqs: TINY_SEQS, calls: TINY_CALLS });
    for (const line of formatStats(`tiny L${layer}`, stats).split('\n')) t.diagnostic(line);
    checkStats(`tiny L${layer}`, stats);
    if (layer === 1) assert.ok(stats['indexer picks'].values > 0);
  });
}

// flash-like: 4 layers (ratios 0, 0, 4, 128 + MTP 0), the published attention shape; histories seeded up to 5000
// tokens so the ratio-4 indexer really selects 512 of 525 / 1250 blocks (with exact ties at 2100)
const FLASH_SEQS = [{ start: 0 }, { start: 3 }, { start: 130 }, { start: 2100, tieKeys: true }, { start: 5000 }];
const FLASH_CALLS: ScenarioOptions['calls'] = [
  [{ seq: 0, len: 160 }],
  ...Array.from({ length: 3 }, () => [0, 1, 2, 3, 4].map((seq) => ({ seq, len: 1 }))),
];

for (const [layer, kind] of [[0, 'window-only'], [2, 'ratio 4 + indexer'], [3, 'ratio 128']] as const) {
  test(`GPU attention == CPU, flash-like ${kind} layer ${layer}: 160-token prefill, decode batch of 5 at 1..5003`, { skip }, (t) => {
    const stats = runScenario({ config: config('flash', 4), layer, blockRows: 64, seed: 21 + layer, seqs: FLASH_SEQS, calls: FLASH_CALLS, maxContext: 8192 });
    for (const line of formatStats(`flash L${layer}`, stats).split('\n')) t.diagnostic(line);
    checkStats(`flash L${layer}`, stats);
  });
}

// flash-like with 128-dim heads (64 x 128): the prefill runs the 4-m-tile entry with d < 512, whose P.V splits the keys
// over warps and sums their partials through shared memory, once per pass of two m-tiles
test('GPU attention == CPU, flash-like window-only layer 0 with 128-dim heads: 160-token prefill, decode batch of 5', { skip }, (t) => {
  const stats = runScenario({
    config: config('flash', 4, { head_dim: 128 }), layer: 0, blockRows: 64, seed: 51, maxContext: 8192,
    seqs: FLASH_SEQS.slice(0, 3), calls: [FLASH_CALLS[0], [0, 1, 2].map((seq) => ({ seq, len: 1 }))],
  });
  for (const line of formatStats('flash d128 L0', stats).split('\n')) t.diagnostic(line);
  checkStats('flash d128 L0', stats);
});

// Chunked prefills deep into a history, where the full query tile leaves one CTA per SM and half of it two, each with
// the two-pass entry (the default) and the one-pass one (MEGAMOE_ATTN_QPASS=0):
//   - flash-like ratio 4: every row attends 128 + 512 keys, too many scores for 64 heads per CTA, so the tensor-core
//     kernel runs 32 (its 2-m-tile entries; the scenarios above run the 4- and 1-tile ones): attn_sparse_mma2s / 2;
//   - flash-like ratio 128: 128 + 94 keys, 64 heads per CTA: attn_sparse_mma4s / 4.
const deepChunks: Array<{ name: string; label: string; opts: ScenarioOptions }> = [
  {
    name: 'flash-like ratio 4 + indexer layer 2: a 70-token chunk at 5000 (640 keys per row', label: 'flash L2 chunk',
    opts: { config: config('flash', 4), layer: 2, blockRows: 64, seed: 41, maxContext: 8192, seqs: [{ start: 5000 }], calls: [[{ seq: 0, len: 70 }]] },
  },
  {
    name: 'flash-like ratio 128 layer 3: a 140-token chunk at 12000 (222 keys per row', label: 'flash L3 chunk',
    opts: { config: config('flash', 4), layer: 3, blockRows: 64, seed: 43, maxContext: 16384, seqs: [{ start: 12000 }], calls: [[{ seq: 0, len: 140 }]] },
  },
];
for (const qpass of ['1', '0']) {
  for (const { name, label, opts } of deepChunks) {
    test(`GPU attention == CPU, ${name}, MEGAMOE_ATTN_QPASS=${qpass})`, { skip }, (t) => {
      const stats = withEnv({ MEGAMOE_ATTN_QPASS: qpass }, () => runScenario(opts));
      for (const line of formatStats(label, stats).split('\n')) t.diagnostic(line);
      checkStats(label, stats);
    });
  }
}

// Launch shapes of a context bucket (GpuAttention.begin's shapeContext, for CUDA graphs of a decode step): grids,
// shared memory and the scalar launch arguments sized for the bucket, not the call's positions, so CTAs past a row's
// keys, indexer blocks and compressor blocks find nothing to do. Every stage must still match the CPU as above
// (the attention output may take another kernel plan, hence SPEC 5's bound rather than the exact run's bits).
for (const [layer, kind] of [[1, 'ratio 4 + indexer'], [2, 'ratio 128']] as const) {
  test(`GPU attention == CPU with bucket launch shapes (shapeContext 512), tiny ${kind} layer ${layer}`, { skip }, (t) => {
    const stats = runScenario({ config: config('tiny'), layer, blockRows: 4, seed: 11 + layer, seqs: TINY_SEQS, calls: TINY_CALLS, maxContext: 1024, shapeContext: 512 });
    for (const line of formatStats(`tiny L${layer} bucket`, stats).split('\n')) t.diagnostic(line);
    checkStats(`tiny L${layer} bucket`, stats);
  });
}
test('GPU attention == CPU with bucket launch shapes (shapeContext 8192), flash-like ratio 4 + indexer layer 2: decode batch of 5 at 1..5003', { skip }, (t) => {
  const stats = runScenario({ config: config('flash', 4), layer: 2, blockRows: 64, seed: 23, seqs: FLASH_SEQS, calls: FLASH_CALLS.slice(1), maxContext: 8192, shapeContext: 8192 });
  for (const line of formatStats('flash L2 bucket', stats).split('\n')) t.diagnostic(line);
  checkStats('flash L2 bucket', stats);
});

// pro-like: 128 heads and top-1024 on the ratio-4 layer (pro's layer 2), decode only, histories past 4096 tokens
test('GPU attention == CPU, pro-like ratio 4 + indexer layer 2: decode batch of 3 at 40..4400 (top-1024 of 1100)', { skip }, (t) => {
  const stats = runScenario({
    config: config('pro', 4), layer: 2, blockRows: 64, seed: 31, maxContext: 8192,
    seqs: [{ start: 40 }, { start: 4100 }, { start: 4400, tieKeys: true }],
    calls: Array.from({ length: 2 }, () => [0, 1, 2].map((seq) => ({ seq, len: 1 }))),
  });
  for (const line of formatStats('pro L2', stats).split('\n')) t.diagnostic(line);
  checkStats('pro L2', stats);
});
