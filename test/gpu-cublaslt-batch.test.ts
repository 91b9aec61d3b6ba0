// The strided-batched cuBLASLt bf16 -> bf16 GEMM (the model's grouped wo_a in one call) against the per-group calls it
// replaced, on the GPU host: wo_a's shape (G groups of column slices of one row-major input and output) at 1, 7 and 64
// rows. bf16 x bf16 products are exact in f32; only the summation order may differ between the two algorithms, so
// the outputs are held to SPEC 5's calc_diff <= 3e-5 (and are usually bit-identical). Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CublasLtBf16OutGemm, cublasLtStatus } from '../src/cuda/cublaslt.js';
import { DeviceTensor, ensureContext, gpuSkipReason } from '../src/cuda/index.js';
import { f32ToBF16Bits } from '../src/model/ops.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const lt = cublasLtStatus();
const skip = gpuSkipReason() ?? (lt.available ? undefined : lt.reason);

const bf16ToF32 = (b: Uint16Array) => { const u = new Uint32Array(b.length); for (let i = 0; i < b.length; i++) u[i] = b[i] << 16; return new Float32Array(u.buffer); };

test('cuBLASLt strided batch = the per-group GEMMs (wo_a shape: 8 groups of 4096 -> 1024, column slices)', { skip }, () => {
  const G = 8, gw = 4096, ol = 1024;
  const rng = new Rng(5);
  const w = new Float32Array(G * ol * gw).map(() => rng.normal() * 0.02);
  using dw = DeviceTensor.fromHost(new HostTensor('BF16', [G * ol, gw], f32ToBF16Bits(w)));
  for (const m of [1, 7, 64]) {
    const x = new Float32Array(m * G * gw).map(() => rng.normal());
    using dx = DeviceTensor.fromHost(new HostTensor('BF16', [m, G * gw], f32ToBF16Bits(x)));
    using loop = DeviceTensor.zeros('BF16', [m, G * ol]);
    using batched = DeviceTensor.zeros('BF16', [m, G * ol]);
    using one = new CublasLtBf16OutGemm(m, ol, gw, { x: G * gw, d: G * ol });
    for (let g = 0; g < G; g++) one.run(dx.ptr + BigInt(g * gw * 2), dw.ptr + BigInt(g * ol * gw * 2), loop.ptr + BigInt(g * ol * 2));
    using all = new CublasLtBf16OutGemm(m, ol, gw, { x: G * gw, d: G * ol }, { count: G, strideX: gw, strideW: ol * gw, strideD: ol });
    assert.equal(all.flops, 2 * m * ol * gw * G);
    all.run(dx, dw, batched);
    ensureContext().synchronize();
    const a = bf16ToF32(loop.toHost().data as Uint16Array), b = bf16ToF32(batched.toHost().data as Uint16Array);
    assert.ok(b.every(Number.isFinite), `m = ${m}: non-finite output`);
    const d = calcDiff(a, b);
    assert.ok(d <= 3e-5, `m = ${m}: calc_diff ${d}`);
  }
});
