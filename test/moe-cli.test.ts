import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { getProvider } from '../src/backends/index.js';
import { loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { SafetensorsFile } from '../src/checkpoint/safetensors.js';
import { defaultLayer, makeHiddenStates } from '../src/cli/commands/moe.js';
import { routeLayer, runExpertsReference } from '../src/moe/index.js';

// dist/test/moe-cli.test.js -> dist/src/cli/main.js
const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
// A private cache, so the test generates the embedded default itself and leaves the user's cache alone.
const CACHE = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-cli-test-'));
process.on('exit', () => fs.rmSync(CACHE, { recursive: true, force: true }));

function megamoe(...args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], {
    encoding: 'utf8', env: { ...process.env, MEGAMOE_CACHE_DIR: CACHE }, timeout: 120_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('default layer: the first score-routed one, else the last', () => {
  assert.equal(defaultLayer(2, 1).layer, 1);
  assert.equal(defaultLayer(43, 3).layer, 3);
  assert.equal(defaultLayer(1, 3).layer, 0);
  assert.equal(defaultLayer(4, 0).layer, 0);
});

test('megamoe moe on the embedded default: routing, timings, accuracy, and a dump that reproduces', () => {
  const dump = path.join(CACHE, 'dump');
  const r = megamoe('moe', '--tokens', '5', '--seed', '3', '--dump', dump);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /\(embedded default\)/);
  assert.match(r.out, /layer {4}1 \(score-routed; default: the first score-routed layer; layer 0 is hash-routed\)/);
  const routingLines = r.out.split('\n').filter((l) => /^ {2}t\d \[tok \d+\]/.test(l));
  assert.equal(routingLines.length, 5);
  for (const l of routingLines) assert.equal(l.match(/\d+:\d\.\d{4}/g)!.length, 4); // top-4 of the tiny preset
  assert.match(r.out, /time {5}load layer [\d.]+ ms, .*routing [\d.]+ ms, .*experts \(reference\) [\d.]+ ms/);
  const diff = Number(/calc_diff vs f64 evaluation: y ([\d.e+-]+)/.exec(r.out)![1]);
  assert.ok(diff > 1e-4 && diff < 1.5e-3, `calc_diff ${diff}`);

  const input = SafetensorsFile.open(path.join(dump, 'input.safetensors'));
  const output = SafetensorsFile.open(path.join(dump, 'output.safetensors'));
  try {
    const x = input.read('x', { dtype: 'BF16', shape: [5, 128] });
    const tok = input.read('token_ids', { dtype: 'I64', shape: [5] });
    const ids = output.read('topk_ids', { dtype: 'I64', shape: [5, 4] });
    output.read('topk_weights', { dtype: 'F32', shape: [5, 4] });
    output.read('y_routed', { dtype: 'BF16', shape: [5, 128] });
    const y = output.read('y', { dtype: 'BF16', shape: [5, 128] });
    // Recompute in process from the same checkpoint, layer and seed: same x, same routing, same y.
    const layer = loadMoeLayer(path.join(CACHE, 'default-tiny-model-v2'), { layer: 1 });
    try {
      const x2 = makeHiddenStates(3, 5, 128, layer.ffnNormWeight);
      assert.deepEqual(x2.data, x.data);
      const routing = routeLayer(layer, x2, Array.from(tok.data as BigInt64Array, Number));
      assert.deepEqual(Array.from(ids.data as BigInt64Array, Number), [...routing.topkIds.data]);
      assert.deepEqual(runExpertsReference(layer, x2, routing.topkIds, routing.topkWeights).y.data, y.data);
    } finally {
      layer.close();
    }
  } finally {
    input.close();
    output.close();
  }
});

test('megamoe moe: hash layer, expert parallelism, truncated routing, --no-f64', () => {
  const r = megamoe('moe', '--layer', '0', '--tokens', '12', '--show', '2', '--ep-rank', '1', '--ep-size', '2', '--no-f64');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /layer {4}0 \(hash-routed; from --layer\)/);
  assert.match(r.out, /EP {7}rank 1 of 2: experts 8\.\.15/);
  assert.match(r.out, /\.\.\. 10 more tokens/);
  assert.doesNotMatch(r.out, /calc_diff/);
});

test('megamoe moe refuses clearly: unknown backend, unavailable GPU backend, bad layer, bad EP rank', async () => {
  const bad = megamoe('moe', '--backend', 'nope');
  assert.equal(bad.code, 1);
  assert.match(bad.err, /^megamoe: unknown backend 'nope': choose one of reference, unfused, mega_moe, auto/);
  if (!(await getProvider('mega_moe').probe()).ok) {
    const mega = megamoe('moe', '--backend', 'deep_gemm_mega_moe');
    assert.equal(mega.code, 1);
    assert.match(mega.err, /backend mega_moe needs a Hopper GPU \/ is not available: /);
    assert.equal(mega.out, '');
  }
  const layer = megamoe('moe', '--layer', '7');
  assert.equal(layer.code, 1);
  assert.match(layer.err, /layer 7 does not exist: num_hidden_layers is 3 \(\+ 1 MTP layer from index 3\)/);
  const ep = megamoe('moe', '--ep-rank', '2', '--ep-size', '2');
  assert.equal(ep.code, 1);
  assert.match(ep.err, /--ep-rank 2 must be below --ep-size 2/);
});
