// The whole forward on a small written checkpoint: prefill == decode steps (every position's logits), chunked
// prefill, batches == each sequence alone, cache lengths across window and compression boundaries, the MoE block
// == `megamoe moe`'s path, the MTP layer, the loader reading every tensor, sharded == single file.
import { after, before, describe, test } from 'node:test';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../src/checkpoint/checkpoint.js';
import { loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { moeLayerNames, PROJECTIONS } from '../src/checkpoint/names.js';
import { runExpertsReference } from '../src/moe/experts.js';
import { routeLayer } from '../src/moe/router.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { allParams } from '../src/model/params.js';
import { DeepSeekV4Model, type V4Sequence } from '../src/model/model.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-model-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const VOCAB = 512;
/** Small: vocab 512, window 8, ratios 0 / 4 (indexer top-2, so it really selects) / 8 (a "128-like" layer), MTP. */
const OVERRIDES = { vocab_size: VOCAB, sliding_window: 8, compress_ratios: [0, 4, 8, 0], index_topk: 2 };
const dir = path.join(tmp, 'small');
const sharded = path.join(tmp, 'small-sharded');
let model: DeepSeekV4Model;

function tokens(seed: number, n: number): number[] {
  return Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 13)) % VOCAB);
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

before(async () => {
  makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 5, out: dir, overrides: OVERRIDES });
  makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 5, out: sharded, overrides: OVERRIDES, shardSize: 400_000 });
  model = await DeepSeekV4Model.load(dir);
});
after(() => model?.dispose());

async function decodeAll(toks: number[]): Promise<Float32Array[]> {
  const s = model.createSequence();
  const out: Float32Array[] = [];
  for (const t of toks) out.push((await model.step([{ seq: s, tokens: [t] }]))[0]);
  model.releaseSequence(s);
  return out;
}

describe('whole model forward (CPU reference)', () => {
  test('config: every layer kind is present', () => {
    const c = model.config;
    assert.deepEqual(c.compressRatios, [0, 4, 8, 0]);
    assert.equal(c.nMtpLayers, 1);
    assert.equal(c.nHashLayers, 1);
    assert.ok(model.weights.layers[1].attn.indexer && model.weights.layers[2].attn.compressor && !model.weights.layers[2].attn.indexer);
    assert.ok(!model.weights.layers[0].attn.compressor);
  });

  test('prefill of S tokens == S decode steps, logits of every position (crosses window 8 and blocks of 4 and 8)', async () => {
    const toks = tokens(1, 37);
    const s = model.createSequence();
    const [pre] = await model.forward([{ seq: s, tokens: toks }], { allLogits: true });
    assert.equal(pre.logits.length, 37 * VOCAB);
    const dec = await decodeAll(toks);
    for (let t = 0; t < 37; t++) {
      assert.equal(maxDiff(pre.logits.subarray(t * VOCAB, (t + 1) * VOCAB), dec[t]), 0, `position ${t}`);
    }
    // logits are finite and vary (a broken path tends to give NaN or constants)
    assert.ok(dec.every((l) => l.every(Number.isFinite)));
    assert.ok(maxDiff(dec[3], dec[30]) > 1e-3);
    // chunked prefill (20 tokens, then 1, then 16) ends with the same logits
    const s2 = model.createSequence();
    await model.step([{ seq: s2, tokens: toks.slice(0, 20) }]);
    await model.step([{ seq: s2, tokens: toks.slice(20, 21) }]);
    const [last] = await model.step([{ seq: s2, tokens: toks.slice(21) }]);
    assert.equal(maxDiff(last, dec[36]), 0);
    model.releaseSequence(s); model.releaseSequence(s2);
  });

  test('a batch (prefills and decodes mixed in one call) == each sequence alone', async () => {
    const ta = tokens(2, 13); const tb = tokens(3, 9); const tc = tokens(4, 5);
    const a = model.createSequence(); const b = model.createSequence(); const c = model.createSequence();
    await model.step([{ seq: b, tokens: tb.slice(0, 8) }]);
    const r1 = await model.step([{ seq: a, tokens: ta }, { seq: b, tokens: tb.slice(8) }, { seq: c, tokens: tc }]);
    const r2 = await model.step([{ seq: c, tokens: [7] }, { seq: a, tokens: [11] }]);
    const alone = async (toks: number[][]) => {
      const s = model.createSequence();
      const out: Float32Array[] = [];
      for (const t of toks) out.push((await model.step([{ seq: s, tokens: t }]))[0]);
      model.releaseSequence(s);
      return out;
    };
    const [a1, a2] = await alone([ta, [11]]);
    const [, b1] = await alone([tb.slice(0, 8), tb.slice(8)]);
    const [c1, c2] = await alone([tc, [7]]);
    assert.equal(maxDiff(r1[0], a1), 0);
    assert.equal(maxDiff(r1[1], b1), 0);
    assert.equal(maxDiff(r1[2], c1), 0);
    assert.equal(maxDiff(r2[0], c2), 0);
    assert.equal(maxDiff(r2[1], a2), 0);
    for (const s of [a, b, c]) model.releaseSequence(s);
  });

  test('cache lengths across the window and compression boundaries', async () => {
    const s = model.createSequence() as V4Sequence;
    const toks = tokens(5, 26);
    const check = () => {
      const L = s.length;
      assert.equal(s.layers[0].comp, undefined);
      assert.equal(s.layers[1].comp!.count, Math.floor(L / 4), `ratio-4 entries at length ${L}`);
      assert.equal(s.layers[1].idx!.count, Math.floor(L / 4), `indexer entries at length ${L}`);
      assert.equal(s.layers[2].comp!.count, Math.floor(L / 8), `ratio-8 entries at length ${L}`);
      assert.equal(s.layers[2].idx, undefined);
      assert.equal(s.layers[0].ring.length, 8 * model.config.headDim);
    };
    await model.step([{ seq: s, tokens: toks.slice(0, 3) }]); check(); // before the first block
    await model.step([{ seq: s, tokens: toks.slice(3, 4) }]); check(); // block 0 of ratio 4 completes on decode
    await model.step([{ seq: s, tokens: toks.slice(4, 17) }]); check(); // prefill across 8 and 16
    for (let i = 17; i < 26; i++) { await model.step([{ seq: s, tokens: [toks[i]] }]); check(); }
    assert.equal(s.length, 26);
    model.releaseSequence(s);
  });

  test('the MoE block inside the model == the `megamoe moe` path (loadMoeLayer + routeLayer + reference experts)', async () => {
    const seen: { block: number; x: Uint16Array; tok: Int32Array; y: Uint16Array }[] = [];
    model.moeTap = (block, x, tok, y) => seen.push({ block, x: x.data.slice(), tok: tok.slice(), y: y.data.slice() });
    const s = model.createSequence();
    await model.step([{ seq: s, tokens: tokens(6, 9) }]);
    model.moeTap = undefined;
    model.releaseSequence(s);
    assert.equal(seen.length, 3);
    for (const rec of seen) {
      const layer = loadMoeLayer(dir, { layer: rec.block });
      try {
        const { HostTensor } = await import('../src/tensor/host.js');
        const x = new HostTensor('BF16', [rec.tok.length, model.config.dim], rec.x);
        const routing = routeLayer(layer, x, rec.tok);
        const ref = runExpertsReference(layer, x, routing.topkIds, routing.topkWeights);
        assert.deepEqual(Array.from(ref.y.data), Array.from(rec.y), `layer ${rec.block}`);
      } finally { layer.close(); }
    }
  });

  test('MTP: prefill == decode steps, and hidden streams feed it', async () => {
    const toks = tokens(7, 12);
    const s = model.createSequence();
    const [main] = await model.forward([{ seq: s, tokens: toks }], { hidden: true, noLogits: true });
    const D = model.config.dim; const hc = model.config.hcMult;
    assert.equal(main.hidden!.length, 12 * hc * D);
    // hidden i pairs with token i + 1
    const hid = main.hidden!.subarray(0, 11 * hc * D);
    const [pre] = await model.mtpForward([{ seq: s, hidden: hid, tokens: toks.slice(1) }], { allLogits: true });
    const s2 = model.createSequence();
    for (let i = 0; i < 11; i++) {
      const [one] = await model.mtpForward([{ seq: s2, hidden: hid.subarray(i * hc * D, (i + 1) * hc * D), tokens: [toks[i + 1]] }]);
      assert.equal(maxDiff(pre.logits.subarray(i * VOCAB, (i + 1) * VOCAB), one.logits), 0, `MTP position ${i}`);
    }
    assert.equal((s as V4Sequence).mtpLength, 11);
    model.releaseSequence(s); model.releaseSequence(s2);
  });

  test('calls that are not awaited run one after the other (same results as awaited ones)', async () => {
    const toks = tokens(10, 12);
    const s = model.createSequence();
    const p1 = model.step([{ seq: s, tokens: toks.slice(0, 10) }]);
    const p2 = model.step([{ seq: s, tokens: toks.slice(10, 11) }]);
    const p3 = model.step([{ seq: s, tokens: toks.slice(11) }]);
    const [, , [last]] = await Promise.all([p1, p2, p3]);
    const dec = await decodeAll(toks);
    assert.equal(maxDiff(last, dec[11]), 0);
    model.releaseSequence(s);
  });

  test('bad calls are refused with a reason', async () => {
    const s = model.createSequence();
    await assert.rejects(model.step([{ seq: s, tokens: [VOCAB] }]), /outside the vocabulary/);
    await assert.rejects(model.step([{ seq: s, tokens: [1] }, { seq: s, tokens: [2] }]), /appears twice/);
    await assert.rejects(model.step([{ seq: s, tokens: [] }]), /no tokens/);
    model.releaseSequence(s);
    await assert.rejects(model.step([{ seq: s, tokens: [1] }]), /released/);
  });
});

describe('whole-model checkpoint', () => {
  test('the loader reads every tensor the writer wrote; V4-MODEL 9 names', () => {
    const ckpt = Checkpoint.open(dir);
    try {
      const c = model.config;
      const want = new Set<string>();
      for (const p of allParams(c)) {
        if (p.kind === 'fp8' || p.kind === 'fp8-or-bf16') { want.add(`${p.name}.weight`); want.add(`${p.name}.scale`); } else want.add(p.name);
      }
      for (let l = 0; l < c.nLayers + c.nMtpLayers; l++) {
        const n = moeLayerNames(l, '', c.nLayers);
        want.add(n.ffnNorm); want.add(n.gateWeight);
        want.add(l < c.nHashLayers ? n.tid2eid : n.gateBias);
        for (const proj of PROJECTIONS) {
          want.add(n.shared(proj).weight); want.add(n.shared(proj).scale);
          for (let e = 0; e < c.base.nRoutedExperts; e++) { want.add(n.expert(e, proj).weight); want.add(n.expert(e, proj).scale); }
        }
      }
      assert.deepEqual([...ckpt.names()].sort(), [...want].sort());
      for (const name of ['embed.weight', 'head.weight', 'hc_head_fn', 'layers.1.attn.indexer.compressor.ape', 'layers.2.attn.compressor.wgate.weight', 'mtp.0.e_proj.scale', 'mtp.0.ffn.gate.bias', 'layers.0.ffn.gate.tid2eid']) {
        assert.ok(ckpt.has(name), name);
      }
      assert.deepEqual(ckpt.info('layers.1.attn.compressor.ape').shape, [4, 2 * c.headDim]);
      assert.deepEqual(ckpt.info('layers.2.attn.compressor.ape').shape, [8, c.headDim]);
      assert.equal(ckpt.info('layers.0.attn.wq_b.weight').dtype, 'F8_E4M3');
      assert.equal(ckpt.info('layers.0.attn.wq_b.scale').dtype, 'F8_E8M0');
      assert.ok(fs.existsSync(path.join(dir, 'generation_config.json')));
    } finally { ckpt.close(); }
  });

  test('an expert-parallel rank reads only its routed experts', async () => {
    const { loadModelWeights } = await import('../src/model/loader.js');
    const w = loadModelWeights(sharded, { epRank: 1, epSize: 2 });
    try {
      const ids = w.layers[1].moe.experts.ids;
      assert.deepEqual([ids[0], ids[ids.length - 1]], [8, 15]);
      assert.ok(!w.layers[1].moe.experts.has(3));
      assert.equal((w.layers[1].moe.experts as unknown as { loadedCount: number }).loadedCount, 0, 'experts load lazily');
      assert.equal(w.timings.blockMs.length, 4);
    } finally { w.close(); }
  });

  test('a sharded checkpoint (index.json) loads to the same logits', async () => {
    assert.ok(fs.existsSync(path.join(sharded, 'model.safetensors.index.json')));
    const m2 = await DeepSeekV4Model.load(sharded);
    try {
      const toks = tokens(8, 6);
      const [a] = await model.step([{ seq: model.createSequence(), tokens: toks }]);
      const [b] = await m2.step([{ seq: m2.createSequence(), tokens: toks }]);
      assert.equal(maxDiff(a, b), 0);
    } finally { m2.dispose(); }
  });

  test('the sliding window bounds what a window-only layer sees', async () => {
    const d1 = path.join(tmp, 'window-only');
    makeModelCheckpointSync({ preset: 'tiny', layers: 1, mtpLayers: 0, expertDtype: 'fp8', seed: 9, out: d1, overrides: { vocab_size: VOCAB, sliding_window: 4, compress_ratios: [0], num_hash_layers: 0 } });
    const m1 = await DeepSeekV4Model.load(d1);
    try {
      const t1 = tokens(9, 10); const t2 = [...t1]; t2[5] = (t2[5] + 1) % VOCAB;
      const run = async (t: number[]) => (await m1.forward([{ seq: m1.createSequence(), tokens: t }], { allLogits: true }))[0].logits;
      const [l1, l2] = [await run(t1), await run(t2)];
      const at = (l: Float32Array, p: number) => l.subarray(p * VOCAB, (p + 1) * VOCAB);
      for (let p = 0; p < 5; p++) assert.equal(maxDiff(at(l1, p), at(l2, p)), 0, `before the change, position ${p}`);
      for (let p = 5; p <= 8; p++) assert.ok(maxDiff(at(l1, p), at(l2, p)) > 0, `inside the window, position ${p}`);
      assert.equal(maxDiff(at(l1, 9), at(l2, 9)), 0, 'position 9 no longer sees position 5 (window 4)');
    } finally { m1.dispose(); }
  });
});

describe('make-checkpoint --whole-model', () => {
  test('the CLI writes a whole model the model loads and runs (V3 vocabulary, ratio 4 layer, MTP)', async () => {
    const main = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
    const out = path.join(tmp, 'cli-whole');
    const r = spawnSync(process.execPath, [main, 'make-checkpoint', '--whole-model', '--preset', 'tiny', '--layers', '2', '--seed', '3', '--out', out, '--no-progress'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /wrote .*: \d+ tensors/);
    const m = await DeepSeekV4Model.load(out);
    try {
      assert.equal(m.vocabSize, 129280);
      assert.deepEqual(m.config.compressRatios, [0, 4, 0]);
      const [l] = await m.step([{ seq: m.createSequence(), tokens: [0, 128000, 129279, 5, 6] }]);
      assert.equal(l.length, 129280);
      assert.ok(l.every(Number.isFinite));
    } finally { m.dispose(); }
  });
});
