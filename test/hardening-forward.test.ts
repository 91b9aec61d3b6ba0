// Issue 9, class 1 (second half): a forward that produces a non-finite output reports it instead of returning it,
// and non-finite hidden states are refused before any expert math.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ReferenceBackend } from '../src/backends/reference.js';
import { Checkpoint, writeCheckpoint } from '../src/checkpoint/checkpoint.js';
import { makeCheckpointSync } from '../src/checkpoint/synthetic.js';
import { GuardError } from '../src/moe/guards.js';
import { checkForwardOutput, NonFiniteOutputError } from '../src/moe/output-check.js';
import { routeLayer } from '../src/moe/router.js';
import { makeRandomLayer, moeShape, randomHiddenStates } from '../src/moe/synthetic.js';
import { encodeBF16 } from '../src/numerics/bf16.js';
import { HostTensor } from '../src/tensor/host.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-hardening-fwd-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const mainJs = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js');
const shape = moeShape({ hidden: 256, inter: 128, experts: 8, topk: 2 });

test('the reference backend reports an overflowing forward (finite but enormous scales) instead of returning Inf', async () => {
  const layer = makeRandomLayer({ seed: 3, shape });
  layer.sharedExpert.w2.s.fill(3e38); // finite, passes every load check, overflows f32 in the down projection
  const x = randomHiddenStates(1, 4, 256);
  const r = routeLayer(layer, x);
  const backend = new ReferenceBackend();
  backend.prepare(layer, { maxTokens: 4 });
  await assert.rejects(backend.forward(x, r.topkIds, r.topkWeights), (e: unknown) => {
    assert.ok(e instanceof NonFiniteOutputError, String(e));
    assert.equal(e.backend, 'reference');
    assert.equal(e.output, 'y');
    assert.equal(e.token, 0);
    assert.ok(!Number.isFinite(e.value));
    assert.match(e.message, /non-finite output: y\[token 0, column \d+\] = (-?Infinity|NaN)/);
    return true;
  });
});

test('checkForwardOutput: passes finite results through, names output, token and column otherwise', () => {
  const y = new HostTensor('BF16', [3, 4], new Uint16Array(12));
  const yRouted = new HostTensor('BF16', [3, 4], new Uint16Array(12));
  const ok = { y, yRouted };
  assert.equal(checkForwardOutput(ok, 'x'), ok);
  yRouted.data[2 * 4 + 1] = encodeBF16(NaN);
  yRouted.data[2 * 4 + 3] = encodeBF16(Infinity);
  assert.throws(() => checkForwardOutput(ok, 'unfused'), (e: unknown) => e instanceof NonFiniteOutputError
    && e.output === 'y_routed' && e.token === 2 && e.column === 1 && e.count === 2 && /backend unfused/.test(e.message));
});

test('non-finite hidden states are refused before the expert math', () => {
  const layer = makeRandomLayer({ seed: 4, shape });
  const x = randomHiddenStates(2, 3, 256);
  const r = routeLayer(layer, x);
  x.data[1 * 256 + 5] = encodeBF16(NaN);
  const backend = new ReferenceBackend();
  backend.prepare(layer);
  return assert.rejects(backend.forward(x, r.topkIds, r.topkWeights), (e: unknown) => e instanceof GuardError
    && e.code === 'BAD_INPUT' && /hidden states x\[1, 5\] is not finite/.test(e.message));
});

test('megamoe moe exits 1 naming the non-finite output rather than printing it', () => {
  const base = path.join(tmp, 'base');
  makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: 'fp8', seed: 2, out: base });
  const d = path.join(tmp, 'huge-scale');
  const ckpt = Checkpoint.open(base);
  const tensors: [string, HostTensor][] = ckpt.names().map((n) => [n, ckpt.read(n)]);
  ckpt.close();
  for (const [name, t] of tensors) if (name === 'layers.1.ffn.shared_experts.w2.scale') (t.data as Float32Array).fill(3e38);
  writeCheckpoint(d, tensors);
  fs.copyFileSync(path.join(base, 'config.json'), path.join(d, 'config.json'));
  const r = spawnSync(process.execPath, [mainJs, 'moe', '--model', d, '--layer', '1', '--tokens', '3', '--no-f64'], { encoding: 'utf8' });
  assert.equal(r.status, 1, r.stdout);
  assert.match(r.stderr, /backend reference: the forward produced a non-finite output: y\[token 0, column \d+\]/);
});
