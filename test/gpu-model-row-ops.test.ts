// GPU row ops of the model (src/kernels/model_ops.cu via src/gpu-model/row-ops.ts) against their CPU counterparts in
// src/model/, BIT FOR BIT: embedding, RMSNorm (with / without weight) + act_quant (pow2 and amax/448 scales), RoPE
// (plain and YaRN tables, forward and inverse), hc_pre (rms factor, pre / post, Sinkhorn comb, y; fused norm + quant),
// hc_head (also gathering rows), hc_post, the MTP input combine, at the tiny shape, V4-Flash's D = 4096 and Pro's 7168. The CPU side of hc_pre / hc_head takes its mixing
// logits from ops.ts `linear` (f64 accumulation, like the GPU); the model's default WebAssembly f32 GEMM sums in
// another order, so that path is compared within a tolerance and reported. Skips with the reason where no Hopper
// GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import { allocFp8Activations, allocHcMixScratch, GpuRowOps, HC_SPLIT_MAX_ROWS, rmsNormSplit, uploadHcParams, type Fp8Activations } from '../src/gpu-model/row-ops.js';
import { hcHeadMix, hcMix, hcPost, qHeadRenorm } from '../src/model/model.js';
import { actQuant, f32ToBF16Bits, linear, QuantScratch, rmsNorm, roundBF16 } from '../src/model/ops.js';
import { RopeTable, ropeFrequencies } from '../src/model/rope.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { decodeE4M3Array } from '../src/numerics/e4m3.js';
import { wasmGemm } from '../src/numerics/wasm-gemm.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();
const NORM_EPS = 1e-6;
const HC_EPS = 1e-6;

/** bf16-exact values: normal * scale, with a sprinkling of exact zeros, tiny and large magnitudes. */
function bf16Values(rng: Rng, n: number, scale = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const k = rng.int(64);
    x[i] = k === 0 ? 0 : k === 1 ? rng.normal() * 1e-6 : k === 2 ? rng.normal() * 300 : rng.normal() * scale;
  }
  return roundBF16(x);
}

const upBF16 = (x: Float32Array, shape: number[]) => DeviceTensor.fromHost(new HostTensor('BF16', shape, f32ToBF16Bits(x)));
const upF32 = (x: Float32Array, shape: number[]) => DeviceTensor.fromHost(new HostTensor('F32', shape, x));
const upI32 = (x: Int32Array) => DeviceTensor.fromHost(new HostTensor('I32', [x.length], x));
function downBF16(t: DeviceTensor<'BF16'>, n = t.numel): Float32Array {
  const bits = t.toHost().data as Uint16Array;
  const out = new Float32Array(n);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) u[i] = bits[i] << 16;
  return out;
}
const downF32 = (t: DeviceTensor<'F32'>) => t.toHost().data as Float32Array;

/** Asserts identical f32 bit patterns (NaN payloads aside) and says where the first difference is. */
function assertSameBits(what: string, got: Float32Array, want: Float32Array, n = want.length): void {
  const g = new Uint32Array(got.buffer, got.byteOffset, n);
  const w = new Uint32Array(want.buffer, want.byteOffset, n);
  let bad = 0; let first = -1;
  for (let i = 0; i < n; i++) if (g[i] !== w[i] && !(got[i] !== got[i] && want[i] !== want[i])) { bad++; if (first < 0) first = i; }
  assert.equal(bad, 0, `${what}: ${bad} of ${n} values differ; first at ${first}: gpu ${got[first]} cpu ${want[first]}`);
}

/** GPU FP8 activations (codes [rows, K], scales MN-major [K/128, mCap]) against ops.ts actQuant's values and scales. */
function assertQuant(what: string, act: Fp8Activations, rows: number, K: number, sc: QuantScratch): void {
  const codes = act.q.toHost().data as Uint8Array;
  const vals = decodeE4M3Array(codes.subarray(0, rows * K));
  let bad = 0; let first = -1;
  for (let i = 0; i < rows * K; i++) if (vals[i] !== sc.q[i]) { bad++; if (first < 0) first = i; } // -0 == +0: same GEMM input
  assert.equal(bad, 0, `${what}: ${bad} e4m3 codes differ; first at ${first}: gpu ${vals[first]} cpu ${sc.q[first]}`);
  const sf = downF32(act.sf); const mCap = act.q.shape[0]; const kb = K / 128;
  const got = new Float32Array(rows * kb);
  for (let r = 0; r < rows; r++) for (let b = 0; b < kb; b++) got[r * kb + b] = sf[b * mCap + r];
  assertSameBits(`${what} scales`, got, sc.s, rows * kb);
}

test('gpu embed: rows of the table, copied hc times; an id outside the vocabulary gives NaN rows and counts', { skip }, () => {
  const ops = GpuRowOps.createSync(4);
  const rng = new Rng(1);
  for (const [V, D] of [[512, 128], [1000, 4096]] as const) {
    const table = bf16Values(rng, V * D);
    const T = 9;
    const ids = Int32Array.from({ length: T }, () => rng.int(V));
    ids[3] = V - 1; ids[4] = 0;
    using dt = upBF16(table, [V, D]);
    using di = upI32(ids);
    using out = DeviceTensor.zeros('BF16', [T, 4, D]);
    using bad = DeviceTensor.zeros('I32', [1]);
    ops.embed(di, dt, out, { copies: 4, bad });
    const got = downBF16(out);
    const want = new Float32Array(T * 4 * D);
    for (let t = 0; t < T; t++) for (let k = 0; k < 4; k++) want.set(table.subarray(ids[t] * D, (ids[t] + 1) * D), (t * 4 + k) * D);
    assertSameBits(`embed V ${V} D ${D}`, got, want);
    assert.equal((bad.toHost().data as Int32Array)[0], 0);
    using di2 = upI32(Int32Array.of(5, V, -1));
    using out2 = DeviceTensor.zeros('BF16', [3, D]);
    ops.embed(di2, dt, out2, { bad });
    const g2 = downBF16(out2);
    assert.ok(Number.isNaN(g2[D]) && Number.isNaN(g2[2 * D]) && !Number.isNaN(g2[0]), 'bad ids -> NaN rows');
    assert.equal((bad.toHost().data as Int32Array)[0], 2);
  }
});

/** An RMSNorm case: x bf16 [rows, n] (scale 2) and w [n] (scale 0.5) drawn in that order, on the device with an output. */
function normInputs(rng: Rng, rows: number, n: number) {
  const x = bf16Values(rng, rows * n, 2);
  const w = bf16Values(rng, n, 0.5);
  const dx = upBF16(x, [rows, n]);
  const dw = upF32(w, [n]);
  const out = DeviceTensor.zeros('BF16', [rows, n]);
  return { x, w, dx, dw, out, [Symbol.dispose]() { dx.dispose(); dw.dispose(); out.dispose(); } };
}

for (const n of [128, 384, 512, 1024, 4096, 7168]) {
  test(`gpu rmsNorm n = ${n}: bit-exact with and without weight, fused act_quant (pow2 and amax/448) bit-exact`, { skip }, () => {
    const ops = GpuRowOps.createSync(4);
    const rng = new Rng(n);
    for (const rows of [1, 7, 64]) {
      using c = normInputs(rng, rows, n);
      const { x, w, dx, dw, out } = c;
      for (const weighted of [true, false]) {
        for (const pow2 of [true, false]) {
          const act = allocFp8Activations(rows + 3, n, pow2); // mCap > rows: the MN-major scale stride is mCap
          try {
            ops.rmsNorm(dx, out, { weight: weighted ? dw : undefined, eps: NORM_EPS, quant: act });
            const want = new Float32Array(rows * n);
            rmsNorm(x, rows, n, weighted ? w : undefined, NORM_EPS, want);
            assertSameBits(`rmsNorm n ${n} rows ${rows} weight ${weighted}`, downBF16(out), want);
            const sc = new QuantScratch();
            actQuant(want, rows, n, pow2, sc);
            assertQuant(`rmsNorm+quant n ${n} rows ${rows} pow2 ${pow2}`, act, rows, n, sc);
            // act_quant alone on the raw input
            ops.actQuant(dx, act);
            const sc2 = new QuantScratch();
            actQuant(x, rows, n, pow2, sc2);
            assertQuant(`actQuant n ${n} rows ${rows} pow2 ${pow2}`, act, rows, n, sc2);
          } finally { act.q.dispose(); act.sf.dispose(); }
        }
      }
    }
  });
}

// The row split (rmsNormSplit): at few rows a row's 256-column steps run on several warps, each recomputing the row's
// sum of squares; at many rows one warp per row. Every split must give the CPU's bits: decode's shapes (1 row of wo_b's
// 8192-column input, q_norm 1024, kv_norm 512), 2 / 64 rows, a 2048-row prefill chunk (split 1), column counts that
// are not whole 256-column steps (with quant: multiples of 128; without: any multiple of 8).
test('gpu rmsNorm / actQuant across the row split (1, 2, 64, 2048 rows; odd column counts): bit-exact', { skip }, () => {
  const ops = GpuRowOps.createSync(4);
  const rng = new Rng(77);
  const quantCases: Array<[number, number]> = [[1, 8192], [2, 8192], [64, 8192], [2048, 8192], [1, 1024], [1, 512], [3, 384], [5, 7168], [2, 4224], [1, 128]];
  for (const [rows, n] of quantCases) {
    using c = normInputs(rng, rows, n);
    const { x, w, dx, dw, out } = c;
    for (const pow2 of rows >= 2048 ? [true] : [true, false]) {
      const act = allocFp8Activations(rows + 1, n, pow2);
      try {
        ops.actQuant(dx, act);
        const sc = new QuantScratch();
        actQuant(x, rows, n, pow2, sc);
        assertQuant(`actQuant rows ${rows} n ${n} pow2 ${pow2} (split ${rmsNormSplit(rows, n)})`, act, rows, n, sc);
        ops.rmsNorm(dx, out, { weight: dw, eps: NORM_EPS, quant: act });
        const want = new Float32Array(rows * n);
        rmsNorm(x, rows, n, w, NORM_EPS, want);
        assertSameBits(`rmsNorm rows ${rows} n ${n} (split ${rmsNormSplit(rows, n)})`, downBF16(out), want);
        const sc2 = new QuantScratch();
        actQuant(want, rows, n, pow2, sc2);
        assertQuant(`rmsNorm+quant rows ${rows} n ${n} pow2 ${pow2}`, act, rows, n, sc2);
      } finally { act.q.dispose(); act.sf.dispose(); }
    }
  }
  for (const [rows, n] of [[1, 8], [1, 136], [2, 1000], [64, 2056], [1, 8200], [7, 264]] as Array<[number, number]>) {
    using c = normInputs(rng, rows, n);
    const { x, w, dx, dw, out } = c;
    for (const weighted of [true, false]) {
      ops.rmsNorm(dx, out, { weight: weighted ? dw : undefined, eps: NORM_EPS });
      const want = new Float32Array(rows * n);
      rmsNorm(x, rows, n, weighted ? w : undefined, NORM_EPS, want);
      assertSameBits(`rmsNorm rows ${rows} n ${n} weight ${weighted} (split ${rmsNormSplit(rows, n)})`, downBF16(out), want);
    }
  }
});

test('gpu rmsNorm on strided rows (a slice of wider rows) writes only the slice', { skip }, () => {
  const ops = GpuRowOps.createSync(4);
  const rng = new Rng(5);
  const rows = 5; const n = 512; const stride = 1024;
  const x = bf16Values(rng, rows * stride);
  using dx = upBF16(x, [rows, stride]);
  using out = DeviceTensor.zeros('BF16', [rows, stride]);
  ops.rmsNorm(dx, out, { n, eps: NORM_EPS, xStride: stride, outStride: stride });
  const want = new Float32Array(rows * stride);
  rmsNorm(x, rows, n, undefined, NORM_EPS, want, 0, stride, 0, stride);
  assertSameBits('strided rmsNorm', downBF16(out), want);
});

test('gpu rope: bit-exact against RopeTable.apply (theta 10000 plain, 160000 + YaRN), forward and inverse, large positions', { skip }, () => {
  const ops = GpuRowOps.createSync(4);
  const rng = new Rng(7);
  const yarn = { factor: 16, originalSeqLen: 65536, betaFast: 32, betaSlow: 1 };
  const rd = 64;
  // One CPU table per frequency set (a table grows to the largest position: 2^20 x 32 pairs here).
  const sets = [ropeFrequencies(rd, 10000), ropeFrequencies(rd, 160000, yarn)].map((f) => ({ freqs: f, table: new RopeTable(rd, f) }));
  for (const [d, heads] of [[512, 4], [128, 16], [512, 64]] as const) {
    for (const { freqs, table } of sets) {
      const positions = Int32Array.of(0, 1, 2, 127, 128, 4095, 65535, 65536, 131071, 1_000_000, rng.int(1 << 20), rng.int(4096));
      const rows = positions.length;
      const x = bf16Values(rng, rows * heads * d);
      using df = upF32(freqs, [rd / 2]);
      using dp = upI32(positions);
      for (const inverse of [false, true]) {
        using dx = upBF16(x, [rows, heads, d]);
        ops.rope(dx, dp, df, { heads, headStride: d, ropeOffset: d - rd, rd, inverse });
        const want = x.slice();
        for (let r = 0; r < rows; r++) for (let h = 0; h < heads; h++) table.apply(want, (r * heads + h) * d + d - rd, positions[r], inverse);
        assertSameBits(`rope d ${d} heads ${heads} inverse ${inverse}`, downBF16(dx), want);
      }
    }
  }
});

/** Synthetic hc parameters like a checkpoint's: fn small normals, base normals, scales near 1. */
function hcParams(rng: Rng, mix: number, W: number, scales: number): { fn: Float32Array; base: Float32Array; scale: Float32Array } {
  const fn = new Float32Array(mix * W);
  rng.fillNormal(fn, 1 / Math.sqrt(W) * 4);
  const base = new Float32Array(mix); rng.fillNormal(base, 1);
  const scale = Float32Array.from({ length: scales }, () => 0.5 + rng.uniform());
  return { fn, base, scale };
}

/**
 * The hc kernels' two paths for the mixing logits: one block per token (no scratch) and the split over many blocks
 * (a scratch with room for the rows; pro's 4D = 28672 is 28 chunks of 1024, tiny's 512 half of one). Every check runs
 * on both, and past 16 rows also with a 16-row scratch (too small: the one-block path again).
 */
type HcPath = { path: string; mixScratch?: DeviceTensor<'F64'>; tokensPerBlock?: 1 | 2 | 4; mixRowsPerBlock?: 1 | 2 | 4 | 8; mixTiled?: boolean };
function hcPaths(D: number, T: number): HcPath[] {
  const paths: HcPath[] = [
    // split up to HC_SPLIT_MAX_ROWS rows, tiled (f64 tensor cores, 32-row tiles) above: the default with a scratch
    { path: T <= HC_SPLIT_MAX_ROWS ? 'split' : 'tiled', mixScratch: allocHcMixScratch(4, D, Math.max(T, HC_SPLIT_MAX_ROWS)) },
    { path: 'one block per token', tokensPerBlock: 1 },
    // the one-block path with 2 / 4 rows per block (the default from 133 / 265 rows), the last block partial where T is odd
    { path: '2 rows per block', tokensPerBlock: 2 }, { path: '4 rows per block', tokensPerBlock: 4 },
    // the split path's mix kernel with 4 rows per block (the default: hcMixRowsPerBlock), a partial block at T 1..3
    { path: 'split, 4 rows per mix block', mixScratch: allocHcMixScratch(4, D, HC_SPLIT_MAX_ROWS), mixRowsPerBlock: 4 },
  ];
  if (T > 16) paths.push({ path: 'scratch of 16 rows', mixScratch: allocHcMixScratch(4, D, 16) });
  if (T <= HC_SPLIT_MAX_ROWS) paths.push({ path: 'tiled (forced)', mixScratch: allocHcMixScratch(4, D, T), mixTiled: true });
  return paths;
}

// pro's D = 7168 is 3.5 steps of the hc kernels' 8 warps x 256 columns: warps with different trip counts. flash at
// T 1 and 3 is the decode shape the split exists for; T 64 its last row count; tiny T 301 and flash T 2048 (a prefill
// chunk) take 4 rows per block by default (the last block of 301 partial).
for (const [label, D, T] of [['tiny', 128, 37], ['flash', 4096, 8], ['flash', 4096, 1], ['flash', 4096, 3], ['pro', 7168, 3],
  ['flash', 4096, 2], ['flash', 4096, 64], ['tiny', 128, 301], ['flash', 4096, 2048]] as const) {
  test(`gpu hc_pre ${label} (D ${D}, T ${T}): post, comb (Sinkhorn), y bit-exact on both logit paths; fused norm + act_quant bit-exact; WASM-mix path within tolerance`, { skip }, () => {
    const hc = 4; const W = hc * D; const mix = (2 + hc) * hc; const iters = 20;
    const ops = GpuRowOps.createSync(hc);
    const rng = new Rng(D + T);
    const Hs = bf16Values(rng, T * W);
    const p = hcParams(rng, mix, W, 3);
    const normW = bf16Values(rng, D, 0.3);
    using dHs = upBF16(Hs, [T, hc, D]);
    const dp = uploadHcParams(p, mix, W);
    using dNorm = upF32(normW, [D]);
    using post = DeviceTensor.zeros('F32', [T, hc]);
    using comb = DeviceTensor.zeros('F32', [T, hc, hc]);
    using y = DeviceTensor.zeros('BF16', [T, D]);
    const paths = hcPaths(D, T);
    try {
      // CPU: mixing logits with f64 accumulation (ops.ts linear), then hcMix.
      const mixAll = new Float32Array(T * mix);
      linear(Hs, T, p.fn, mix, W, mixAll, false);
      const wy = new Float32Array(T * D); const wpost = new Float32Array(T * hc); const wcomb = new Float32Array(T * hc * hc);
      hcMix(Hs, mixAll, T, hc, D, p, iters, HC_EPS, NORM_EPS, wy, wpost, wcomb);

      for (const { path, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled } of paths) {
        post.buffer.memset8(0); comb.buffer.memset8(0); y.buffer.memset8(0);
        ops.hcPre(dHs, dp, { post, comb, y }, { normEps: NORM_EPS, hcEps: HC_EPS, sinkhornIters: iters, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled });
        assertSameBits(`hc_pre ${label} T ${T} ${path} post`, downF32(post), wpost);
        assertSameBits(`hc_pre ${label} T ${T} ${path} comb`, downF32(comb), wcomb);
        assertSameBits(`hc_pre ${label} T ${T} ${path} y`, downBF16(y), wy);
      }
      const gy = downBF16(y);

      // The model's default CPU path (WebAssembly f32 GEMM for the mixing logits): same numbers up to f32 summation order.
      const wasm = wasmGemm();
      if (wasm) {
        const mixW = new Float32Array(T * mix);
        wasm.matrix(p.fn, mix, W).apply(Hs, T, mixW, false);
        const y2 = new Float32Array(T * D); const post2 = new Float32Array(T * hc); const comb2 = new Float32Array(T * hc * hc);
        hcMix(Hs, mixW, T, hc, D, p, iters, HC_EPS, NORM_EPS, y2, post2, comb2);
        const dy = calcDiff(gy, y2); const dc = calcDiff(downF32(comb), comb2);
        assert.ok(dy < 1e-6 && dc < 1e-8, `hc_pre ${label} vs the WASM-mix CPU path: calc_diff y ${dy}, comb ${dc}`);
      }

      // Fused attn_norm / ffn_norm + act_quant.
      const wn = new Float32Array(T * D);
      rmsNorm(wy, T, D, normW, NORM_EPS, wn);
      for (const pow2 of [true, false]) {
        const sc = new QuantScratch();
        actQuant(wn, T, D, pow2, sc);
        for (const { path, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled } of paths) {
          const act = allocFp8Activations(T, D, pow2);
          try {
            ops.hcPre(dHs, dp, { post, comb, y }, { normEps: NORM_EPS, hcEps: HC_EPS, sinkhornIters: iters, normWeight: dNorm, quant: act, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled });
            assertSameBits(`hc_pre+norm ${label} T ${T} ${path}`, downBF16(y), wn);
            assertQuant(`hc_pre+norm+quant ${label} T ${T} ${path} pow2 ${pow2}`, act, T, D, sc);
          } finally { act.q.dispose(); act.sf.dispose(); }
        }
      }
    } finally {
      dp.fn.dispose(); dp.base.dispose(); dp.scale.dispose();
      for (const { mixScratch } of paths) mixScratch?.dispose();
    }
  });

  test(`gpu hc_head ${label} (D ${D}, T ${T}): y bit-exact, fused final norm bit-exact, gather with NaN for a bad row, on both logit paths`, { skip }, () => {
    const hc = 4; const W = hc * D;
    const ops = GpuRowOps.createSync(hc);
    const rng = new Rng(3 * D + T);
    const Hs = bf16Values(rng, T * W);
    const p = hcParams(rng, hc, W, 1);
    const normW = bf16Values(rng, D, 0.3);
    using dHs = upBF16(Hs, [T, hc, D]);
    const dp = uploadHcParams(p, hc, W);
    using dNorm = upF32(normW, [D]);
    using y = DeviceTensor.zeros('BF16', [T, D]);
    const paths = hcPaths(D, T);
    try {
      const mixAll = new Float32Array(T * hc);
      linear(Hs, T, p.fn, hc, W, mixAll, false);
      const wy = new Float32Array(T * D);
      hcHeadMix(Hs, mixAll, 0, T, hc, D, p, HC_EPS, NORM_EPS, wy);
      const wn = new Float32Array(T * D);
      rmsNorm(wy, T, D, normW, NORM_EPS, wn);
      // A gather of rows (each sequence's last token): output i reads token src[i]; an out-of-range index gives NaN.
      const src = Int32Array.of(T - 1, 0, Math.floor(T / 2), T + 5);
      using dSrc = upI32(src);
      using y2 = DeviceTensor.zeros('BF16', [src.length, D]);
      for (const { path, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled } of paths) {
        const what = `${label} T ${T} ${path}`;
        y.buffer.memset8(0);
        ops.hcHead(dHs, dp, y, { normEps: NORM_EPS, hcEps: HC_EPS, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled });
        assertSameBits(`hc_head ${what}`, downBF16(y), wy);
        ops.hcHead(dHs, dp, y, { normEps: NORM_EPS, hcEps: HC_EPS, normWeight: dNorm, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled });
        assertSameBits(`hc_head+norm ${what}`, downBF16(y), wn);
        y2.buffer.memset8(0);
        ops.hcHead(dHs, dp, y2, { normEps: NORM_EPS, hcEps: HC_EPS, srcRows: dSrc, mixScratch, tokensPerBlock, mixRowsPerBlock, mixTiled });
        const g2 = downBF16(y2);
        for (let i = 0; i < 3; i++) assertSameBits(`hc_head gather ${what} row ${i}`, g2.subarray(i * D, (i + 1) * D), wy.subarray(src[i] * D, (src[i] + 1) * D));
        assert.ok(g2.subarray(3 * D).every((v) => Number.isNaN(v)), `${what}: an out-of-range source row gives NaN, not a read out of bounds`);
      }
    } finally {
      dp.fn.dispose(); dp.base.dispose(); dp.scale.dispose();
      for (const { mixScratch } of paths) mixScratch?.dispose();
    }
  });

  test(`gpu mtpCombine ${label} (D ${D}, T ${T}): bf16(e_proj + h_proj) per stream, bit-exact`, { skip }, () => {
    const hc = 4;
    const ops = GpuRowOps.createSync(hc);
    const rng = new Rng(9 * D + T);
    const e = bf16Values(rng, (T + 2) * D); const h = bf16Values(rng, (T * hc + 3) * D);
    using de = upBF16(e, [T + 2, D]);
    using dh = upBF16(h, [T * hc + 3, D]);
    using out = DeviceTensor.zeros('BF16', [T, hc, D]);
    ops.mtpCombine(de, dh, out, T);
    const want = new Float32Array(T * hc * D);
    for (let r = 0; r < T; r++) for (let k = 0; k < hc; k++) for (let i = 0; i < D; i++) want[(r * hc + k) * D + i] = e[r * D + i] + h[(r * hc + k) * D + i];
    assertSameBits(`mtpCombine ${label}`, downBF16(out), roundBF16(want));
  });

  test(`gpu hc_post ${label} (D ${D}, T ${T}): bit-exact, also in place`, { skip }, () => {
    const hc = 4; const W = hc * D;
    const ops = GpuRowOps.createSync(hc);
    const rng = new Rng(5 * D + T);
    const R = bf16Values(rng, T * W);
    const f = bf16Values(rng, T * D);
    const post = Float32Array.from({ length: T * hc }, () => 2 * rng.uniform());
    const comb = Float32Array.from({ length: T * hc * hc }, () => rng.uniform());
    using dR = upBF16(R, [T, hc, D]);
    using df = upBF16(f, [T, D]);
    using dpost = upF32(post, [T, hc]);
    using dcomb = upF32(comb, [T, hc, hc]);
    using out = DeviceTensor.zeros('BF16', [T, hc, D]);
    const want = hcPost(f, R, T, hc, D, post, comb);
    ops.hcPost(df, dR, dpost, dcomb, out);
    assertSameBits(`hc_post ${label}`, downBF16(out), want);
    ops.hcPost(df, dR, dpost, dcomb, dR);
    assertSameBits(`hc_post ${label} in place`, downBF16(dR), want);
  });
}

test('gpu qRenorm: bit-exact against model.ts qHeadRenorm (flash / pro head 512, tiny 64), rows of many heads, tiny and huge magnitudes', { skip }, () => {
  const ops = GpuRowOps.createSync(4);
  for (const [rows, H, d] of [[3, 64, 512], [17, 128, 512], [5, 8, 64]]) {
    const rng = new Rng(rows * H + d);
    const q = bf16Values(rng, rows * H * d);
    // Some heads far from unit scale: the bf16 squares and the factor round differently there.
    for (let h = 0; h < rows * H; h += 7) for (let i = 0; i < d; i++) q[h * d + i] = roundBF16(Float32Array.of(q[h * d + i] * (h % 2 ? 3e-4 : 900)))[0];
    using dq = upBF16(q, [rows, H, d]);
    ops.qRenorm(dq, { heads: rows * H, d, eps: NORM_EPS });
    const want = Float32Array.from(q);
    for (let o = 0; o < want.length; o += d) qHeadRenorm(want, o, d, NORM_EPS);
    assertSameBits(`qRenorm rows ${rows} x ${H} heads of ${d}`, downBF16(dq), want);
  }
});
