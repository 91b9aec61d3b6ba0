// The GPU sampler (src/kernels/sampling.cu via src/gpu-model/sampler.ts) against the CPU sampler (src/generate/
// sampler.ts): with the same seeds and logits it picks the SAME token ids step after step, for greedy, temperature,
// top-k, top-k + top-p and top-p alone, in one batched launch with per-row parameters (the kernel's header says
// where equality is by construction and where only up to f64 rounding of a CDF step, which these tests never
// hit). Also: ties broken by the lower id, NaN / all -inf rows refused like the CPU, a nucleus wider than the
// sorted candidates (the whole-vocabulary cut), reproducibility. Skips with the reason where no Hopper GPU exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import type { SamplingParams } from '../src/generate/contracts.js';
import { Sampler, samplingDistribution } from '../src/generate/sampler.js';
import { GPU_SAMPLER_MAX_TOP_K, GpuSampler, SAMPLE_STATUS } from '../src/gpu-model/sampler.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

const ROWS: Array<{ p: SamplingParams; scale: number }> = [
  { p: { temperature: 0, topK: 0, topP: 1, seed: 1 }, scale: 3 },
  { p: { temperature: 0.8, topK: 0, topP: 1, seed: 2 }, scale: 3 },
  { p: { temperature: 1, topK: 50, topP: 1, seed: 3 }, scale: 3 },
  { p: { temperature: 0.7, topK: 40, topP: 0.9, seed: 4 }, scale: 3 },
  { p: { temperature: 1.2, topK: 0, topP: 0.9, seed: 5 }, scale: 12 },   // peaked: the nucleus fits the cap
  { p: { temperature: 1, topK: GPU_SAMPLER_MAX_TOP_K, topP: 0.5, seed: 6 }, scale: 3 },
  { p: { temperature: 0.5, topK: 1, topP: 1, seed: 7 }, scale: 3 },      // top-k 1 = greedy
  { p: { temperature: 1, topK: 7, topP: 1, seed: 8 }, scale: 0.05 },     // bf16-rounded, small: many ties
];

function logitsFor(rng: Rng, V: number, scale: number, ties: boolean): Float32Array {
  const l = new Float32Array(V);
  rng.fillNormal(l, scale);
  if (ties) { const u = new Uint32Array(l.buffer); for (let i = 0; i < V; i++) u[i] &= 0xffff0000; }
  return l;
}

for (const V of [1000, 129280]) {
  test(`gpu sampler V ${V}: the CPU sampler's tokens, 12 steps x ${ROWS.length} rows with per-row parameters`, { skip }, () => {
    using s = GpuSampler.createSync(ROWS.length, V);
    ROWS.forEach((r, i) => s.setRow(i, r.p));
    const cpu = ROWS.map((r) => new Sampler(r.p));
    const rng = new Rng(V);
    using dl = DeviceTensor.zeros('F32', [ROWS.length, V]);
    for (let step = 0; step < 12; step++) {
      const all = new Float32Array(ROWS.length * V);
      const rowsL = ROWS.map((r, i) => logitsFor(rng, V, r.scale, i === 7 || step % 3 === 0));
      rowsL.forEach((l, i) => all.set(l, i * V));
      dl.copyFromHost(new HostTensor('F32', [ROWS.length, V], all));
      const got = s.sampleSync(dl, ROWS.length);
      const { status } = s.download(ROWS.length);
      for (let i = 0; i < ROWS.length; i++) {
        const want = cpu[i].sample(rowsL[i]);
        assert.equal(status[i], SAMPLE_STATUS.OK, `row ${i} step ${step}: status ${status[i]}`);
        assert.equal(got[i], want, `V ${V} row ${i} (${JSON.stringify(ROWS[i].p)}) step ${step}: gpu ${got[i]} cpu ${want}`);
      }
    }
  });
}

test('gpu sampler: same seed -> same tokens; setRow restarts the stream like a new Sampler', { skip }, () => {
  const V = 5000;
  using s = GpuSampler.createSync(2, V);
  const p = { temperature: 1, topK: 0, topP: 1, seed: 99 };
  s.setRow(0, p); s.setRow(1, p);
  const l = logitsFor(new Rng(3), V, 1, false);
  using dl = DeviceTensor.fromHost(new HostTensor('F32', [2, V], Float32Array.from({ length: 2 * V }, (_, i) => l[i % V])));
  const a: number[] = []; const b: number[] = [];
  for (let i = 0; i < 8; i++) { const t = s.sampleSync(dl, 2); a.push(t[0]); b.push(t[1]); }
  assert.deepEqual(a, b, 'two rows, same seed and logits');
  s.setRow(0, p);
  const again: number[] = [];
  for (let i = 0; i < 8; i++) again.push(s.sampleSync(dl, 1)[0]);
  assert.deepEqual(again, a, 'restarted stream');
});

test('gpu sampler: NaN and all -inf rows are refused as on the CPU; greedy ties go to the lower id', { skip }, () => {
  const V = 300;
  using s = GpuSampler.createSync(3, V);
  s.setRow(0, { temperature: 1, topK: 0, topP: 1, seed: 1 });
  s.setRow(1, { temperature: 1, topK: 5, topP: 1, seed: 1 });
  s.setRow(2, { temperature: 0, topK: 0, topP: 1 });
  const l = new Float32Array(3 * V);
  l[17] = Number.NaN;
  l.fill(-Infinity, V, 2 * V);
  l[2 * V + 40] = 5; l[2 * V + 9] = 5; // row 2: tie at the maximum
  using dl = DeviceTensor.fromHost(new HostTensor('F32', [3, V], l));
  s.sample(dl, 3);
  const { tokens, status } = s.download(3);
  assert.deepEqual([...status], [SAMPLE_STATUS.NAN_LOGIT, SAMPLE_STATUS.ALL_NEG_INF, SAMPLE_STATUS.OK]);
  assert.equal(tokens[2], 9);
  assert.throws(() => s.sampleSync(dl, 1), /NaN logit/);
});

test('gpu sampler: a top-p nucleus wider than the sorted candidates (the whole-vocabulary cut) gives the CPU\'s tokens', { skip }, () => {
  const V = 129280;
  const params = [
    { temperature: 1, topK: 0, topP: 0.99, seed: 5 },   // nearly flat: ~99% of the vocabulary
    { temperature: 1, topK: 0, topP: 0.3, seed: 6 },
    { temperature: 0.7, topK: 0, topP: 0.9, seed: 7 },
  ];
  using s = GpuSampler.createSync(params.length, V);
  params.forEach((p, i) => s.setRow(i, p));
  const cpu = params.map((p) => new Sampler(p));
  const rng = new Rng(11);
  using dl = DeviceTensor.zeros('F32', [params.length, V]);
  for (let step = 0; step < 6; step++) {
    const rowsL = params.map((_, i) => logitsFor(rng, V, 0.1 * (i + 1), step % 2 === 1)); // flat enough that > 2048 tokens are kept
    const all = new Float32Array(params.length * V);
    rowsL.forEach((l, i) => all.set(l, i * V));
    dl.copyFromHost(new HostTensor('F32', [params.length, V], all));
    const got = s.sampleSync(dl, params.length);
    for (let i = 0; i < params.length; i++) {
      const nucleus = samplingDistribution(rowsL[i], params[i]).ids.length;
      assert.ok(nucleus > GPU_SAMPLER_MAX_TOP_K, `row ${i}: the case must exercise the wide path (nucleus ${nucleus})`);
      const want = cpu[i].sample(rowsL[i]);
      assert.equal(got[i], want, `row ${i} step ${step}: gpu ${got[i]} cpu ${want} (nucleus ${nucleus})`);
    }
  }
});

test('gpu sampler paramRows: logit row r draws with parameter row paramRows[r] (-1: no draw), each row\'s stream continuing across calls in any order', { skip }, () => {
  const V = 1000;
  using s = GpuSampler.createSync(ROWS.length, V);
  ROWS.forEach((r, i) => s.setRow(i, r.p));
  const cpu = ROWS.map((r) => new Sampler(r.p));
  const rng = new Rng(11);
  using dl = DeviceTensor.zeros('F32', [ROWS.length, V]);
  using slots = DeviceTensor.zeros('I32', [ROWS.length]);
  const orders = [[5, 0, 3], [3, -1, 5, 1, 7, 2], [0, 1, 2, 3, 4, 5, 6, 7], [-1, 7, -1, 3]];
  for (const [step, order] of orders.entries()) {
    const rowsL = order.map((p) => logitsFor(rng, V, ROWS[Math.max(p, 0)].scale, step === 2));
    const all = new Float32Array(ROWS.length * V);
    rowsL.forEach((l, r) => all.set(l, r * V));
    dl.copyFromHost(new HostTensor('F32', [ROWS.length, V], all));
    slots.copyFromHost(new HostTensor('I32', [ROWS.length], Int32Array.from({ length: ROWS.length }, (_, r) => order[r] ?? 0)));
    s.sample(dl, order.length, { paramRows: slots });
    const { tokens, status } = s.download(order.length);
    order.forEach((p, r) => {
      if (p < 0) return; // skipped: no draw, so that row's CPU twin draws nothing either
      assert.equal(status[r], SAMPLE_STATUS.OK, `call ${step} row ${r}: status ${status[r]}`);
      assert.equal(tokens[r], cpu[p].sample(rowsL[r]), `call ${step} row ${r} (parameter row ${p}): gpu ${tokens[r]}`);
    });
  }
  using short = DeviceTensor.zeros('I32', [2]);
  assert.throws(() => s.sample(dl, ROWS.length, { paramRows: short }), /paramRows .* hold fewer than 8 rows/);
});
