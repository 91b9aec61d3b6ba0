// Issue 9, classes 1 and 2: a damaged value in a checkpoint (NaN/Inf or e4m3 NaN codes in weights and scales,
// NaN or absurd gate.bias, a tid2eid row repeating an expert) is refused at load by tensor name, index and value;
// config keys that would change the math and are not implemented are refused, not ignored.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Checkpoint, writeCheckpoint } from '../src/checkpoint/checkpoint.js';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { CheckpointError } from '../src/checkpoint/errors.js';
import { findE4m3Nan, NonFiniteTensorError, RoutingTableError, unravelIndex } from '../src/checkpoint/finite-check.js';
import { loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { makeCheckpointSync, presetConfig } from '../src/checkpoint/synthetic.js';
import { encodeBF16 } from '../src/numerics/bf16.js';
import { HostTensor } from '../src/tensor/host.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-hardening-load-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const base = path.join(tmp, 'base');
const mainJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
let counter = 0;

before(() => { makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 11, out: base }); });

/** A copy of the base checkpoint with tensor `name` changed in place by `edit`. */
function damaged(name: string, edit: (t: HostTensor) => void): string {
  const dst = path.join(tmp, `damaged-${counter++}`);
  const ckpt = Checkpoint.open(base);
  const out: [string, HostTensor][] = ckpt.names().map((n) => [n, ckpt.read(n)]);
  ckpt.close();
  const hit = out.find(([n]) => n === name);
  assert.ok(hit, name);
  edit(hit[1]);
  writeCheckpoint(dst, out);
  fs.copyFileSync(path.join(base, 'config.json'), path.join(dst, 'config.json'));
  return dst;
}

function refusesValue(fn: () => unknown, tensor: string, index: number[], value: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof NonFiniteTensorError, String(err));
    assert.equal(err.tensor, tensor);
    assert.deepEqual([...err.index], index);
    assert.match(err.value, value);
    assert.ok(err.message.includes(`"${tensor}"`) && err.message.includes(`[${index.join(', ')}]`), err.message);
    return true;
  });
}

describe('non-finite and damaged tensor values are refused at load', () => {
  test('e4m3 NaN codes (0x7F, 0xFF) in a routed expert weight: refused when the expert is read', () => {
    const d = damaged('layers.1.ffn.experts.3.w2.weight', (t) => { (t.data as Uint8Array)[5 * 128 + 17] = 0x7f; });
    const L = loadMoeLayer(d, { layer: 1 });
    try {
      assert.doesNotThrow(() => L.experts.get(2));
      refusesValue(() => L.experts.get(3), 'layers.1.ffn.experts.3.w2.weight', [5, 17], /^e4m3 code 0x7F \(NaN\)$/);
    } finally { L.close(); }
    const d2 = damaged('layers.1.ffn.shared_experts.w1.weight', (t) => { (t.data as Uint8Array)[300] = 0xff; (t.data as Uint8Array)[900] = 0x7f; });
    refusesValue(() => loadMoeLayer(d2, { layer: 1 }), 'layers.1.ffn.shared_experts.w1.weight', [1, 44], /^e4m3 code 0xFF \(NaN\)$/);
  });

  test('NaN, Inf and negative weight scales (routed and shared experts)', () => {
    const nan = damaged('layers.1.ffn.experts.0.w1.scale', (t) => { (t.data as Float32Array)[1] = NaN; });
    const L = loadMoeLayer(nan, { layer: 1 });
    try { refusesValue(() => L.experts.get(0), 'layers.1.ffn.experts.0.w1.scale', [0, 1], /^NaN$/); } finally { L.close(); }
    const inf = damaged('layers.0.ffn.shared_experts.w2.scale', (t) => { (t.data as Float32Array)[1] = Infinity; });
    refusesValue(() => loadMoeLayer(inf, { layer: 0 }), 'layers.0.ffn.shared_experts.w2.scale', [1, 0], /^Infinity$/);
    const neg = damaged('layers.1.ffn.shared_experts.w3.scale', (t) => { (t.data as Float32Array)[0] = -0.01; });
    assert.throws(() => loadMoeLayer(neg, { layer: 1 }), /never negative/);
  });

  test('gate.bias: NaN and absurd magnitudes; gate.weight and ffn_norm.weight: Inf/NaN', () => {
    const nan = damaged('layers.1.ffn.gate.bias', (t) => { (t.data as Float32Array)[7] = NaN; });
    refusesValue(() => loadMoeLayer(nan, { layer: 1 }), 'layers.1.ffn.gate.bias', [7], /^NaN$/);
    const huge = damaged('layers.1.ffn.gate.bias', (t) => { (t.data as Float32Array)[2] = 1e30; });
    assert.throws(() => loadMoeLayer(huge, { layer: 1 }), (e: unknown) => e instanceof NonFiniteTensorError && /decide expert selection by itself/.test(e.message) && e.index[0] === 2);
    const gate = damaged('layers.0.ffn.gate.weight', (t) => { (t.data as Uint16Array)[3 * 256 + 9] = encodeBF16(-Infinity); });
    refusesValue(() => loadMoeLayer(gate, { layer: 0 }), 'layers.0.ffn.gate.weight', [3, 9], /^-Infinity$/);
    const norm = damaged('layers.1.ffn_norm.weight', (t) => { (t.data as Uint16Array)[100] = 0x7fc0; });
    refusesValue(() => loadMoeLayer(norm, { layer: 1 }), 'layers.1.ffn_norm.weight', [100], /^NaN$/);
  });

  test('a tid2eid row with a repeated expert is refused, naming the row', () => {
    const d = damaged('layers.0.ffn.gate.tid2eid', (t) => { const v = t.data as BigInt64Array; v[4 * 77 + 3] = v[4 * 77 + 1]; });
    assert.throws(() => loadMoeLayer(d, { layer: 0 }), (e: unknown) => {
      assert.ok(e instanceof RoutingTableError, String(e));
      assert.equal(e.row, 77);
      assert.equal(e.tensor, 'layers.0.ffn.gate.tid2eid');
      assert.match(e.message, /row 77 \(token id\) names expert \d+ twice \(\[.*\], slots 1 and 3\)/);
      return true;
    });
  });

  test('the CLI refuses a damaged checkpoint instead of printing NaN (exit 1, tensor named)', () => {
    const d = damaged('layers.1.ffn.shared_experts.w2.scale', (t) => { (t.data as Float32Array)[0] = NaN; });
    const r = spawnSync(process.execPath, [mainJs, 'moe', '--model', d, '--layer', '1', '--tokens', '2'], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stdout);
    assert.match(r.stderr, /tensor "layers\.1\.ffn\.shared_experts\.w2\.scale": element \[0, 0\] is NaN/);
    assert.doesNotMatch(r.stdout, /NaN/);
  });

  test('helpers: first NaN code wins whichever code it is; flat index to [row, col]', () => {
    assert.equal(findE4m3Nan(Uint8Array.from([1, 2, 0xff, 0x7f])), 2);
    assert.equal(findE4m3Nan(Uint8Array.from([1, 0x7f, 0xff])), 1);
    assert.equal(findE4m3Nan(Uint8Array.from([0x7e, 0xfe, 0x80, 0])), -1);
    assert.deepEqual(unravelIndex(5 * 128 + 17, [256, 128]), [5, 17]);
  });
});

describe('config keys that change the math are validated', () => {
  const good = () => presetConfig('flash', 43, 'fp4');
  const rejects = (patch: Record<string, unknown>, key: string, problem: RegExp) => {
    assert.throws(() => parseDeepSeekV4Config({ ...good(), ...patch }, '/ckpt/config.json'), (err: unknown) => {
      assert.ok(err instanceof CheckpointError, String(err));
      assert.equal(err.key, key);
      assert.match(err.message, problem);
      return true;
    });
  };

  test('the published V4 values are accepted', () => {
    assert.doesNotThrow(() => parseDeepSeekV4Config(good()));
    assert.doesNotThrow(() => parseDeepSeekV4Config({ ...good(), swiglu_limit: 0, n_group: 1, topk_group: 1, hidden_act: 'silu' }));
  });

  test('topk_method, model_type, FP8 format, negative swiglu_limit, group-limited routing, activation', () => {
    rejects({ topk_method: 'greedy' }, 'topk_method', /implements "noaux_tc" only/);
    rejects({ topk_method: 'group_limited_greedy' }, 'topk_method', /"noaux_tc" only/);
    rejects({ model_type: 'deepseek_v3' }, 'model_type', /DeepSeek-V4 checkpoints \(model_type "deepseek_v4"\) only/);
    rejects({ swiglu_limit: -1 }, 'swiglu_limit', /must be >= 0 \(0 = no clamp/);
    const q = (patch: Record<string, unknown>) => ({ quantization_config: { ...(good().quantization_config as object), ...patch } });
    rejects(q({ fmt: 'e5m2' }), 'quantization_config.fmt', /"e4m3" only/);
    rejects(q({ quant_method: 'int8' }), 'quantization_config.quant_method', /"fp8" only/);
    rejects(q({ activation_scheme: 'static' }), 'quantization_config.activation_scheme', /"dynamic" only/);
    rejects(q({ scale_fmt: 'e4m3' }), 'quantization_config.scale_fmt', /"ue8m0" only/);
    rejects({ scale_fmt: 'fp32' }, 'scale_fmt', /"ue8m0" \(or no key\) only/);
    rejects({ n_group: 8, topk_group: 4 }, 'n_group', /group-limited expert selection is not implemented/);
    rejects({ hidden_act: 'gelu' }, 'hidden_act', /SwiGLU \(silu\)/);
  });
});
