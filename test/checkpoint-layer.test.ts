// Loading one MoE layer for one expert-parallel rank from fp8 and fp4 checkpoints (synthetic, written by the
// real writer): router, shared expert, lazy experts, EP ownership, conversion, and refusals by file + tensor.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint, writeCheckpoint } from '../src/checkpoint/checkpoint.js';
import { CheckpointError } from '../src/checkpoint/errors.js';
import { expertRange, loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { dequantizeMxfp4 } from '../src/checkpoint/mxfp4.js';
import { makeCheckpointSync } from '../src/checkpoint/synthetic.js';
import { dequantizeWeightBlocks } from '../src/numerics/quant.js';
import { HostTensor } from '../src/tensor/host.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-layer-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const fp8Dir = path.join(tmp, 'tiny-fp8');
const fp4Dir = path.join(tmp, 'tiny-fp4');
let counter = 0;

before(() => {
  makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 7, out: fp8Dir });
  makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp4', seed: 7, out: fp4Dir, shardSize: 600_000 });
});

/** Copies a checkpoint, renaming/replacing/dropping tensors and patching config.json. */
function rewrite(src: string, transform: (name: string, t: HostTensor) => [string, HostTensor] | null,
  configPatch: Record<string, unknown> = {}): string {
  const dst = path.join(tmp, `rewritten-${counter++}`);
  const ckpt = Checkpoint.open(src);
  const out: [string, HostTensor][] = [];
  for (const name of ckpt.names()) {
    const r = transform(name, ckpt.read(name));
    if (r) out.push(r);
  }
  ckpt.close();
  writeCheckpoint(dst, out);
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...cfg, ...configPatch }));
  return dst;
}

function rejects(fn: () => unknown, tensor: string | undefined, problem: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CheckpointError, String(err));
    if (tensor !== undefined) {
      assert.equal(err.tensor, tensor);
      assert.ok(err.message.includes(`"${tensor}"`), err.message);
    }
    assert.match(err.message, problem);
    return true;
  });
}

describe('MoE layer loading', () => {
  test('hash layer 0 of an fp8 checkpoint: tid2eid, no bias, shared expert, ffn_norm', () => {
    const L = loadMoeLayer(fp8Dir, { layer: 0 });
    try {
      assert.equal(L.isHashLayer, true);
      assert.equal(L.expertDtype, 'fp8');
      assert.equal(L.prefix, '');
      assert.equal(L.shape.hiddenSize, 256);
      assert.deepEqual(L.gateWeight.shape, [16, 256]);
      assert.equal(L.gateWeight.dtype, 'BF16');
      assert.equal(L.gateBias, undefined);
      assert.ok(L.tid2eid instanceof Int32Array);
      assert.equal(L.tid2eid!.length, 1024 * 4);
      for (let r = 0; r < 1024; r++) {
        const row: number[] = Array.from(L.tid2eid!.subarray(r * 4, r * 4 + 4));
        assert.equal(new Set(row).size, 4, `row ${r} has distinct experts`);
        assert.ok(row.every((e) => e >= 0 && e < 16));
      }
      assert.equal(L.sharedExpert.w1.n, 128);
      assert.equal(L.sharedExpert.w1.k, 256);
      assert.deepEqual([L.sharedExpert.w2.n, L.sharedExpert.w2.k], [256, 128]);
      assert.equal(L.sharedExpert.w1.s.length, 2);
      assert.deepEqual(L.ffnNormWeight?.shape, [256]);
      assert.equal(L.experts.conversion(), undefined, 'no conversion report for fp8 experts');
      assert.deepEqual(L.experts.ids, Array.from({ length: 16 }, (_, i) => i));
    } finally {
      L.close();
    }
  });

  test('score-routed layer 1: f32 bias, no tid2eid; fp8 experts come back as stored', () => {
    const L = loadMoeLayer(fp8Dir, { layer: 1 });
    const ckpt = Checkpoint.open(fp8Dir);
    try {
      assert.equal(L.isHashLayer, false);
      assert.equal(L.tid2eid, undefined);
      assert.ok(L.gateBias instanceof Float32Array && L.gateBias.length === 16);
      const e = L.experts.get(9);
      assert.deepEqual(Buffer.from(e.w3.q), Buffer.from(ckpt.read('layers.1.ffn.experts.9.w3.weight').bytes()));
      assert.deepEqual([...e.w3.s], [...(ckpt.read('layers.1.ffn.experts.9.w3.scale').data as Float32Array)]);
      assert.deepEqual([e.w2.n, e.w2.k, e.w2.s.length], [256, 128, 2]);
      assert.equal(L.experts.get(9), e, 'second get returns the cached expert');
    } finally {
      L.close(); ckpt.close();
    }
  });

  test('an EP rank reads only its own experts', () => {
    const ckpt = Checkpoint.open(fp8Dir);
    const touched = new Set<string>();
    const read = ckpt.read.bind(ckpt);
    const info = ckpt.info.bind(ckpt);
    ckpt.read = (name, expect) => { touched.add(name); return read(name, expect); };
    ckpt.info = (name) => { touched.add(name); return info(name); };
    const L = loadMoeLayer(ckpt, { layer: 1, epRank: 2, epSize: 4 });
    assert.deepEqual(L.experts.ids, [8, 9, 10, 11]);
    assert.ok(L.experts.has(8) && L.experts.has(11) && !L.experts.has(7) && !L.experts.has(12));
    L.experts.loadAll();
    assert.equal(L.experts.loadedCount, 4);
    const experts = [...touched].map((n) => /experts\.(\d+)\./.exec(n)?.[1]).filter((x) => x !== undefined).map(Number);
    assert.ok(experts.length > 0);
    assert.deepEqual([...new Set(experts)].sort((a, b) => a - b), [8, 9, 10, 11], 'no other rank\'s expert tensor was touched');
    rejects(() => L.experts.get(3), 'layers.1.ffn.experts.3.w1.weight', /not owned by this rank \(it owns experts 8\.\.11\)/);
    ckpt.close();
  });

  test('uneven or invalid expert parallelism is refused', () => {
    rejects(() => loadMoeLayer(fp8Dir, { layer: 1, epRank: 0, epSize: 3 }), undefined, /16 experts cannot be split evenly over 3 expert-parallel ranks/);
    rejects(() => loadMoeLayer(fp8Dir, { layer: 1, epRank: 4, epSize: 4 }), undefined, /rank must be in \[0, 4\), got 4/);
    rejects(() => expertRange(16, 0, 0), undefined, /positive integer/);
    assert.deepEqual(expertRange(256, 7, 8), { first: 224, end: 256 });
  });

  test('an fp4 checkpoint loads and converts exactly (values equal the MXFP4 values)', () => {
    const L = loadMoeLayer(fp4Dir, { layer: 1, epRank: 1, epSize: 2 });
    const ckpt = Checkpoint.open(fp4Dir);
    try {
      assert.equal(L.expertDtype, 'fp4');
      assert.deepEqual(L.experts.conversion(), { blocks: 0, inexactBlocks: 0, worstAbsError: 0, worstRelError: 0 });
      for (const id of [8, 15]) {
        const e = L.experts.get(id);
        for (const [proj, n, k] of [['w1', 128, 256], ['w2', 256, 128], ['w3', 128, 256]] as const) {
          const w = e[proj];
          assert.deepEqual([w.n, w.k, w.q.length, w.s.length], [n, k, n * k, Math.ceil(n / 128) * Math.ceil(k / 128)]);
          const exact = dequantizeMxfp4(ckpt.read(`layers.1.ffn.experts.${id}.${proj}.weight`).data as Int8Array,
            ckpt.read(`layers.1.ffn.experts.${id}.${proj}.scale`).data as Uint8Array, n, k);
          const got = dequantizeWeightBlocks(w);
          let diffs = 0;
          for (let i = 0; i < exact.length; i++) if (!Object.is(got[i], exact[i])) diffs++;
          assert.equal(diffs, 0, `expert ${id} ${proj}: every value exact`);
        }
      }
      const rep = L.experts.conversion()!;
      assert.equal(rep.blocks, 2 * 3 * 2);
      assert.equal(rep.inexactBlocks, 0);
      // Shared expert scales are e8m0 in fp4 checkpoints (as V4-Flash): decoded to f32 powers of two.
      assert.equal(ckpt.info('layers.1.ffn.shared_experts.w1.scale').dtype, 'F8_E8M0');
      assert.ok([...L.sharedExpert.w1.s].every((s) => Number.isInteger(Math.log2(s))));
    } finally {
      L.close(); ckpt.close();
    }
  });

  test('a "model." prefix is accepted', () => {
    const d = rewrite(fp8Dir, (name, t) => [`model.${name}`, t]);
    const L = loadMoeLayer(d, { layer: 0, epRank: 1, epSize: 2 });
    assert.equal(L.prefix, 'model.');
    assert.equal(L.experts.get(8).w1.n, 128);
    L.close();
  });

  test('tid2eid stored as I32 is accepted; an out-of-range expert id is refused', () => {
    const asI32 = rewrite(fp8Dir, (name, t) => (name.endsWith('tid2eid') ? [name, new HostTensor('I32', t.shape, Int32Array.from(t.data as BigInt64Array, Number))] : [name, t]));
    const L = loadMoeLayer(asI32, { layer: 0 });
    const ref = loadMoeLayer(fp8Dir, { layer: 0 });
    assert.deepEqual(L.tid2eid, ref.tid2eid);
    L.close(); ref.close();
    const bad = rewrite(fp8Dir, (name, t) => {
      if (!name.endsWith('tid2eid')) return [name, t];
      const v = (t.data as BigInt64Array).slice(); v[4 * 10 + 2] = 16n;
      return [name, new HostTensor('I64', t.shape, v)];
    });
    rejects(() => loadMoeLayer(bad, { layer: 0 }), 'layers.0.ffn.gate.tid2eid', /row 10 \(token id\) maps to expert 16, outside \[0, 16\)/);
  });

  test('refusals name the tensor: missing bias, wrong dtype, wrong shape, missing expert', () => {
    const noBias = rewrite(fp8Dir, (name, t) => (name === 'layers.1.ffn.gate.bias' ? null : [name, t]));
    rejects(() => loadMoeLayer(noBias, { layer: 1 }), 'layers.1.ffn.gate.bias', /tensor not found/);
    const f32Gate = rewrite(fp8Dir, (name, t) => (name === 'layers.1.ffn.gate.weight' ? [name, new HostTensor('F32', t.shape)] : [name, t]));
    rejects(() => loadMoeLayer(f32Gate, { layer: 1 }), 'layers.1.ffn.gate.weight', /dtype mismatch: stored as F32, expected BF16/);
    const wrongShape = rewrite(fp8Dir, (name, t) => (name === 'layers.1.ffn.experts.13.w2.weight' ? [name, t.reshape([128, 256])] : [name, t]));
    rejects(() => loadMoeLayer(wrongShape, { layer: 1 }), 'layers.1.ffn.experts.13.w2.weight', /shape mismatch: stored as \[128, 256\], expected \[256, 128\]/);
    assert.doesNotThrow(() => loadMoeLayer(wrongShape, { layer: 1, epRank: 0, epSize: 2 }).close(), 'rank 0 does not own expert 13');
    const missing = rewrite(fp8Dir, (name, t) => (name === 'layers.1.ffn.experts.4.w3.scale' ? null : [name, t]));
    rejects(() => loadMoeLayer(missing, { layer: 1 }), 'layers.1.ffn.experts.4.w3.scale', /tensor not found/);
  });

  test('config and checkpoint must agree on the expert dtype; absent, the tensors decide', () => {
    const declaredFp8 = rewrite(fp4Dir, (name, t) => [name, t], { expert_dtype: 'fp8' });
    rejects(() => loadMoeLayer(declaredFp8, { layer: 1 }), 'layers.1.ffn.experts.0.w1.weight', /stored as I8 \("fp4" experts\) but config\.json declares expert_dtype "fp8"/);
    const undeclared = rewrite(fp4Dir, (name, t) => [name, t], { expert_dtype: null });
    const L = loadMoeLayer(undeclared, { layer: 1, epRank: 3, epSize: 4 });
    assert.equal(L.config.expertDtypeDeclared, false);
    assert.equal(L.expertDtype, 'fp4');
    L.close();
  });

  test('the MTP block (mtp.0.*) loads as layer num_hidden_layers, score-routed', () => {
    const d = rewrite(fp8Dir, (name, t) => (name.startsWith('layers.1.') ? [name.replace('layers.1.', 'mtp.0.'), t] : [name, t]),
      { num_hidden_layers: 1, num_nextn_predict_layers: 1 });
    const mtp = loadMoeLayer(d, { layer: 1 });
    const main = loadMoeLayer(fp8Dir, { layer: 1 });
    try {
      assert.equal(mtp.isHashLayer, false);
      assert.deepEqual([...mtp.gateWeight.data], [...main.gateWeight.data]);
      assert.deepEqual([...mtp.gateBias!], [...main.gateBias!]);
      assert.deepEqual([...mtp.experts.get(3).w2.q], [...main.experts.get(3).w2.q]);
    } finally {
      mtp.close();
      main.close();
    }
    rejects(() => loadMoeLayer(d, { layer: 2 }), undefined, /layer 2 does not exist: num_hidden_layers is 1 \(\+ 1 MTP layer from index 1\)/);
  });

  test('a layer outside the config, or absent from the checkpoint, is refused', () => {
    rejects(() => loadMoeLayer(fp8Dir, { layer: 2 }), undefined, /layer 2 does not exist: num_hidden_layers is 2/);
    const oneLayer = rewrite(fp8Dir, (name, t) => (name.startsWith('layers.1.') ? null : [name, t]));
    rejects(() => loadMoeLayer(oneLayer, { layer: 1 }), 'layers.1.ffn.gate.weight', /is layer 1 in this checkpoint\?/);
  });
});
