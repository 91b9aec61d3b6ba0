// The whole-model config (V4-MODEL 0.1, 11): both key spellings, published defaults, clear refusals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { flashCompressRatios, modelConfigFrom } from '../src/model/config.js';
import { modelPresetConfig, presetRatios } from '../src/model/checkpoint-writer.js';

const MOE_HF = {
  hidden_size: 256, moe_intermediate_size: 128, n_routed_experts: 8, num_experts_per_tok: 2, n_shared_experts: 1,
  num_hidden_layers: 4, num_hash_layers: 1, scoring_func: 'sqrtsoftplus', routed_scaling_factor: 1.5, swiglu_limit: 10, vocab_size: 1000,
};
const parse = (extra: Record<string, unknown>) => modelConfigFrom(parseDeepSeekV4Config({ ...MOE_HF, ...extra }, 'config.json'));

test('absent keys take the published V4-Flash values (not the ModelArgs defaults)', () => {
  const c = parse({});
  assert.equal(c.nHeads, 64); assert.equal(c.headDim, 512); assert.equal(c.ropeHeadDim, 64);
  assert.equal(c.windowSize, 128); assert.equal(c.compressRopeTheta, 160000);
  assert.deepEqual(c.yarn, { factor: 16, originalSeqLen: 65536, betaFast: 32, betaSlow: 1 });
  assert.equal(c.indexTopk, 512); assert.equal(c.hcMult, 4); assert.equal(c.hcSinkhornIters, 20);
  assert.equal(c.nMtpLayers, 1);
  assert.deepEqual(c.compressRatios, [0, 0, 4, 128, 0]);
  assert.equal(c.pow2ActScales, true);
  const flash = flashCompressRatios(43, 1);
  assert.equal(flash.length, 44);
  assert.deepEqual(flash.slice(0, 4), [0, 0, 4, 128]);
  assert.deepEqual(flash.slice(-3), [128, 4, 0]); // layer 41, layer 42, MTP (V4-MODEL 0.1)
});

test('the inference-config spelling and the HF spelling read the same; conflicting spellings are refused', () => {
  const hf = parse({ num_attention_heads: 4, head_dim: 128, qk_rope_head_dim: 64, sliding_window: 8, rms_norm_eps: 1e-5, num_nextn_predict_layers: 0,
    rope_scaling: { factor: 4, original_max_position_embeddings: 1024, beta_fast: 16, beta_slow: 2 }, q_lora_rank: 128, o_lora_rank: 128, o_groups: 2 });
  const inf = parse({ n_heads: 4, head_dim: 128, rope_head_dim: 64, window_size: 8, norm_eps: 1e-5, n_mtp_layers: 0,
    rope_factor: 4, original_seq_len: 1024, beta_fast: 16, beta_slow: 2, q_lora_rank: 128, o_lora_rank: 128, o_groups: 2 });
  for (const k of ['nHeads', 'headDim', 'ropeHeadDim', 'windowSize', 'normEps', 'nMtpLayers', 'yarn', 'compressRatios'] as const) {
    assert.deepEqual(hf[k], inf[k], k);
  }
  assert.throws(() => parse({ sliding_window: 8, window_size: 16 }), /key "window_size": disagrees with "sliding_window"/);
});

test('V4-MODEL 11 constraints are refused by key, with the reason', () => {
  assert.throws(() => parse({ head_dim: 100 }), /key "head_dim".*multiple of 64/);
  assert.throws(() => parse({ index_head_dim: 96 }), /key "index_head_dim".*power of two/);
  assert.throws(() => parse({ q_lora_rank: 100 }), /key "q_lora_rank".*divisible by 128/);
  assert.throws(() => parse({ n_heads: 6, o_groups: 4 }), /key "o_groups".*does not divide/);
  assert.throws(() => parse({ compress_ratios: [0, 4] }), /key "compress_ratios": has 2 entries, num_hidden_layers is 4/);
  assert.throws(() => parse({ compress_ratios: [0, 1, 4, 0] }), /entry 1 is 1/);
  assert.throws(() => parse({ window_size: 0 }), /key "window_size": must be a positive integer/);
  // a ratio list of exactly n_layers entries gives the MTP layer ratio 0
  assert.deepEqual(parse({ compress_ratios: [0, 4, 128, 4] }).compressRatios, [0, 4, 128, 4, 0]);
});

test('whole-model presets: the tiny default has every layer kind and covers the V3 vocabulary', () => {
  const tiny = modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset: 'tiny', expertDtype: 'fp8', seed: 1 })));
  assert.deepEqual(tiny.compressRatios, [0, 4, 128, 0]);
  assert.equal(tiny.nHashLayers, 1); assert.equal(tiny.nMtpLayers, 1); assert.equal(tiny.vocabSize, 129280);
  assert.equal(tiny.dim, 128);
  const flash = modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset: 'flash', layers: 43, expertDtype: 'fp4', seed: 1 })));
  assert.deepEqual(flash.compressRatios, flashCompressRatios(43, 1));
  assert.equal(flash.headDim, 512); assert.equal(flash.nHeads, 64); assert.equal(flash.nHashLayers, 3);
  assert.deepEqual(presetRatios('pro', 4, 1), [128, 128, 4, 128, 0]);
});
