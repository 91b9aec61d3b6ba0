// The model's GEMMs on the GPU against the CPU forward's, within SPEC 5's tolerance (they cannot be bit-exact: the
// tensor cores' in-block FP8 accumulation keeps ~14 bits, and cuBLASLt sums the bf16 head in another order than the
// CPU; SPEC 5 and src/gpu-model/*.ts headers):
//  - dense block-FP8 projections (src/gpu-model/dense-fp8.ts = the grouped GEMM with one group) vs ops.ts fp8Linear,
//    decode and normal paths, tiny and V4-Flash shapes (wq_a, wkv, wo_b), activations from the GPU act_quant:
//    calc_diff <= 3e-5 (SPEC 5; measured figure printed as a diagnostic) and run-to-run bit-identical;
//  - the bf16 logits GEMM (src/gpu-model/logits.ts, cuBLASLt) vs ops.ts linear (f64): calc_diff <= 1e-10, argmax equal;
//  - a chain of every launcher in one CUDA graph (capturable, graph == eager bit for bit, near the CPU chain).
// Skips with the reason where no Hopper GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cublasLtStatus } from '../src/cuda/cublaslt.js';
import { CudaGraph, DeviceTensor, gpuSkipReason, Stream } from '../src/cuda/index.js';
import { DenseFp8Linear, uploadFp8Weight } from '../src/gpu-model/dense-fp8.js';
import { GpuLogits } from '../src/gpu-model/logits.js';
import { allocFp8Activations, GpuRowOps, uploadHcParams } from '../src/gpu-model/row-ops.js';
import { GpuSampler } from '../src/gpu-model/sampler.js';
import { hcHeadMix, hcMix, hcPost } from '../src/model/model.js';
import { f32ToBF16Bits, fp8Linear, linear, QuantScratch, rmsNorm, roundBF16 } from '../src/model/ops.js';
import { argmax } from '../src/generate/sampler.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { decodeE4M3Array, encodeE4M3Array } from '../src/numerics/e4m3.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();
const lt = cublasLtStatus();
const skipLt = skip ?? (lt.available ? undefined : `cuBLASLt unavailable: ${lt.reason}`);

function bf16Normal(rng: Rng, n: number, std = 1): Float32Array {
  const x = new Float32Array(n);
  rng.fillNormal(x, std);
  return roundBF16(x);
}
const downBF16 = (t: DeviceTensor<'BF16'>, n: number): Float32Array => {
  const bits = t.toHost().data as Uint16Array;
  const out = new Float32Array(n); const u = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) u[i] = bits[i] << 16;
  return out;
};

// Row counts per path: decode tiles are 16 rows (1, a partial tile, a full one, two tiles), normal tiles 128; 'both'
// is an unpinned linear sized for prefills (the model's), whose calls of up to 16 rows take the decode path. The flash
// decode paths split K over CTAs (denseDecodeSplitK: wq_a 8, wkv 16, wo_b 2). The CPU reference is a JS loop, so the
// largest flash shapes get few rows.
type PathCase = 'decode' | 'normal' | 'both';
const SMALL = { decode: [1, 5, 16, 21], normal: [1, 37, 130] };
const CASES: Array<{ label: string; n: number; k: number; rows: Partial<Record<PathCase, number[]>> }> = [
  { label: 'tiny wq_a', n: 128, k: 128, rows: SMALL },
  { label: 'tiny wkv', n: 512, k: 256, rows: SMALL },
  { label: 'flash wq_a', n: 1024, k: 4096, rows: { ...SMALL, both: [1, 16, 37] } },
  { label: 'flash wkv', n: 512, k: 4096, rows: { decode: [1, 21], normal: [37], both: [3, 17] } },
  { label: 'flash wo_b', n: 4096, k: 8192, rows: { decode: [1, 5], normal: [37] } },
];

for (const { label, n, k, rows: rowsOf } of CASES) {
  for (const path of ['decode', 'normal', 'both'] as const) {
    const rowsList = rowsOf[path];
    if (!rowsList) continue;
    test(`gpu dense FP8 ${label} [${n}, ${k}] ${path}: vs fp8Linear within SPEC 5 (calc_diff <= 3e-5), deterministic`, { skip }, (t) => {
      const rng = new Rng(n * 7 + k + (path === 'decode' ? 1 : 2));
      const wv = new Float32Array(n * k);
      rng.fillNormal(wv, 32);
      const codes = encodeE4M3Array(wv);
      const scales = Float32Array.from({ length: (n / 128) * (k / 128) }, () => 2 ** -(6 + rng.int(4)));
      const ops = GpuRowOps.createSync(4);
      const cap = Math.max(...rowsList);
      using lin = DenseFp8Linear.createSync({ n, k, path: path === 'both' ? undefined : path }, cap);
      assert.equal(lin.decodeToo, path === 'both');
      const act = allocFp8Activations(lin.mCap, k, true);
      const w = uploadFp8Weight(codes, scales, n, k);
      using out = DeviceTensor.zeros('BF16', [lin.mCap, n]);
      try {
        const bound = lin.bind(act, w, out);
        const cpuLin = { w: decodeE4M3Array(codes), s: scales, out: n, in: k };
        for (const rows of rowsList) {
          const x = bf16Normal(rng, rows * k);
          using dx = DeviceTensor.fromHost(new HostTensor('BF16', [rows, k], f32ToBF16Bits(x)));
          ops.actQuant(dx, act);
          bound.run(rows);
          const got = downBF16(out, rows * n);
          bound.run(rows);
          assert.deepEqual(downBF16(out, rows * n), got, `${label} ${path} rows ${rows}: run-to-run identical`);
          const want = new Float32Array(rows * n);
          fp8Linear(x, rows, cpuLin, true, new QuantScratch(), want);
          const d = calcDiff(got, want);
          let same = 0;
          for (let i = 0; i < got.length; i++) if (got[i] === want[i]) same++;
          t.diagnostic(`${label} ${path} rows ${rows}: calc_diff ${d.toExponential(2)}, ${((100 * same) / got.length).toFixed(2)}% outputs bit-equal`);
          assert.ok(d <= 3e-5, `${label} ${path} rows ${rows}: calc_diff ${d}`);
        }
      } finally {
        act.q.dispose(); act.sf.dispose(); w.w.dispose(); w.s.dispose();
      }
    });
  }
}

for (const [V, D, rowsList] of [[129280, 128, [1, 3]], [4096, 4096, [1, 5]]] as const) {
  test(`gpu logits (cuBLASLt bf16) V ${V} D ${D}: vs the CPU head (f64 sums) calc_diff <= 1e-10, same argmax`, { skip: skipLt }, (t) => {
    const rng = new Rng(V + D);
    const head = bf16Normal(rng, V * D, 0.05);
    using dHead = DeviceTensor.fromHost(new HostTensor('BF16', [V, D], f32ToBF16Bits(head)));
    using lg = new GpuLogits(V, D);
    for (const rows of rowsList) {
      const y = bf16Normal(rng, rows * D);
      using dy = DeviceTensor.fromHost(new HostTensor('BF16', [rows, D], f32ToBF16Bits(y)));
      using dl = DeviceTensor.zeros('F32', [rows, V]);
      lg.run(dy, dHead, dl, rows);
      const got = dl.toHost().data as Float32Array;
      const want = new Float32Array(rows * V);
      linear(y, rows, head, V, D, want, false);
      const d = calcDiff(got, want);
      t.diagnostic(`V ${V} D ${D} rows ${rows}: calc_diff ${d.toExponential(2)}`);
      assert.ok(d <= 1e-10, `logits calc_diff ${d}`);
      for (let r = 0; r < rows; r++) {
        const g = got.subarray(r * V, (r + 1) * V); const w = want.subarray(r * V, (r + 1) * V);
        const sorted = Float32Array.from(w).sort().reverse();
        if (sorted[0] - sorted[1] > 1e-3 * Math.abs(sorted[0])) assert.equal(argmax(g), argmax(w), `row ${r}: argmax`);
      }
    }
  });
}

test('gpu chain in one CUDA graph: embed -> hc_pre + norm + act_quant -> dense FP8 -> hc_post -> hc_head + norm -> logits -> sample; graph == eager bit for bit, near the CPU chain', { skip: skipLt }, () => {
  const hc = 4; const D = 256; const V = 1000; const T = 5; const W = hc * D; const eps = 1e-6;
  const rng = new Rng(2024);
  const table = bf16Normal(rng, V * D);
  const fnA = new Float32Array(24 * W); rng.fillNormal(fnA, 0.1);
  const pA = { fn: fnA, base: Float32Array.from({ length: 24 }, () => rng.normal()), scale: Float32Array.of(0.9, 1.1, 1.0) };
  const fnH = new Float32Array(hc * W); rng.fillNormal(fnH, 0.1);
  const pH = { fn: fnH, base: Float32Array.from({ length: hc }, () => rng.normal()), scale: Float32Array.of(1.0) };
  const normA = bf16Normal(rng, D, 0.5); const normF = bf16Normal(rng, D, 0.5);
  const wv = new Float32Array(D * D); rng.fillNormal(wv, 32);
  const codes = encodeE4M3Array(wv); const scales = Float32Array.from({ length: (D / 128) ** 2 }, () => 2 ** -8);
  const head = bf16Normal(rng, V * D, 0.05);
  const ids = Int32Array.from({ length: T }, () => rng.int(V));

  const ops = GpuRowOps.createSync(hc);
  using lin = DenseFp8Linear.createSync({ n: D, k: D, path: 'decode' }, T);
  using stream = Stream.create();
  const up = <Dt extends 'BF16' | 'F32' | 'I32'>(dtype: Dt, shape: number[], data: Float32Array | Int32Array) =>
    DeviceTensor.fromHost(new HostTensor(dtype, shape, (dtype === 'BF16' ? f32ToBF16Bits(data as Float32Array) : data) as never));
  using dTable = up('BF16', [V, D], table);
  using dIds = up('I32', [T], ids);
  using dNormA = up('F32', [D], normA);
  using dNormF = up('F32', [D], normF);
  using dHead = up('BF16', [V, D], head);
  const hA = uploadHcParams(pA, 24, W); const hH = uploadHcParams(pH, hc, W);
  const w = uploadFp8Weight(codes, scales, D, D);
  const act = allocFp8Activations(lin.mCap, D, true);
  using hs = DeviceTensor.zeros('BF16', [T, hc, D]);
  using post = DeviceTensor.zeros('F32', [T, hc]);
  using comb = DeviceTensor.zeros('F32', [T, hc, hc]);
  using x = DeviceTensor.zeros('BF16', [T, D]);
  using f = DeviceTensor.zeros('BF16', [lin.mCap, D]);
  using yH = DeviceTensor.zeros('BF16', [T, D]);
  using logits = DeviceTensor.zeros('F32', [T, V]);
  using lg = new GpuLogits(V, D);
  lg.prepare([T]);
  using sampler = GpuSampler.createSync(T, V);
  const bound = lin.bind(act, w, f);
  const o = { normEps: eps, hcEps: eps, stream };
  const chain = () => {
    ops.embed(dIds, dTable, hs, { copies: hc, stream });
    ops.hcPre(hs, hA, { post, comb, y: x }, { ...o, sinkhornIters: 20, normWeight: dNormA, quant: act });
    bound.run(T, stream);
    ops.hcPost(f, hs, post, comb, hs, { rows: T, stream });
    ops.hcHead(hs, hH, yH, { ...o, normWeight: dNormF });
    lg.run(yH, dHead, logits, T, stream);
    sampler.sample(logits, T, { stream });
  };
  const params = { temperature: 0.9, topK: 20, topP: 0.95, seed: 3 };
  try {
    for (let r = 0; r < T; r++) sampler.setRow(r, params, stream);
    chain();
    const eagerLogits = logits.toHost(stream).data as Float32Array;
    const eagerTokens = sampler.download(T, stream).tokens;
    using graph = CudaGraph.capture(stream, chain);
    logits.buffer.memset8(0, { stream });
    for (let r = 0; r < T; r++) sampler.setRow(r, params, stream);
    graph.launch(stream);
    const gLogits = logits.toHost(stream).data as Float32Array;
    assert.deepEqual(new Uint32Array(gLogits.buffer), new Uint32Array(eagerLogits.buffer), 'graph replay == eager, logits bit for bit');
    assert.deepEqual(sampler.download(T, stream).tokens, eagerTokens, 'same tokens');

    // The same chain on the CPU (its FP8 GEMM sums blocks exactly, so a tolerance from there on).
    const Hs = new Float32Array(T * W);
    for (let t = 0; t < T; t++) for (let k = 0; k < hc; k++) Hs.set(table.subarray(ids[t] * D, (ids[t] + 1) * D), (t * hc + k) * D);
    const mix = new Float32Array(T * 24); linear(Hs, T, pA.fn, 24, W, mix, false);
    const cx = new Float32Array(T * D); const cpost = new Float32Array(T * hc); const ccomb = new Float32Array(T * hc * hc);
    hcMix(Hs, mix, T, hc, D, pA, 20, eps, eps, cx, cpost, ccomb);
    rmsNorm(cx, T, D, normA, eps, cx);
    const cf = new Float32Array(T * D);
    fp8Linear(cx, T, { w: decodeE4M3Array(codes), s: scales, out: D, in: D }, true, new QuantScratch(), cf);
    const H2 = hcPost(cf, Hs, T, hc, D, cpost, ccomb);
    const mixH = new Float32Array(T * hc); linear(H2, T, pH.fn, hc, W, mixH, false);
    const cy = new Float32Array(T * D); hcHeadMix(H2, mixH, 0, T, hc, D, pH, eps, eps, cy);
    rmsNorm(cy, T, D, normF, eps, cy);
    const cl = new Float32Array(T * V); linear(cy, T, head, V, D, cl, false);
    const d = calcDiff(gLogits, cl);
    assert.ok(d < 1e-4, `GPU chain vs CPU chain: logits calc_diff ${d}`);
  } finally {
    for (const t of [hA.fn, hA.base, hA.scale, hH.fn, hH.base, hH.scale, w.w, w.s, act.q, act.sf]) t.dispose();
  }
});
