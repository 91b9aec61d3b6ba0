import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  routeFromLogits, routerLogits, routeLayer, softplusF32, sqrtSoftplusF32, idsToI64, GuardError, moeShape,
  makeRandomLayer, randomHiddenStates, type MoeShape,
} from '../src/moe/index.js';
import { encodeBF16 } from '../src/numerics/index.js';

const fr = Math.fround;
const small = (over: Partial<MoeShape> = {}): MoeShape => ({ ...moeShape({ hidden: 128, inter: 128, experts: 4, topk: 2, vocab: 8 }), ...over });

/** The SPEC's weight formula spelled out for a hand case: s[id] / max(sum, 1e-20) * rsf, in f32. */
function expectedWeights(scores: number[], rsf = 1.5, norm = true): number[] {
  let sum = 0;
  for (const s of scores) sum = fr(sum + s);
  return scores.map((s) => fr((norm ? fr(s / Math.max(sum, fr(1e-20))) : s) * fr(rsf)));
}

test('scores are sqrt(softplus(l)) in f32 and softplus is stable for large |l|', () => {
  assert.equal(softplusF32(0), fr(Math.LN2));
  assert.equal(sqrtSoftplusF32(0), fr(Math.sqrt(fr(Math.LN2))));
  assert.equal(softplusF32(100), 100); // naive log(1 + e^100) would still work, e^1000 would not:
  assert.equal(softplusF32(1000), 1000);
  assert.ok(Number.isFinite(softplusF32(1e30)));
  assert.equal(softplusF32(-1000), 0);
  assert.equal(softplusF32(-20), fr(Math.log1p(fr(Math.exp(-20)))));
});

test('top-K takes the highest scores, in descending order, with f32 weights normalised and scaled', () => {
  const logits = Float32Array.from([0.5, 2, -1, 1]);
  const r = routeFromLogits(logits, { shape: small() });
  assert.deepEqual([...r.topkIds.data], [1, 3]);
  const s = [sqrtSoftplusF32(2), sqrtSoftplusF32(1)];
  assert.deepEqual([...r.topkWeights.data], expectedWeights(s));
  assert.ok(Math.abs(r.topkWeights.data[0] + r.topkWeights.data[1] - 1.5) < 1e-6);
});

test('ties go to the lower expert index', () => {
  const r = routeFromLogits(Float32Array.from([0.25, 1, 0.25, 1]), { shape: small() });
  assert.deepEqual([...r.topkIds.data], [1, 3]);
  const r3 = routeFromLogits(Float32Array.from([0.25, 1, 0.25, 1]), { shape: small({ numExpertsPerTok: 3 }) });
  assert.deepEqual([...r3.topkIds.data], [1, 3, 0]);
  const all = routeFromLogits(new Float32Array(4), { shape: small() });
  assert.deepEqual([...all.topkIds.data], [0, 1]);
});

test('the bias changes the selection but not the weights', () => {
  const logits = Float32Array.from([0.5, 2, -1, 1]);
  const bias = Float32Array.from([0, 0, 5, 0]); // lifts expert 2 (lowest score) to the top
  const r = routeFromLogits(logits, { shape: small(), bias });
  assert.deepEqual([...r.topkIds.data], [2, 1]);
  assert.deepEqual([...r.topkWeights.data], expectedWeights([sqrtSoftplusF32(-1), sqrtSoftplusF32(2)]));
  // A bias that ties two keys still resolves to the lower index.
  const tie = Float32Array.from([fr(sqrtSoftplusF32(2) - sqrtSoftplusF32(0.5)), 0, 0, 0]);
  assert.equal(fr(sqrtSoftplusF32(0.5) + tie[0]), sqrtSoftplusF32(2));
  assert.deepEqual([...routeFromLogits(logits, { shape: small(), bias: tie }).topkIds.data], [0, 1]);
});

test('hash layers take tid2eid[token_id] in table order, weights from the unbiased scores', () => {
  const logits = Float32Array.from([0.5, 2, -1, 1, /* token 2 */ 3, 0, 0, -2]);
  const tid2eid = new Int32Array(8 * 2);
  tid2eid.set([2, 0], 5 * 2);
  tid2eid.set([3, 1], 7 * 2);
  const r = routeFromLogits(logits, { shape: small(), tid2eid, tokenIds: [5, 7] });
  assert.deepEqual([...r.topkIds.data], [2, 0, 3, 1]);
  assert.deepEqual([...r.topkWeights.data.slice(0, 2)], expectedWeights([sqrtSoftplusF32(-1), sqrtSoftplusF32(0.5)]));
  assert.deepEqual([...r.topkWeights.data.slice(2)], expectedWeights([sqrtSoftplusF32(-2), sqrtSoftplusF32(0)]));
  assert.throws(() => routeFromLogits(logits, { shape: small(), tid2eid, tokenIds: [5] }), /one token id per token/);
  assert.throws(() => routeFromLogits(logits, { shape: small(), tid2eid, tokenIds: [5, 8] }), /outside the vocabulary/);
});

test('masked (-1) slots get weight 0 and stay out of the normalisation', () => {
  const tid2eid = Int32Array.from([1, -1, -1, -1]); // vocab 2, K 2
  const shape = small({ vocabSize: 2 });
  const r = routeFromLogits(Float32Array.from([0, 1, 2, 3]), { shape, tid2eid, tokenIds: [0] });
  assert.deepEqual([...r.topkIds.data], [1, -1]);
  assert.deepEqual([...r.topkWeights.data], [1.5, 0]); // s/s * 1.5: the lone expert gets all the weight
  const none = routeFromLogits(Float32Array.from([0, 1, 2, 3]), { shape, tid2eid, tokenIds: [1] });
  assert.deepEqual([...none.topkWeights.data], [0, 0]);
});

test('normalisation divides by max(sum, 1e-20): tiny sums are not blown up to the full scale', () => {
  // softplus(-95) = e^-95 ~ 5.5e-42 (an f32 subnormal), s ~ 2.3e-21; two of them sum to < 1e-20.
  const logits = Float32Array.from([-95, -95, -200, -200]);
  const r = routeFromLogits(logits, { shape: small() });
  const s = sqrtSoftplusF32(-95);
  assert.ok(s > 0 && 2 * s < 1e-20);
  const w = fr(fr(s / fr(1e-20)) * 1.5);
  assert.deepEqual([...r.topkWeights.data], [w, w]);
  assert.ok(w + w < 1.5 * 0.6);
  // Scores that underflow to 0 give weight 0, not NaN.
  const z = routeFromLogits(Float32Array.from([-200, -200, -200, -200]), { shape: small() });
  assert.deepEqual([...z.topkWeights.data], [0, 0]);
});

test('without norm_topk_prob the weights are the scores times routed_scaling_factor', () => {
  const r = routeFromLogits(Float32Array.from([0.5, 2, -1, 1]), { shape: small({ normTopkProb: false, routedScalingFactor: 2.5 }) });
  assert.deepEqual([...r.topkWeights.data], [fr(sqrtSoftplusF32(2) * 2.5), fr(sqrtSoftplusF32(1) * 2.5)]);
});

test('routerLogits: exact bf16 products accumulated in f64, rounded once to f32', () => {
  const H = 3; const E = 2;
  const x = Uint16Array.from([1, 2, -3].map(encodeBF16));
  const gate = Uint16Array.from([0.5, 0.25, 0.125, 1, 1, 1].map(encodeBF16));
  assert.deepEqual([...routerLogits(x, gate, 1, H, E)], [0.5 + 0.5 - 0.375, 0]);
  // 1 + 2^-30 is not an f32: the once-rounded result is 1.
  const x2 = Uint16Array.from([1, 2 ** -15, 0].map(encodeBF16));
  const g2 = Uint16Array.from([1, 2 ** -15, 0, 0, 0, 0].map(encodeBF16));
  assert.deepEqual([...routerLogits(x2, g2, 1, H, E)], [1, 0]);
  // f64 accumulation: 1 + 2^-24 + 2^-24 = 1 + 2^-23 exactly (f32 accumulation would round each step back to 1).
  const x3 = Uint16Array.from([1, 2 ** -24, 2 ** -24].map(encodeBF16));
  const g3 = Uint16Array.from([1, 1, 1, 0, 0, 0].map(encodeBF16));
  assert.deepEqual([...routerLogits(x3, g3, 1, H, E)], [1 + 2 ** -23, 0]);
  assert.throws(() => routerLogits(x, gate, 2, H, E), GuardError);
});

test('non-finite logits and bad shapes are refused with a GuardError naming the fix', () => {
  assert.throws(() => routeFromLogits(Float32Array.from([0, NaN, 0, 0]), { shape: small() }),
    (e: unknown) => e instanceof GuardError && /logit \[token 0, expert 1\] is NaN/.test(e.message) && /check the input/.test(e.message));
  assert.throws(() => routeFromLogits(new Float32Array(5), { shape: small() }), /not a multiple of n_routed_experts 4/);
  assert.throws(() => routeFromLogits(new Float32Array(4), { shape: small({ scoringFunc: 'softmax' }) }), /sqrtsoftplus/);
  assert.throws(() => routeFromLogits(new Float32Array(4), { shape: small(), bias: new Float32Array(3) }), /gate bias has 3 values/);
});

test('routeLayer on a random layer: distinct ids per token, weights summing to the scaling factor', () => {
  const shape = moeShape({ hidden: 256, inter: 128, experts: 8, topk: 3 });
  const layer = makeRandomLayer({ seed: 5, shape });
  const x = randomHiddenStates(6, 10, 256);
  const r = routeLayer(layer, x);
  assert.equal(r.logits.length, 10 * 8);
  for (let t = 0; t < 10; t++) {
    const ids = [...r.topkIds.data.slice(t * 3, t * 3 + 3)];
    assert.equal(new Set(ids).size, 3);
    const sum = r.topkWeights.data.slice(t * 3, t * 3 + 3).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - 1.5) < 1e-5, `token ${t}: weights sum to ${sum}`);
  }
  assert.deepEqual([...idsToI64(r.topkIds).data], [...r.topkIds.data].map(BigInt));
  const hashLayer = makeRandomLayer({ seed: 5, shape, hash: true });
  const rh = routeLayer(hashLayer, x, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual([...rh.topkIds.data.slice(0, 3)], [...hashLayer.tid2eid!.slice(3, 6)]);
});
