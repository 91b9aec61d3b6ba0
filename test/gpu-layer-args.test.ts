// CPU checks of the GPU decoder layer's host-side pieces (src/gpu-model/layer.ts, src/cuda/cublaslt.ts): the bf16
// weight conversion refuses values a bf16 GEMM cannot hold, and the strided bf16-out cuBLASLt GEMM refuses bad
// leading dimensions before touching the library.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CublasLtBf16OutGemm } from '../src/cuda/cublaslt.js';
import { GpuModelArgumentError } from '../src/gpu-model/errors.js';
import { bf16WeightBits } from '../src/gpu-model/layer.js';

test('bf16WeightBits: bf16 values pass as their bits; an f32-only value is refused naming the tensor and index', () => {
  const w = new Float32Array([1, -2.5, 0, 3.140625, -0]);
  assert.deepEqual(Array.from(bf16WeightBits('w', w)), [0x3f80, 0xc020, 0, 0x4049, 0x8000]);
  assert.throws(() => bf16WeightBits('layer 1 attn.compressor.wkv', new Float32Array([1, 1 + 2 ** -20])), (e: unknown) =>
    e instanceof GpuModelArgumentError && /attn\.compressor\.wkv\[1\]/.test(e.message) && /f32 GEMM/.test(e.message));
});

test('CublasLtBf16OutGemm: leading dimensions below the row width or not multiples of 8 are refused', () => {
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, { x: 32 }), /ldx = 32 must be an integer >= 64/);
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, { d: 8 }), /ldd = 8 must be an integer >= 16/);
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, { x: 100 }), /ldx = 100 must be a multiple of 8/);
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 60), /K = 60 must be a multiple of 8/);
});

test('CublasLtBf16OutGemm: a strided batch with a bad count or a stride that is not a multiple of 8 is refused', () => {
  const ld = { x: 128, d: 32 };
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, ld, { count: 0, strideX: 64, strideW: 1024, strideD: 16 }), /batch count = 0 must be a positive integer/);
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, ld, { count: 2, strideX: 60, strideW: 1024, strideD: 16 }), /strideX = 60 must be a multiple of 8/);
  assert.throws(() => new CublasLtBf16OutGemm(4, 16, 64, ld, { count: 2, strideX: 64, strideW: -8, strideD: 16 }), /strideW = -8 must be a non-negative integer/);
});
