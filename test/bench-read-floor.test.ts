// The read floor's byte ranges: exactly the touched experts' regions of DeviceMoeWeights' four buffers (no GPU).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expertWeightBytes } from '../src/bench/report.js';
import { expertStrides, packReadSegments, readFloorSegments, touchedGroups } from '../src/bench/read-floor.js';

test('strides of one expert add up to its weight bytes (flash and pro)', () => {
  for (const [H, I] of [[4096, 2048], [7168, 3072], [256, 128]]) {
    const s = expertStrides(H, I);
    assert.equal(s.w13 + s.s13 + s.w2 + s.s2, expertWeightBytes(H, I), `H ${H} I ${I}`);
    assert.equal(s.w13, 2 * H * I);
    assert.equal(s.s13, (2 * I / 128) * (H / 128) * 4);
  }
});

test('touched groups: distinct, ascending, -1 skipped, shared expert last; out-of-range refused', () => {
  assert.deepEqual(touchedGroups(BigInt64Array.of(5n, 2n, 5n, -1n, 0n), 8), [0, 2, 5, 8]);
  assert.deepEqual(touchedGroups([], 8), [8]);
  assert.throws(() => touchedGroups([8], 8), /outside/);
});

test('segments: one range per run of consecutive groups per buffer, exact bytes of the touched experts', () => {
  const s = expertStrides(4096, 2048);
  const groups = [0, 1, 2, 7, 256];
  const { segments, exactBytes, readBytes } = readFloorSegments(groups, s, 257);
  assert.equal(segments.length, 4 * 3); // runs [0..2], [7], [256] in each of 4 buffers
  assert.equal(exactBytes, groups.length * expertWeightBytes(4096, 2048));
  assert.equal(readBytes, exactBytes);
  const w13 = segments.filter((x) => x.buffer === 'w13');
  assert.deepEqual(w13.map((x) => [x.offset, x.bytes]), [[0, 3 * s.w13], [7 * s.w13, s.w13], [256 * s.w13, s.w13]]);
  const s2 = segments.filter((x) => x.buffer === 's2');
  assert.deepEqual(s2.map((x) => [x.offset, x.bytes]), [[0, 3 * s.s2], [7 * s.s2, s.s2], [256 * s.s2, s.s2]]);
  // Every expert touched: one range per buffer, the whole buffer.
  const all = readFloorSegments(Array.from({ length: 257 }, (_, g) => g), s, 257);
  assert.equal(all.segments.length, 4);
  assert.equal(all.exactBytes, 257 * expertWeightBytes(4096, 2048));
  assert.throws(() => readFloorSegments([2, 1], s, 257), /ascending/);
  assert.throws(() => readFloorSegments([257], s, 257), /outside/);
});

test('segments are widened to 16-byte boundaries when a stride is not a multiple of 16', () => {
  const s = { w13: 64, s13: 8, w2: 32, s2: 4 };
  const { segments, exactBytes, readBytes } = readFloorSegments([1], s, 4);
  assert.equal(exactBytes, 64 + 8 + 32 + 4);
  for (const seg of segments) {
    assert.equal(seg.offset % 16, 0);
    assert.equal(seg.bytes % 16, 0);
  }
  const s13 = segments.find((x) => x.buffer === 's13')!;
  assert.deepEqual([s13.offset, s13.bytes], [0, 16]); // bytes [8, 16) widened to [0, 16)
  assert.ok(readBytes > exactBytes);
});

test('packed as {address, bytes} pairs from each buffer base', () => {
  const s = expertStrides(512, 256); // every stride a multiple of 16 (tiny's 256 x 128 has an 8-byte s2 stride)
  const { segments } = readFloorSegments([3], s, 17);
  const base = { w13: 0x1000000n, s13: 0x2000000n, w2: 0x3000000n, s2: 0x4000000n };
  const packed = packReadSegments(segments, base);
  assert.equal(packed.length, 8);
  assert.equal(packed[0], 0x1000000n + BigInt(3 * s.w13));
  assert.equal(packed[1], BigInt(s.w13));
  assert.equal(packed[6], 0x4000000n + BigInt(3 * s.s2));
});
