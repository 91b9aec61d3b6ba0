// The grouped GEMM launcher's pure side (no GPU): which specialisation a shape gets, its shared-memory plan (which
// must equal NormalPlan / DecodePlan in grouped_gemm_fp8.cu: the kernel traps on a short launch), the CI variant
// registration, and the errors for shapes the kernel cannot take.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compileKernel, findNvcc, KernelCompileError } from '../src/cuda/compile.js';
import { registeredKernels } from '../src/cuda/index.js';
import {
  GROUPED_GEMM_PRESETS, GROUPED_GEMM_ROW_TILE, groupedGemmConfig, groupedGemmSmemBytes, splitKWorkspace,
} from '../src/kernels/grouped-gemm.js';
import { denseDecodeSplitK, denseGemmSpec } from '../src/kernels/model-ops.js';
import { GuardError } from '../src/moe/guards.js';

test('shared-memory plans match the kernel\'s NormalPlan / DecodePlan arithmetic', () => {
  // normal, 256-column tiles: 4 stages of (16 KB A + 32 KB B + 512 B sfa) + barriers; + 64 KB bf16 staging for TMA
  assert.equal(groupedGemmSmemBytes('normal', 2, 4, false), 4 * (16384 + 32768 + 512) + 64);
  assert.equal(groupedGemmSmemBytes('normal', 2, 3, true), 65536 + 3 * (16384 + 32768 + 512) + 48);
  assert.equal(groupedGemmSmemBytes('normal', 1, 6, false), 6 * (16384 + 16384 + 512) + 96);
  // decode: stages of (64*MSUB rows x 128 B weights + 2 KB tokens + a 128 B scale slot) + barriers + 256 B amax
  assert.equal(groupedGemmSmemBytes('decode', 1, 16, false), 16 * (8192 + 2048 + 128) + 256 + 256);
  assert.equal(groupedGemmSmemBytes('decode', 4, 6, false), 6 * (32768 + 2048 + 128) + 96 + 256);
  // Every specialisation carries its plan's size to nvcc (GG_SMEM_BYTES), where the kernel static_asserts it
  // against NormalPlan / DecodePlan (gemm/grouped.cuh): a drift fails `megamoe kernels --check`.
  for (const path of ['normal', 'decode'] as const) {
    const c = groupedGemmConfig({ path, epilogue: 'bf16', n: 4096, k: 2048 });
    assert.equal(c.defines.GG_SMEM_BYTES, c.smemBytes);
  }
  const src = readFileSync(new URL('../../src/kernels/grouped_gemm_fp8.cu', import.meta.url), 'utf8');
  assert.match(src, /static_assert\(.*kSmemBytes == GG_SMEM_BYTES/);
});

const noNvcc = findNvcc() ? undefined : 'nvcc not found (set CUDA_HOME or PATH)';

test('nvcc refuses a grouped-GEMM plan that drifted from the kernel\'s', { skip: noNvcc }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-gg-drift-'));
  const saved = process.env.MEGAMOE_CACHE_DIR;
  process.env.MEGAMOE_CACHE_DIR = dir;
  try {
    const c = groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 256, k: 128 });
    await assert.rejects(compileKernel({ source: 'grouped_gemm_fp8.cu', defines: { ...c.defines, GG_SMEM_BYTES: c.smemBytes + 16 } }),
      (e: unknown) => e instanceof KernelCompileError && /drifted/.test(e.nvccOutput));
  } finally {
    if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR; else process.env.MEGAMOE_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('default specialisations of the V4 layer shapes', () => {
  const l2 = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 2048 });
  assert.deepEqual([l2.sub, l2.stages, l2.store, l2.multicast, l2.threads, l2.weightBoxRows, l2.activationBoxRows],
    [2, 3, 'tma', 'weights', 384, 128, 128]);
  assert.ok(l2.smemBytes <= 232448);
  assert.deepEqual(l2.defines, { GG_SWAP: 0, GG_EPI: 0, GG_N: 4096, GG_K: 2048, GG_SUB: 2, GG_STAGES: 3, GG_MCAST: 1, GG_STORE: 1, GG_SMEM_BYTES: l2.smemBytes });
  const plain = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 2048, tuning: { multicast: 'none', store: 'direct' } });
  assert.deepEqual([plain.stages, plain.defines.GG_MCAST, plain.defines.GG_STORE], [4, 0, 0]);
  const actMc = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 4096, tuning: { multicast: 'activations' } });
  assert.deepEqual([actMc.activationBoxRows, actMc.defines.GG_MCAST], [64, 2]); // each CTA of a pair fetches half

  const l1 = groupedGemmConfig({ path: 'normal', epilogue: 'swiglu-fp8', n: 4096, k: 4096 });
  assert.deepEqual([l1.sub, l1.stages, l1.store, l1.multicast], [2, 4, 'direct', 'weights']); // fp8 epilogue stores directly

  const odd = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 384, k: 256 });
  assert.deepEqual([odd.sub, odd.stages, odd.multicast], [1, 5, 'none']); // N % 256 != 0 -> 128-column tiles, no pairs

  const d1 = groupedGemmConfig({ path: 'decode', epilogue: 'swiglu-fp8', n: 6144, k: 7168 });
  assert.deepEqual([d1.rowTile, d1.sub, d1.stages, d1.threads, d1.weightBoxRows, d1.multicast], [16, 4, 6, 256, 256, 'none']);
  const d2 = groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 7168, k: 3072 });
  assert.deepEqual([d2.sub, d2.stages, d2.weightBoxRows], [1, 16, 64]);
  assert.deepEqual(GROUPED_GEMM_ROW_TILE, { normal: 128, decode: 16 });
});

test('every plan the launcher picks fits the 227 KB a block may use', () => {
  for (const p of GROUPED_GEMM_PRESETS) {
    for (const path of ['normal', 'decode'] as const) {
      for (const c of [
        groupedGemmConfig({ path, epilogue: 'swiglu-fp8', n: 2 * p.inter, k: p.hidden }),
        groupedGemmConfig({ path, epilogue: 'bf16', n: p.hidden, k: p.inter }),
      ]) {
        assert.ok(c.smemBytes <= 232448, `${p.label} ${path}: ${c.smemBytes} bytes`);
        assert.ok(c.stages >= 3, `${p.label} ${path}: only ${c.stages} stages`);
      }
    }
  }
});

test('shapes the kernel cannot take are refused with the fix in the message', () => {
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4000, k: 4096 }),
    (e: unknown) => e instanceof GuardError && e.code === 'DIM_NOT_ALIGNED' && /N = 4000/.test(e.message) && /multiple of 128/.test(e.message));
  assert.throws(() => groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 4096, k: 100 }),
    (e: unknown) => e instanceof GuardError && /K = 100/.test(e.message));
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'swiglu-fp8', n: 384, k: 256 }),
    (e: unknown) => e instanceof GuardError && /I a multiple of 128/.test(e.message));
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 384, k: 256, tuning: { multicast: 'weights' } }),
    /weight multicast needs N % 256 == 0/);
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 768, k: 256, tuning: { multicast: 'activations' } }),
    /needs N % 512 == 0/);
  assert.throws(() => groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 4096, k: 256, tuning: { multicast: 'weights' } }),
    /decode path has no multicast/);
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 4096, tuning: { stages: 9 } }),
    /shared memory/);
  assert.throws(() => groupedGemmConfig({ path: 'sideways' as never, epilogue: 'bf16', n: 256, k: 256 }), /path/);
});

test('the launcher registers every preset variant for CI compilation', () => {
  const reg = registeredKernels().find((r) => r.name === 'grouped_gemm_fp8');
  assert.ok(reg, 'grouped_gemm_fp8 is registered');
  assert.equal(reg.source, 'grouped_gemm_fp8.cu');
  assert.equal(reg.entry, 'grouped_gemm_fp8');
  const labels = reg.variants.map((v) => ('label' in v ? v.label : ''));
  for (const p of ['tiny', 'flash', 'pro']) {
    for (const path of ['normal', 'decode']) {
      assert.ok(labels.includes(`${p}-L1-${path}`) && labels.includes(`${p}-L2-${path}`), `${p} ${path}`);
    }
  }
});

test('split-K decode GEMMs: the define, the workspace sizes, the dense projections\' split counts, the refusals', () => {
  const wqA = groupedGemmConfig(denseGemmSpec('decode', 1024, 4096));
  assert.equal(wqA.splitK, 8);
  assert.equal(wqA.defines.GG_SPLITK, 8);
  // f32 partials: splits x 16 rows x N per live row tile; one counter per (row tile, 64-row weight unit)
  assert.deepEqual(splitKWorkspace(wqA, 1), { partialFloats: 8 * 16 * 1024, arrivals: 16 });
  assert.deepEqual(splitKWorkspace(wqA, 3), { partialFloats: 3 * 8 * 16 * 1024, arrivals: 48 });
  // Flash: ~128 CTAs of at least 2 K blocks (wq_a 16 units x 8, wkv 8 x 16, wo_b 64 x 2); wq_b / indexer wq_b have
  // enough units; the normal path never splits, and the unsplit configs keep their defines (their cache keys).
  assert.deepEqual([[1024, 4096], [512, 4096], [4096, 8192], [32768, 1024], [8192, 1024], [128, 128]].map(([n, k]) => denseDecodeSplitK(n, k)),
    [8, 16, 2, 1, 1, 1]);
  assert.equal(groupedGemmConfig(denseGemmSpec('normal', 1024, 4096)).splitK, 1);
  assert.equal('GG_SPLITK' in groupedGemmConfig(denseGemmSpec('decode', 32768, 1024)).defines, false);
  assert.deepEqual(splitKWorkspace(groupedGemmConfig(denseGemmSpec('decode', 32768, 1024)), 1), { partialFloats: 0, arrivals: 0 });
  assert.throws(() => groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 1024, k: 384, splitK: 2 }), /dividing K\/128 = 3/);
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 1024, k: 4096, splitK: 2 }), /decode path and the bf16 epilogue/);
  assert.throws(() => groupedGemmConfig({ path: 'decode', epilogue: 'swiglu-fp8', n: 1024, k: 4096, splitK: 2 }), /decode path and the bf16 epilogue/);
});
