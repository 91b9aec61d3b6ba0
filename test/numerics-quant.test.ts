import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  quantizeRowsF32Scale, quantizeRowsPow2Scale, dequantizeRows, quantizeWeightBlocks, dequantizeWeightBlocks,
  pow2Ceil, encodeE4M3, decodeE4M3, calcDiff, AMAX_FLOOR,
} from '../src/numerics/index.js';
import { Rng } from '../src/util/rng.js';

test('staging quantization: f32 scale amax/448 with the 1e-4 floor, codes from x * (1/sf) in f32', () => {
  const x = new Float32Array(256);
  x[0] = 896; x[1] = -448; x[2] = 1; x[130] = 1e-6; // row 0 block 0 has amax 896; block 1 is tiny
  const { q, sf } = quantizeRowsF32Scale(x, 1, 256);
  assert.equal(sf[0], 2);
  assert.equal(q[0], 0x7e); // 896/2 = 448
  assert.equal(q[1], encodeE4M3(-224));
  assert.equal(q[2], encodeE4M3(0.5));
  assert.equal(sf[1], Math.fround(AMAX_FLOOR / 448)); // floor applies
  const inv = Math.fround(1 / sf[1]);
  assert.equal(q[130], encodeE4M3(Math.fround(Math.fround(1e-6) * inv)));
  assert.equal(q[131], 0); // zeros stay zero
});

test('staging quantization of an all-zero row gives zero codes and the floor scale', () => {
  const { q, sf } = quantizeRowsF32Scale(new Float32Array(128), 1, 128);
  assert.ok(q.every((c) => c === 0));
  assert.equal(sf[0], Math.fround(Math.fround(1e-4) / 448));
});

test('pow2Ceil rounds an f32 up to a power of two by its bits', () => {
  assert.equal(pow2Ceil(1), 1);
  assert.equal(pow2Ceil(1.0000001), 2);
  assert.equal(pow2Ceil(0.75), 1);
  assert.equal(pow2Ceil(2 ** -20), 2 ** -20);
  assert.equal(pow2Ceil(3 * 2 ** -21), 2 ** -19);
});

test('power-of-two quantization keeps |x|/s within e4m3 range and scales are powers of two', () => {
  const rng = new Rng(7);
  const x = new Float32Array(4 * 256);
  rng.fillNormal(x, 3);
  const { q, sf } = quantizeRowsPow2Scale(x, 4, 256);
  for (const s of sf) assert.equal(Math.log2(s), Math.round(Math.log2(s)));
  for (let b = 0; b < sf.length; b++) {
    let amax = 0;
    for (let i = b * 128; i < (b + 1) * 128; i++) amax = Math.max(amax, Math.abs(x[i]));
    assert.ok(amax / sf[b] <= 448 && amax / sf[b] > 224, `block ${b}: amax/s = ${amax / sf[b]}`);
  }
  assert.equal(q[5], encodeE4M3(x[5] / sf[0]));
  const back = dequantizeRows({ q, sf }, 4, 256);
  assert.ok(calcDiff(back, x) < 1e-3);
});

test('row quantizers refuse shapes that are not whole 128-column blocks', () => {
  assert.throws(() => quantizeRowsF32Scale(new Float32Array(100), 1, 100), /not a multiple of 128/);
  assert.throws(() => quantizeRowsPow2Scale(new Float32Array(128), 2, 128), /do not fill/);
});

test('128x128 weight block quantization round-trips with small error, per-block scales', () => {
  const rng = new Rng(3);
  const n = 256; const k = 384;
  const w = new Float32Array(n * k);
  rng.fillNormal(w, 0.02);
  for (let c = 0; c < 128; c++) w[c] *= 100; // one block with a much larger range
  const qw = quantizeWeightBlocks(w, n, k);
  assert.equal(qw.s.length, 2 * 3);
  assert.ok(qw.s[0] > 50 * qw.s[1]);
  const back = dequantizeWeightBlocks(qw);
  assert.ok(calcDiff(back, w) < 1e-3);
  // The largest value of a block maps to exactly 448.
  let amaxIdx = 0;
  for (let i = 0; i < 128 * k; i++) if ((i % k) < 128 && Math.abs(w[i]) > Math.abs(w[amaxIdx])) amaxIdx = i;
  assert.equal(Math.abs(decodeE4M3(qw.q[amaxIdx])), 448);
  const pow2 = quantizeWeightBlocks(w, n, k, { pow2Scales: true });
  for (const s of pow2.s) assert.equal(Math.log2(s), Math.round(Math.log2(s)));
});
