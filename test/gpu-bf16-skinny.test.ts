// The skinny bf16 GEMM of decode steps (src/kernels/bf16_skinny.cu, src/kernels/bf16-skinny.ts) against an f64 CPU
// product of the same bf16 operands: every row count 1..16 takes one of the kernel's two n-tile shapes, f32 and bf16
// out, a strided batch with leading dims wider than the problem (wo_a's grouped call: X columns per group, D columns
// per group), and run-to-run bit identity (the 8 warps' partials are summed in a fixed order). f32 accumulation in
// another order than f64: |error| within a few f32 ulps of the sum of |products|; bf16 out within one bf16 rounding.
// Also the shape guard (cuBLASLt keeps the shapes it refuses). Skips with the reason where no Hopper GPU (or the CPU
// emulator, tools/cuda-emulator) exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import { SkinnyBf16Gemm, skinnyBf16Supported } from '../src/kernels/bf16-skinny.js';
import { f32ToBF16Bits, roundBF16 } from '../src/model/ops.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

function bf16Normal(rng: Rng, n: number): Float32Array {
  const x = new Float32Array(n);
  rng.fillNormal(x, 1);
  return roundBF16(x);
}

/** D[b][r, j] = sum_k X[b][r, k] W[b][j, k] in f64, and the sum of |products| (the error scale). */
function reference(x: Float32Array, w: Float32Array, m: number, n: number, k: number, count: number,
  ldx: number, sx: number, sw: number): { d: Float64Array; mag: Float64Array } {
  const d = new Float64Array(count * m * n);
  const mag = new Float64Array(count * m * n);
  for (let b = 0; b < count; b++) {
    for (let r = 0; r < m; r++) {
      for (let j = 0; j < n; j++) {
        let s = 0, a = 0;
        for (let i = 0; i < k; i++) {
          const p = x[b * sx + r * ldx + i] * w[b * sw + j * k + i];
          s += p; a += Math.abs(p);
        }
        d[(b * m + r) * n + j] = s; mag[(b * m + r) * n + j] = a;
      }
    }
  }
  return { d, mag };
}

const downBF16 = (bits: Uint16Array): Float32Array => {
  const out = new Float32Array(bits.length); const u = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return out;
};

test('skinny bf16 GEMM: shapes it takes, shapes left to cuBLASLt', () => {
  assert.ok(skinnyBf16Supported(1, 1024, 4096, { x: 32768, d: 8192 }, { count: 8, strideX: 4096, strideW: 1024 * 4096, strideD: 1024 }));
  assert.ok(skinnyBf16Supported(16, 64, 4096));
  assert.ok(!skinnyBf16Supported(17, 64, 4096), 'more than 16 rows');
  assert.ok(!skinnyBf16Supported(1, 64, 128), 'k not a multiple of 256');
  assert.ok(!skinnyBf16Supported(1, 40, 4096), 'n not a multiple of 16');
  assert.ok(!skinnyBf16Supported(1, 64, 4096, { x: 4100 }), 'X rows not 16-byte aligned');
  assert.throws(() => new SkinnyBf16Gemm('bf16', 0, 64, 4096), /not a shape it takes/);
});

for (const [label, m, n, k, count] of [['1 row', 1, 64, 512, 1], ['3 rows', 3, 32, 768, 1], ['8 rows', 8, 48, 256, 1],
  ['9 rows', 9, 32, 1024, 1], ['16 rows', 16, 16, 512, 1], ['wo_a-like batch of 3, 5 rows', 5, 32, 512, 3]] as const) {
  test(`skinny bf16 GEMM ${label} (n ${n}, k ${k}): f32 and bf16 out near the f64 product, run-to-run identical`, { skip }, () => {
    const rng = new Rng(1000 + m * 7 + n);
    const batched = count > 1;
    // batched like wo_a: X [m, count * k] (group b's columns at b * k), D [m, count * n] (group b's at b * n)
    const ldx = batched ? count * k : k + 64, ldd = batched ? count * n : n + 16;
    const batch = batched ? { count, strideX: k, strideW: n * k, strideD: n } : undefined;
    const x = bf16Normal(rng, m * ldx);
    const w = bf16Normal(rng, count * n * k);
    const { d: want, mag } = reference(x, w, m, n, k, count, ldx, batched ? k : 0, n * k);
    using dx = DeviceTensor.fromHost(new HostTensor('BF16', [m, ldx], f32ToBF16Bits(x)));
    using dw = DeviceTensor.fromHost(new HostTensor('BF16', [count * n, k], f32ToBF16Bits(w)));
    for (const out of ['f32', 'bf16'] as const) {
      const g = new SkinnyBf16Gemm(out, m, n, k, { x: ldx, d: ldd }, batch);
      const runOnce = (): Float32Array => {
        using dd = DeviceTensor.zeros(out === 'f32' ? 'F32' : 'BF16', [m, ldd]);
        g.run(dx, dw, dd);
        const h = dd.toHost().data;
        return out === 'f32' ? new Float32Array(h as Float32Array) : downBF16(h as Uint16Array);
      };
      const a = runOnce(), b = runOnce();
      assert.deepEqual(new Uint32Array(a.buffer), new Uint32Array(b.buffer), `${out}: run-to-run bits`);
      let worst = 0;
      for (let bi = 0; bi < count; bi++) {
        for (let r = 0; r < m; r++) {
          for (let j = 0; j < n; j++) {
            const at = (bi * m + r) * n + j;
            const got = a[r * ldd + bi * n + j];
            const tol = 8 * 2 ** -24 * mag[at] * Math.log2(k) + (out === 'bf16' ? Math.abs(want[at]) * 2 ** -8 : 0) + 1e-30;
            worst = Math.max(worst, Math.abs(got - want[at]) / tol);
            assert.ok(Math.abs(got - want[at]) <= tol, `${out} D[${bi}][${r}, ${j}] = ${got}, want ${want[at]} (tol ${tol})`);
          }
        }
      }
      // columns past n inside ldd stay untouched (zero)
      if (!batched) for (let r = 0; r < m; r++) for (let j = n; j < ldd; j++) assert.equal(a[r * ldd + j], 0, `${out}: D[${r}, ${j}] past n written`);
      console.log(`# skinny ${label} ${out}: worst error ${worst.toFixed(3)} of tolerance`);
    }
  });
}
