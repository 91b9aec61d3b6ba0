// The model's CPU kernels against hand-computed cases (V4-MODEL 2, 3, 8).
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  actQuant, bf16, e2m1Round, e4m3Round, fp4SimInPlace, fp8Linear, fp8SimInPlace, hadamardInPlace, linear, pow2Ceil,
  QuantScratch, rmsNorm, roundBF16,
} from '../src/model/ops.js';
import { ropeFrequencies, RopeTable } from '../src/model/rope.js';
import { setWasmGemmEnabled, wasmGemm } from '../src/numerics/wasm-gemm.js';
import { runExpertsReference } from '../src/moe/experts.js';
import { routeLayer } from '../src/moe/router.js';
import { makeRandomLayer, moeShape } from '../src/moe/synthetic.js';
import { HostTensor } from '../src/tensor/host.js';
import { fp8Combine } from '../src/model/ops.js';
import { attendHead, hcMix, hcPost, indexerTopk, poolBlock, sinkhorn } from '../src/model/model.js';
import { decodeBF16, encodeBF16 } from '../src/numerics/bf16.js';
import { E4M3_DECODE, encodeE4M3 } from '../src/numerics/e4m3.js';

describe('rounding', () => {
  test('bf16 matches the numerics codec (nearest even)', () => {
    for (const v of [1, 1.00390625, 1.005859375, 3.14159, -2.71828, 1e-30, 65504.7, -0.0001234]) {
      assert.equal(bf16(v), decodeBF16(encodeBF16(v)), String(v));
      const a = Float32Array.of(v);
      assert.equal(roundBF16(a)[0], decodeBF16(encodeBF16(v)));
    }
    // halfway between 1 and 1 + 2^-7: ties to even (1)
    assert.equal(bf16(1 + 2 ** -8), 1);
    assert.equal(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6);
  });

  test('e4m3 value rounding equals the e4m3 codec on many values, saturates at 448', () => {
    for (let i = -2000; i <= 2000; i++) {
      const v = i * 0.2371 + (i % 7) * 1e-3;
      const want = Math.max(-448, Math.min(448, E4M3_DECODE[encodeE4M3(v)]));
      assert.equal(e4m3Round(v), want, `v=${v}`);
    }
    for (const v of [1e-5, 2 ** -10, 3 * 2 ** -11, 2 ** -7 + 2 ** -12]) assert.equal(e4m3Round(v), E4M3_DECODE[encodeE4M3(v)], `sub ${v}`);
    assert.equal(e4m3Round(1000), 448);
    assert.equal(e4m3Round(-465), -448);
    assert.equal(e4m3Round(1.0625), 1); // tie between 1 and 1.125 -> even mantissa
    assert.equal(e4m3Round(1.1875), 1.25);
  });

  test('e2m1 ties go to the even code (V4-MODEL 8.3)', () => {
    const cases: [number, number][] = [[0.25, 0], [0.75, 1], [1.25, 1], [1.75, 2], [2.5, 2], [3.5, 4], [5, 4], [5.1, 6], [0.3, 0.5], [-2.9, -3], [7, 6]];
    for (const [x, y] of cases) assert.equal(e2m1Round(x), y, `${x}`);
  });

  test('pow2Ceil reads the exponent and rounds up any mantissa', () => {
    assert.equal(pow2Ceil(1), 1);
    assert.equal(pow2Ceil(1.0001), 2);
    assert.equal(pow2Ceil(0.75), 1);
    assert.equal(pow2Ceil(2 ** -20), 2 ** -20);
  });
});

describe('QAT simulations and the activation quantiser', () => {
  test('FP8 block-64 simulation: scale 2^ceil(log2(amax/448)), values on the e4m3 grid times s', () => {
    const x = new Float32Array(64);
    for (let i = 0; i < 64; i++) x[i] = (i - 31.5) * 0.37;
    x[5] = 100; // amax 100 -> s = 2^ceil(log2(100/448)) = 2^-2; 100 / s = 400 is a tie of 384 and 416 -> 384 (even)
    const ref = Float32Array.from(x);
    fp8SimInPlace(x, 0, 64, 64);
    assert.equal(x[5], 96);
    for (let i = 0; i < 64; i++) assert.equal(x[i], e4m3Round(ref[i] * 4) / 4);
  });

  test('FP4 block-32 simulation: s = 2^ceil(log2(amax/6)), e2m1 grid', () => {
    const x = new Float32Array(32);
    x[0] = 6; x[1] = 1.4; x[2] = -2.6; x[3] = 0.2; x[4] = 5;
    fp4SimInPlace(x, 0, 32, 32); // amax 6 -> s = 1
    assert.deepEqual(Array.from(x.subarray(0, 5)), [6, 1.5, -3, 0, 4]);
    const y = new Float32Array(32);
    y[0] = 12; y[1] = 2.6; // s = 2: 12 -> 6*2, 2.6/2 = 1.3 -> 1.5 -> 3
    fp4SimInPlace(y, 0, 32, 32);
    assert.deepEqual([y[0], y[1]], [12, 3]);
  });

  test('Hadamard rotation of size 4 (Sylvester, times 1/2)', () => {
    const x = Float32Array.of(1, 2, 3, 4);
    hadamardInPlace(x, 0, 4, new Float64Array(4));
    assert.deepEqual(Array.from(x), [5, -1, -2, 0]);
  });

  test('act_quant: pow2 scale per 128, values e4m3(x / s)', () => {
    const x = new Float32Array(256);
    for (let i = 0; i < 256; i++) x[i] = Math.sin(i) * (i < 128 ? 3 : 0.01);
    const sc = new QuantScratch();
    actQuant(x, 1, 256, true, sc);
    const s0 = pow2Ceil(Math.fround(Math.max(...Array.from(x.subarray(0, 128), Math.abs)) * Math.fround(1 / 448)));
    assert.equal(sc.s[0], s0);
    for (let i = 0; i < 128; i++) assert.equal(sc.q[i], e4m3Round(x[i] / s0));
  });

  test('FP8 linear equals the dequantised product when activations are on the grid', () => {
    const K = 256; const N = 3;
    const w = new Float32Array(N * K); const s = Float32Array.of(0.5, 0.25);
    for (let i = 0; i < w.length; i++) w[i] = E4M3_DECODE[(i * 37) % 120];
    const x = new Float32Array(K);
    for (let i = 0; i < K; i++) x[i] = (i % 5) - 2; // amax 2 -> s = 2^ceil(log2(2/448)) = 2^-7: x / s exact
    const out = new Float32Array(N);
    fp8Linear(x, 1, { w, s, out: N, in: K }, true, new QuantScratch(), out);
    for (let n = 0; n < N; n++) {
      let ref = 0;
      for (let k = 0; k < K; k++) ref += x[k] * w[n * K + k] * s[k >> 7];
      assert.equal(out[n], bf16(ref));
    }
  });

  test('linear, RMSNorm', () => {
    const out = new Float32Array(2);
    linear(Float32Array.of(1, 2, 3), 1, Float32Array.of(1, 0, 0, 1, 1, 1), 2, 3, out, false);
    assert.deepEqual(Array.from(out), [1, 6]);
    const y = new Float32Array(2);
    rmsNorm(Float32Array.of(3, 4), 1, 2, Float32Array.of(1, 2), 0, y); // rms = sqrt(12.5)
    assert.equal(y[0], bf16(Math.fround(3 / Math.sqrt(12.5))));
    assert.equal(y[1], bf16(Math.fround(2 * Math.fround(4 * Math.fround(1 / Math.sqrt(12.5))))));
  });
});

describe('hyper-connections and RoPE', () => {
  test('Sinkhorn makes a doubly stochastic 4x4 (ends on a column normalisation)', () => {
    const C = new Float64Array(16);
    for (let i = 0; i < 16; i++) C[i] = Math.sin(i * 1.3) * 2;
    sinkhorn(C, 4, 20, 1e-6);
    for (let k = 0; k < 4; k++) {
      let col = 0; let row = 0;
      for (let j = 0; j < 4; j++) { col += C[j * 4 + k]; row += C[k * 4 + j]; }
      assert.ok(Math.abs(col - 1) < 1e-5, `col ${k} ${col}`);
      assert.ok(Math.abs(row - 1) < 1e-3, `row ${k} ${row}`);
    }
    // one iteration: softmax rows + eps, then a column normalisation only
    const D1 = Float64Array.of(0, 0, 0, 0);
    sinkhorn(D1, 2, 1, 0);
    assert.deepEqual(Array.from(D1), [0.5, 0.5, 0.5, 0.5]);
  });

  test('hc_pre / hc_post by hand: zero logits give pre = 1/2 + eps, post = 1, comb = 1/2; comb is [source, destination]', () => {
    const hc = 2; const D = 2;
    const Hs = Float32Array.of(1, 2, 3, 4); // stream 0 = (1, 2), stream 1 = (3, 4)
    const p = { fn: new Float32Array(8 * 4), base: new Float32Array(8), scale: Float32Array.of(1, 1, 1) };
    const y = new Float32Array(2); const post = new Float32Array(2); const comb = new Float32Array(4);
    hcMix(Hs, new Float32Array(8), 1, hc, D, p, 20, 1e-6, 1e-6, y, post, comb);
    assert.deepEqual(Array.from(y), [bf16(Math.fround(0.5 + 1e-6) * 4), bf16(Math.fround(0.5 + 1e-6) * 6)]);
    assert.deepEqual(Array.from(post), [1, 1]);
    for (const v of comb) assert.ok(Math.abs(v - 0.5) < 1e-6);
    // a comb that sends stream 0 to destination 1 only: out_1 = post_1 f + R_0
    const out = hcPost(Float32Array.of(10, 20), Hs, 1, hc, D, Float32Array.of(0, 1), Float32Array.of(0, 1, 1, 0));
    assert.deepEqual(Array.from(out), [3, 4, 11, 22]);
    // logits through scale and base: pre_0 = sigmoid(2 * 0.5 + 0) + eps with m_0 = 2 * r, r = 1 / rms(X)
    const mix = new Float32Array(8); mix[0] = 2;
    const rms = Math.sqrt((1 + 4 + 9 + 16) / 4 + 1e-6);
    const p2 = { ...p, scale: Float32Array.of(0.5, 1, 1) };
    hcMix(Hs, mix, 1, hc, D, p2, 20, 1e-6, 1e-6, y, post, comb);
    const pre0 = 1 / (1 + Math.exp(-(2 / rms) * 0.5)) + 1e-6;
    assert.ok(Math.abs(y[0] - (pre0 * 1 + 0.500001 * 3)) < 2e-2, `y0 ${y[0]}`);
  });

  test('YaRN frequencies for theta 160000, orig 65536, beta 32/1: pairs 0..15 unchanged, >= 25 divided by 16', () => {
    const plain = ropeFrequencies(64, 160000);
    const yarn = ropeFrequencies(64, 160000, { factor: 16, originalSeqLen: 65536, betaFast: 32, betaSlow: 1 });
    for (let i = 0; i <= 15; i++) assert.equal(yarn[i], plain[i], `pair ${i}`);
    for (let i = 25; i < 32; i++) assert.ok(Math.abs(yarn[i] / plain[i] - 1 / 16) < 1e-6, `pair ${i}`);
    assert.ok(Math.abs(yarn[16] / plain[16] - 0.906) < 2e-3, `pair 16 ratio ${yarn[16] / plain[16]}`);
    assert.equal(plain[1], Math.fround(1 / Math.fround(160000 ** Math.fround(2 / 64))));
  });

  test('RoPE rotates interleaved pairs of the last dims; the inverse undoes it', () => {
    const t = new RopeTable(4, Float32Array.of(1, 0.5));
    const x = Float32Array.of(9, 1, 0, 1, 0);
    t.apply(x, 1, 2); // pair 0 angle 2, pair 1 angle 1
    assert.equal(x[0], 9);
    assert.equal(x[1], bf16(Math.fround(Math.cos(2))));
    assert.equal(x[2], bf16(Math.fround(Math.sin(2))));
    assert.equal(x[3], bf16(Math.fround(Math.cos(1))));
    t.apply(x, 1, 2, true);
    assert.ok(Math.abs(x[1] - 1) < 1e-2 && Math.abs(x[2]) < 1e-2 && Math.abs(x[3] - 1) < 1e-2);
  });
});

describe('attention and compressor pooling (V4-MODEL 4.4, 4.7)', () => {
  const scratch = () => ({ scores: new Float64Array(8), probs: new Float32Array(8), acc: new Float64Array(8) });

  test('one head, two keys and a sink: the sink only enlarges the denominator, K = V', () => {
    const q = Float32Array.of(1, 0);
    const keys = Float32Array.of(1, 0, 0, 1);
    const o = new Float32Array(2);
    const { scores, probs, acc } = scratch();
    attendHead(q, 0, 2, [keys, keys], Int32Array.of(0, 2), 2, 1, 0, o, 0, scores, probs, acc);
    // s = [1, 0], m = 1: e = [1, 1/e], sink e^(0 - 1) = 1/e; p = [1, 1/e] / (1 + 2/e)
    const den = 1 + 2 / Math.E;
    assert.ok(Math.abs(o[0] - 1 / den) < 4e-3, `o0 ${o[0]}`);
    assert.ok(Math.abs(o[1] - (1 / Math.E) / den) < 2e-3, `o1 ${o[1]}`);
    assert.equal(o[0], bf16(o[0]));
    // sink -> -inf: a plain softmax over the keys; the scale sigma multiplies the scores, not the sink
    attendHead(q, 0, 2, [keys, keys], Int32Array.of(0, 2), 2, 1, -Infinity, o, 0, scores, probs, acc);
    assert.ok(Math.abs(o[0] - 1 / (1 + 1 / Math.E)) < 4e-3);
    attendHead(q, 0, 2, [keys, keys], Int32Array.of(0, 2), 2, 0, -Infinity, o, 0, scores, probs, acc); // sigma 0: equal weights
    assert.deepEqual(Array.from(o), [0.5, 0.5]);
    // a huge sink swallows everything
    attendHead(q, 0, 2, [keys], Int32Array.of(0), 1, 1, 50, o, 0, scores, probs, acc);
    assert.ok(o[0] < 1e-20 && o[1] === 0, `o ${o[0]} ${o[1]}`);
  });

  test('indexer top-k: relu before the weighted head sum, ties to the lower block, ascending output', () => {
    // 2 heads x di 2; 4 blocks; head 0 query (1, 0), head 1 query (0, 1); weights w = (1, 2)
    const qI = Float32Array.of(1, 0, 0, 1);
    const w = Float32Array.of(1, 2);
    const keys = Float32Array.of(
      3, -1, // block 0: head0 3, head1 relu(-1) = 0 -> 3
      -5, 1, // block 1: 0 + 2 * 1 = 2
      1, 1, // block 2: 1 + 2 = 3 (ties block 0)
      0, 4, // block 3: 0 + 8 = 8
    );
    assert.deepEqual(Array.from(indexerTopk(qI, 0, w, 0, 2, 2, keys, 4, 2)), [0, 3]);
    assert.deepEqual(Array.from(indexerTopk(qI, 0, w, 0, 2, 2, keys, 4, 3)), [0, 2, 3]);
    assert.deepEqual(Array.from(indexerTopk(qI, 0, w, 0, 2, 2, keys, 3, 2)), [0, 2]); // block 3 not visible yet
    assert.deepEqual(Array.from(indexerTopk(qI, 0, w, 0, 2, 2, keys, 4, 9)), [0, 1, 2, 3]); // k >= visible: all
  });

  test('non-overlapping pooling: a per-channel softmax over the block tokens', () => {
    // ratio 2, dc 2, width 2: tokens t = 2, 3 of block 1 in slots 0, 1
    const a = Float32Array.of(1, 10, 3, 20);
    const g = Float32Array.of(0, 0, Math.log(3), -Infinity); // channel 0 weights 1:3, channel 1 all on token 2
    const z = new Float32Array(2);
    poolBlock(a, g, 2, 2, false, 2, 1, z, new Float64Array(4), new Float64Array(4));
    assert.deepEqual(Array.from(z), [bf16((1 * 1 + 3 * 3) / 4), 10]);
  });

  test('overlapping pooling (ratio 4 layout): block n-1 on the first half of the channels, block n on the second', () => {
    const ratio = 2; const dc = 1; const width = 2; // c = 2
    // slots 0..1 hold block 0 (positions 0, 1), slots 2..3 block 1 (positions 2, 3); row = [first half, second half]
    const a = Float32Array.of(1, 100, 2, 200, 3, 300, 4, 400);
    const g = new Float32Array(8); // equal gates: plain means
    const z = new Float32Array(1);
    const s1 = new Float64Array(4); const s2 = new Float64Array(4);
    poolBlock(a, g, width, ratio, true, dc, 0, z, s1, s2); // block 0: no predecessor, its own second half
    assert.equal(z[0], 150);
    poolBlock(a, g, width, ratio, true, dc, 1, z, s1, s2); // block 1: block 0's first half + block 1's second half
    assert.equal(z[0], bf16((1 + 2 + 300 + 400) / 4)); // 175.75 -> bf16 176
  });
});

describe('WebAssembly SIMD kernels', () => {
  const g = wasmGemm();
  test('FP8 linear: the SIMD block partials give the same bits as the JS loops; fp32 GEMMs agree to f32 rounding', { skip: g ? false : 'no WebAssembly SIMD here' }, () => {
    const N = 130; const K = 384; const M = 7;
    const w = new Float32Array(N * K); const s = new Float32Array(2 * 3);
    for (let i = 0; i < w.length; i++) w[i] = E4M3_DECODE[(i * 7919) % 254 & 0x7f | ((i * 31) & 0x80)];
    for (let i = 0; i < s.length; i++) s[i] = 2 ** -(i % 5) * 0.01;
    const x = new Float32Array(M * K);
    for (let i = 0; i < x.length; i++) x[i] = bf16(Math.sin(i * 0.37) * (1 + (i % 11)));
    const lin = { w, s, out: N, in: K };
    const js = new Float32Array(M * N);
    fp8Linear(x, M, lin, true, new QuantScratch(), js);
    const sc = new QuantScratch();
    actQuant(x, M, K, true, sc);
    const simd = new Float32Array(M * N);
    fp8Combine(g!.fp8Partials(g!.matrix(w, N, K), sc.q, M), sc.s, M, lin, simd);
    assert.deepEqual(Array.from(simd), Array.from(js));
    // the reference MoE experts (moe/experts.ts): SIMD block partials == the JS loops, bit for bit
    const layer = makeRandomLayer({ seed: 3, shape: moeShape({ hidden: 256, inter: 128, experts: 8, topk: 3 }) });
    const xs = new Uint16Array(9 * 256); for (let i = 0; i < xs.length; i++) xs[i] = encodeBF16(Math.sin(i * 0.71) * 2);
    const xt = new HostTensor('BF16', [9, 256], xs);
    const rt = routeLayer(layer, xt);
    const withSimd = runExpertsReference(layer, xt, rt.topkIds, rt.topkWeights).y.data.slice();
    setWasmGemmEnabled(false);
    try {
      const withJs = runExpertsReference(layer, xt, rt.topkIds, rt.topkWeights).y.data;
      assert.deepEqual(Array.from(withSimd), Array.from(withJs));
    } finally { setWasmGemmEnabled(true); }
    // f32 and bf16-weight GEMMs against an f64 reference
    const wb = new Uint16Array(N * K); for (let i = 0; i < wb.length; i++) wb[i] = encodeBF16(Math.cos(i));
    const out = new Float32Array(M * N);
    g!.matrix(wb, N, K).apply(x, M, out, false);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) {
      let ref = 0; for (let k = 0; k < K; k++) ref += x[m * K + k] * decodeBF16(wb[n * K + k]);
      assert.ok(Math.abs(out[m * N + n] - ref) <= 1e-5 * (1 + Math.abs(ref)), `[${m}, ${n}] ${out[m * N + n]} vs ${ref}`);
    }
  });
});
