import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  runExpertsReference, evalMoeF64, routeLayer, moeShape, makeRandomLayer, randomHiddenStates, randomTokenIds,
  makeFlashShapedLayer, type MoeLayerWeights, type ExpertWeights,
} from '../src/moe/index.js';
import { calcDiff, decodeBF16, decodeBF16Array, decodeE4M3, encodeBF16, encodeE4M3 } from '../src/numerics/index.js';
import { HostTensor } from '../src/tensor/host.js';

const fr = Math.fround;

// ---- An independent, naive implementation of SPEC 3's rounding points: per token, per slot, per element,
// no grouping, no tables, no shared helpers beyond the e4m3/bf16 codecs. Block partial sums run in REVERSE
// order in f64 (they are exact, so the order must not matter).

function naiveStage(x: number[], scalePow2: boolean): { codes: number[]; sf: number[] } {
  const codes: number[] = []; const sf: number[] = [];
  for (let b = 0; b < x.length / 128; b++) {
    let amax = 0;
    for (let i = 0; i < 128; i++) amax = Math.max(amax, Math.abs(x[b * 128 + i]));
    amax = Math.max(fr(amax), fr(1e-4));
    let s = fr(amax / 448);
    if (scalePow2) s = 2 ** Math.ceil(Math.log2(s));
    const inv = scalePow2 ? 1 / s : fr(1 / s);
    sf.push(s);
    for (let i = 0; i < 128; i++) codes.push(encodeE4M3(fr(x[b * 128 + i] * inv)));
  }
  return { codes, sf };
}

function naiveGemmElem(w: { q: Uint8Array; s: Float32Array; k: number }, row: number, a: { codes: number[]; sf: number[] }): number {
  const kb = w.k / 128;
  let total = 0;
  for (let b = 0; b < kb; b++) {
    let p = 0;
    for (let i = 127; i >= 0; i--) p += decodeE4M3(w.q[row * w.k + b * 128 + i]) * decodeE4M3(a.codes[b * 128 + i]);
    total = fr(total + fr(fr(p) * fr(a.sf[b] * w.s[Math.floor(row / 128) * kb + b])));
  }
  return total;
}

function naiveFfn(ffn: ExpertWeights, xs: { codes: number[]; sf: number[] }, weight: number, limit: number): number[] {
  const inter = ffn.w1.n;
  const a: number[] = [];
  for (let c = 0; c < inter; c++) {
    let g = naiveGemmElem(ffn.w1, c, xs);
    let u = naiveGemmElem(ffn.w3, c, xs);
    if (limit > 0) { g = Math.min(g, fr(limit)); u = Math.max(Math.min(u, fr(limit)), -fr(limit)); }
    const silu = fr(g / fr(1 + fr(Math.exp(-g))));
    a.push(fr(fr(silu * u) * weight));
  }
  const aq = naiveStage(a, true);
  const o: number[] = [];
  for (let h = 0; h < ffn.w2.n; h++) o.push(encodeBF16(naiveGemmElem(ffn.w2, h, aq)));
  return o;
}

function naiveMoe(layer: MoeLayerWeights, x: HostTensor<'BF16'>, ids: ArrayLike<number>, weights: Float32Array) {
  const { hiddenSize: H, numExpertsPerTok: K, swigluLimit } = layer.shape;
  const T = x.shape[0];
  const yRouted = new Uint16Array(T * H); const y = new Uint16Array(T * H);
  for (let t = 0; t < T; t++) {
    const xs = naiveStage(Array.from(x.data.subarray(t * H, t * H + H), decodeBF16), false);
    const acc = new Array<number>(H).fill(0);
    for (let j = 0; j < K; j++) {
      const id = ids[t * K + j];
      if (id < 0 || !layer.experts.has(id)) continue;
      const o = naiveFfn(layer.experts.get(id), xs, weights[t * K + j], swigluLimit);
      for (let h = 0; h < H; h++) acc[h] = fr(acc[h] + decodeBF16(o[h]));
    }
    const shared = naiveFfn(layer.sharedExpert, xs, 1, swigluLimit);
    for (let h = 0; h < H; h++) {
      yRouted[t * H + h] = encodeBF16(acc[h]);
      y[t * H + h] = encodeBF16(fr(decodeBF16(yRouted[t * H + h]) + decodeBF16(shared[h])));
    }
  }
  return { yRouted, y };
}

// ---- Fixtures

const shape = moeShape({ hidden: 256, inter: 256, experts: 8, topk: 3, vocab: 64 });
const layer = makeRandomLayer({ seed: 11, shape, layer: 3 });

test('reference equals the naive SPEC 3 implementation bit for bit (incl. masked slots, 4-token and odd groups)', () => {
  const T = 7;
  const x = randomHiddenStates(12, T, 256);
  const r = routeLayer(layer, x);
  // Force a few patterns: a masked slot, and one expert shared by 5 tokens (exercises the 4-row kernel + remainder).
  const ids = Int32Array.from(r.topkIds.data);
  ids[1] = -1;
  for (let t = 2; t < 7; t++) ids[t * 3] = 5;
  for (let t = 2; t < 7; t++) for (let j = 1; j < 3; j++) if (ids[t * 3 + j] === 5) ids[t * 3 + j] = 5 + j;
  const w = r.topkWeights.data;
  const idsT = new HostTensor('I32', [T, 3], ids);
  const ref = runExpertsReference(layer, x, idsT, r.topkWeights);
  const naive = naiveMoe(layer, x, ids, w);
  assert.deepEqual(ref.yRouted.data, naive.yRouted);
  assert.deepEqual(ref.y.data, naive.y);
  assert.ok(ref.y.data.some((v) => v !== 0));
});

test('reference against the f64 evaluation: calc_diff of the size two e4m3 activation roundings give', () => {
  // SPEC 5 asks for <= 1e-3. Two e4m3 roundings (x staging, then the SwiGLU output) bound this from below:
  // x staging alone is ~3.4e-4, doubled by g*u, plus ~3.6e-4 for a; ~1.0e-3 on unit Gaussian data. The window
  // fails if quantization goes missing (too small) or something rounds worse than the SPEC (too large).
  const x = randomHiddenStates(13, 16, 256);
  const r = routeLayer(layer, x);
  const ref = runExpertsReference(layer, x, r.topkIds, r.topkWeights);
  const f64 = evalMoeF64(layer, x, r.topkIds, r.topkWeights);
  const d = calcDiff(decodeBF16Array(ref.y.data), f64.y);
  const dr = calcDiff(decodeBF16Array(ref.yRouted.data), f64.yRouted);
  assert.ok(d > 3e-4 && d < 1.5e-3, `calc_diff(y) = ${d}`);
  assert.ok(dr > 3e-4 && dr < 1.5e-3, `calc_diff(y_routed) = ${dr}`);
  console.log(`# reference vs f64: calc_diff y ${d.toExponential(3)}, y_routed ${dr.toExponential(3)}`);
});

test('the f64 evaluation is the plain math: one token, one expert, computed by hand from dequantized weights', () => {
  const small = makeRandomLayer({ seed: 21, shape: moeShape({ hidden: 128, inter: 128, experts: 2, topk: 1 }) });
  const x = randomHiddenStates(22, 1, 128);
  const xs = Array.from(x.data, decodeBF16);
  const ids = new HostTensor('I32', [1, 1], Int32Array.from([1]));
  const w = new HostTensor('F32', [1, 1], Float32Array.from([0.75]));
  const f = evalMoeF64(small, x, ids, w);
  const deq = (q: { q: Uint8Array; s: Float32Array; k: number }, r: number, c: number) => decodeE4M3(q.q[r * q.k + c]) * q.s[Math.floor(r / 128) * Math.ceil(q.k / 128) + Math.floor(c / 128)];
  const ffn = (e: ExpertWeights, weight: number) => {
    const a = Array.from({ length: 128 }, (_, c) => {
      let g = 0; let u = 0;
      for (let k = 0; k < 128; k++) { g += deq(e.w1, c, k) * xs[k]; u += deq(e.w3, c, k) * xs[k]; }
      g = Math.min(g, 10); u = Math.max(-10, Math.min(10, u));
      return g / (1 + Math.exp(-g)) * u * weight;
    });
    return Array.from({ length: 128 }, (_, h) => a.reduce((s, v, c) => s + v * deq(e.w2, h, c), 0));
  };
  const routed = ffn(small.experts.get(1), 0.75);
  const shared = ffn(small.sharedExpert, 1);
  for (let h = 0; h < 128; h++) {
    assert.ok(Math.abs(f.yRouted[h] - routed[h]) < 1e-12, `routed ${h}`);
    assert.ok(Math.abs(f.y[h] - routed[h] - shared[h]) < 1e-12, `y ${h}`);
  }
});

test('masked slots contribute nothing: all -1 gives y_routed = 0 and y = the shared expert', () => {
  const x = randomHiddenStates(14, 3, 256);
  const ids = new HostTensor('I32', [3, 3], new Int32Array(9).fill(-1));
  const w = new HostTensor('F32', [3, 3], new Float32Array(9).fill(0.5));
  const ref = runExpertsReference(layer, x, ids, w);
  assert.ok(ref.yRouted.data.every((v) => v === 0 || v === 0x8000));
  assert.deepEqual(ref.y.data, ref.yShared.data);
  assert.ok(ref.yShared.data.some((v) => v !== 0));
});

test('I64 ids give the same result as I32 ids', () => {
  const x = randomHiddenStates(15, 2, 256);
  const r = routeLayer(layer, x);
  const a = runExpertsReference(layer, x, r.topkIds, r.topkWeights);
  const b = runExpertsReference(layer, x, new HostTensor('I64', [2, 3], BigInt64Array.from(r.topkIds.data, BigInt)), r.topkWeights);
  assert.deepEqual(a.y.data, b.y.data);
});

test('expert parallelism: a rank computes exactly its own experts (others as if masked)', () => {
  const rank1 = makeRandomLayer({ seed: 11, shape, layer: 3, epRank: 1, epSize: 2 });
  assert.deepEqual(rank1.experts.ids, [4, 5, 6, 7]);
  const x = randomHiddenStates(16, 5, 256);
  const r = routeLayer(layer, x);
  const onRank = runExpertsReference(rank1, x, r.topkIds, r.topkWeights);
  const masked = Int32Array.from(r.topkIds.data, (id) => (id >= 4 ? id : -1));
  const full = runExpertsReference(layer, x, new HostTensor('I32', [5, 3], masked), r.topkWeights);
  assert.deepEqual(onRank.yRouted.data, full.yRouted.data);
  assert.deepEqual(onRank.y.data, full.y.data);
});

test('hash layers route by token id end to end', () => {
  const hl = makeRandomLayer({ seed: 17, shape, hash: true });
  const x = randomHiddenStates(18, 4, 256);
  const tok = randomTokenIds(19, 4, 64);
  const r = routeLayer(hl, x, tok);
  for (let t = 0; t < 4; t++) assert.deepEqual([...r.topkIds.data.slice(t * 3, t * 3 + 3)], [...hl.tid2eid!.slice(tok[t] * 3, tok[t] * 3 + 3)]);
  const ref = runExpertsReference(hl, x, r.topkIds, r.topkWeights);
  const naive = naiveMoe(hl, x, r.topkIds.data, r.topkWeights.data);
  assert.deepEqual(ref.y.data, naive.y);
});

test('a flash-width row (H 4096, I 2048) runs and matches the f64 evaluation at the SPEC 5 scale', () => {
  // One token, 2 experts of a lazily generated layer: checks the big-shape path without minutes of setup.
  const s = moeShape({ hidden: 4096, inter: 2048, experts: 4, topk: 2 });
  const big = makeFlashShapedLayer(1, s);
  const x = randomHiddenStates(20, 1, 4096);
  const r = routeLayer(big, x);
  const t0 = performance.now();
  const ref = runExpertsReference(big, x, r.topkIds, r.topkWeights);
  const ms = performance.now() - t0;
  const d = calcDiff(decodeBF16Array(ref.y.data), evalMoeF64(big, x, r.topkIds, r.topkWeights).y);
  assert.ok(d < 1.5e-3, `calc_diff ${d}`);
  assert.ok(ms < 20_000, `took ${ms} ms`);
});

test('big batches are processed in chunks of rows with the same result as token by token', () => {
  const s = moeShape({ hidden: 128, inter: 128, experts: 2, topk: 1 });
  const l = makeRandomLayer({ seed: 23, shape: s });
  const T = 600; // > 2 chunks of 256 rows for the shared expert and for at least one routed expert
  const x = randomHiddenStates(24, T, 128);
  const r = routeLayer(l, x);
  const counts = [0, 1].map((e) => r.topkIds.data.filter((id) => id === e).length);
  assert.ok(Math.max(...counts) > 256, `expert loads ${counts}`);
  const all = runExpertsReference(l, x, r.topkIds, r.topkWeights);
  for (const t of [0, 255, 256, 257, 511, 512, 599]) {
    const xt = new HostTensor('BF16', [1, 128], x.data.slice(t * 128, t * 128 + 128));
    const one = runExpertsReference(l, xt, new HostTensor('I32', [1, 1], r.topkIds.data.slice(t, t + 1)),
      new HostTensor('F32', [1, 1], r.topkWeights.data.slice(t, t + 1)));
    assert.deepEqual(one.y.data, all.y.data.slice(t * 128, t * 128 + 128), `token ${t}`);
  }
});
