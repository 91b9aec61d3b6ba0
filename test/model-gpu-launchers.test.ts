// CPU tests of the GPU model launchers' argument checks (src/gpu-model/): every bad argument is refused with a
// GpuModelArgumentError that names the fix, before any launch; good arguments produce the launch shape the kernels
// expect. No GPU: the kernels are stand-ins that record launches and the device tensors are views of a fake buffer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DeviceTensor, type DeviceBuffer, type Kernel } from '../src/cuda/index.js';
import { checkDenseBinding } from '../src/gpu-model/dense-fp8.js';
import { GpuModelArgumentError } from '../src/gpu-model/errors.js';
import { GpuLogits } from '../src/gpu-model/logits.js';
import { GpuRowOps, hcMixRowsPerBlock, hcTiledChunks, hcTiledSmemBytes, hcTokensPerBlock, NORM_TARGET_WARPS, rmsNormSplit, ropeBlocksPerRow, type Fp8Activations } from '../src/gpu-model/row-ops.js';
import { GPU_SAMPLER_MAX_TOP_K, samplingMode } from '../src/gpu-model/sampler.js';
import type { SamplingParams } from '../src/generate/contracts.js';
import { MODEL_OPS_ENTRIES, type ModelOpsKernels } from '../src/kernels/model-ops.js';
import type { DType } from '../src/tensor/host.js';

interface Launch { entry: string; grid: unknown; block: unknown; smem: number; args: number }

function fakeKernels(log: Launch[]): ModelOpsKernels {
  const out: Record<string, unknown> = {};
  for (const entry of MODEL_OPS_ENTRIES) {
    out[entry] = {
      launch(cfg: { grid: unknown; block: unknown; sharedMemBytes?: number }, args: readonly unknown[]) {
        log.push({ entry, grid: cfg.grid, block: cfg.block, smem: cfg.sharedMemBytes ?? 0, args: args.length });
      },
      setMaxDynamicSharedMemory() {},
    } as unknown as Kernel;
  }
  return out as ModelOpsKernels;
}

let nextPtr = 0x100000n;
/** A device tensor over a fake buffer (16-byte aligned unless `misaligned`): enough for the launchers' checks. */
function fake<D extends DType>(dtype: D, shape: number[], misaligned = false): DeviceTensor<D> {
  const buf = { ptr: nextPtr + (misaligned ? 2n : 0n), byteLength: 1 << 30, disposed: false } as unknown as DeviceBuffer;
  nextPtr += 1n << 31n;
  return new DeviceTensor(dtype, shape, buf, false);
}

function refuses(f: () => void, re: RegExp): void {
  assert.throws(f, (e: unknown) => e instanceof GpuModelArgumentError && re.test(e.message) && e.fix.length > 0, `expected a GpuModelArgumentError matching ${re}`);
}

test('GpuRowOps refuses an hc stream count the kernel cannot hold', () => {
  refuses(() => GpuRowOps.fromKernels(0, fakeKernels([])), /hc_mult = 0 .*1\.\.8/);
  refuses(() => GpuRowOps.fromKernels(9, fakeKernels([])), /hc_mult = 9/);
});

test('embed: argument checks and launch shape', () => {
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const table = fake('BF16', [1000, 256]);
  refuses(() => ops.embed(fake('I64', [5]) as never, table, fake('BF16', [5, 4, 256])), /ids is .*I64.*expected I32\[\*\]/);
  refuses(() => ops.embed(fake('I32', [5]), fake('F32', [1000, 256]) as never, fake('BF16', [5, 256])), /embed\.weight as BF16/);
  refuses(() => ops.embed(fake('I32', [5]), fake('BF16', [1000, 100]), fake('BF16', [5, 100])), /D = 100 is not a multiple of 8/);
  refuses(() => ops.embed(fake('I32', [5]), table, fake('BF16', [5, 256]), { copies: 4 }), /out is .*pass out as BF16 \[>= 5, 4, 256\]/);
  refuses(() => ops.embed(fake('I32', [5]), table, fake('BF16', [5, 256]), { tokens: 6 }), /tokens = 6/);
  refuses(() => ops.embed(fake('I32', [5], true), table, fake('BF16', [5, 256])), /not 16-byte aligned/);
  ops.embed(fake('I32', [5]), table, fake('BF16', [5, 4, 256]), { copies: 4 });
  ops.embed(fake('I32', [5]), table, fake('BF16', [5, 4, 256]), { copies: 4, tokens: 0 }); // T = 0 launches nothing
  assert.deepEqual(log.map((l) => [l.entry, l.grid, l.block]), [['mo_embed', 5, 128]]);
});

test('rmsNorm / actQuant: shape, stride, eps, weight and FP8 capacity checks; one warp per row', () => {
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const x = fake('BF16', [20, 512]);
  const act = (mCap: number, k: number): Fp8Activations => ({ q: fake('F8_E4M3', [mCap, k]), sf: fake('F32', [k / 128, mCap]), pow2: true });
  refuses(() => ops.rmsNorm(x, fake('BF16', [20, 512]), { eps: Number.NaN }), /eps = NaN.*norm_eps/);
  refuses(() => ops.rmsNorm(x, fake('BF16', [20, 512]), { eps: 1e-6, weight: fake('F32', [256]) }), /weight is .*expected F32\[512\]/);
  refuses(() => ops.rmsNorm(x, fake('BF16', [10, 512]), { eps: 1e-6 }), /out .* holds fewer than 20 rows/);
  refuses(() => ops.rmsNorm(x, undefined, { eps: 1e-6 }), /neither out nor quant/);
  refuses(() => ops.rmsNorm(fake('BF16', [4, 100]), fake('BF16', [4, 100]), { eps: 1e-6 }), /n = 100 is not a positive multiple of 8/);
  refuses(() => ops.rmsNorm(x, fake('BF16', [20, 512]), { eps: 1e-6, xStride: 500 }), /xStride = 500/);
  refuses(() => ops.rmsNorm(x, fake('BF16', [20, 512]), { eps: 1e-6, quant: act(16, 512) }), /20 rows exceed the FP8 activations' capacity of 16/);
  refuses(() => ops.rmsNorm(fake('BF16', [4, 136]), fake('BF16', [4, 136]), { eps: 1e-6, quant: act(4, 128) }), /n = 136 is not a multiple of 128/);
  refuses(() => ops.actQuant(x, { q: fake('F8_E4M3', [32, 512]), sf: fake('F32', [32, 4]), pow2: false }), /quant\.sf is .*expected F32\[4, 32\].*allocFp8Activations/);
  ops.rmsNorm(x, fake('BF16', [20, 512]), { eps: 1e-6, weight: fake('F32', [512]), quant: act(32, 512) });
  ops.actQuant(x, act(20, 512));
  // 20 rows of 512 columns (2 steps of 256): split 2, 40 warps in blocks of 8
  assert.deepEqual(log.map((l) => [l.entry, l.grid, l.block, l.args]), [['mo_rms_norm', 5, 256, 14], ['mo_rms_norm', 5, 256, 14]]);
  log.length = 0;
  ops.actQuant(fake('BF16', [1, 8192]), act(16, 8192)); // decode: wo_b's input, one step per warp
  ops.actQuant(fake('BF16', [4096, 8192]), act(4096, 8192)); // prefill: one warp per row, as before the split
  assert.deepEqual(log.map((l) => [l.entry, l.grid]), [['mo_rms_norm', 4], ['mo_rms_norm', 512]]);
});

test('rmsNormSplit: one warp per row at many rows, a row\'s 256-column steps over up to one warp each at few, no empty part', () => {
  assert.equal(NORM_TARGET_WARPS, 1024);
  const cases: Array<[number, number, number]> = [
    // rows, n, split
    [1, 8192, 32], [1, 1024, 4], [1, 512, 2], [1, 256, 1], [1, 128, 1], [1, 136, 1], [1, 264, 2], [1, 7168, 28],
    [2, 8192, 32], [8, 8192, 32], [64, 8192, 16], [64, 1024, 4], [100, 8192, 8], [256, 8192, 4], [256, 1024, 4],
    [300, 8192, 3], [512, 8192, 2], [513, 8192, 1], [1023, 8192, 1], [1024, 8192, 1], [2048, 8192, 1], [4096, 512, 1],
    [0, 8192, 1], [3, 4096 + 8, 17],
  ];
  for (const [rows, n, want] of cases) assert.equal(rmsNormSplit(rows, n), want, `rows ${rows} n ${n}`);
  for (let rows = 1; rows <= 1100; rows += 7) {
    for (const n of [8, 128, 384, 1000, 1024, 4096, 7168, 8192, 16384]) {
      const split = rmsNormSplit(rows, n);
      const steps = Math.ceil(n / 256);
      const per = Math.ceil(steps / split);
      assert.ok(split >= 1 && split <= steps || steps === 0, `rows ${rows} n ${n}: split ${split} of ${steps} steps`);
      assert.ok((split - 1) * per < steps, `rows ${rows} n ${n}: split ${split} leaves an empty part`); // the kernel's parts
      assert.ok(split === 1 || rows * split <= NORM_TARGET_WARPS, `rows ${rows} n ${n}: ${rows * split} warps`);
      if (rows >= NORM_TARGET_WARPS) assert.equal(split, 1);
    }
  }
});

test('rope: pairs must be aligned, the rope dims inside a head, the tensors large enough', () => {
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const q = fake('BF16', [3, 64, 512]);
  const pos = fake('I32', [3]);
  const fr = fake('F32', [32]);
  refuses(() => ops.rope(q, pos, fake('F32', [16]), { heads: 64, headStride: 512, ropeOffset: 448, rd: 64 }), /freqs is .*ropeFrequencies/);
  refuses(() => ops.rope(q, pos, fr, { heads: 64, headStride: 512, ropeOffset: 449, rd: 64 }), /ropeOffset = 449.*even/);
  refuses(() => ops.rope(q, pos, fr, { heads: 64, headStride: 512, ropeOffset: 480, rd: 64 }), /runs past the head stride/);
  refuses(() => ops.rope(q, pos, fr, { heads: 65, headStride: 512, ropeOffset: 448, rd: 64 }), /smaller than 3 rows x 65 heads/);
  refuses(() => ops.rope(q, pos, fr, { heads: 64, headStride: 512, ropeOffset: 448, rd: 64, rows: 4 }), /rows = 4/);
  ops.rope(q, pos, fr, { heads: 64, headStride: 512, ropeOffset: 448, rd: 64, inverse: true });
  // 3 rows of 64 heads x 32 pairs: each row over 8 blocks of 128 threads (2 pairs a thread)
  assert.deepEqual(log.map((l) => [l.entry, l.grid, l.block, l.smem]), [['mo_rope', [3, 8], 128, 256]]);
});

test('ropeBlocksPerRow: a few rows split over blocks (~2 pairs a thread, ~2 blocks a SM), many rows one block each', () => {
  assert.equal(ropeBlocksPerRow(1, 64 * 32), 8, 'a decode step\'s q: 2048 pairs');
  assert.equal(ropeBlocksPerRow(1, 32), 1, 'one kv head: 32 pairs');
  assert.equal(ropeBlocksPerRow(64, 64 * 32), 4, '64 rows: ~2 blocks a SM (264 / 64)');
  assert.equal(ropeBlocksPerRow(300, 64 * 32), 1);
  assert.equal(ropeBlocksPerRow(2048, 64 * 32), 1, 'prefill');
});

test('hc_pre / hc_head / hc_post: stream layout, parameter shapes, eps, Sinkhorn iterations', () => {
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const D = 256; const T = 6;
  const hs = fake('BF16', [T, 4, D]);
  const p = { fn: fake('F32', [24, 4 * D]), base: fake('F32', [24]), scale: fake('F32', [3]) };
  const out = { post: fake('F32', [T, 4]), comb: fake('F32', [T, 4, 4]), y: fake('BF16', [T, D]) };
  const o = { normEps: 1e-6, hcEps: 1e-6, sinkhornIters: 20 };
  refuses(() => ops.hcPre(fake('BF16', [T, 2, D]), p, out, o), /hs is .*expected BF16\[\*, 4, \*\]/);
  refuses(() => ops.hcPre(hs, { ...p, fn: fake('F32', [24, D]) }, out, o), /fn is .*hc_\*_fn as F32 \[24, 1024\]/);
  refuses(() => ops.hcPre(hs, p, out, { ...o, sinkhornIters: 0 }), /sinkhornIters = 0/);
  refuses(() => ops.hcPre(hs, p, out, { ...o, hcEps: -1 }), /hcEps = -1/);
  refuses(() => ops.hcPre(hs, p, { ...out, comb: fake('F32', [T, 16]) }, o), /comb is/);
  refuses(() => ops.hcPre(hs, p, out, { ...o, normWeight: fake('F32', [D + 8]) }), /normWeight is/);
  ops.hcPre(hs, p, out, { ...o, normWeight: fake('F32', [D]) });
  refuses(() => ops.hcHead(hs, p, out.y, o), /fn is .*\[4, 1024\]/);
  ops.hcHead(hs, { fn: fake('F32', [4, 4 * D]), base: fake('F32', [4]), scale: fake('F32', [1]) }, out.y, o);
  const headP = { fn: fake('F32', [4, 4 * D]), base: fake('F32', [4]), scale: fake('F32', [1]) };
  refuses(() => ops.hcHead(hs, headP, out.y, { ...o, srcRows: fake('I64', [2]) as never }), /srcRows is .*I32/);
  refuses(() => ops.hcHead(hs, headP, fake('BF16', [1, D]), { ...o, srcRows: fake('I32', [2]) }), /rows = 2 .*length of srcRows/);
  refuses(() => ops.mtpCombine(fake('BF16', [T, D]), fake('BF16', [T * 4 - 1, D]), hs, T), /rows = 6 .*h \/ hc/);
  ops.mtpCombine(fake('BF16', [T, D]), fake('BF16', [T * 4, D]), hs, T);
  refuses(() => ops.hcPost(fake('BF16', [T, D + 8]), hs, out.post, out.comb, hs), /f is .*sub-layer output/);
  refuses(() => ops.hcPost(out.y, hs, out.post, out.comb, hs, { rows: T + 1 }), /rows = 7/);
  ops.hcPost(out.y, hs, out.post, out.comb, hs);
  assert.deepEqual(log.map((l) => [l.entry, l.grid, l.block, l.smem]), [
    ['mo_hc_pre', T, 256, D * 4], ['mo_hc_head', T, 256, 0], ['mo_mtp_combine', Math.ceil((T * 4 * D) / 8 / 256), 256, 0],
    ['mo_hc_post', Math.ceil((T * D) / 8 / 256), 256, 0],
  ]);
});

test('hc_pre / hc_head split mixing logits: the scratch\'s shape is checked; up to its rows (<= 64) a mix kernel over (chunks, logit groups, rows) runs first', () => {
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const D = 4096; const T = 3;
  const hs = fake('BF16', [80, 4, D]);
  const p = { fn: fake('F32', [24, 4 * D]), base: fake('F32', [24]), scale: fake('F32', [3]) };
  const headP = { fn: fake('F32', [4, 4 * D]), base: fake('F32', [4]), scale: fake('F32', [1]) };
  const out = { post: fake('F32', [80, 4]), comb: fake('F32', [80, 4, 4]), y: fake('BF16', [80, D]) };
  const o = { normEps: 1e-6, hcEps: 1e-6, sinkhornIters: 20 };
  const scratch = (rows: number, chunks = 16) => fake('F64', [rows, chunks, 25]); // allocHcMixScratch(4, 4096, rows)
  refuses(() => ops.hcPre(hs, p, out, { ...o, rows: T, mixScratch: scratch(64, 8) }), /mixScratch is .*expected F64\[\*, 16, 25\].*allocHcMixScratch\(4, 4096, maxRows\)/);
  refuses(() => ops.hcHead(hs, headP, out.y, { ...o, rows: T, mixScratch: fake('F32', [64, 16, 25]) as never }), /mixScratch is/);
  ops.hcPre(hs, p, out, { ...o, rows: T, mixScratch: scratch(64) });
  ops.hcHead(hs, headP, out.y, { ...o, rows: 1, mixScratch: scratch(64), srcRows: fake('I32', [1]) });
  ops.hcPre(hs, p, out, { ...o, rows: 65, mixScratch: scratch(64) }); // past the scratch's rows: one block per token
  ops.hcPre(hs, p, out, { ...o, rows: 20, mixScratch: scratch(16) }); // the same
  ops.hcPre(hs, p, out, { ...o, rows: 65, mixScratch: scratch(80) }); // past the split: 32-row tiles, 16 chunks of 1024
  assert.deepEqual(log.map((l) => [l.entry, l.grid, l.block, l.args]), [
    ['mo_hc_pre_mix', [16, 6, T], 128, 8], ['mo_hc_pre_fin', T, 256, 22],
    ['mo_hc_head_mix', [16, 1, 1], 128, 8], ['mo_hc_head_fin', 1, 256, 22],
    ['mo_hc_pre', 65, 256, 22], ['mo_hc_pre', 20, 256, 22],
    ['mo_hc_pre_mix_tiled', [16, 3], 256, 8], ['mo_hc_pre_fin', 65, 256, 22],
  ]);
});

test('tiled hc mixing logits: the chunk count whose blocks take the fewest stages at two blocks per SM', () => {
  // flash (4 x 4096 columns): 4096 rows = 128 tiles -> 2 chunks, one wave of 256 blocks (3 chunks: 1.45 waves)
  assert.deepEqual(hcTiledChunks(4, 4096, 4096), { chunks: 2, cols: 8192 });
  assert.deepEqual(hcTiledChunks(4, 4096, 8192), { chunks: 1, cols: 16384 });
  // shared memory: two f64 stages of (32 rows + logits padded to 8) x 68, the 3-stage raw x ring, the squares
  assert.equal(hcTiledSmemBytes(24), 32 + 2 * 56 * 68 * 8 + 3 * 256 * 16 + 32 * 64, 'hc_pre: 24 logits');
  assert.equal(hcTiledSmemBytes(4), 32 + 2 * 40 * 68 * 8 + 3 * 256 * 16 + 32 * 64, 'hc_head: 4 logits');
  assert.deepEqual(hcTiledChunks(4, 4096, 512), { chunks: 16, cols: 1024 }, 'at most the split path\'s 16 chunks');
  assert.deepEqual(hcTiledChunks(4, 4096, 4096, 114), { chunks: 16, cols: 1024 }, 'an H100 PCIe (228 slots): 9 waves of 1024 columns, where 2 chunks take 2 of 8192');
  for (const rows of [65, 300, 1000, 2051, 4096, 9000]) {
    const { chunks, cols } = hcTiledChunks(4, 7168, rows);
    assert.ok(cols % 64 === 0 && chunks * cols >= 4 * 7168 && (chunks - 1) * cols < 4 * 7168, `rows ${rows}: ${chunks} x ${cols}`);
  }
});

test('hc_pre / hc_head rows per block: 1 up to 132 rows, 2 up to 264, then 4 (grid ceil(rows / tpb)); the split path 1; forced values checked', () => {
  const cases: Array<[number, number]> = [[1, 1], [64, 1], [65, 1], [132, 1], [133, 2], [256, 2], [264, 2], [265, 4], [2048, 4], [8192, 4]];
  for (const [rows, tpb] of cases) assert.equal(hcTokensPerBlock(rows), tpb, `rows ${rows}`);
  assert.equal(hcTokensPerBlock(2048, 1), 1);
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const D = 256; const T = 2051;
  const hs = fake('BF16', [T, 4, D]);
  const p = { fn: fake('F32', [24, 4 * D]), base: fake('F32', [24]), scale: fake('F32', [3]) };
  const headP = { fn: fake('F32', [4, 4 * D]), base: fake('F32', [4]), scale: fake('F32', [1]) };
  const out = { post: fake('F32', [T, 4]), comb: fake('F32', [T, 4, 4]), y: fake('BF16', [T, D]) };
  const o = { normEps: 1e-6, hcEps: 1e-6, sinkhornIters: 20 };
  ops.hcPre(hs, p, out, o);                                   // 2051 rows: 4 per block, the last block 3
  ops.hcPre(hs, p, out, { ...o, rows: 200 });                 // 2 per block
  ops.hcHead(hs, headP, out.y, { ...o, rows: 9, tokensPerBlock: 4 });
  ops.hcPre(hs, p, out, { ...o, rows: 3, tokensPerBlock: 2, mixScratch: fake('F64', [64, 1, 25]) }); // split: 1
  refuses(() => ops.hcPre(hs, p, out, { ...o, tokensPerBlock: 3 as never }), /tokensPerBlock = 3.*1, 2 or 4/);
  assert.deepEqual(log.map((l) => [l.entry, l.grid]), [
    ['mo_hc_pre', 513], ['mo_hc_pre', 100], ['mo_hc_head', 3], ['mo_hc_pre_mix', [1, 6, 3]], ['mo_hc_pre_fin', 3],
  ]);
});

test('split mixing logits rows per block: 1 below 4 rows, 2 below 16, 4 below 32, then 8 (grid z = ceil(rows / rpb)); forced values checked', () => {
  const cases: Array<[number, number]> = [[1, 1], [3, 1], [4, 2], [15, 2], [16, 4], [31, 4], [32, 8], [64, 8]];
  for (const [rows, rpb] of cases) assert.equal(hcMixRowsPerBlock(rows), rpb, `rows ${rows}`);
  const log: Launch[] = [];
  const ops = GpuRowOps.fromKernels(4, fakeKernels(log));
  const D = 4096;
  const hs = fake('BF16', [64, 4, D]);
  const p = { fn: fake('F32', [24, 4 * D]), base: fake('F32', [24]), scale: fake('F32', [3]) };
  const out = { post: fake('F32', [64, 4]), comb: fake('F32', [64, 4, 4]), y: fake('BF16', [64, D]) };
  const o = { normEps: 1e-6, hcEps: 1e-6, sinkhornIters: 20, mixScratch: fake('F64', [64, 16, 25]) };
  ops.hcPre(hs, p, out, { ...o, rows: 64 });
  ops.hcPre(hs, p, out, { ...o, rows: 9 });
  ops.hcPre(hs, p, out, { ...o, rows: 3, mixRowsPerBlock: 2 });
  refuses(() => ops.hcPre(hs, p, out, { ...o, rows: 3, mixRowsPerBlock: 3 as never }), /mixRowsPerBlock = 3.*1, 2, 4 or 8/);
  assert.deepEqual(log.filter((l) => l.entry === 'mo_hc_pre_mix').map((l) => l.grid), [[16, 6, 8], [16, 6, 5], [16, 6, 2]]);
});

test('GPU sampler: the mode of each parameter set is the CPU Sampler\'s branch; top-k past the cap is refused with the fix', () => {
  const V = 1000;
  const mode = (p: Partial<SamplingParams>) => samplingMode({ temperature: 1, topK: 0, topP: 1, ...p }, V);
  assert.equal(mode({ temperature: 0 }).mode, 0);
  assert.equal(mode({ topK: 1 }).mode, 0);
  assert.deepEqual(mode({ temperature: 0.5 }), { mode: 1, topK: 0, topP: 1, invT: 2 });
  assert.equal(mode({ topK: V }).mode, 1);            // top-k off when it covers the vocabulary
  assert.deepEqual(mode({ topK: 50, topP: 0.9 }), { mode: 2, topK: 50, topP: 0.9, invT: 1 });
  assert.equal(mode({ topP: 0.9 }).mode, 3);
  assert.equal(mode({ topK: V + 5, topP: 0.9 }).mode, 3);
  assert.throws(() => samplingMode({ temperature: 1, topK: GPU_SAMPLER_MAX_TOP_K + 1, topP: 1 }, 129280),
    (e: unknown) => e instanceof GpuModelArgumentError && /top_k = 2049 exceeds/.test(e.message) && /use top_k <= 2048/.test(e.message));
  assert.throws(() => mode({ topP: 0 }), /topP must be in \(0, 1\]/); // the CPU sampler's validation
  assert.throws(() => mode({ temperature: -1 }), /temperature must be/);
});

test('dense FP8 binding and the logits launcher refuse mismatched tensors with the fix', () => {
  const n = 1024; const k = 4096; const mCap = 32;
  const act = { q: fake('F8_E4M3', [mCap, k]), sf: fake('F32', [k / 128, mCap]), pow2: true };
  const w = { w: fake('F8_E4M3', [n, k]), s: fake('F32', [n / 128, k / 128]) };
  checkDenseBinding(n, k, mCap, act, w, fake('BF16', [mCap, n]));
  refuses(() => checkDenseBinding(n, k, mCap, { ...act, q: fake('F8_E4M3', [16, k]) }, w, fake('BF16', [mCap, n])), /act\.q .*allocFp8Activations\(linear\.mCap = 32, 4096\)/);
  refuses(() => checkDenseBinding(n, k, mCap, act, { ...w, s: fake('F32', [n / 128, 1]) }, fake('BF16', [mCap, n])), /weight\.s/);
  refuses(() => checkDenseBinding(n, k, mCap, act, w, fake('BF16', [mCap, n + 128])), /out .*BF16 \[32, 1024\]/);
  refuses(() => new GpuLogits(1000, 100), /D = 100/);
  const lg = new GpuLogits(1000, 128);
  refuses(() => lg.run(fake('BF16', [2, 128]), fake('BF16', [999, 128]), fake('F32', [2, 1000]), 2), /head .*BF16 \[1000, 128\]/);
  refuses(() => lg.run(fake('BF16', [2, 128]), fake('BF16', [1000, 128]), fake('F32', [2, 1000]), 3), /rows = 3/);
  lg.run(fake('BF16', [2, 128]), fake('BF16', [1000, 128]), fake('F32', [2, 1000]), 0); // nothing to do: no cuBLASLt needed
});
