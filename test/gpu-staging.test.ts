// GPU staging kernel (src/kernels/staging.cu) against the CPU reference quantizeRowsF32Scale, bit for bit: codes,
// scales, and the ids / weights copied alongside. Skips (with the reason) where no Hopper GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CudaGraph, DeviceTensor, gpuSkipReason, Stream } from '../src/cuda/index.js';
import { Stager, STAGING_VARIANTS, type StagingShape } from '../src/kernels/staging.js';
import { GuardError } from '../src/moe/guards.js';
import { decodeBF16Array, encodeBF16 } from '../src/numerics/bf16.js';
import { quantizeRowsF32Scale } from '../src/numerics/quant.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

/**
 * Hidden states whose 128-column blocks each stress one case: all zeros, +-tiny (bf16 subnormals and the smallest
 * normals), values past 448, mixed magnitudes, exact powers of two, random bit patterns of every finite bf16, and
 * plain normals at scales from 2^-30 to 2^30. Returns bf16 bits [T, H].
 */
function stressHidden(rng: Rng, T: number, H: number): Uint16Array {
  const x = new Uint16Array(T * H);
  for (let b = 0; b < (T * H) / 128; b++) {
    const kind = rng.int(8);
    const scale = 2 ** (rng.int(61) - 30);
    for (let i = b * 128; i < (b + 1) * 128; i++) {
      let bits: number;
      switch (kind) {
        case 0: bits = rng.int(4) === 0 ? 0x8000 : 0; break; // +0 / -0 block
        case 1: bits = (rng.int(2) << 15) | rng.int(0x100); break; // subnormals and the lowest normals, both signs
        case 2: bits = encodeBF16((rng.uniform() - 0.5) * 1e5); break; // far past 448
        case 3: bits = encodeBF16(rng.normal() * (rng.int(2) ? 1e-20 : 1e20)); break; // mixed in one block
        case 4: bits = encodeBF16((rng.int(2) ? -1 : 1) * 2 ** (rng.int(40) - 20)); break; // exact powers of two
        case 5: { // any finite bf16 bit pattern
          do bits = rng.int(0x10000); while ((bits & 0x7f80) === 0x7f80);
          break;
        }
        case 6: bits = encodeBF16(rng.normal() * scale); break;
        default: bits = encodeBF16(rng.normal()); break;
      }
      x[i] = bits;
    }
  }
  // Row 0, block 0: an amax whose codes include exact e4m3 rounding midpoints (ties to even) and 448 itself.
  if (T > 0 && H >= 128) {
    x[0] = encodeBF16(448);
    x[1] = encodeBF16(448 * (1 + 1 / 16));
    x[2] = encodeBF16(-448 * (1 + 3 / 16));
    x[3] = encodeBF16(2 ** -9);
  }
  return x;
}

function routerOutputs(rng: Rng, T: number, K: number, E: number): { ids: BigInt64Array; w: Float32Array } {
  const ids = new BigInt64Array(T * K);
  const w = new Float32Array(T * K);
  for (let i = 0; i < T * K; i++) {
    ids[i] = rng.int(9) === 0 ? -1n : BigInt(rng.int(E)); // masked slots are copied as they are
    w[i] = ids[i] < 0n ? 0 : rng.uniform() * 2 - 0.5;
  }
  return { ids, w };
}

interface Case { tokens: number; seed: number }

// Everything runs on the legacy default stream, so uploads, poisoning memsets, the kernel and the downloads are
// ordered without explicit synchronisation.
function checkStaging(stager: Stager, shape: StagingShape, cases: Case[]): void {
  const { hiddenSize: H, topk: K } = shape;
  for (const { tokens: T, seed } of cases) {
    const rng = new Rng(seed);
    const xBits = stressHidden(rng, T, H);
    const { ids, w } = routerOutputs(rng, T, K, 256);
    using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, H], xBits));
    using dIds = DeviceTensor.fromHost(new HostTensor('I64', [T, K], ids));
    using dW = DeviceTensor.fromHost(new HostTensor('F32', [T, K], w));
    // Poison the outputs so a row the kernel skips cannot pass by accident.
    stager.out.xFp8.buffer.memset8(0x5a);
    stager.out.xSf.buffer.memset8(0x5a);
    stager.stage(x, dIds, dW);
    const got = stager.download(T);
    const ref = quantizeRowsF32Scale(decodeBF16Array(xBits), T, H);
    let codeMismatches = 0;
    let firstBad = -1;
    for (let i = 0; i < ref.q.length; i++) {
      if (got.xFp8[i] !== ref.q[i]) { codeMismatches++; if (firstBad < 0) firstBad = i; }
    }
    assert.equal(codeMismatches, 0, `H=${H} T=${T}: ${codeMismatches} e4m3 codes differ; first at [${Math.floor(firstBad / H)}, ${firstBad % H}]: gpu 0x${got.xFp8[firstBad]?.toString(16)} cpu 0x${ref.q[firstBad]?.toString(16)} (x bits 0x${xBits[firstBad]?.toString(16)}, scale ${ref.sf[Math.floor(firstBad / 128)]})`);
    const sfGot = new Uint32Array(got.xSf.buffer);
    const sfRef = new Uint32Array(ref.sf.buffer);
    for (let i = 0; i < sfRef.length; i++) assert.equal(sfGot[i], sfRef[i], `H=${H} T=${T}: scale ${i} (row ${Math.floor(i / (H / 128))}) gpu ${got.xSf[i]} cpu ${ref.sf[i]}`);
    assert.deepEqual(got.topkIds, ids, `H=${H} T=${T}: ids copied as they are`);
    assert.deepEqual(new Uint32Array(got.topkWeights.buffer), new Uint32Array(w.buffer), `H=${H} T=${T}: weights copied bit for bit`);
  }
}

for (const { label, shape } of STAGING_VARIANTS) {
  test(`staging ${label} (H ${shape.hiddenSize}, K ${shape.topk}): bit-exact codes and scales for T = 0, 1, 7, capacity`, { skip }, () => {
    const capacity = label === 'tiny' ? 96 : 160;
    using stager = Stager.createSync(shape, capacity);
    checkStaging(stager, shape, [
      { tokens: 0, seed: 1 }, { tokens: 1, seed: 2 }, { tokens: 7, seed: 3 }, { tokens: capacity, seed: 4 },
    ]);
  });
}

test('staging flash at T = 4096: bit-exact on a large batch (every block kind many times)', { skip }, () => {
  const shape = STAGING_VARIANTS.find((v) => v.label === 'flash')!.shape;
  using stager = Stager.createSync(shape, 4096);
  checkStaging(stager, shape, [{ tokens: 4096, seed: 99 }]);
});

test('staging refuses T over capacity and mismatched inputs with GuardErrors, before any launch', { skip }, () => {
  const shape = { hiddenSize: 256, topk: 4 };
  using stager = Stager.createSync(shape, 8);
  using x = DeviceTensor.zeros('BF16', [9, 256]);
  using ids = DeviceTensor.zeros('I64', [9, 4]);
  using w = DeviceTensor.zeros('F32', [9, 4]);
  assert.throws(() => stager.stage(x, ids, w), (e: unknown) => e instanceof GuardError && e.code === 'TOKEN_CAPACITY' && /capacity of 8/.test(e.message));
  // The same tensors are fine for a batch within capacity.
  stager.stage(x, ids, w, { tokens: 8 });
  using xBad = DeviceTensor.zeros('BF16', [8, 128]);
  assert.throws(() => stager.stage(xBad, ids, w, { tokens: 8 }), (e: unknown) => e instanceof GuardError && /BF16\[T, 256\]/.test(e.message));
  using idsI32 = DeviceTensor.zeros('I32', [8, 4]);
  assert.throws(() => stager.stage(x, idsI32, w, { tokens: 8 }), (e: unknown) => e instanceof GuardError && /topk_ids/.test(e.message));
  assert.throws(() => stager.stage(x, ids, w, { tokens: 10 }), (e: unknown) => e instanceof GuardError && e.code === 'TOKEN_CAPACITY');
});

test('staging on a created stream and replayed from a captured CUDA graph gives the same bits', { skip }, () => {
  const shape = STAGING_VARIANTS.find((v) => v.label === 'pro')!.shape;
  const { hiddenSize: H, topk: K } = shape;
  const T = 7;
  const rng = new Rng(5);
  const xBits = stressHidden(rng, T, H);
  const { ids, w } = routerOutputs(rng, T, K, 384);
  using stream = Stream.create();
  using stager = Stager.createSync(shape, 32);
  using x = DeviceTensor.fromHost(new HostTensor('BF16', [T, H], xBits), stream);
  using dIds = DeviceTensor.fromHost(new HostTensor('I64', [T, K], ids), stream);
  using dW = DeviceTensor.fromHost(new HostTensor('F32', [T, K], w), stream);
  using graph = CudaGraph.capture(stream, () => stager.stage(x, dIds, dW, { stream }));
  stager.out.xFp8.buffer.memset8(0x5a, { stream });
  stager.out.xSf.buffer.memset8(0x5a, { stream });
  graph.launch(stream);
  const got = stager.download(T, stream);
  const ref = quantizeRowsF32Scale(decodeBF16Array(xBits), T, H);
  assert.deepEqual(got.xFp8, ref.q);
  assert.deepEqual(new Uint32Array(got.xSf.buffer), new Uint32Array(ref.sf.buffer));
  assert.deepEqual(got.topkIds, ids);
});
