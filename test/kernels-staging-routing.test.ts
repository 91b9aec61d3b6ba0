// CPU-side pieces of the staging and routing launchers: shape checks, launch geometry, the logits tile heuristic and
// its split-K workspace, traffic figures, the bench's argument parsing and Markdown; plus an nvcc build of the
// largest variants that fails on register spills (where nvcc exists; no GPU needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { compileKernel, findNvcc, kernelsDir } from '../src/cuda/index.js';
import { parseList, parseTokenList, resolveCommit, routingMarkdown, stagingMarkdown, type BenchMeta } from '../src/bench/staging-routing.js';
import {
  checkRouterShape, planRouterLogits, ROUTER_MAX_SPLITS, ROUTER_TILES, ROUTER_VARIANTS, routerTileSmemBytes,
  routerWorkspaceFloats, routingDefines, routingTrafficBytes, ROUTING_SOURCE, type RouterTile,
} from '../src/kernels/routing.js';
import {
  checkStagingShape, STAGING_SOURCE, STAGING_VARIANTS, stagingDefines, stagingLaunchDims, stagingTrafficBytes,
} from '../src/kernels/staging.js';
import { GuardError } from '../src/moe/guards.js';
import { randomBf16, randomBf16Rows } from '../src/bench/random-bf16.js';
import { Rng } from '../src/util/rng.js';

const H100_SMS = 132;

test('staging shape checks name the problem: H not a multiple of 128, K outside [1, 32]', () => {
  assert.throws(() => checkStagingShape({ hiddenSize: 4000, topk: 6 }), (e: unknown) => e instanceof GuardError && e.code === 'DIM_NOT_ALIGNED' && /4000/.test(e.message));
  assert.throws(() => checkStagingShape({ hiddenSize: 4096, topk: 33 }), (e: unknown) => e instanceof GuardError && /33/.test(e.message));
  assert.throws(() => checkStagingShape({ hiddenSize: 4096, topk: 0 }), GuardError);
  for (const v of STAGING_VARIANTS) checkStagingShape(v.shape);
  assert.deepEqual(stagingDefines({ hiddenSize: 7168, topk: 6 }), { STAGING_HIDDEN: 7168, STAGING_TOPK: 6 });
});

test('staging launch: one warp per token, 8 per block; traffic counts bf16 in, e4m3 + scales out, ids/weights both ways', () => {
  assert.deepEqual(stagingLaunchDims(1), { grid: 1, block: 256 });
  assert.deepEqual(stagingLaunchDims(8), { grid: 1, block: 256 });
  assert.deepEqual(stagingLaunchDims(9), { grid: 2, block: 256 });
  const b = stagingTrafficBytes(2, { hiddenSize: 256, topk: 4 });
  assert.equal(b.read, 2 * (512 + 32 + 16));
  assert.equal(b.written, 2 * (256 + 8 + 32 + 16));
  assert.equal(b.total, b.read + b.written);
});

test('routing shape checks: E must tile by 8, K <= min(E, 32), H % 128', () => {
  assert.throws(() => checkRouterShape({ hiddenSize: 4096, experts: 250, topk: 6 }), (e: unknown) => e instanceof GuardError && /250/.test(e.message));
  assert.throws(() => checkRouterShape({ hiddenSize: 4096, experts: 16, topk: 17 }), GuardError);
  assert.throws(() => checkRouterShape({ hiddenSize: 100, experts: 16, topk: 4 }), (e: unknown) => e instanceof GuardError && e.code === 'DIM_NOT_ALIGNED');
  for (const v of ROUTER_VARIANTS) checkRouterShape(v.shape);
  assert.deepEqual(routingDefines({ hiddenSize: 7168, experts: 384, topk: 6 }), { ROUTER_HIDDEN: 7168, ROUTER_EXPERTS: 384, ROUTER_TOPK: 6 });
});

test('routing plan: gemv for decode, then mid, then prefill as T grows; splits fill the SMs and stay within limits', () => {
  const pro = ROUTER_VARIANTS.find((v) => v.label === 'pro')!.shape;
  const flash = ROUTER_VARIANTS.find((v) => v.label === 'flash')!.shape;
  const p1 = planRouterLogits(1, pro, H100_SMS);
  assert.equal(p1.tile, 'gemv');
  assert.deepEqual(p1.grid, [48, 1, 4]); // 384 / 8 column blocks x 4 K splits = 192 blocks >= 132 SMs
  assert.equal(p1.block, ROUTER_TILES.gemv.threads);
  assert.equal(planRouterLogits(1, flash, H100_SMS).splits, 8); // 32 column blocks need 8 splits to pass 132
  assert.equal(planRouterLogits(16, pro, H100_SMS).tile, 'gemv');
  assert.equal(planRouterLogits(17, pro, H100_SMS).tile, 'mid');
  const between = planRouterLogits(300, pro, H100_SMS); // 12 x 10 mid blocks < 132 SMs: split K in two
  assert.equal(between.tile, 'mid');
  assert.deepEqual(between.grid, [12, 10, 2]);
  assert.equal(planRouterLogits(2048, pro, H100_SMS).tile, 'mid'); // 6 x 32 = 192 prefill blocks < 1.5 per SM
  const big = planRouterLogits(4096, pro, H100_SMS);
  assert.equal(big.tile, 'prefill');
  assert.deepEqual(big.grid, [6, 64, 1]);
  for (const { shape } of ROUTER_VARIANTS) {
    for (const T of [1, 2, 7, 16, 17, 64, 65, 100, 500, 1000, 3000, 9000, 16384]) {
      for (const force of [undefined, 'gemv', 'mid', 'prefill'] as const) {
        const p = planRouterLogits(T, shape, H100_SMS, force);
        const cfg = ROUTER_TILES[p.tile];
        assert.ok(p.splits >= 1 && p.splits <= ROUTER_MAX_SPLITS && (p.splits & (p.splits - 1)) === 0, `splits ${p.splits} is a power of two <= 8`);
        // Every warp of a split has at least one 32-wide k chunk, unless no split happened at all.
        if (p.splits > 1) assert.ok(shape.hiddenSize / 32 / p.splits >= cfg.warpsK, `${p.tile} T=${T}: ${p.splits} splits leave warps without work`);
        assert.ok(p.grid[0] * cfg.bn >= shape.experts && p.grid[1] * cfg.bm >= T, 'the grid covers [T, E]');
        if (force) assert.equal(p.tile, force);
      }
    }
  }
});

test('routing tiles: the TypeScript table and shared-memory sizes match the kernel definitions in routing.cu', () => {
  const cu = readFileSync(join(kernelsDir(), ROUTING_SOURCE), 'utf8');
  const defs = [...cu.matchAll(/^MEGAMOE_ROUTER_LOGITS_KERNEL\((\w+), (\d+), (\d+), (\d+), (\d+), (\d+)\)/gm)];
  assert.equal(defs.length, 3, 'three tile kernels are defined');
  assert.equal(Number(/constexpr int kMaxSplits = (\d+);/.exec(cu)?.[1]), ROUTER_MAX_SPLITS, 'the top-k kernel sums as many splits as the planner may use');
  for (const [, entry, bm, bnw, wn, wk, u] of defs) {
    const [tile, cfg] = Object.entries(ROUTER_TILES).find(([, c]) => c.entry === entry)!;
    const BM = Number(bm); const BNW = Number(bnw); const WN = Number(wn); const WK = Number(wk); const U = Number(u);
    assert.deepEqual([cfg.bm, cfg.bn, cfg.threads, cfg.warpsK, cfg.chunksPerStage], [BM, BNW * WN, 32 * WN * WK, WK, U], `${tile} matches ${entry}`);
    // routing.cu router_tile_smem_bytes: WN * WK * 2 stages * U * (2 * BM/16 + BNW/8) * 32 lanes * 16 bytes
    assert.equal(routerTileSmemBytes(tile as RouterTile), WN * WK * 2 * U * (2 * (BM / 16) + BNW / 8) * 32 * 16, `${tile} shared memory`);
    assert.ok(routerTileSmemBytes(tile as RouterTile) <= 227 * 1024, `${tile} fits the H100 opt-in shared memory`);
  }
});

test('routing workspace covers every plan up to the capacity, and is 0 when nothing splits', () => {
  for (const { shape } of ROUTER_VARIANTS) {
    for (const capacity of [0, 1, 100, 5000]) {
      const ws = routerWorkspaceFloats(capacity, shape, H100_SMS);
      for (let T = 1; T <= capacity; T += Math.max(1, Math.floor(capacity / 97))) {
        for (const force of [undefined, 'gemv', 'mid', 'prefill'] as const) {
          const p = planRouterLogits(T, shape, H100_SMS, force);
          if (p.splits > 1) assert.ok(p.splits * T * shape.experts <= ws, `capacity ${capacity}: T=${T} ${p.tile} x${p.splits} fits`);
        }
      }
    }
    assert.equal(routerWorkspaceFloats(0, shape, H100_SMS), 0);
  }
  // A device with very many SMs makes large-T plans split too: the workspace grows with it.
  const pro = ROUTER_VARIANTS.find((v) => v.label === 'pro')!.shape;
  assert.ok(routerWorkspaceFloats(4096, pro, 10_000) > routerWorkspaceFloats(4096, pro, H100_SMS));
});

test('routing traffic: x and the gate once, ids + weights written', () => {
  const b = routingTrafficBytes(10, { hiddenSize: 256, experts: 16, topk: 4 });
  assert.equal(b.read, 10 * 512 + 16 * 512 + 64);
  assert.equal(b.written, 10 * 4 * 12);
});

test('bench: token lists and ranges parse; bad input is refused with the flag named', () => {
  assert.deepEqual(parseTokenList('1..16'), [1, 2, 4, 8, 16]);
  assert.deepEqual(parseTokenList('1..10'), [1, 2, 4, 8, 10]);
  assert.deepEqual(parseTokenList('7, 1,7,64'), [1, 7, 64]);
  assert.throws(() => parseTokenList('0'), /--tokens/);
  assert.throws(() => parseTokenList('5..2'), /--tokens/);
  assert.throws(() => parseTokenList(' , '), /--tokens: give at least one value/);
  assert.deepEqual(parseList('shapes', 'pro, flash', ['tiny', 'flash', 'pro']), ['pro', 'flash']);
  assert.throws(() => parseList('shapes', 'flash,huge', ['tiny', 'flash', 'pro']), /--shapes: unknown "huge" \(known: tiny, flash, pro\)/);
  assert.throws(() => parseList('backend', ''), /--backend: give at least one value/);
  assert.equal(resolveCommit('abc1234'), 'abc1234');
});

test('bench random bf16: exponent fields stay in [lo, hi], both signs occur, large batches keep the range', () => {
  const inRange = (bits: Uint16Array, lo: number, hi: number): boolean => bits.every((b) => ((b >> 7) & 0xff) >= lo && ((b >> 7) & 0xff) <= hi);
  const small = randomBf16(new Rng(1), 10_000, 118, 127);
  assert.ok(inRange(small, 118, 127));
  assert.ok(small.some((b) => b & 0x8000) && small.some((b) => !(b & 0x8000)), 'both signs');
  assert.deepEqual(randomBf16Rows(new Rng(1), 100, 100, 118, 127), randomBf16(new Rng(1), 10_000, 118, 127), 'small batches are plain random');
  const big = randomBf16Rows(new Rng(2), 3, 1 << 21, 113, 122); // above 4M values: windows of one pool
  assert.equal(big.length, 3 << 21);
  assert.ok(inRange(big, 113, 122));
});

test('bench Markdown: one row per measurement with GB/s and the copy-bandwidth fraction', () => {
  const meta: BenchMeta = {
    gpu: 'NVIDIA H100 80GB HBM3', smCount: 132, driver: '13.0', commit: 'abc1234', command: 'megamoe bench staging',
    date: '2026-01-01T00:00:00Z', warmup: 1, runs: 2, copyGBs: 3000, peakGBs: 3350, floorUs: { cold: 4.5, warm: 2.25 }, method: 'events',
  };
  const md = stagingMarkdown(meta, [{ shape: 'flash', tokens: 4096, medianUs: 20, p90Us: 21, warmUs: 18, bytes: 5e7, gbps: 2500, copyFraction: 2500 / 3000, sameBytesCopyUs: 19.5 }], [{ what: 'stage', us: 3.5 }]);
  assert.match(md, /\| flash \| 4096 \| 20\.00 \| 21\.00 \| 18\.00 \| 50\.00 \| 2500 \| 83\.3 \| 19\.50 \|/);
  assert.match(md, /abc1234/);
  assert.match(md, /3000 GB\/s/);
  assert.match(md, /4\.50 us cold, 2\.25 us warm/);
  const rmd = routingMarkdown(meta, [{ shape: 'pro', tokens: 1, tile: 'gemv', splits: 4, chosen: false, medianUs: 4, p90Us: 5, warmUs: 3, bytes: 5.5e6, gbps: 1375, copyFraction: 0.46, tflops: 0.001 }], []);
  assert.match(rmd, /\| pro \| 1 \| gemv \(alt\) \| 4 \|/);
});

const nvccSkip = findNvcc() ? undefined : 'nvcc not found (install the CUDA toolkit or set CUDA_HOME)';

test('the largest staging and routing variants build for sm_90a without register spills', { skip: nvccSkip }, async () => {
  const pro = { staging: STAGING_VARIANTS.find((v) => v.label === 'pro')!.shape, routing: ROUTER_VARIANTS.find((v) => v.label === 'pro')!.shape };
  const builds = await Promise.all([
    compileKernel({ source: STAGING_SOURCE, defines: stagingDefines(pro.staging), extraFlags: ['-Xptxas', '-v'] }),
    compileKernel({ source: ROUTING_SOURCE, defines: routingDefines(pro.routing), extraFlags: ['-Xptxas', '-v'] }),
  ]);
  for (const b of builds) {
    if (b.cached) continue; // ptxas output exists only for a fresh build
    const spills = [...b.log.matchAll(/(\d+) bytes spill stores/g)].map((m) => Number(m[1]));
    assert.ok(spills.length > 0, `ptxas -v output was expected in the log:\n${b.log}`);
    assert.ok(spills.every((s) => s === 0), `register spills in ${b.cubinPath}:\n${b.log}`);
  }
});
