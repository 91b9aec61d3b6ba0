// GPU grouped FP8 GEMM (src/kernels/grouped_gemm_fp8.cu through GroupedGemm) against a CPU evaluation of SPEC 3's
// formula on random codes and random scales: bf16 out (L2) and SwiGLU + FP8 out on transformed weights (L1), on both
// paths (128-row 'normal' tiles and 16-token 'decode' tiles), with groups of odd sizes, a skipped (-1) tile and spare
// capacity that must stay untouched; each path also with the opt-in tiled weight layout (weights uploaded through
// tileWeights, the CPU check reads the untiled codes). Skips (with the reason) where no Hopper GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceBuffer, gpuSkipReason } from '../src/cuda/index.js';
import {
  GroupedGemm, GROUPED_GEMM_ROW_TILE, type GemmEpilogue, type GemmPath, type GroupedGemmSpec,
} from '../src/kernels/grouped-gemm.js';
import { tileWeights, type WeightLayout } from '../src/kernels/weight-layout.js';
import { calcDiff, E4M3_DECODE, encodeE4M3, pow2Ceil } from '../src/numerics/index.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

interface Problem {
  n: number; k: number; groups: number; mCap: number; liveTiles: number; rowTile: number;
  a: Uint8Array; sfa: Float32Array; w: Uint8Array; sfb: Float32Array; rowWeight: Float32Array;
  tileGroup: Int32Array; rowGroup: Int32Array; limit: number;
}

/** Random e4m3 codes shaped like quantized data (never NaN): encode(N(0, 120)). */
function codes(rng: Rng, count: number): Uint8Array {
  const lut = new Uint8Array(1024);
  for (let i = 0; i < lut.length; i++) lut[i] = encodeE4M3(rng.normal() * 120);
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = lut[rng.nextU32() & 1023];
  return out;
}

/** segments: [group, rows] in order (group -1 = one skipped tile); two spare tiles follow the live ones. */
function makeProblem(path: GemmPath, epilogue: GemmEpilogue, n: number, k: number, groups: number,
  segments: Array<[number, number]>, seed: number, limit = 10): Problem {
  const rng = new Rng(seed);
  const rowTile = GROUPED_GEMM_ROW_TILE[path];
  const tiles: number[] = [];
  const rowGroup: number[] = [];
  for (const [g, rows] of segments) {
    const t = g < 0 ? 1 : Math.ceil(rows / rowTile);
    for (let i = 0; i < t; i++) tiles.push(g);
    for (let r = 0; r < t * rowTile; r++) rowGroup.push(g >= 0 && r < rows ? g : -1);
  }
  const liveTiles = tiles.length;
  for (let i = 0; i < 2; i++) { tiles.push(0); for (let r = 0; r < rowTile; r++) rowGroup.push(-1); }
  const mCap = tiles.length * rowTile;
  const kb = k / 128;
  const sfa = new Float32Array(kb * mCap).map(() => (0.5 + rng.uniform()) / 120);
  const wScale = (epilogue === 'swiglu-fp8' ? 6 : 1) / (120 * Math.sqrt(k));
  const sfb = new Float32Array(groups * (n / 128) * kb).map(() => (0.5 + rng.uniform()) * wScale);
  return {
    n, k, groups, mCap, liveTiles, rowTile, limit,
    a: codes(rng, mCap * k), sfa, w: codes(rng, groups * n * k), sfb,
    rowWeight: new Float32Array(mCap).map(() => 0.1 + 0.9 * rng.uniform()),
    tileGroup: Int32Array.from(tiles), rowGroup: Int32Array.from(rowGroup),
  };
}

/** f32 totals of row m (SPEC 3): K-block partials exact (f64), promoted in f32: t = fma(partial, sfa * sfb, t). */
function rowTotals(p: Problem, m: number, swiglu: boolean): Float64Array {
  const { n, k, mCap } = p;
  const kb = k / 128;
  const g = p.rowGroup[m];
  const tot = new Float64Array(n);
  const arow = new Float64Array(k);
  for (let i = 0; i < k; i++) arow[i] = E4M3_DECODE[p.a[m * k + i]];
  for (let c = 0; c < n; c++) {
    // SwiGLU weights are transformed but their scales keep the natural order: block of the ORIGINAL row.
    let srow = Math.floor(c / 128);
    if (swiglu) {
      const idx = 8 * Math.floor(c / 16) + (c % 8);
      srow = Math.floor((c % 16 < 8 ? idx : n / 2 + idx) / 128);
    }
    const base = (g * n + c) * k;
    let t = 0;
    for (let b = 0; b < kb; b++) {
      let part = 0;
      for (let i = b * 128; i < b * 128 + 128; i++) part += arow[i] * E4M3_DECODE[p.w[base + i]];
      const sc = Math.fround(p.sfa[b * mCap + m] * p.sfb[(g * (n / 128) + srow) * kb + b]);
      t = Math.fround(Math.fround(part) * sc + t);
    }
    tot[c] = t;
  }
  return tot;
}

function upload(src: ArrayBufferView): DeviceBuffer {
  const b = DeviceBuffer.alloc(src.byteLength);
  b.copyFromHost(src);
  return b;
}

async function runCase(path: GemmPath, epilogue: GemmEpilogue, p: Problem,
  tuning?: GroupedGemmSpec['tuning'], weightLayout: WeightLayout = 'rows'): Promise<void> {
  const swiglu = epilogue === 'swiglu-fp8';
  const gemm = await GroupedGemm.create({ path, epilogue, n: p.n, k: p.k, tuning, weightLayout });
  assert.equal(gemm.config.weightLayout, weightLayout);
  // The device gets the codes in the GEMM's layout; the CPU check below always reads p.w (rows).
  const wDevice = weightLayout === 'tiled' ? tileWeights(p.w, p.groups, p.n, p.k) : p.w;
  const outBytes = swiglu ? p.mCap * (p.n / 2) : p.mCap * p.n * 2;
  const outSfCount = swiglu ? (p.n / 256) * p.mCap : 1;
  const bufs = {
    a: upload(p.a), sfa: upload(p.sfa), w: upload(wDevice), sfb: upload(p.sfb), rw: upload(p.rowWeight),
    tg: upload(p.tileGroup), nm: upload(Int32Array.of(p.liveTiles)),
    out: DeviceBuffer.alloc(outBytes), outSf: DeviceBuffer.alloc(outSfCount * 4),
  };
  try {
    bufs.out.memset8(0xff); // poison: bf16 0xFFFF and e4m3 0xFF are NaN
    bufs.outSf.memset8(0xff);
    const bound = gemm.bind({
      a: bufs.a, sfa: bufs.sfa, weights: bufs.w, sfb: bufs.sfb, groups: p.groups, tileGroup: bufs.tg,
      numMTiles: bufs.nm, out: bufs.out, outSf: bufs.outSf, rowWeight: bufs.rw, mCap: p.mCap, swigluLimit: p.limit,
    });
    bound.launch();
    const out = new Uint8Array(outBytes);
    bufs.out.copyToHost(out); // synchronous on the legacy default stream
    const outSf = new Float32Array(outSfCount);
    bufs.outSf.copyToHost(outSf);

    const gx: number[] = []; const cx: number[] = [];
    let bad = 0; let codeMismatch = 0; let scaleMismatch = 0; let codes = 0; let blocks = 0;
    for (let m = 0; m < p.mCap; m++) {
      if (p.rowGroup[m] < 0) continue;
      const tot = rowTotals(p, m, swiglu);
      if (!swiglu) {
        const row = new Uint16Array(out.buffer, m * p.n * 2, p.n);
        let ss = 0;
        for (const v of tot) ss += v * v;
        const rms = Math.sqrt(ss / p.n);
        for (let c = 0; c < p.n; c++) {
          const g = new Float32Array(new Uint32Array([row[c] << 16]).buffer)[0];
          if (!(Math.abs(g - tot[c]) <= Math.abs(tot[c]) / 128 + 0.01 * rms)) bad++;
          gx.push(g); cx.push(tot[c]);
        }
      } else {
        const I = p.n / 2;
        const act = new Float64Array(I);
        for (let c = 0; c < I; c++) {
          const rg = 16 * Math.floor(c / 8) + (c % 8);
          let gv = tot[rg]; let uv = tot[rg + 8];
          if (p.limit > 0) { uv = Math.min(Math.max(uv, -p.limit), p.limit); gv = Math.min(gv, p.limit); }
          const s = Math.fround(gv / Math.fround(1 + Math.fround(Math.exp(-gv))));
          act[c] = Math.fround(Math.fround(s * uv) * p.rowWeight[m]);
        }
        for (let cb = 0; cb < I / 128; cb++) {
          let amax = 0;
          for (let c = cb * 128; c < cb * 128 + 128; c++) amax = Math.max(amax, Math.abs(act[c]));
          const s = pow2Ceil(Math.fround(Math.max(amax, Math.fround(1e-4)) / 448));
          const gs = outSf[cb * p.mCap + m];
          blocks++;
          if (gs !== s) scaleMismatch++;
          for (let c = cb * 128; c < cb * 128 + 128; c++) {
            const cq = encodeE4M3(act[c] / s);
            const gq = out[m * I + c];
            codes++;
            if (gq !== cq) codeMismatch++;
            const gd = E4M3_DECODE[gq] * gs; const cd = E4M3_DECODE[cq] * s;
            if (!(Math.abs(gd - cd) <= 0.26 * Math.abs(cd) + 0.01 * amax)) bad++;
            gx.push(gd); cx.push(cd);
          }
        }
      }
    }
    const diff = calcDiff(gx, cx);
    const label = `${path} ${epilogue} N${p.n} K${p.k} (${weightLayout} weights, ${gemm.config.multicast} multicast, ${gemm.config.store} store)`;
    assert.ok(gx.length > 0, `${label}: no valid rows checked`);
    assert.ok(!gx.some(Number.isNaN), `${label}: NaN (unwritten poison) in a valid row`);
    assert.ok(diff <= 1e-5, `${label}: calc_diff ${diff} > 1e-5`);
    assert.equal(bad, 0, `${label}: ${bad} values off by more than one step + 1% of the row/block scale`);
    if (swiglu) {
      assert.ok(codeMismatch <= 0.02 * codes, `${label}: ${codeMismatch} of ${codes} e4m3 codes differ`);
      assert.ok(scaleMismatch <= 0.01 * blocks + 1, `${label}: ${scaleMismatch} of ${blocks} block scales differ`);
    }
    // Spare capacity (row tiles past numMTiles) must keep the poison.
    const rowBytes = swiglu ? p.n / 2 : p.n * 2;
    const spare = out.subarray(p.liveTiles * p.rowTile * rowBytes);
    assert.ok(spare.every((v) => v === 0xff), `${label}: rows past num_m_tiles were written`);
  } finally {
    for (const b of Object.values(bufs)) b.dispose();
  }
}

// Row tiles (normal path): g2 | g0 x3 | skipped | g4 | g1 x2 | g3 (1 row), then 2 spare tiles.
const NORMAL_SEGMENTS: Array<[number, number]> = [[2, 100], [0, 300], [-1, 0], [4, 17], [1, 256], [3, 1]];
// Decode path: 1-20 tokens per expert, i.e. one or two 16-token tiles.
const DECODE_SEGMENTS: Array<[number, number]> = [[3, 1], [0, 5], [-1, 0], [2, 16], [1, 20], [4, 8]];

test('grouped GEMM normal path, bf16 out (tiny L2 shape: N 256, K 128), default and without multicast / TMA store', { skip }, async () => {
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 256, 128, 5, NORMAL_SEGMENTS, 1));
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 256, 128, 5, NORMAL_SEGMENTS, 11),
    { multicast: 'none', store: 'direct' });
});

test('grouped GEMM normal path, bf16 out, activation multicast (N 512, K 256)', { skip }, async () => {
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 512, 256, 5, NORMAL_SEGMENTS, 12), { multicast: 'activations' });
});

test('grouped GEMM normal path, bf16 out, N not a multiple of 256 (N 384, K 256)', { skip }, async () => {
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 384, 256, 5, NORMAL_SEGMENTS, 2));
});

test('grouped GEMM normal path, SwiGLU + FP8 out (tiny L1 shape: N 2I = 256, K 256), limit 10 and none', { skip }, async () => {
  await runCase('normal', 'swiglu-fp8', makeProblem('normal', 'swiglu-fp8', 256, 256, 5, NORMAL_SEGMENTS, 3, 10));
  await runCase('normal', 'swiglu-fp8', makeProblem('normal', 'swiglu-fp8', 256, 256, 5, NORMAL_SEGMENTS, 4, 0));
});

test('grouped GEMM decode path, bf16 out (N 256, K 128)', { skip }, async () => {
  await runCase('decode', 'bf16', makeProblem('decode', 'bf16', 256, 128, 5, DECODE_SEGMENTS, 5));
});

test('grouped GEMM decode path, SwiGLU + FP8 out (N 512, K 256)', { skip }, async () => {
  await runCase('decode', 'swiglu-fp8', makeProblem('decode', 'swiglu-fp8', 512, 256, 5, DECODE_SEGMENTS, 6));
});

// The tiled weight layout (GG_WTILED): K > 128 everywhere, so the two layouts really differ. Covers the three weight
// TMA load sites: normal without and with the weight multicast, and decode (MSUB 1: 64-row boxes inside a tile;
// MSUB 4: a 256-row unit fetched as two 128-row tiles).
test('grouped GEMM, tiled weights: normal bf16 (N 256, K 384), weight multicast and none / direct', { skip }, async () => {
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 256, 384, 5, NORMAL_SEGMENTS, 21), undefined, 'tiled');
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 256, 384, 5, NORMAL_SEGMENTS, 22),
    { multicast: 'none', store: 'direct' }, 'tiled');
});

test('grouped GEMM, tiled weights: normal bf16, N 384 (128-column tiles) and activation multicast (N 512)', { skip }, async () => {
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 384, 256, 5, NORMAL_SEGMENTS, 23), undefined, 'tiled');
  await runCase('normal', 'bf16', makeProblem('normal', 'bf16', 512, 256, 5, NORMAL_SEGMENTS, 24), { multicast: 'activations' }, 'tiled');
});

test('grouped GEMM, tiled weights: normal SwiGLU + FP8 (N 512, K 256)', { skip }, async () => {
  await runCase('normal', 'swiglu-fp8', makeProblem('normal', 'swiglu-fp8', 512, 256, 5, NORMAL_SEGMENTS, 25, 10), undefined, 'tiled');
});

test('grouped GEMM, tiled weights: decode bf16 (N 384, K 256) and SwiGLU + FP8 (N 512, K 384)', { skip }, async () => {
  await runCase('decode', 'bf16', makeProblem('decode', 'bf16', 384, 256, 5, DECODE_SEGMENTS, 26), undefined, 'tiled');
  await runCase('decode', 'swiglu-fp8', makeProblem('decode', 'swiglu-fp8', 512, 384, 5, DECODE_SEGMENTS, 27), undefined, 'tiled');
});
