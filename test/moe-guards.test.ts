import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  GuardError, checkSm90, checkExpertParallel, checkScoringFunc, checkMoeDims, checkWeightScale, checkQuantizedWeight,
  checkTokenCapacity, expertDtypePath, checkLayer, checkForwardInputs, checkMegaMoeSupport, moeShape, makeRandomLayer,
  type GuardCode,
} from '../src/moe/index.js';
import { HostTensor } from '../src/tensor/host.js';

/** Asserts a GuardError with this code whose message matches every pattern. */
function refuses(fn: () => unknown, code: GuardCode, ...patterns: RegExp[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GuardError, `expected a GuardError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.ok(e.message.includes(e.fix), 'the message carries the fix');
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

const shape = moeShape({ hidden: 128, inter: 128, experts: 4, topk: 2, vocab: 16 });
const layer = makeRandomLayer({ seed: 3, shape });

test('not sm_90: refused with the device named and the way out', () => {
  refuses(() => checkSm90({ major: 8, minor: 0, name: 'A100' }), 'NOT_SM90', /sm_80 \(A100\)/, /Hopper/, /--backend reference/);
  refuses(() => checkSm90({ major: 10, minor: 0 }), 'NOT_SM90', /sm_100/, /Blackwell FP8 x FP4 MegaMoE path .* is not part of megamoe/);
  refuses(() => checkSm90({ major: 8, minor: 9 }), 'NOT_SM90', /sm_89/);
  refuses(() => checkSm90(undefined), 'NOT_SM90', /none was found/);
  checkSm90({ major: 9, minor: 0, name: 'H100' });
});

test('expert parallelism off: refused naming --enable-expert-parallel', () => {
  refuses(() => checkExpertParallel(false), 'EXPERT_PARALLEL_DISABLED', /--enable-expert-parallel/);
  refuses(() => checkExpertParallel(undefined), 'EXPERT_PARALLEL_DISABLED', /not enabled/);
  checkExpertParallel(true);
});

test('scoring_func other than sqrtsoftplus: refused', () => {
  refuses(() => checkScoringFunc({ scoringFunc: 'sigmoid' }), 'SCORING_FUNC', /"sigmoid"/, /sqrtsoftplus/);
  checkScoringFunc({ scoringFunc: 'sqrtsoftplus' });
});

test('H or I not a multiple of 128: refused, naming which', () => {
  refuses(() => checkMoeDims({ hiddenSize: 4000, moeIntermediateSize: 2048 }), 'DIM_NOT_ALIGNED', /hidden_size 4000/, /multiples of 128/);
  refuses(() => checkMoeDims({ hiddenSize: 4096, moeIntermediateSize: 1000 }), 'DIM_NOT_ALIGNED', /moe_intermediate_size 1000/);
  refuses(() => checkMoeDims({ hiddenSize: 100, moeIntermediateSize: 100 }), 'DIM_NOT_ALIGNED', /hidden_size 100 and moe_intermediate_size 100/);
  checkMoeDims({ hiddenSize: 4096, moeIntermediateSize: 2048 });
});

test('weight scale not f32 or not [E, N/128, K/128]: refused with the expected shape', () => {
  refuses(() => checkWeightScale('experts.w1', { dtype: 'F8_E8M0', shape: [256, 16, 32] }, 2048, 4096, 256), 'SCALE_DTYPE', /F8_E8M0/, /F32/);
  refuses(() => checkWeightScale('experts.w1', { dtype: 'F32', shape: [256, 2048, 128] }, 2048, 4096, 256), 'SCALE_SHAPE',
    /\[256, 2048, 128\]/, /expected \[256, 16, 32\] or \[16, 32\]/);
  refuses(() => checkWeightScale('w2', { dtype: 'F32', shape: [16, 32] }, 4096, 2048), 'SCALE_SHAPE', /expected \[32, 16\]/);
  checkWeightScale('experts.w1', { dtype: 'F32', shape: [256, 16, 32] }, 2048, 4096, 256);
  checkWeightScale('experts.w1', { dtype: 'F32', shape: [16, 32] }, 2048, 4096);
  const w = layer.sharedExpert.w1;
  refuses(() => checkQuantizedWeight('shared.w1', { ...w, s: w.s.subarray(1) }, 128, 128), 'SCALE_SHAPE', /shared\.w1/);
  refuses(() => checkQuantizedWeight('shared.w1', w, 256, 128), 'WEIGHT_SHAPE', /expected \[256, 128\]/);
});

test('a batch over the token capacity: refused with the capacity to ask for', () => {
  refuses(() => checkTokenCapacity(300, 256, 'mega_moe'), 'TOKEN_CAPACITY', /300 tokens/, /256/, /maxTokens >= 300/);
  checkTokenCapacity(256, 256);
  checkTokenCapacity(10_000, undefined);
});

test('fp4 experts: the conversion path on Hopper and the CPU, the sm_100 path on Blackwell, not an error', () => {
  assert.equal(expertDtypePath('fp4', { major: 9, minor: 0 }).path, 'fp4-to-fp8-conversion');
  assert.match(expertDtypePath('fp4', { major: 9, minor: 0 }).note, /converted at load to e4m3/);
  assert.equal(expertDtypePath('fp4').path, 'fp4-to-fp8-conversion');
  assert.equal(expertDtypePath('fp4', { major: 10, minor: 0 }).path, 'fp4-sm100');
  assert.equal(expertDtypePath('fp8', { major: 9, minor: 0 }).path, 'fp8-native');
  refuses(() => expertDtypePath('int4'), 'EXPERT_DTYPE', /"int4"/, /"fp8" or "fp4"/);
});

test('checkLayer: accepts a good layer, refuses bad gate shapes and missing hash tables', () => {
  checkLayer(layer);
  refuses(() => checkLayer({ ...layer, shape: { ...shape, numExpertsPerTok: 5 } }), 'BAD_INPUT', /num_experts_per_tok 5/);
  refuses(() => checkLayer({ ...layer, gateWeight: new HostTensor('BF16', [4, 256]) }), 'WEIGHT_SHAPE', /gate\.weight is BF16\[4, 256\]/);
  refuses(() => checkLayer({ ...layer, isHashLayer: true, tid2eid: undefined }), 'WEIGHT_SHAPE', /tid2eid is missing/, /\[16, 2\]/);
  refuses(() => checkLayer({ ...layer, gateBias: new Float32Array(3) }), 'WEIGHT_SHAPE', /gate\.bias has 3 values/);
  refuses(() => checkLayer({ ...layer, shape: { ...shape, scoringFunc: 'softmax' } }), 'SCORING_FUNC');
});

test('forward inputs: shapes, dtypes, id range and finite weights', () => {
  const x = new HostTensor('BF16', [3, 128]);
  const ids = new HostTensor('I32', [3, 2], Int32Array.from([0, 1, 2, 3, -1, 0]));
  const w = new HostTensor('F32', [3, 2]);
  assert.equal(checkForwardInputs(shape, x, ids, w), 3);
  assert.equal(checkForwardInputs(shape, x, new HostTensor('I64', [3, 2], BigInt64Array.from([0n, 1n, 2n, 3n, -1n, 0n])), w), 3);
  refuses(() => checkForwardInputs(shape, new HostTensor('F32', [3, 128]), ids, w), 'BAD_INPUT', /x is F32\[3, 128\]/, /BF16/);
  refuses(() => checkForwardInputs(shape, new HostTensor('BF16', [3, 256]), ids, w), 'BAD_INPUT', /expected BF16\[T, 128\]/);
  refuses(() => checkForwardInputs(shape, x, new HostTensor('I32', [3, 3]), w), 'BAD_INPUT', /topk_ids is I32\[3, 3\]/);
  refuses(() => checkForwardInputs(shape, x, new HostTensor('F32', [3, 2]), w), 'BAD_INPUT', /I32 or I64/);
  refuses(() => checkForwardInputs(shape, x, new HostTensor('I32', [3, 2], Int32Array.from([0, 1, 4, 0, 0, 0])), w),
    'BAD_INPUT', /topk_ids\[1, 0\] = 4 is out of range/, /\[0, 4\) or -1/);
  refuses(() => checkForwardInputs(shape, x, new HostTensor('I32', [3, 2], Int32Array.from([0, 1, -2, 0, 0, 0])), w), 'BAD_INPUT', /= -2/);
  refuses(() => checkForwardInputs(shape, x, ids, new HostTensor('F32', [2, 2])), 'BAD_INPUT', /topk_weights is F32\[2, 2\]/);
  refuses(() => checkForwardInputs(shape, x, ids, new HostTensor('F32', [3, 2], Float32Array.from([0, 0, 0, NaN, 0, 0]))),
    'BAD_INPUT', /topk_weights\[1, 1\] = NaN is not finite/);
});

test('checkMegaMoeSupport applies the SPEC 4 list in order', () => {
  const base = { arch: { major: 9, minor: 0 }, enableExpertParallel: true, layer, tokens: 8, capacity: 16 };
  checkMegaMoeSupport(base);
  refuses(() => checkMegaMoeSupport({ ...base, arch: { major: 8, minor: 6 }, enableExpertParallel: false }), 'NOT_SM90');
  refuses(() => checkMegaMoeSupport({ ...base, enableExpertParallel: false }), 'EXPERT_PARALLEL_DISABLED');
  refuses(() => checkMegaMoeSupport({ ...base, layer: { ...layer, shape: { ...shape, hiddenSize: 96 } } }), 'DIM_NOT_ALIGNED');
  refuses(() => checkMegaMoeSupport({ ...base, tokens: 17 }), 'TOKEN_CAPACITY');
});
