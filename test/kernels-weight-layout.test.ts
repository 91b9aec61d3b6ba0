// The tiled weight layout of the grouped GEMM (src/kernels/weight-layout.ts), on the CPU: where every byte goes,
// that untile inverts tile, that a 128 x 128 tile is one contiguous run, and the errors for shapes it cannot take.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tiledOffset, tileWeights, untileWeights, WEIGHT_TILE } from '../src/kernels/weight-layout.js';
import { groupedGemmConfig } from '../src/kernels/grouped-gemm.js';
import { EXPERT_WEIGHT_LAYOUT } from '../src/backends/unfused.js';
import { normalizeVariant } from '../src/cuda/kernel-registry.js';
import { registeredKernels } from '../src/cuda/index.js';
import { Rng } from '../src/util/rng.js';

function randomCodes(count: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  const out = new Uint8Array(count);
  for (let i = 0; i < count; i++) out[i] = rng.int(256);
  return out;
}

test('tileWeights puts every byte at tiledOffset, and untileWeights inverts it', () => {
  const [groups, n, k] = [3, 256, 384];
  const codes = randomCodes(groups * n * k, 1);
  const tiled = tileWeights(codes, groups, n, k);
  assert.equal(tiled.length, codes.length);
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < k; c++) {
        const want = codes[(g * n + r) * k + c];
        const got = tiled[tiledOffset(g, r, c, n, k)];
        if (got !== want) assert.fail(`(g ${g}, row ${r}, col ${c}): tiled byte ${got} != ${want}`);
      }
    }
  }
  assert.notDeepEqual(tiled, codes, 'the layouts differ for K > 128');
  assert.deepEqual(untileWeights(tiled, groups, n, k), codes);
});

test('each 128-row x 128-byte tile is one contiguous 16 KB run, tiles in [g][n/128][k/128] order', () => {
  const [groups, n, k] = [2, 256, 256];
  const codes = randomCodes(groups * n * k, 2);
  const tiled = tileWeights(codes, groups, n, k);
  let run = 0;
  for (let g = 0; g < groups; g++) {
    for (let nb = 0; nb < n / WEIGHT_TILE; nb++) {
      for (let kb = 0; kb < k / WEIGHT_TILE; kb++) {
        const base = run * WEIGHT_TILE * WEIGHT_TILE;
        assert.equal(tiledOffset(g, nb * WEIGHT_TILE, kb * WEIGHT_TILE, n, k), base);
        for (let r = 0; r < WEIGHT_TILE; r++) {
          const src = codes.subarray((g * n + nb * WEIGHT_TILE + r) * k + kb * WEIGHT_TILE, (g * n + nb * WEIGHT_TILE + r) * k + (kb + 1) * WEIGHT_TILE);
          assert.deepEqual(tiled.subarray(base + r * WEIGHT_TILE, base + (r + 1) * WEIGHT_TILE), src);
        }
        run++;
      }
    }
  }
});

test('K = 128 makes the layouts identical; per-expert tiling equals tiling the stack', () => {
  const one = randomCodes(4 * 256 * 128, 3);
  assert.deepEqual(tileWeights(one, 4, 256, 128), one);
  const [groups, n, k] = [3, 128, 256];
  const codes = randomCodes(groups * n * k, 4);
  const whole = tileWeights(codes, groups, n, k);
  for (let g = 0; g < groups; g++) {
    const e = codes.subarray(g * n * k, (g + 1) * n * k);
    assert.deepEqual(tileWeights(e, 1, n, k), whole.subarray(g * n * k, (g + 1) * n * k), `expert ${g}`);
  }
});

test('unaligned views take the byte path with the same result; out buffers are filled in place', () => {
  const [groups, n, k] = [1, 128, 256];
  const backing = new Uint8Array(groups * n * k + 1);
  const codes = backing.subarray(1); // byteOffset 1: not 4-byte aligned
  codes.set(randomCodes(codes.length, 5));
  const aligned = Uint8Array.from(codes);
  const out = new Uint8Array(codes.length);
  assert.equal(tileWeights(codes, groups, n, k, out), out);
  assert.deepEqual(out, tileWeights(aligned, groups, n, k));
  const back = new Uint8Array(codes.length);
  untileWeights(out, groups, n, k, back);
  assert.deepEqual(back, aligned);
});

test('shapes and buffers it cannot take are refused with the reason', () => {
  assert.throws(() => tileWeights(new Uint8Array(100 * 256), 1, 100, 256), /multiples of 128/);
  assert.throws(() => tileWeights(new Uint8Array(128 * 256), 2, 128, 256), /expected groups x N x K = 2 x 128 x 256/);
  assert.throws(() => untileWeights(new Uint8Array(0), 0, 128, 128), /groups = 0/);
  const codes = new Uint8Array(128 * 256);
  assert.throws(() => tileWeights(codes, 1, 128, 256, codes), /overlaps/);
  assert.throws(() => tileWeights(codes, 1, 128, 256, new Uint8Array(10)), /out has 10 bytes/);
});

test('the GEMM launcher: weightLayout tiled sets GG_WTILED, keeps the default variants unchanged', () => {
  const rows = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 4096 });
  assert.equal(rows.weightLayout, 'rows');
  assert.equal('GG_WTILED' in rows.defines, false, 'the default specialisation keeps its defines (and cache key)');
  const tiled = groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 4096, k: 4096, weightLayout: 'tiled' });
  assert.deepEqual([tiled.weightLayout, tiled.defines.GG_WTILED, tiled.weightBoxRows, tiled.smemBytes], ['tiled', 1, 128, rows.smemBytes]);
  // Decode: the 256-row SwiGLU unit spans two tiles, so its box is one 128-row tile; the 64-row bf16 box stays.
  const d1 = groupedGemmConfig({ path: 'decode', epilogue: 'swiglu-fp8', n: 4096, k: 4096, weightLayout: 'tiled' });
  assert.deepEqual([d1.sub, d1.weightBoxRows, d1.defines.GG_WTILED], [4, 128, 1]);
  const d1rows = groupedGemmConfig({ path: 'decode', epilogue: 'swiglu-fp8', n: 4096, k: 4096 });
  assert.equal(d1rows.weightBoxRows, 256);
  const d2 = groupedGemmConfig({ path: 'decode', epilogue: 'bf16', n: 4096, k: 2048, weightLayout: 'tiled' });
  assert.equal(d2.weightBoxRows, 64);
  assert.throws(() => groupedGemmConfig({ path: 'normal', epilogue: 'bf16', n: 256, k: 256, weightLayout: 'cols' as never }),
    /weightLayout "cols" is not 'rows' or 'tiled'/);
});

test('the unfused backend uploads tiled weights by default, and CI compiles the tiled variants it launches', () => {
  assert.equal(EXPERT_WEIGHT_LAYOUT, 'tiled');
  const reg = registeredKernels().find((r) => r.name === 'grouped_gemm_fp8');
  assert.ok(reg, 'grouped_gemm_fp8 is registered');
  for (const p of ['tiny', 'flash', 'pro']) {
    for (const path of ['normal', 'decode']) {
      for (const l of ['L1', 'L2']) {
        const v = reg.variants.map(normalizeVariant).find((x) => x.label === `${p}-${l}-${path}-tiled`);
        assert.ok(v && v.defines.GG_WTILED === 1, `${p}-${l}-${path}-tiled is registered with GG_WTILED 1`);
      }
    }
  }
});
