// TMA descriptor arguments are checked in JavaScript before the driver sees them (no GPU needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateTensorMapOptions, type TensorMapTiledOptions } from '../src/cuda/tensor-map.js';

const ok: TensorMapTiledOptions = {
  dataType: 'uint8', globalAddress: 0x10000n, globalDims: [4096, 1024], globalStrides: [4096], boxDims: [128, 64], swizzle: '128B',
};

test('a valid FP8 128B-swizzled map passes', () => {
  assert.doesNotThrow(() => validateTensorMapOptions(ok));
  assert.doesNotThrow(() => validateTensorMapOptions({ ...ok, dataType: 'bf16', boxDims: [64, 64] }));
  assert.doesNotThrow(() => validateTensorMapOptions({
    dataType: 'f32', globalAddress: { ptr: 0x20000n }, globalDims: [32, 16, 8], globalStrides: [128, 2048], boxDims: [32, 16, 1],
  }));
});

test('each broken constraint names the argument', () => {
  assert.throws(() => validateTensorMapOptions({ ...ok, globalAddress: 0x10008n }), /globalAddress 0x10008 is not 16-byte aligned/);
  assert.throws(() => validateTensorMapOptions({ ...ok, globalStrides: [4100] }), /globalStrides\[0\] = 4100 must be a positive multiple of 16/);
  assert.throws(() => validateTensorMapOptions({ ...ok, globalStrides: [] }), /globalStrides needs 1 entries/);
  assert.throws(() => validateTensorMapOptions({ ...ok, boxDims: [128, 512] }), /boxDims\[1\] = 512 must be an integer in 1\.\.256/);
  assert.throws(() => validateTensorMapOptions({ ...ok, dataType: 'bf16', boxDims: [128, 64] }), /256 bytes exceeds the 128B swizzle span; use a box inner extent of at most 64 elements/);
  assert.throws(() => validateTensorMapOptions({ ...ok, boxDims: [8, 64], swizzle: 'none' }), /boxDims\[0\] x 1 bytes = 8 bytes must be a multiple of 16/);
  assert.throws(() => validateTensorMapOptions({ ...ok, globalDims: [1, 1, 1, 1, 1, 1], globalStrides: [16, 16, 16, 16, 16], boxDims: [16, 1, 1, 1, 1, 1] }), /1 to 5/);
  assert.throws(() => validateTensorMapOptions({ ...ok, dataType: 'fp4' as never }), /dataType "fp4"/);
});
