// The decode CUDA graphs' batch sizes and padding (src/gpu-model/graph-sizes.ts): pure, on the CPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkDecodeGraphSizes, decodeGraphSize, decodePadSlots, defaultDecodeGraphSizes } from '../src/gpu-model/graph-sizes.js';
import { GpuModelArgumentError } from '../src/gpu-model/errors.js';

test('default sizes: 1, 2, 4, multiples of 8, and the most items of one call', () => {
  assert.deepEqual(defaultDecodeGraphSizes(1), [1]);
  assert.deepEqual(defaultDecodeGraphSizes(2), [1, 2]);
  assert.deepEqual(defaultDecodeGraphSizes(3), [1, 2, 3]);
  assert.deepEqual(defaultDecodeGraphSizes(8), [1, 2, 4, 8]);
  assert.deepEqual(defaultDecodeGraphSizes(20), [1, 2, 4, 8, 16, 20]);
  assert.deepEqual(defaultDecodeGraphSizes(32), [1, 2, 4, 8, 16, 24, 32]);
  assert.equal(defaultDecodeGraphSizes(256).length, 3 + 32);
});

test('a call pads to the smallest size that holds it; above the largest, none (eager)', () => {
  const sizes = [1, 2, 4, 8, 16];
  assert.equal(decodeGraphSize(sizes, 1), 1);
  assert.equal(decodeGraphSize(sizes, 3), 4);
  assert.equal(decodeGraphSize(sizes, 9), 16);
  assert.equal(decodeGraphSize(sizes, 16), 16);
  assert.equal(decodeGraphSize(sizes, 17), undefined);
});

test('padding slots: the widest gap below a size', () => {
  assert.equal(decodePadSlots([1]), 0);
  assert.equal(decodePadSlots([1, 2, 4, 8]), 3);
  assert.equal(decodePadSlots(defaultDecodeGraphSizes(256)), 7);
  assert.equal(decodePadSlots([4]), 3, 'a call of one item pads to 4');
  assert.equal(decodePadSlots([2, 64]), 61);
});

test('sizes are sorted, deduplicated and refused outside [1, maxItems] with the fix', () => {
  assert.deepEqual(checkDecodeGraphSizes([8, 1, 4, 4], 8), [1, 4, 8]);
  assert.throws(() => checkDecodeGraphSizes([], 8), (e: unknown) => e instanceof GpuModelArgumentError && /empty/.test(e.message));
  assert.throws(() => checkDecodeGraphSizes([1, 16], 8), /size 16 is outside \[1, 8\] \(maxItems\); pass batch sizes between 1/);
  assert.throws(() => checkDecodeGraphSizes([0.5], 8), /size 0.5 is outside/);
});
