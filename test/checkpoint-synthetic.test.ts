// Synthetic checkpoints: deterministic per seed, independent of sharding, in the published layout with a valid
// config, realistic weight statistics, safe output handling, the cached default checkpoint, and the CLI.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Checkpoint, INDEX_FILE } from '../src/checkpoint/checkpoint.js';
import { loadDeepSeekV4Config } from '../src/checkpoint/config.js';
import { CheckpointError } from '../src/checkpoint/errors.js';
import { loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { defaultCheckpointDir, ensureDefaultCheckpoint, makeCheckpoint, makeCheckpointSync, normalQuantile, presetConfig } from '../src/checkpoint/synthetic.js';
import { parseByteSize } from '../src/cli/commands/make-checkpoint.js';
import { decodeBF16Array } from '../src/numerics/bf16.js';
import { dequantizeWeightBlocks } from '../src/numerics/quant.js';
import { createProgress, progressWanted } from '../src/util/progress.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-synth-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const out = (name: string) => path.join(tmp, `${name}-${counter++}`);
const mainJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');

/** name -> bytes of every tensor of a checkpoint. */
function contents(dir: string): Map<string, Buffer> {
  const ckpt = Checkpoint.open(dir);
  const m = new Map(ckpt.names().map((n) => [n, Buffer.from(ckpt.readBytes(n))]));
  ckpt.close();
  return m;
}

function rms(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s / x.length);
}

describe('synthetic checkpoints', () => {
  test('same seed, same bytes (sync and async writers agree); another seed differs', async () => {
    const a = out('a'); const b = out('b'); const c = out('c');
    makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 42, out: a });
    await makeCheckpoint({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 42, out: b });
    await makeCheckpoint({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 43, out: c });
    assert.deepEqual(fs.readFileSync(path.join(a, 'model.safetensors')), fs.readFileSync(path.join(b, 'model.safetensors')));
    assert.deepEqual(fs.readFileSync(path.join(a, 'config.json')), fs.readFileSync(path.join(b, 'config.json')));
    const ca = contents(a); const cc = contents(c);
    for (const name of ['layers.1.ffn.experts.3.w2.weight', 'layers.0.ffn.gate.weight', 'layers.0.ffn.gate.tid2eid']) {
      assert.notDeepEqual(ca.get(name), cc.get(name), `${name} depends on the seed`);
    }
  });

  test('sharding changes the files, not the tensors', async () => {
    const single = out('single'); const sharded = out('sharded');
    await makeCheckpoint({ preset: 'tiny', layers: 2, expertDtype: 'fp4', seed: 5, out: single });
    const r = await makeCheckpoint({ preset: 'tiny', layers: 2, expertDtype: 'fp4', seed: 5, out: sharded, shardSize: 400_000 });
    const shards = fs.readdirSync(sharded).filter((f) => f.endsWith('.safetensors'));
    assert.ok(shards.length >= 3, `several shards (${shards.length})`);
    assert.ok(fs.existsSync(path.join(sharded, INDEX_FILE)));
    assert.ok(r.files.includes(path.join(sharded, INDEX_FILE)));
    assert.deepEqual(contents(single), contents(sharded));
    assert.ok(!fs.readdirSync(tmp).some((f) => f.includes('.partial')), 'no temp folder left behind');
  });

  test('published layout and dtypes; config round-trips through the validator', () => {
    const d = out('layout');
    const r = makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp4', seed: 1, out: d });
    const ckpt = Checkpoint.open(d);
    const dt = (n: string) => { const i = ckpt.info(n); return `${i.dtype}[${i.shape.join(',')}]`; };
    assert.equal(dt('layers.0.ffn_norm.weight'), 'BF16[256]');
    assert.equal(dt('layers.0.ffn.gate.weight'), 'BF16[16,256]');
    assert.equal(dt('layers.0.ffn.gate.tid2eid'), 'I64[1024,4]');
    assert.ok(!ckpt.has('layers.0.ffn.gate.bias'), 'hash layers have no bias');
    assert.equal(dt('layers.1.ffn.gate.bias'), 'F32[16]');
    assert.ok(!ckpt.has('layers.1.ffn.gate.tid2eid'));
    assert.equal(dt('layers.1.ffn.experts.15.w1.weight'), 'I8[128,128]');
    assert.equal(dt('layers.1.ffn.experts.15.w1.scale'), 'F8_E8M0[128,8]');
    assert.equal(dt('layers.1.ffn.experts.15.w2.weight'), 'I8[256,64]');
    assert.equal(dt('layers.1.ffn.experts.15.w2.scale'), 'F8_E8M0[256,4]');
    assert.equal(dt('layers.1.ffn.shared_experts.w2.weight'), 'F8_E4M3[256,128]');
    assert.equal(dt('layers.1.ffn.shared_experts.w2.scale'), 'F8_E8M0[2,1]');
    assert.equal(ckpt.names().length, 2 * (3 + 6 + 16 * 6));
    assert.equal(r.tensors, ckpt.names().length);
    assert.equal(ckpt.metadataOf('layers.0.ffn.gate.weight').format, 'pt');
    ckpt.close();
    const cfg = loadDeepSeekV4Config(d);
    assert.deepEqual([cfg.hiddenSize, cfg.moeIntermediateSize, cfg.nRoutedExperts, cfg.numExpertsPerTok, cfg.numHashLayers, cfg.vocabSize, cfg.swigluLimit, cfg.routedScalingFactor, cfg.numHiddenLayers, cfg.expertDtype],
      [256, 128, 16, 4, 1, 1024, 10, 1.5, 2, 'fp4']);
    assert.match(fs.readFileSync(path.join(d, 'README.md'), 'utf8'), /MoE tensors only/);
  });

  test('flash and pro presets carry the published MoE shapes (config only)', () => {
    const f = presetConfig('flash', 43, 'fp4');
    assert.deepEqual([f.hidden_size, f.moe_intermediate_size, f.n_routed_experts, f.num_experts_per_tok, f.num_hash_layers, f.vocab_size, f.routed_scaling_factor, f.swiglu_limit],
      [4096, 2048, 256, 6, 3, 129280, 1.5, 10]);
    const p = presetConfig('pro', 61, 'fp8');
    assert.deepEqual([p.hidden_size, p.moe_intermediate_size, p.n_routed_experts, p.routed_scaling_factor], [7168, 3072, 384, 2.5]);
    assert.deepEqual((f.compress_ratios as number[]).slice(0, 4), [0, 0, 4, 128]);
  });

  test('weights are ~N(0, 1/sqrt(fan_in)) after dequantization; router and norm are sane', () => {
    for (const expertDtype of ['fp8', 'fp4'] as const) {
      const d = out(`stats-${expertDtype}`);
      makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype, seed: 3, out: d });
      const L = loadMoeLayer(d, { layer: 1 });
      const w1 = [] as number[]; const w2 = [] as number[];
      for (const id of L.experts.ids) {
        const e = L.experts.get(id);
        w1.push(rms(dequantizeWeightBlocks(e.w1)));
        w2.push(rms(dequantizeWeightBlocks(e.w2)));
      }
      const mean = (x: number[]) => x.reduce((a, b) => a + b, 0) / x.length;
      assert.ok(Math.abs(mean(w1) / (1 / Math.sqrt(256)) - 1) < 0.15, `${expertDtype} w1 rms ${mean(w1)}`);
      assert.ok(Math.abs(mean(w2) / (1 / Math.sqrt(128)) - 1) < 0.15, `${expertDtype} w2 rms ${mean(w2)}`);
      assert.ok(Math.abs(rms(decodeBF16Array(L.gateWeight.data)) * 16 - 1) < 0.1, 'gate rows ~ N(0, 1/sqrt(H))');
      assert.ok(rms(L.gateBias!) < 0.05, 'router bias is small');
      assert.ok(Math.abs(rms(decodeBF16Array(L.ffnNormWeight!.data)) - 1) < 0.05, 'ffn_norm ~ 1');
      if (expertDtype === 'fp4') assert.equal(L.experts.conversion()!.inexactBlocks, 0);
      L.close();
    }
    assert.ok(Math.abs(normalQuantile(0.975) - 1.959964) < 1e-6);
    assert.ok(Math.abs(normalQuantile(1e-5) + 4.264891) < 1e-5);
  });

  test('an existing non-empty output is refused unless forced; bad options are refused', async () => {
    const d = out('exists');
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'keep.txt'), 'x');
    assert.throws(() => makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: d }),
      (e: unknown) => e instanceof CheckpointError && /already exists and is not empty; pass --force/.test(e.message) && e.message.includes(d));
    assert.ok(fs.existsSync(path.join(d, 'keep.txt')));
    // --force replaces a checkpoint, never a folder holding other files (hardening-write.test.ts has the rest).
    await assert.rejects(makeCheckpoint({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: d, force: true }), /--force replaces only a checkpoint folder, and this one also holds "keep\.txt"/);
    assert.ok(fs.existsSync(path.join(d, 'keep.txt')));
    fs.rmSync(path.join(d, 'keep.txt'));
    await makeCheckpoint({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: d });
    await makeCheckpoint({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 2, out: d, force: true });
    assert.equal(JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8')).megamoe_synthetic.seed, 2);
    assert.throws(() => makeCheckpointSync({ preset: 'huge' as 'tiny', layers: 1, expertDtype: 'fp8', seed: 1, out: out('x') }), /unknown preset "huge"/);
    assert.throws(() => makeCheckpointSync({ preset: 'tiny', layers: 0, expertDtype: 'fp8', seed: 1, out: out('x') }), /layers must be a positive integer/);
    assert.throws(() => makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp16' as 'fp8', seed: 1, out: out('x') }), /"fp8" or "fp4"/);
    assert.throws(() => makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: -1, out: out('x') }), /seed must be an integer/);
  });

  test('ensureDefaultCheckpoint generates once into the cache folder, then reuses it', () => {
    const cache = out('cache');
    const saved = process.env.MEGAMOE_CACHE_DIR;
    process.env.MEGAMOE_CACHE_DIR = cache;
    try {
      assert.equal(defaultCheckpointDir(), path.join(cache, 'default-tiny-v1'));
      const d = ensureDefaultCheckpoint();
      assert.equal(d, path.join(cache, 'default-tiny-v1'));
      const cfg = loadDeepSeekV4Config(d);
      assert.equal(cfg.numHiddenLayers, 2);
      assert.equal(cfg.numHashLayers, 1);
      const mtime = fs.statSync(path.join(d, 'model.safetensors')).mtimeMs;
      assert.equal(ensureDefaultCheckpoint(), d);
      assert.equal(fs.statSync(path.join(d, 'model.safetensors')).mtimeMs, mtime, 'not regenerated');
      assert.deepEqual(fs.readdirSync(cache), ['default-tiny-v1'], 'no temp folders left');
      const L0 = loadMoeLayer(d, { layer: 0 }); const L1 = loadMoeLayer(d, { layer: 1 });
      assert.ok(L0.isHashLayer && !L1.isHashLayer);
      L0.close(); L1.close();
      // Debris without config.json (not something we renamed into place) is replaced.
      fs.rmSync(path.join(d, 'config.json'));
      assert.equal(ensureDefaultCheckpoint(), d);
      assert.ok(fs.existsSync(path.join(d, 'config.json')));
    } finally {
      if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR; else process.env.MEGAMOE_CACHE_DIR = saved;
    }
  });

  test('progress bars stay silent under node --test', () => {
    assert.equal(progressWanted(), false);
    const p = createProgress({ label: 'x', total: 10 });
    p.update(5); p.increment(); p.stop(); p.stop(); // the silent bar takes every call, stop() twice included
  });
});

describe('make-checkpoint CLI', () => {
  test('writes a tiny fp4 checkpoint and reports size and speed', () => {
    const d = out('cli');
    const r = spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--preset', 'tiny', '--layers', '2', '--expert-dtype', 'fp4', '--seed', '9', '--out', d, '--shard-size', '1MB'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /wrote .*: 210 tensors, .* MB in \d+ files, .* s \(\d+ MB\/s\)/);
    assert.ok(fs.existsSync(path.join(d, INDEX_FILE)));
    const lib = out('lib');
    makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp4', seed: 9, out: lib });
    assert.deepEqual(contents(d), contents(lib), 'the CLI writes what the library writes');
  });

  test('bad arguments exit non-zero with a message', () => {
    const r = spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--preset', 'mega', '--out', out('bad')], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /--preset must be one of tiny, flash, pro, got "mega"/);
    const r2 = spawnSync(process.execPath, [mainJs, 'make-checkpoint', '--shard-size', 'lots', '--out', out('bad')], { encoding: 'utf8' });
    assert.notEqual(r2.status, 0);
    assert.match(r2.stderr, /"lots" is not a size in bytes/);
  });

  test('parseByteSize understands units', () => {
    assert.equal(parseByteSize('4GB'), 4e9);
    assert.equal(parseByteSize('500MiB'), 500 * 1024 * 1024);
    assert.equal(parseByteSize('1000000'), 1e6);
    assert.equal(parseByteSize('1e9'), 1e9);
    assert.throws(() => parseByteSize('0'), /not a size/);
    assert.throws(() => parseByteSize('4 parsecs'), /not a size/);
  });
});
