// The tensor-core fragment helper of the sparse attention (src/kernels/attn_mma.cuh, through attention.cu's
// attn_mma_selftest): one mma.sync m16n8k16 bf16 -> f32 on values whose sums are exact in f32 in any order, so D must
// equal C + A B bit for bit. On a GPU this checks the PTX fragment layouts the kernel assumes; on the CPU emulator
// (tools/cuda-emulator) it checks the shuffle emulation that the emulator runs instead. Skips without either.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceBuffer, gpuSkipReason, loadKernelSync } from '../src/cuda/index.js';
import { ATTENTION_ENTRIES, ATTENTION_SOURCE } from '../src/kernels/attention.js';

const skip = gpuSkipReason();
const bf16Bits = (v: number) => new Uint16Array(new Float32Array([v]).buffer)[1]; // exact for the values used

test('attn_mma_selftest: mma m16n8k16 bf16 fragments give D = C + A B exactly', { skip }, () => {
  const kernel = loadKernelSync({ source: ATTENTION_SOURCE, entry: ATTENTION_ENTRIES.mmaSelftest });
  let s = 12345;
  const rnd = () => { s = (s * 1103515245 + 12345) >>> 0; return ((s >>> 8) % 33) - 16; }; // integers in [-16, 16]
  const A = Array.from({ length: 256 }, () => rnd() / 8);   // [16][16]
  const Bt = Array.from({ length: 128 }, () => rnd() / 4);  // [8 n][16 k]
  const C = Array.from({ length: 128 }, () => rnd() / 2);   // [16][8]
  const want = new Float32Array(128);
  for (let i = 0; i < 16; i++) for (let n = 0; n < 8; n++) {
    let v = C[i * 8 + n];
    for (let k = 0; k < 16; k++) v += A[i * 16 + k] * Bt[n * 16 + k];
    want[i * 8 + n] = v;
  }
  using a = DeviceBuffer.alloc(512); using b = DeviceBuffer.alloc(256); using c = DeviceBuffer.alloc(512); using d = DeviceBuffer.alloc(512);
  a.copyFromHost(Uint16Array.from(A, bf16Bits));
  b.copyFromHost(Uint16Array.from(Bt, bf16Bits));
  c.copyFromHost(Float32Array.from(C));
  kernel.launch({ grid: 1, block: 32 }, [a, b, c, d]);
  const got = new Float32Array(128);
  d.copyToHost(got);
  assert.deepEqual(Array.from(got), Array.from(want));
});
