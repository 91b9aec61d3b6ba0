import { test } from 'node:test';
import assert from 'node:assert/strict';
import { E4M3_DECODE, E4M3_MAX, decodeE4M3, encodeE4M3, encodeE4M3Array, decodeE4M3Array } from '../src/numerics/index.js';

test('all 256 e4m3 codes decode to the e4m3fn values', () => {
  for (let code = 0; code < 256; code++) {
    const sign = code & 0x80 ? -1 : 1;
    const e = (code >> 3) & 0xf;
    const m = code & 7;
    const v = decodeE4M3(code);
    if ((code & 0x7f) === 0x7f) { assert.ok(Number.isNaN(v), `code ${code} must be NaN`); continue; }
    const expected = sign * (e === 0 ? m / 8 * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
    assert.equal(v, expected, `code 0x${code.toString(16)}`);
  }
  assert.equal(E4M3_DECODE[0x7e], 448);
  assert.equal(E4M3_DECODE[0x01], 2 ** -9);
  assert.equal(E4M3_DECODE[0x08], 2 ** -6);
});

test('every finite code survives encode(decode(code))', () => {
  for (let code = 0; code < 256; code++) {
    if ((code & 0x7f) === 0x7f) continue;
    assert.equal(encodeE4M3(decodeE4M3(code)), code, `code 0x${code.toString(16)}`);
  }
});

test('midpoints between neighbouring codes round to the even code', () => {
  for (let code = 0; code < 0x7e; code++) {
    const lo = decodeE4M3(code); const hi = decodeE4M3(code + 1);
    const mid = (lo + hi) / 2;
    const even = code % 2 === 0 ? code : code + 1;
    assert.equal(encodeE4M3(mid), even, `midpoint of 0x${code.toString(16)} and next`);
    assert.equal(encodeE4M3(-mid), even | 0x80, `negative midpoint of 0x${code.toString(16)}`);
    // Just off the midpoint goes to the nearer code.
    assert.equal(encodeE4M3(mid - (hi - lo) / 64), code);
    assert.equal(encodeE4M3(mid + (hi - lo) / 64), code + 1);
  }
});

test('values past 448 saturate to +-448, infinities too; NaN encodes to NaN', () => {
  assert.equal(encodeE4M3(448), 0x7e);
  assert.equal(encodeE4M3(449), 0x7e);
  assert.equal(encodeE4M3(464), 0x7e); // would round up to 480 without saturation
  assert.equal(encodeE4M3(1e30), 0x7e);
  assert.equal(encodeE4M3(Infinity), 0x7e);
  assert.equal(encodeE4M3(-Infinity), 0xfe);
  assert.equal(encodeE4M3(-500), 0xfe);
  assert.ok(Number.isNaN(decodeE4M3(encodeE4M3(NaN))));
  assert.equal(E4M3_MAX, 448);
});

test('subnormals: multiples of 2^-9, ties to even, underflow to signed zero', () => {
  assert.equal(encodeE4M3(2 ** -9), 0x01);
  assert.equal(encodeE4M3(2 ** -10), 0x00); // tie between 0 and 2^-9 -> 0 (even)
  assert.equal(encodeE4M3(3 * 2 ** -10), 0x02); // tie between 1 and 2 quanta -> 2
  assert.equal(encodeE4M3(5 * 2 ** -10), 0x02); // tie between 2 and 3 -> 2
  assert.equal(encodeE4M3(2 ** -11), 0x00);
  assert.equal(encodeE4M3(-(2 ** -11)), 0x80);
  assert.equal(encodeE4M3(7.5 * 2 ** -9), 0x08); // tie between 7 quanta and 2^-6 -> 8 quanta = code 0x08
  assert.equal(encodeE4M3(-0), 0x80);
  assert.equal(encodeE4M3(1e-45), 0x00);
});

test('encoding rounds its input to f32 first, as the GPU sees it', () => {
  // 1 + 2^-4 + 2^-30 is just above the midpoint of 1 and 1.125 in f64, but f32 rounds it onto the midpoint.
  assert.equal(encodeE4M3(1 + 2 ** -4 + 2 ** -30), 0x38);
});

test('array helpers agree with the scalar codec and check lengths', () => {
  const src = Float32Array.from([0, 1, -2.5, 300, 1000, 2 ** -8]);
  const codes = encodeE4M3Array(src);
  assert.deepEqual([...codes], [...src].map(encodeE4M3));
  assert.deepEqual([...decodeE4M3Array(codes)], [0, 1, -2.5, 288, 448, 2 ** -8]);
  assert.throws(() => encodeE4M3Array(src, new Uint8Array(2)), /destination holds 2/);
});
