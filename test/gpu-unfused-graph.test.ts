// The whole unfused layer captured in one CUDA graph per decode size: a replay after the routing changed gives
// exactly the eager result for the new routing (the routing is read from device memory, never baked in), and it
// matches the CPU reference. Also reports the host time per layer with and without the graph.
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { gpuSkipReason } from '../src/cuda/index.js';
import { ReferenceBackend } from '../src/backends/reference.js';
import { median } from '../src/bench/report.js';
import { UnfusedBackend } from '../src/backends/unfused.js';
import { makeRandomLayer, moeShape, randomHiddenStates } from '../src/moe/synthetic.js';
import { decodeBF16Array } from '../src/numerics/bf16.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

function routing(seed: number, T: number, E: number, K: number): { ids: HostTensor<'I64'>; w: HostTensor<'F32'> } {
  const rng = new Rng(seed);
  const ids = new BigInt64Array(T * K);
  const w = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const chosen = new Set<number>();
    for (let k = 0; k < K; k++) {
      let e = rng.int(E);
      while (chosen.has(e)) e = rng.int(E);
      chosen.add(e);
      ids[t * K + k] = BigInt(e);
      w[t * K + k] = Math.fround(0.1 + rng.uniform() * 0.4);
    }
  }
  return { ids: new HostTensor('I64', [T, K], ids), w: new HostTensor('F32', [T, K], w) };
}

test('one CUDA graph per decode size replays the layer for new routing', { skip }, async (t) => {
  const shape = moeShape({ hidden: 256, inter: 128, experts: 16, topk: 4 });
  const layer = makeRandomLayer({ seed: 21, shape });
  const gpu = new UnfusedBackend();
  const ref = new ReferenceBackend();
  await gpu.prepare(layer, { maxTokens: 256 });
  ref.prepare(layer);
  const moe = gpu.pipeline!;
  try {
    for (const T of [1, 7, 64, 128]) {
      await t.test(`T = ${T} (${moe.rowTile(T).mode} path)`, async () => {
        const x = randomHiddenStates(40 + T, T, 256);
        const a = routing(50 + T, T, 16, 4);
        const b = routing(60 + T, T, 16, 4);
        // Capture while routing A is loaded, then switch to B and replay.
        moe.uploadInputs(x, a.ids.data, a.w.data);
        const graph = moe.captureGraph(T);
        try {
          moe.enqueue(T);
          const yA = moe.downloadOutputs(T);
          moe.uploadInputs(x, b.ids.data, b.w.data);
          graph.launch(moe.stream);
          const yGraph = moe.downloadOutputs(T);
          moe.enqueue(T);
          const yEager = moe.downloadOutputs(T);
          assert.deepEqual(yGraph.y.data, yEager.y.data, 'graph replay == eager, bit for bit');
          assert.deepEqual(yGraph.yRouted.data, yEager.yRouted.data);
          assert.notDeepEqual(yGraph.y.data, yA.y.data, 'the replay used the new routing');
          const want = await ref.forward(x, b.ids, b.w);
          const d = calcDiff(decodeBF16Array(yGraph.y.data), decodeBF16Array(want.y.data));
          assert.ok(d <= 1e-5, `calc_diff vs reference ${d}`);

          // Host cost per layer: eager launches vs one graph launch (queue 50, then drain; median of batches).
          const host = (fn: () => void): number => {
            const per: number[] = [];
            for (let batch = 0; batch < 6; batch++) {
              const t0 = performance.now();
              for (let i = 0; i < 50; i++) fn();
              per.push(((performance.now() - t0) * 1e3) / 50);
              moe.stream.synchronize();
            }
            return median(per.slice(1)); // 5 batches: the middle one
          };
          const eagerUs = host(() => moe.enqueue(T));
          const graphUs = host(() => graph.launch(moe.stream));
          t.diagnostic(`tiny T=${T}: host us per layer: eager ${eagerUs.toFixed(1)}, graph ${graphUs.toFixed(1)}`);
          assert.ok(graphUs < eagerUs, `a graph launch (${graphUs} us) costs the host less than ${eagerUs} us of eager launches`);
        } finally {
          graph.dispose();
        }
      });
    }
  } finally {
    gpu.dispose();
    ref.dispose();
  }
});
