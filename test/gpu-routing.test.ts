// GPU routing kernels (src/kernels/routing.cu) against the CPU router (src/moe/router.ts).
// The GPU sums each logit in another order than the CPU (tensor-core f32 sums vs one f64 sum), so two experts whose
// biased scores are within rounding of each other may legitimately swap between the two. The honest comparison,
// done here for every case:
//   1. the GPU logits match the CPU's f64-accumulated logits within a tight bound (1e-5 of sum |x * w|), and
//   2. the CPU router run on the GPU's OWN logits (downloaded) gives bit-identical ids and weights within 1e-6
//      relative (in practice identical bits: the kernel mirrors the CPU's f32 rounding step by step).
// Skips (with the reason) where no Hopper GPU and driver exist.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBf16, randomBf16Rows } from '../src/bench/random-bf16.js';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import { Router, ROUTER_VARIANTS, type RouterParams, type RouterShape, type RouterTile } from '../src/kernels/routing.js';
import { GuardError } from '../src/moe/guards.js';
import { routeFromLogits, routerLogits } from '../src/moe/router.js';
import type { MoeShape } from '../src/moe/types.js';
import { decodeBF16Array } from '../src/numerics/bf16.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

function moeShape(shape: RouterShape, normTopkProb: boolean, routedScalingFactor: number): MoeShape {
  return {
    hiddenSize: shape.hiddenSize, moeIntermediateSize: 128, nRoutedExperts: shape.experts, numExpertsPerTok: shape.topk,
    nSharedExperts: 1, numHashLayers: 0, scoringFunc: 'sqrtsoftplus', topkMethod: 'noaux_tc', normTopkProb,
    routedScalingFactor, swigluLimit: 10, vocabSize: 1000,
  };
}

interface Layer {
  shape: RouterShape;
  gateBits: Uint16Array;
  gate: DeviceTensor<'BF16'>;
  bias: Float32Array;
  dBias: DeviceTensor<'F32'>;
}

/** A gate whose logits come out around N(0, 1); tiny duplicates two expert rows (and biases) to force exact ties. */
function makeLayer(shape: RouterShape, seed: number): Layer {
  const { hiddenSize: H, experts: E } = shape;
  const rng = new Rng(seed);
  const gateBits = randomBf16(rng, E * H, 113, 122);
  const bias = new Float32Array(E);
  for (let e = 0; e < E; e++) bias[e] = rng.normal() * 0.05;
  if (E <= 16) {
    for (const [dst, src] of [[5, 2], [11, 7]]) {
      gateBits.copyWithin(dst * H, src * H, (src + 1) * H);
      bias[dst] = bias[src];
    }
  }
  const gate = DeviceTensor.fromHost(new HostTensor('BF16', [E, H], gateBits));
  const dBias = DeviceTensor.fromHost(new HostTensor('F32', [E], bias));
  return { shape, gateBits, gate, bias, dBias };
}

/** Rows of x to check the logits on: all when few, else 48 spread over the batch (first and last included). */
function sampleRows(T: number): number[] {
  if (T <= 48) return Array.from({ length: T }, (_, i) => i);
  const rows = new Set<number>([0, T - 1]);
  for (let i = 0; rows.size < 48; i++) rows.add(Math.floor((i * 7919) % T));
  return [...rows].sort((a, b) => a - b);
}

function checkLogits(t: TestContext, label: string, xBits: Uint16Array, layer: Layer, T: number, gpuLogits: Float32Array): void {
  const { hiddenSize: H, experts: E } = layer.shape;
  const rows = sampleRows(T);
  const xs = new Uint16Array(rows.length * H);
  rows.forEach((r, i) => xs.set(xBits.subarray(r * H, (r + 1) * H), i * H));
  const cpu = routerLogits(xs, layer.gateBits, rows.length, H, E);
  const xf = decodeBF16Array(xs);
  const gf = decodeBF16Array(layer.gateBits);
  let worst = 0;
  rows.forEach((r, i) => {
    for (let e = 0; e < E; e++) {
      let absSum = 0;
      for (let h = 0; h < H; h++) absSum += Math.abs(xf[i * H + h] * gf[e * H + h]);
      const err = Math.abs(gpuLogits[r * E + e] - cpu[i * E + e]);
      const ratio = absSum > 0 ? err / absSum : err;
      worst = Math.max(worst, ratio);
      assert.ok(ratio <= 1e-5, `${label}: logit [${r}, ${e}] gpu ${gpuLogits[r * E + e]} cpu ${cpu[i * E + e]}: error ${err} is ${ratio.toExponential(2)} of sum|x*w| ${absSum}`);
    }
  });
  t.diagnostic(`${label}: worst |gpu - cpu| / sum|x*w| = ${worst.toExponential(2)} over ${rows.length} rows`);
}

interface Outcome { exactWeights: number; slots: number }

function checkSelection(label: string, got: { topkIds: BigInt64Array; topkWeights: Float32Array; logits: Float32Array },
  ref: { topkIds: HostTensor<'I32'>; topkWeights: HostTensor<'F32'> }, K: number): Outcome {
  let exact = 0;
  for (let i = 0; i < ref.topkIds.data.length; i++) {
    const slot = `${label}: token ${Math.floor(i / K)} slot ${i % K}`;
    assert.equal(Number(got.topkIds[i]), ref.topkIds.data[i], `${slot}: id`);
    const a = got.topkWeights[i];
    const b = ref.topkWeights.data[i];
    if (a === b) exact++;
    else assert.ok(Math.abs(a - b) <= 1e-6 * Math.abs(b), `${slot}: weight gpu ${a} cpu ${b}`);
  }
  return { exactWeights: exact, slots: ref.topkIds.data.length };
}

function routeAndCheck(t: TestContext, router: Router, layer: Layer, T: number, seed: number, opts: { tile?: RouterTile; params: RouterParams; checkLogitsToo?: boolean }): void {
  const { hiddenSize: H, topk: K } = layer.shape;
  const rng = new Rng(seed);
  const xBits = randomBf16Rows(rng, T, H, 118, 127);
  using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, H], xBits));
  router.route(x, { tile: opts.tile });
  const got = router.download(T);
  const label = `H ${H} E ${layer.shape.experts} T ${T} tile ${router.lastPlan?.tile ?? '-'} x${router.lastPlan?.splits ?? 0}`;
  if (opts.checkLogitsToo !== false) checkLogits(t, label, xBits, layer, T, got.logits);
  const ref = routeFromLogits(got.logits, {
    shape: moeShape(layer.shape, opts.params.normTopkProb, opts.params.routedScalingFactor),
    bias: opts.params.bias ? layer.bias : undefined,
  });
  const o = checkSelection(label, got, ref, K);
  t.diagnostic(`${label}: ids identical, ${o.exactWeights}/${o.slots} weights bit-identical`);
}

const tokenCounts: Record<string, number[]> = {
  tiny: [1, 7, 64, 200, 3000],
  flash: [1, 7, 64, 129, 1024, 4096],
  pro: [1, 16, 300, 2048, 16384],
};

for (const { label, shape } of ROUTER_VARIANTS) {
  test(`routing ${label} (H ${shape.hiddenSize}, E ${shape.experts}, K ${shape.topk}): score routing, ids identical to the CPU on the GPU logits`, { skip }, (t) => {
    const layer = makeLayer(shape, 100 + shape.experts);
    try {
      const counts = tokenCounts[label];
      const params: RouterParams = { bias: layer.dBias, normTopkProb: true, routedScalingFactor: 1.5 };
      using router = Router.createSync(shape, counts[counts.length - 1], layer.gate, params);
      counts.forEach((T, i) => routeAndCheck(t, router, layer, T, 1000 + i, { params }));
      // Deterministic: the same input twice gives the same logits bits (fixed-order split-K sums, no atomics).
      const T = counts[1];
      const xBits = randomBf16(new Rng(5), T * shape.hiddenSize, 118, 127);
      using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, shape.hiddenSize], xBits));
      router.route(x);
      const a = router.download(T).logits;
      router.route(x);
      const b = router.download(T).logits;
      assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(b.buffer), 'logits are bit-identical from run to run');
    } finally {
      layer.gate.dispose();
      layer.dBias.dispose();
    }
  });
}

test('routing: every logits tile (gemv, mid, prefill) agrees with the CPU, no bias, no normalisation', { skip }, (t) => {
  const shape = ROUTER_VARIANTS.find((v) => v.label === 'flash')!.shape;
  const layer = makeLayer(shape, 7);
  try {
    const params: RouterParams = { normTopkProb: false, routedScalingFactor: 2.5 };
    using router = Router.createSync(shape, 512, layer.gate, params);
    for (const tile of ['gemv', 'mid', 'prefill'] as const) {
      for (const T of [3, 200, 512]) routeAndCheck(t, router, layer, T, T + tile.length, { tile, params });
    }
  } finally {
    layer.gate.dispose();
    layer.dBias.dispose();
  }
});

test('routing tiny: exact ties between duplicated experts go to the lower index, as on the CPU', { skip }, () => {
  const shape = ROUTER_VARIANTS.find((v) => v.label === 'tiny')!.shape;
  const layer = makeLayer(shape, 3);
  try {
    const params: RouterParams = { bias: layer.dBias, normTopkProb: true, routedScalingFactor: 1 };
    const T = 2000;
    using router = Router.createSync(shape, T, layer.gate, params);
    const xBits = randomBf16(new Rng(8), T * shape.hiddenSize, 118, 127);
    using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, shape.hiddenSize], xBits));
    router.route(x);
    const got = router.download(T);
    let tiesSeen = 0;
    for (let tok = 0; tok < T; tok++) {
      const row = Array.from(got.topkIds.subarray(tok * 4, tok * 4 + 4), Number);
      for (const [hi, lo] of [[5, 2], [11, 7]]) {
        assert.equal(got.logits[tok * 16 + hi], got.logits[tok * 16 + lo], 'duplicated gate rows give equal logits');
        const iHi = row.indexOf(hi);
        const iLo = row.indexOf(lo);
        if (iHi >= 0) { assert.ok(iLo >= 0 && iLo < iHi, `token ${tok}: expert ${hi} chosen before/without its tie ${lo}: ${row}`); tiesSeen++; }
      }
    }
    assert.ok(tiesSeen > 0, 'the tie case occurred at least once');
  } finally {
    layer.gate.dispose();
    layer.dBias.dispose();
  }
});

test('routing: hash layers take tid2eid[token] (I32 and I64 tables, masked entries) with weights from the logits', { skip }, (t) => {
  const shape = ROUTER_VARIANTS.find((v) => v.label === 'flash')!.shape;
  const { hiddenSize: H, experts: E, topk: K } = shape;
  const layer = makeLayer(shape, 21);
  const vocab = 1000;
  const rng = new Rng(22);
  const table = new Int32Array(vocab * K);
  for (let i = 0; i < table.length; i++) table[i] = rng.int(20) === 0 ? -1 : rng.int(E);
  const T = 300;
  const tokenIds = new BigInt64Array(T);
  for (let i = 0; i < T; i++) tokenIds[i] = BigInt(rng.int(vocab));
  const xBits = randomBf16(rng, T * H, 118, 127);
  using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, H], xBits));
  using dTok = DeviceTensor.fromHost(new HostTensor('I64', [T], tokenIds));
  using t32 = DeviceTensor.fromHost(new HostTensor('I32', [vocab, K], table));
  using t64 = DeviceTensor.fromHost(new HostTensor('I64', [vocab, K], BigInt64Array.from(table, (v) => BigInt(v))));
  try {
    for (const tid2eid of [t32, t64]) {
      const params: RouterParams = { tid2eid, normTopkProb: true, routedScalingFactor: 1.5 };
      using router = Router.createSync(shape, T, layer.gate, params);
      assert.throws(() => router.route(x), (e: unknown) => e instanceof GuardError && /token ids/.test(e.message));
      router.route(x, { tokenIds: dTok });
      const got = router.download(T);
      const ref = routeFromLogits(got.logits, { shape: moeShape(shape, true, 1.5), tid2eid: table, tokenIds });
      const o = checkSelection(`hash ${tid2eid.dtype}`, got, ref, K);
      t.diagnostic(`hash ${tid2eid.dtype}: ids identical, ${o.exactWeights}/${o.slots} weights bit-identical`);
      assert.ok(Array.from(got.topkIds).some((v) => v === -1n), 'masked table entries come through as -1');
    }
  } finally {
    layer.gate.dispose();
    layer.dBias.dispose();
  }
});

test('routing refuses T over capacity and a wrong x with GuardErrors; T = 0 is a no-op', { skip }, () => {
  const shape = ROUTER_VARIANTS.find((v) => v.label === 'tiny')!.shape;
  const layer = makeLayer(shape, 1);
  try {
    using router = Router.createSync(shape, 8, layer.gate, { bias: layer.dBias, normTopkProb: true, routedScalingFactor: 1 });
    using x9 = DeviceTensor.zeros('BF16', [9, shape.hiddenSize]);
    assert.throws(() => router.route(x9), (e: unknown) => e instanceof GuardError && e.code === 'TOKEN_CAPACITY');
    router.route(x9, { tokens: 8 }); // within capacity: fine
    using xBad = DeviceTensor.zeros('BF16', [4, 128]);
    assert.throws(() => router.route(xBad), (e: unknown) => e instanceof GuardError && /BF16\[>= 4, 256\]/.test(e.message));
    using x0 = DeviceTensor.zeros('BF16', [0, shape.hiddenSize]);
    router.route(x0);
    assert.equal(router.tokens, 0);
    assert.equal(router.lastPlan, undefined);
  } finally {
    layer.gate.dispose();
    layer.dBias.dispose();
  }
});
