// `megamoe bench model`'s pure half (src/bench/model-plan.ts): option parsing and checks (errors name the flag and
// the fix), the run's capacities, and the roofline's bytes and FLOPs of decode steps and prefills, against
// hand-counted values on the flash preset. No GPU: the CLI is run with MEGAMOE_DISABLE_CUDA=1 and must stop at the
// GPU check.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  benchModelConfig, decodeFillRefusal, decodeStepCost, expectedTouchedExperts, layerDenseBytes, layerExpertBytes, parseSize, parseSizeList, planCapacity,
  prefillCost, residentWeightBytes, stepRoofline, validateModelBenchOptions, type ModelBenchOptions,
} from '../src/bench/model-plan.js';
import { modelBenchOptionsFromCli, type ModelBenchCliOptions } from '../src/bench/model.js';
import { expertWeightBytes } from '../src/bench/report.js';

const mainJs = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
function megamoe(...args: string[]): { status: number | null; output: string } {
  const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: 'utf8', env: { ...process.env, MEGAMOE_DISABLE_CUDA: '1' } });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

const flash = benchModelConfig('flash', 4);

function opts(extra: Partial<ModelBenchOptions> = {}): ModelBenchOptions {
  return {
    preset: 'flash', layers: 4, batches: [1, 8], contexts: [1024], prefill: [4096], prefillChunk: 2048, kvFill: 'skip',
    warmup: 2, runs: 10, prefillRuns: 3, profileRuns: 3, seed: 1, out: 'x', ...extra,
  };
}

test('sizes: 4096, 4k, 32K; lists sorted without repeats; none', () => {
  assert.equal(parseSize('prefill', '4k'), 4096);
  assert.equal(parseSize('prefill', '32K'), 32768);
  assert.equal(parseSize('prefill', ' 17 '), 17);
  assert.deepEqual(parseSizeList('contexts', '32k,1k,1024'), [1024, 32768]);
  assert.deepEqual(parseSizeList('batches', 'none'), []);
  assert.throws(() => parseSize('contexts', '0'), /--contexts: "0" is not a positive integer \(e\.g\. 4096 or 4k\)/);
  assert.throws(() => parseSize('contexts', '1.5k'), /--contexts: "1.5k"/);
  assert.throws(() => parseSizeList('batches', ','), /--batches: give at least one value/);
});

test('option checks name the flag and the fix', () => {
  assert.equal(validateModelBenchOptions(opts()).preset, 'flash');
  assert.throws(() => validateModelBenchOptions(opts({ batches: [4096] })), /--batches 4096 exceeds --prefill-chunk 2048.*raise --prefill-chunk to 4096/);
  assert.throws(() => validateModelBenchOptions(opts({ batches: [], contexts: [], prefill: [] })), /nothing to run/);
  assert.throws(() => validateModelBenchOptions(opts({ contexts: [] })), /--contexts none with decode batches/);
  assert.throws(() => validateModelBenchOptions(opts({ batches: [] })), /--batches none with decode contexts/);
  assert.throws(() => validateModelBenchOptions(opts({ preset: 'tiny' as never })), /--preset: unknown "tiny" \(known: flash, pro\)/);
  assert.throws(() => validateModelBenchOptions(opts({ kvFill: 'zeros' as never })), /--kv-fill: unknown "zeros"/);
  assert.equal(validateModelBenchOptions(opts({ batches: [], contexts: [] })).prefill[0], 4096);
  assert.throws(() => validateModelBenchOptions(opts({ kvCacheGib: 0 })), /--kv-cache-gib 0: give a positive number of GiB/);
  assert.throws(() => validateModelBenchOptions(opts({ kvCacheGib: Number('8x') })), /--kv-cache-gib NaN/);
  assert.equal(validateModelBenchOptions(opts({ kvCacheGib: 8 })).kvCacheGib, 8);
});

test('CLI: bad values refused by name; good ones stop at the GPU check', () => {
  for (const [args, message] of [
    [['--layers', '0'], /--layers must be an integer in \[1, 61\]/],
    [['--preset', 'tiny'], /--preset must be one of flash, pro/],
    [['--kv-fill', 'zeros'], /--kv-fill must be one of skip, prefill/],
    [['--contexts', '1x'], /--contexts: "1x" is not a positive integer/],
    [['--batches', '8192'], /raise --prefill-chunk to 8192/],
  ] as const) {
    const r = megamoe('bench', 'model', ...args);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.output, message, args.join(' '));
  }
  const out = mkdtempSync(join(tmpdir(), 'megamoe-bench-model-'));
  try {
    const r = megamoe('bench', 'model', '--preset', 'flash', '--layers', '2', '--batches', '1', '--contexts', '1k', '--prefill', 'none', '--out', out);
    assert.notEqual(r.status, 0);
    assert.match(r.output, /bench model needs a Hopper GPU: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('CLI options into ModelBenchOptions', () => {
  const cli: ModelBenchCliOptions = {
    preset: 'pro', layers: 2, batches: '8,1', contexts: '32k', prefill: 'none', prefillChunk: '4k', kvFill: 'prefill', warmup: 0, runs: 3,
    prefillRuns: 1, profileRuns: 0, seed: 9, out: 'o', moeBackend: 'mega_moe',
  };
  const o = modelBenchOptionsFromCli(cli, 'megamoe bench model');
  assert.deepEqual([o.batches, o.contexts, o.prefill, o.prefillChunk, o.kvFill, o.moeBackend], [[1, 8], [32768], [], 4096, 'prefill', 'mega_moe']);
  assert.equal(o.kvCacheGib, undefined, 'the caches from the free memory unless asked');
  assert.equal(modelBenchOptionsFromCli({ ...cli, kvCacheGib: '1.5' }, 'megamoe bench model').kvCacheGib, 1.5);
});

test('capacity: largest batch, chunk rows, context rounded to 64 past the decode steps', () => {
  const c = planCapacity(opts({ batches: [1, 256], contexts: [1024, 32768], prefill: [4096] }), flash);
  assert.deepEqual(c, { maxSequences: 256, maxRows: 2048, maxContext: 32768 + 64 });
  assert.equal(planCapacity(opts({ batches: [], contexts: [], prefill: [4096] }), flash).maxContext, 4096);
  assert.throws(() => planCapacity(opts({ contexts: [flash.maxContext] }), flash), /past the flash config's context/);
});

test('flash preset config: the published shape and ratio pattern', () => {
  assert.deepEqual(flash.compressRatios, [0, 0, 4, 128]);
  assert.equal(flash.nMtpLayers, 0);
  assert.deepEqual([flash.dim, flash.nHeads, flash.headDim, flash.base.nRoutedExperts, flash.base.numExpertsPerTok], [4096, 64, 512, 256, 6]);
});

test('decode step bytes, hand-counted (flash, batch 1, context 1024)', () => {
  assert.equal(expectedTouchedExperts(1, 256, 6), 6);
  const s = decodeStepCost(flash, 1, 1024);
  // caches: window 128 rows x 512 x 2 B per layer; ratio 4: 256 compressed rows (all, < top-512) + 256 indexer keys x 128 x 2 B,
  // compressor states 24576 + 6144 B; ratio 128: 8 compressed rows, state 8192 B
  assert.equal(s.cacheBytes, 2 * 131072 + (384 * 1024 + 256 * 256 + 30720) + (136 * 1024 + 8192));
  const dense = [0, 1, 2, 3].reduce((a, i) => a + layerDenseBytes(flash, i), 0);
  const head = 129280 * 4096 * 2 + 4096 * 2 + (16 * 4096 + 4096) * 4;
  assert.ok(Math.abs(s.weightBytes - (head + dense + 4 * 7 * expertWeightBytes(4096, 2048))) < 1e-3);
  // layer 0's dense bytes: wq_a, wq_b, wkv, wo_b with their f32 block scales, wo_a bf16, hc fn, norms, sink, router gate + bias
  const fp8 = (n: number, k: number) => n * k + Math.ceil(n / 128) * Math.ceil(k / 128) * 4;
  assert.equal(layerDenseBytes(flash, 0), fp8(1024, 4096) + fp8(32768, 1024) + fp8(512, 4096) + fp8(4096, 8192) + 8192 * 4096 * 2 +
    2 * 24 * 16384 * 4 + (2 * 4096 + 1024 + 512 + 64) * 4 + 256 * 4096 * 2 + 256 * 4);
  assert.equal(layerExpertBytes(flash, 0), expertWeightBytes(4096, 2048));
  // measured routing replaces the expectation
  assert.deepEqual(decodeStepCost(flash, 8, 1024, [10, 20, 30, 40]).expertsTouched, [10, 20, 30, 40]);
  assert.ok(residentWeightBytes(flash) > 4 * 257 * expertWeightBytes(4096, 2048));
});

test('decode FLOPs scale with the batch; attention with the context', () => {
  const one = decodeStepCost(flash, 1, 1024); const eight = decodeStepCost(flash, 8, 1024);
  assert.equal(eight.fp8Flops, 8 * one.fp8Flops);
  assert.ok(Math.abs(eight.otherFlops - 8 * one.otherFlops) < 1);
  // layer 0's FP8 FLOPs per token: the four projections and 6 routed + 1 shared experts
  const perLayer0 = 2 * (1024 * 4096 + 32768 * 1024 + 512 * 4096 + 4096 * 8192) + 2 * 3 * 4096 * 2048 * 7;
  const idx = 2 * 64 * 128 * 1024;
  assert.equal(one.fp8Flops, 4 * perLayer0 + idx);
  assert.ok(decodeStepCost(flash, 1, 32768).otherFlops > one.otherFlops);
  assert.equal(decodeStepCost(flash, 1, 32768).fp8Flops, one.fp8Flops);
});

test('prefill: weights once per call, FLOPs independent of the chunking but for the logit rows', () => {
  const a = prefillCost(flash, 4096, 4096); const b = prefillCost(flash, 4096, 1024);
  assert.equal(a.fp8Flops, b.fp8Flops);
  assert.ok(Math.abs((b.otherFlops - a.otherFlops) - 3 * 2 * 129280 * 4096) < 1e3);
  assert.ok(b.weightBytes > 3.5 * a.weightBytes);
});

test('roofline: the larger of the HBM and compute terms; copy bound from the measured copy', () => {
  const cost = { weightBytes: 4.8e12, cacheBytes: 0, fp8Flops: 2000e12 * 0.5, otherFlops: 0, expertsTouched: [] };
  const r = stepRoofline(cost, { hbmPeakTBs: 4.8, fp8DensePeakTflops: 2000, copyTBs: 4 });
  assert.equal(r.hbmUs, 1e6); assert.equal(r.computeUs, 0.5e6); assert.equal(r.bound, 'HBM'); assert.equal(r.copyUs, 1.2e6);
  const c = stepRoofline({ ...cost, otherFlops: 1000e12 }, { hbmPeakTBs: 4.8, fp8DensePeakTflops: 2000 });
  assert.equal(c.computeUs, 1.5e6); // other FLOPs at half the FP8 rate
  assert.equal(c.bound, 'compute');
  assert.equal(c.copyUs, undefined);
});

test('--kv-fill prefill: a row past 2^20 fill tokens is refused with the fix; skip never is', () => {
  assert.equal(decodeFillRefusal('prefill', 8, 1024), undefined);
  assert.match(decodeFillRefusal('prefill', 256, 32768)!, /256 x 32768 = 8388608 tokens.*use --kv-fill skip/);
  assert.equal(decodeFillRefusal('skip', 256, 32768), undefined);
});
