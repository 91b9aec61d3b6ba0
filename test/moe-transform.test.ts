import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  concatL1, transformL1, inverseTransformL1, transformedRowSource, interleaveGateUpRows, isTransformedL1, GuardError,
} from '../src/moe/index.js';
import { quantizeWeightBlocks } from '../src/numerics/index.js';
import { Rng } from '../src/util/rng.js';

function randomWeight(seed: number, n: number, k: number) {
  const rng = new Rng(seed);
  const w = new Float32Array(n * k);
  rng.fillNormal(w, 0.05);
  return quantizeWeightBlocks(w, n, k);
}

const I = 256; const H = 128;
const w1 = randomWeight(1, I, H);
const w3 = randomWeight(2, I, H);

test('concatL1 stacks gate rows then up rows, scales too', () => {
  const l1 = concatL1(w1, w3);
  assert.equal(l1.n, 2 * I);
  assert.equal(l1.layout, 'gate-then-up');
  assert.deepEqual(l1.q.subarray(0, I * H), w1.q);
  assert.deepEqual(l1.q.subarray(I * H), w3.q);
  assert.deepEqual([...l1.s], [...w1.s, ...w3.s]);
  assert.throws(() => concatL1(w1, randomWeight(3, 128, H)), /same shape/);
});

test('new row r takes gate row 8*floor(r/16) + r%8 when r%16 < 8, else that row of up', () => {
  const l1 = transformL1(concatL1(w1, w3));
  for (let r = 0; r < 2 * I; r++) {
    const src = Math.floor(r / 16) * 8 + (r % 8);
    const from = r % 16 < 8 ? w1.q.subarray(src * H, src * H + H) : w3.q.subarray(src * H, src * H + H);
    assert.deepEqual(l1.q.subarray(r * H, r * H + H), from, `row ${r}`);
    const info = transformedRowSource(r, I);
    assert.equal(info.row, src);
    assert.equal(info.half, r % 16 < 8 ? 'gate' : 'up');
    assert.equal(info.naturalRow, r % 16 < 8 ? src : I + src);
    assert.equal(info.scaleRow, Math.floor(info.naturalRow / 128));
  }
  assert.deepEqual(transformedRowSource(8, I), { half: 'up', row: 0, naturalRow: I, scaleRow: 2 });
  assert.throws(() => transformedRowSource(2 * I, I), GuardError);
});

test('128-row tile j holds gate rows [64j, 64j+64) and up rows [64j, 64j+64)', () => {
  for (let j = 0; j < (2 * I) / 128; j++) {
    const gate = new Set<number>(); const up = new Set<number>();
    for (let r = 128 * j; r < 128 * j + 128; r++) {
      const s = transformedRowSource(r, I);
      (s.half === 'gate' ? gate : up).add(s.row);
    }
    const want = Array.from({ length: 64 }, (_, i) => 64 * j + i);
    assert.deepEqual([...gate].sort((a, b) => a - b), want, `tile ${j} gate`);
    assert.deepEqual([...up].sort((a, b) => a - b), want, `tile ${j} up`);
  }
});

test('scales stay in their natural layout and the inverse restores the codes exactly', () => {
  const nat = concatL1(w1, w3);
  const tr = transformL1(nat);
  assert.equal(tr.layout, 'gate-up-interleaved-8');
  assert.deepEqual(tr.s, nat.s);
  assert.notDeepEqual(tr.q, nat.q);
  const back = inverseTransformL1(tr);
  assert.equal(back.layout, 'gate-then-up');
  assert.deepEqual(back.q, nat.q);
  assert.deepEqual(back.s, nat.s);
  assert.equal(isTransformedL1(back), false);
});

test('transforming twice is refused, by the mark and by the buffer', () => {
  const tr = transformL1(concatL1(w1, w3));
  assert.throws(() => transformL1(tr), (e: unknown) => e instanceof GuardError && /already gate\/up interleaved/.test(e.message)
    && /applied once at load/.test(e.message));
  // Same codes wrapped in an object that claims the natural layout: still refused.
  assert.throws(() => transformL1({ ...tr, layout: 'gate-then-up' }), /already/);
  assert.throws(() => inverseTransformL1(concatL1(w1, w3)), /not transformed/);
});

test('interleaveGateUpRows works on stacked experts and any element type, and checks its input', () => {
  const rows = 32; const cols = 3; const E = 2;
  const src = Float32Array.from({ length: E * rows * cols }, (_, i) => i);
  const dst = interleaveGateUpRows(src, rows, cols, new Float32Array(src.length), E);
  // expert 1, new row 8 = up row 0 = natural row 16
  assert.deepEqual([...dst.subarray((rows + 8) * cols, (rows + 9) * cols)], [...src.subarray((rows + 16) * cols, (rows + 17) * cols)]);
  const back = interleaveGateUpRows(dst, rows, cols, new Float32Array(src.length), E, true);
  assert.deepEqual(back, src);
  assert.throws(() => interleaveGateUpRows(new Uint8Array(24 * 2), 24, 2, new Uint8Array(48)), /multiple of 16/);
  assert.throws(() => interleaveGateUpRows(src, rows, cols, src, E), /share a buffer/);
});
