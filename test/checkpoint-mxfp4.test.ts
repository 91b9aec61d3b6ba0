// MXFP4 -> e4m3 + 128x128 f32 block scales, on constructed blocks: exact blocks, a sub-scale spread too wide,
// zeros, negative zero, extreme values, partial blocks, the convert.py scale rule, corrupt input.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { convertMxfp4ToE4m3, dequantizeMxfp4, mergeConversionReports } from '../src/checkpoint/mxfp4.js';
import { packE2M1 } from '../src/numerics/e2m1.js';
import { dequantizeWeightBlocks } from '../src/numerics/quant.js';
import { Rng } from '../src/util/rng.js';

/** An MXFP4 weight [n, k] from nibble codes and per-32 sub-scale codes given by functions of (row, col/group). */
function build(n: number, k: number, nibble: (r: number, c: number) => number, subScale: (r: number, g: number) => number) {
  const codes = new Uint8Array(n * k);
  for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) codes[r * k + c] = nibble(r, c);
  const scales = new Uint8Array((n * k) / 32);
  for (let r = 0; r < n; r++) for (let g = 0; g < k / 32; g++) scales[r * (k / 32) + g] = subScale(r, g);
  return { packed: packE2M1(codes), scales, n, k };
}

/** Converted values must equal the exact MXFP4 values element for element (as f32; -0 included). */
function assertExact(w: ReturnType<typeof build>, scaleRule?: 'tight' | 'convert-py') {
  const { weight, report } = convertMxfp4ToE4m3(w.packed, w.scales, w.n, w.k, { scaleRule });
  assert.equal(report.inexactBlocks, 0, 'no inexact block');
  assert.equal(report.worstAbsError, 0);
  const got = dequantizeWeightBlocks(weight);
  const want = dequantizeMxfp4(w.packed, w.scales, w.n, w.k);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], Math.fround(want[i]))) assert.fail(`element ${i} (row ${Math.floor(i / w.k)}, col ${i % w.k}): got ${got[i]}, exact ${want[i]}`);
  }
  return { weight, report };
}

describe('MXFP4 -> e4m3 conversion', () => {
  test('an exact block: every nibble code, sub-scales spread 14 binades', () => {
    const rng = new Rng(5);
    const w = build(128, 128, () => rng.int(16), () => 110 + rng.int(15));
    const { weight, report } = assertExact(w);
    assert.equal(report.blocks, 1);
    assert.equal(weight.s.length, 1);
    assert.ok(Number.isInteger(Math.log2(weight.s[0])), 'block scale is a power of two');
    assert.ok(weight.q.every((c) => c !== 0x7f && c !== 0xff), 'no NaN codes');
  });

  test('tight scale: 2^(e_max - 8), so the largest value lands on 256 or 384', () => {
    const w6 = build(128, 128, (r, c) => (r === 3 && c === 7 ? 7 : 2), () => 127); // max 6 = 1.5 * 2^2
    assert.equal(assertExact(w6).weight.s[0], 2 ** (2 - 8));
    const w1 = build(128, 128, () => 2, () => 130); // all 1.0 * 2^3
    const { weight } = assertExact(w1);
    assert.equal(weight.s[0], 2 ** (3 - 8));
    assert.ok(weight.q.every((c) => c === 0x78), 'every value is 256 = code 0x78');
  });

  test('a sub-scale spread too wide is reported with its worst errors, not hidden', () => {
    // Row 0, group 0: 6 * 2^0 sets S = 2^-6. Row 1, group 0 sits 15 binades lower: 1, 1.5 and 0.5 times 2^-15
    // become 2^-9 (exact, the smallest subnormal), 1.5 * 2^-9 (rounds to 2^-8) and 2^-10 (rounds to 0).
    const lowRow = [2, 3, 1];
    const w = build(128, 128, (r, c) => (r === 0 && c === 0 ? 7 : r === 1 && c < 3 ? lowRow[c] : 0), (r) => (r === 1 ? 127 - 15 : 127));
    const { weight, report } = convertMxfp4ToE4m3(w.packed, w.scales, 128, 128);
    assert.equal(weight.s[0], 2 ** -6);
    assert.equal(report.blocks, 1);
    assert.equal(report.inexactBlocks, 1);
    assert.equal(report.worstAbsError, 2 ** -16);
    assert.equal(report.worstRelError, 2 ** -16 / 6);
    const got = dequantizeWeightBlocks(weight);
    assert.equal(got[128 + 0], 2 ** -15, '1 * 2^-15 is exact');
    assert.equal(got[128 + 1], 2 ** -14, '1.5 * 2^-15 rounds to even: 2^-14');
    assert.equal(got[128 + 2], 0, '0.5 * 2^-15 rounds to 0');
    // One binade less spread is exact again.
    assertExact(build(128, 128, (r, c) => (r === 0 && c === 0 ? 7 : r === 1 && c < 3 ? lowRow[c] : 0), (r) => (r === 1 ? 127 - 14 : 127)));
  });

  test('zeros: codes 0, scale 1, exact', () => {
    const w = build(128, 256, () => 0, (r, g) => 100 + g);
    const { weight, report } = assertExact(w);
    assert.deepEqual([...weight.s], [1, 1]);
    assert.ok(weight.q.every((c) => c === 0));
    assert.equal(report.blocks, 2);
  });

  test('negative zero stays negative zero (code 0x80)', () => {
    const w = build(128, 128, (r, c) => (c % 2 ? 8 : 9), () => 127); // -0 and -0.5
    const { weight } = assertExact(w);
    assert.equal(weight.q[1], 0x80);
    assert.ok(Object.is(dequantizeWeightBlocks(weight)[1], -0));
  });

  test('extreme values: +-6 at the largest sub-scale, 0.5 at the smallest', () => {
    const big = build(128, 128, (r, c) => (c % 2 ? 15 : 7), () => 254);
    const { weight } = assertExact(big);
    assert.equal(weight.s[0], 2 ** 121);
    assert.equal(weight.q[0], 0x7c, '384 = 1.5 * 2^8');
    assert.equal(weight.q[1], 0xfc);
    // 0.5 * 2^-127: the ideal scale 2^-136 is below f32's normal range, so S is held at 2^-126 and q = 0.25.
    const tiny = build(128, 128, () => 1, () => 0);
    const t = assertExact(tiny);
    assert.equal(t.weight.s[0], 2 ** -126);
    assert.ok(t.weight.q.every((c) => c === 0x28), '0.25 = code 0x28');
  });

  test('partial blocks at the edges (n 130, k 160)', () => {
    const rng = new Rng(9);
    const w = build(130, 160, () => rng.int(16), () => 120 + rng.int(6));
    const { weight, report } = assertExact(w);
    assert.equal(weight.s.length, 4);
    assert.equal(report.blocks, 4);
  });

  test('the convert.py rule (max sub-scale / 2^6) gives the same values, coarser where the top row holds no 4 or 6', () => {
    const rng = new Rng(3);
    const w = build(128, 128, (r, c) => (r === 0 ? 3 : rng.int(4)), (r) => (r === 0 ? 127 : 126)); // top row: 1.5 at 2^0
    const tight = assertExact(w, 'tight').weight;
    const py = assertExact(w, 'convert-py').weight;
    assert.equal(tight.s[0], 2 ** -8);
    assert.equal(py.s[0], 2 ** -6);
    // 16 binades of spread, top value 1: tight stays exact, convert.py loses the 0.5s.
    const wide = build(128, 128, (r) => (r === 0 ? 2 : 1), (r) => (r === 0 ? 127 : 111));
    assertExact(wide, 'tight');
    assert.equal(convertMxfp4ToE4m3(wide.packed, wide.scales, 128, 128, { scaleRule: 'convert-py' }).report.inexactBlocks, 1);
  });

  test('Int8Array input (the I8 checkpoint dtype) converts the same as Uint8Array', () => {
    const rng = new Rng(11);
    const w = build(128, 128, () => rng.int(16), () => 120);
    const a = convertMxfp4ToE4m3(w.packed, w.scales, 128, 128).weight;
    const b = convertMxfp4ToE4m3(new Int8Array(w.packed.buffer), w.scales, 128, 128).weight;
    assert.deepEqual(a.q, b.q);
  });

  test('bad shapes and NaN sub-scales are refused with the place named', () => {
    assert.throws(() => convertMxfp4ToE4m3(new Uint8Array(8), new Uint8Array(1), 1, 16), /K = 16 is not a multiple of 32/);
    assert.throws(() => convertMxfp4ToE4m3(new Uint8Array(10), new Uint8Array(1), 1, 32), /packed data has 10 bytes, \[1, 32\] needs 16/);
    assert.throws(() => convertMxfp4ToE4m3(new Uint8Array(16), new Uint8Array(2), 1, 32), /scales have 2 entries/);
    const w = build(128, 128, () => 2, (r, g) => (r === 5 && g === 2 ? 0xff : 127));
    assert.throws(() => convertMxfp4ToE4m3(w.packed, w.scales, 128, 128), /row 5, columns 64\.\.95 is NaN/);
  });

  test('reports merge: counts add, worst errors take the max', () => {
    assert.deepEqual(mergeConversionReports(
      { blocks: 3, inexactBlocks: 1, worstAbsError: 0.5, worstRelError: 0.01 },
      { blocks: 2, inexactBlocks: 2, worstAbsError: 0.25, worstRelError: 0.02 }),
    { blocks: 5, inexactBlocks: 3, worstAbsError: 0.5, worstRelError: 0.02 });
  });
});
