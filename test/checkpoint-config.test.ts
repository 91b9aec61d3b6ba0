// config.json parsing: the published V4 keys, the inference-config spellings, defaults that are documented,
// and clear errors (file + key) for anything missing or ill-typed.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadDeepSeekV4Config, moeShapeFromConfig, parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { CheckpointError } from '../src/checkpoint/errors.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-cfg-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** The MoE keys of the published V4-Flash config (SPEC 1). */
function flash(): Record<string, unknown> {
  return {
    hidden_size: 4096, moe_intermediate_size: 2048, n_routed_experts: 256, num_experts_per_tok: 6, n_shared_experts: 1,
    num_hidden_layers: 43, num_hash_layers: 3, scoring_func: 'sqrtsoftplus', topk_method: 'noaux_tc', norm_topk_prob: true,
    routed_scaling_factor: 1.5, swiglu_limit: 10.0, vocab_size: 129280, expert_dtype: 'fp4',
    quantization_config: { quant_method: 'fp8', fmt: 'e4m3', weight_block_size: [128, 128], scale_fmt: 'ue8m0', activation_scheme: 'dynamic' },
    num_attention_heads: 64, head_dim: 512, qk_rope_head_dim: 64, q_lora_rank: 1024, o_lora_rank: 1024, o_groups: 8,
    sliding_window: 128, compress_ratios: [0, 0, 4, 128], index_n_heads: 64, index_head_dim: 128, index_topk: 512,
    hc_mult: 4, rope_scaling: { type: 'yarn', factor: 16 },
  };
}

function rejects(json: unknown, key: string | undefined, problem: RegExp): void {
  assert.throws(() => parseDeepSeekV4Config(json, '/ckpt/config.json'), (err: unknown) => {
    assert.ok(err instanceof CheckpointError, String(err));
    assert.ok(err.message.startsWith('/ckpt/config.json'), err.message);
    if (key !== undefined) {
      assert.equal(err.key, key);
      assert.ok(err.message.includes(`key "${key}"`), err.message);
    }
    assert.match(err.message, problem);
    return true;
  });
}

describe('DeepSeek-V4 config', () => {
  test('the published Flash config parses into the MoE shape', () => {
    const cfg = parseDeepSeekV4Config(flash());
    assert.deepEqual(moeShapeFromConfig(cfg), {
      hiddenSize: 4096, moeIntermediateSize: 2048, nRoutedExperts: 256, numExpertsPerTok: 6, nSharedExperts: 1,
      numHashLayers: 3, scoringFunc: 'sqrtsoftplus', topkMethod: 'noaux_tc', normTopkProb: true,
      routedScalingFactor: 1.5, swigluLimit: 10, vocabSize: 129280,
    });
    assert.equal(cfg.numHiddenLayers, 43);
    assert.equal(cfg.expertDtype, 'fp4');
    assert.equal(cfg.expertDtypeDeclared, true);
    assert.deepEqual(cfg.quantization?.weightBlockSize, [128, 128]);
    assert.equal(cfg.quantization?.scaleFmt, 'ue8m0');
    assert.equal(cfg.attention.numAttentionHeads, 64);
    assert.deepEqual(cfg.attention.compressRatios, [0, 0, 4, 128]);
    assert.equal(cfg.attention.ropeScaling?.factor, 16);
    assert.equal(cfg.raw.hc_mult, 4);
  });

  test('the reference inference-config spellings are accepted (dim, moe_inter_dim, route_scale, ...)', () => {
    const cfg = parseDeepSeekV4Config({
      dim: 7168, moe_inter_dim: 3072, n_routed_experts: 384, n_activated_experts: 6, n_shared_experts: 1, n_layers: 61,
      n_hash_layers: 3, score_func: 'sqrtsoftplus', route_scale: 2.5, swiglu_limit: 10, vocab_size: 129280, n_heads: 128,
    });
    assert.equal(cfg.hiddenSize, 7168);
    assert.equal(cfg.moeIntermediateSize, 3072);
    assert.equal(cfg.numExpertsPerTok, 6);
    assert.equal(cfg.routedScalingFactor, 2.5);
    assert.equal(cfg.numHiddenLayers, 61);
    assert.equal(cfg.attention.numAttentionHeads, 128);
    // documented defaults: the only behaviour of the V4 reference code
    assert.equal(cfg.normTopkProb, true);
    assert.equal(cfg.topkMethod, 'noaux_tc');
    assert.equal(cfg.expertDtype, 'fp8');
    assert.equal(cfg.expertDtypeDeclared, false);
  });

  test('both spellings present must agree', () => {
    rejects({ ...flash(), dim: 7168 }, 'dim', /disagrees with "hidden_size" \(7168 vs 4096\)/);
    assert.equal(parseDeepSeekV4Config({ ...flash(), dim: 4096 }).hiddenSize, 4096);
  });

  test('every MoE key is required: missing keys are named, with both spellings', () => {
    for (const key of ['hidden_size', 'moe_intermediate_size', 'n_routed_experts', 'num_experts_per_tok', 'n_shared_experts',
      'num_hidden_layers', 'num_hash_layers', 'scoring_func', 'routed_scaling_factor', 'swiglu_limit', 'vocab_size']) {
      const c = flash();
      delete c[key];
      rejects(c, key, /missing/);
    }
    const c = flash();
    delete c.routed_scaling_factor;
    rejects(c, 'routed_scaling_factor', /missing \(or "route_scale"\); megamoe never guesses/);
  });

  test('ill-typed keys', () => {
    rejects({ ...flash(), hidden_size: '4096' }, 'hidden_size', /must be a positive integer, got "4096" \(string\)/);
    rejects({ ...flash(), n_routed_experts: 0 }, 'n_routed_experts', /positive integer/);
    rejects({ ...flash(), num_hash_layers: 1.5 }, 'num_hash_layers', /non-negative integer/);
    rejects({ ...flash(), swiglu_limit: 'ten' }, 'swiglu_limit', /finite number/);
    rejects({ ...flash(), norm_topk_prob: 1 }, 'norm_topk_prob', /true or false/);
    rejects({ ...flash(), scoring_func: 7 }, 'scoring_func', /a string/);
    rejects({ ...flash(), compress_ratios: [0, 'x'] }, 'compress_ratios', /array of non-negative integers/);
    rejects({ ...flash(), quantization_config: 3 }, 'quantization_config', /must be an object/);
    rejects([1, 2], undefined, /config must be a JSON object/);
  });

  test('inconsistent values', () => {
    rejects({ ...flash(), num_experts_per_tok: 300 }, 'num_experts_per_tok', /more than n_routed_experts \(256\)/);
    rejects({ ...flash(), routed_scaling_factor: 0 }, 'routed_scaling_factor', /must be positive/);
    rejects({ ...flash(), expert_dtype: 'int4' }, 'expert_dtype', /must be "fp8" or "fp4"/);
    rejects({ ...flash(), quantization_config: { weight_block_size: [64, 64] } }, 'quantization_config.weight_block_size', /128x128 weight blocks only/);
  });

  test('loadDeepSeekV4Config reads a directory or a file, and names the file on errors', () => {
    const d = path.join(tmp, 'ok');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(flash()));
    assert.equal(loadDeepSeekV4Config(d).nRoutedExperts, 256);
    assert.equal(loadDeepSeekV4Config(path.join(d, 'config.json')).source, path.join(d, 'config.json'));
    const bad = path.join(tmp, 'bad');
    fs.mkdirSync(bad);
    fs.writeFileSync(path.join(bad, 'config.json'), '{"hidden_size": 4096,');
    assert.throws(() => loadDeepSeekV4Config(bad), (e: unknown) => e instanceof CheckpointError && e.message.includes(path.join(bad, 'config.json')) && /not valid JSON/.test(e.message));
    assert.throws(() => loadDeepSeekV4Config(path.join(tmp, 'none')), /cannot read config\.json/);
  });
});
