import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeBF16, encodeBF16, decodeBF16Array, encodeBF16Array, roundBF16,
  decodeE8M0, encodeE8M0, E8M0_DECODE, decodeE2M1, unpackE2M1, packE2M1, E2M1_DECODE, calcDiff,
} from '../src/numerics/index.js';

test('bf16 rounds to nearest even at the rounding edges', () => {
  assert.equal(encodeBF16(1), 0x3f80);
  assert.equal(encodeBF16(1 + 2 ** -8), 0x3f80); // exact tie, even stays
  assert.equal(encodeBF16(1 + 3 * 2 ** -8), 0x3f82); // tie, odd rounds up
  assert.equal(encodeBF16(1 + 2 ** -8 + 2 ** -20), 0x3f81); // just above the tie
  assert.equal(encodeBF16(-2), 0xc000);
  assert.equal(encodeBF16(3.4e38), 0x7f80); // rounds past the largest bf16 to infinity, as RNE does
  assert.equal(encodeBF16(Infinity), 0x7f80);
  assert.equal(encodeBF16(-0), 0x8000);
  assert.ok(Number.isNaN(decodeBF16(encodeBF16(NaN))));
  assert.equal(decodeBF16(0x0001), 2 ** -133); // smallest subnormal
  assert.equal(roundBF16(0.1), 0.10009765625);
});

test('bf16 arrays round-trip every bf16 code that is not NaN', () => {
  const codes = new Uint16Array(65536).map((_, i) => i);
  const values = decodeBF16Array(codes);
  const back = encodeBF16Array(values);
  for (let i = 0; i < 65536; i++) {
    if (Number.isNaN(values[i])) continue;
    assert.equal(back[i], i);
  }
});

test('e8m0 decodes 2^(b-127), 0xFF is NaN; encode accepts only powers of two', () => {
  assert.equal(decodeE8M0(127), 1);
  assert.equal(decodeE8M0(0), 2 ** -127);
  assert.equal(decodeE8M0(254), 2 ** 127);
  assert.ok(Number.isNaN(decodeE8M0(255)));
  assert.equal(E8M0_DECODE[130], 8);
  assert.equal(encodeE8M0(0.25), 125);
  assert.throws(() => encodeE8M0(3), /not 2\^e/);
  assert.throws(() => encodeE8M0(0), /positive powers of two/);
});

test('e2m1 decode table and nibble packing (low nibble first)', () => {
  assert.deepEqual([...E2M1_DECODE].slice(0, 8), [0, 0.5, 1, 1.5, 2, 3, 4, 6]);
  assert.equal(decodeE2M1(0xf), -6);
  assert.ok(Object.is(decodeE2M1(8), -0));
  const packed = packE2M1([1, 15, 7, 2]);
  assert.deepEqual([...packed], [0xf1, 0x27]);
  assert.deepEqual([...unpackE2M1(packed)], [0.5, -6, 6, 1]);
  assert.deepEqual([...unpackE2M1(Int8Array.from([-15]))], [0.5, -6]); // I8 storage of 0xF1
  assert.throws(() => unpackE2M1(packed, 5), /at most 4/);
});

test('calcDiff: 0 for identical, symmetric, 1 for orthogonal, 2 for opposite', () => {
  const x = [1, 2, 3];
  assert.equal(calcDiff(x, x), 0);
  assert.equal(calcDiff([1, 0], [0, 1]), 1);
  assert.equal(calcDiff([1, 2], [-1, -2]), 2);
  assert.equal(calcDiff([0, 0], [0, 0]), 0);
  const y = [1.001, 2, 3];
  assert.equal(calcDiff(x, y), calcDiff(y, x));
  assert.ok(calcDiff(x, y) > 0 && calcDiff(x, y) < 1e-6);
  assert.throws(() => calcDiff([1], [1, 2]), /lengths differ/);
});
