// The fused kernel's host plan (no GPU): the symmetric buffer's regions, the shared-memory plan, the parameter
// packing, the control block's error report, and nvcc refusing a plan that drifted from the kernel's.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { compileKernel, findNvcc, KernelCompileError } from '../src/cuda/compile.js';
import { dispatchCapacity } from '../src/kernels/moe-dispatch.js';
import {
  decodeMegaCtl, describeMegaCtlError, MEGA_CTL_BYTES, MEGA_PARAM_POINTERS, MEGA_PARAMS_BYTES, megaBufferLayout, megaCapacity,
  skipPaddingWanted, fitPairsRule, announceWanted, decode32RowsRange, decode64RowsRange, decodeDynamicUnits, megaDefines, megaMulticastMinRows, megaSmemBytes, megaThreads,
  FLASH_DYNAMIC_MAX_ROWS, normalDynamicMaxRows, normalKernelFor, packMegaParams, PRO_MCAST_MIN_ROWS, type MegaNormalKernel,
} from '../src/kernels/mega-moe-layout.js';
import { withEnv } from './support/env.js';

const FLASH = { hidden: 4096, inter: 2048, experts: 256, topK: 6 };

test('symmetric buffer: regions in order, aligned, disjoint, each exactly its tensor', () => {
  const L = megaBufferLayout(FLASH, 8192);
  const cap = dispatchCapacity({ experts: 256, topK: 6, hidden: 4096, shared: true }, 8192, 128, 16);
  assert.deepEqual(L.capacity, cap);
  const M = cap.maxRows;
  const r = L.regions;
  assert.equal(r.xFp8.bytes, 8192 * 4096);
  assert.equal(r.xSf.bytes, 8192 * 32 * 4);
  assert.equal(L.poolRows, 8192 * 7, 'the pools keep every real row (T K routed + T shared) and no padding');
  assert.equal(r.a.bytes, 8192 * 7 * 4096);
  assert.equal(r.act.bytes, 8192 * 7 * 2048);
  assert.equal(r.sfa.bytes, 32 * M * 4, 'the scales keep the padded stride (m_cap)');
  assert.equal(r.out.bytes, 8192 * 7 * 4096 * 2, 'the combine buffer: one bf16 row per (token, slot) and per token for the shared expert, no padding');
  assert.equal(cap.maxTiles, M / 16, 'one flag row per 16-row tile: the kernel finds the tail counters at m_cap / 16');
  assert.equal(r.flags.bytes, (M / 16) * 16 * 4 + (4096 / 128) * 8);
  assert.equal(r.ctl.bytes, MEGA_CTL_BYTES);
  const list = Object.values(r);
  let end = 0;
  for (const region of list) {
    assert.ok(region.offset >= end, 'regions do not overlap and keep their order');
    assert.equal(region.offset % 1024, 0, 'every region is 1 KB aligned (TMA wants 16 B; boxes 128 B)');
    end = region.offset + region.bytes;
  }
  assert.ok(L.totalBytes >= end && L.totalBytes - end < 1024);
  // The worst-case row count: every real row (T*K routed + T shared) plus 127 padding rows per non-empty group.
  assert.equal(M, Math.ceil((8192 * 7 + 257 * 127) / 128) * 128);
});

test('symmetric buffer: grows with tokens and ranks, refuses nonsense', () => {
  const a = megaBufferLayout(FLASH, 1).totalBytes;
  const b = megaBufferLayout(FLASH, 1024).totalBytes;
  assert.ok(a < b);
  assert.equal(megaBufferLayout(FLASH, 64, 8).regions.rankTable.bytes, 64);
  assert.equal(megaBufferLayout(FLASH, 64, 8).regions.rankFlags.bytes, 2 * 8 * 4, 'two cross-rank barriers x 8 ranks');
  assert.throws(() => megaBufferLayout(FLASH, 0), /max tokens/);
  assert.throws(() => megaBufferLayout({ ...FLASH, hidden: 4000 }, 8), /multiple of 256/);
  assert.throws(() => megaBufferLayout({ ...FLASH, inter: 2000 }, 8), /multiple of 128/);
});

test('symmetric buffer under expert parallelism: every rank\'s tokens may land on this rank\'s experts', () => {
  // EP1: exactly the unfused dispatch's capacity.
  assert.deepEqual(megaCapacity(FLASH, 1000, 1), dispatchCapacity({ experts: 256, topK: 6, hidden: 4096, shared: true }, 1000, 128, 16));
  // EP4 of flash: 64 local experts; 4 x T tokens x 6 slots (distinct experts, all may be local) + T shared rows.
  const local = { ...FLASH, experts: 64 };
  const c = megaCapacity(local, 1000, 4);
  assert.equal(c.maxRows, Math.ceil((4 * 1000 * 6 + 1000 + 65 * 127) / 128) * 128);
  assert.equal(c.maxChunks, 4 * 16, 'count chunks of every source rank (16 of 64 tokens each)');
  assert.equal(c.groups, 65);
  // Fewer local experts than K: a token sends at most one row per local expert.
  assert.equal(megaCapacity({ ...FLASH, experts: 4 }, 10, 64).maxRows, Math.ceil((64 * 10 * 4 + 10 + 5 * 127) / 128) * 128);
  const L = megaBufferLayout(local, 1000, 4);
  assert.equal(L.regions.slotRow.bytes, 4 * 1000 * 6 * 4, 'slot rows of every source rank\'s tokens');
  assert.equal(L.poolRows, 4 * 1000 * 6 + 1000, 'pools: every rank\'s rows that may land here, without padding');
  assert.equal(megaBufferLayout(FLASH, 1).poolRows, 64 * 7, 'one token: the small-T direct layout\'s tiles (6 experts + the shared one, up to 64 rows each)');
  // Few experts, many slots: the direct layout's wide tiles outgrow the real rows (decode32 at T <= 8 when K / E > 7 / 8).
  assert.equal(megaBufferLayout({ ...FLASH, experts: 8, topK: 8 }, 8).poolRows, 64 * 9);
  assert.equal(L.regions.out.bytes, (4 * 1000 * 6 + 1000) * 4096 * 2, 'L2 rows by (source rank, token, slot), then the own tokens\' shared rows');
  assert.equal(L.regions.chunkCounts.bytes, 64 * 64 * 4);
  assert.equal(L.regions.xFp8.bytes, 1000 * 4096, 'only its own tokens are staged here');
});

test('shared-memory plans fit 227 KB and are what the defines carry', () => {
  for (const path of ['normal', 'decode', 'decode32', 'decode64'] as const) {
    const d = megaDefines(FLASH, path);
    assert.equal(d.MM_SMEM_BYTES, megaSmemBytes(path));
    assert.ok(megaSmemBytes(path) + 1024 <= 232448, `${path} plan fits`);
    assert.equal(d.MM_PARAMS_BYTES, MEGA_PARAMS_BYTES);
    assert.equal(d.MM_PATH, path === 'normal' ? 0 : 1);
    assert.equal(d.MM_DECODE_ROWS, path === 'decode32' ? 32 : path === 'decode64' ? 64 : undefined, 'only the wide variants name their tile');
  }
  // NormalPlan<2, 3, 1>: 64 KB staging + 3 x (16 KB + 32 KB + 512 B) + 6 barriers.
  assert.equal(megaSmemBytes('normal', 3), 65536 + 3 * 49664 + 2 * (3 + 4) * 8);
  assert.equal(megaSmemBytes('normal', 3, 5), 5 * 49664 + 2 * (3 + 5) * 8);
  assert.equal(megaSmemBytes('decode', 6), 6 * (32768 + 2048 + 128) + 96 + 256);
  assert.equal(megaSmemBytes('decode32', 6), 6 * (32768 + 4096 + 128) + 96 + 512);
  // DecodePlan<4, 5, 64>: 64 tokens' scales (256 B), amax scratch of 8 consumer warps.
  assert.equal(megaSmemBytes('decode64', 5), 5 * (32768 + 8192 + 256) + 80 + 2048);
  assert.deepEqual((['normal', 'decode', 'decode32', 'decode64'] as const).map(megaThreads), [384, 256, 256, 384]);
});

test('decode32 / decode64 rows-per-expert ranges: defaults (adjacent), override, off, and a clear error', () => {
  const saved = process.env.MEGAMOE_DECODE32_ROWS;
  const saved64 = process.env.MEGAMOE_DECODE64_ROWS;
  try {
    delete process.env.MEGAMOE_DECODE32_ROWS;
    delete process.env.MEGAMOE_DECODE64_ROWS;
    assert.deepEqual(decode32RowsRange(), { min: 7, max: 24 });
    assert.deepEqual(decode64RowsRange(), { min: 24, max: 60 });
    process.env.MEGAMOE_DECODE64_ROWS = 'off';
    assert.equal(decode64RowsRange(), undefined);
    process.env.MEGAMOE_DECODE32_ROWS = '4:40.5';
    assert.deepEqual(decode32RowsRange(), { min: 4, max: 40.5 });
    process.env.MEGAMOE_DECODE32_ROWS = 'off';
    assert.equal(decode32RowsRange(), undefined);
    for (const bad of ['8', '9:8', 'a:b', '-1:4']) {
      process.env.MEGAMOE_DECODE32_ROWS = bad;
      assert.throws(() => decode32RowsRange(), /MEGAMOE_DECODE32_ROWS=.*min:max/);
    }
  } finally {
    if (saved === undefined) delete process.env.MEGAMOE_DECODE32_ROWS; else process.env.MEGAMOE_DECODE32_ROWS = saved;
    if (saved64 === undefined) delete process.env.MEGAMOE_DECODE64_ROWS; else process.env.MEGAMOE_DECODE64_ROWS = saved64;
  }
});

const PRO = { hidden: 7168, inter: 3072, experts: 384, topK: 6 };
const NORMAL_KNOBS = ['MEGAMOE_DYNAMIC', 'MEGAMOE_DYNAMIC_MAX_ROWS', 'MEGAMOE_MCAST_MIN_ROWS', 'MEGAMOE_SKIP_PADDING', 'MEGAMOE_L2_POLICY', 'MEGAMOE_FIT_PAIRS', 'MEGAMOE_ANNOUNCE'] as const;
const unset = Object.fromEntries(NORMAL_KNOBS.map((k) => [k, undefined]));

test('the normal path\'s three kernels: defines (clusters, dynamic units, padding skip) and the decode paths\' units', () => {
  withEnv(unset, () => {
    const d = (normal: MegaNormalKernel) => megaDefines(FLASH, 'normal', 'tiled', normal);
    assert.deepEqual([d('clustered').MM_MCAST, d('clustered').MM_DYNAMIC, d('clustered').MM_FIT_PAIRS, d('clustered').MM_SKIP_PADDING], [1, 0, undefined, undefined],
      'a pair walks its units together: consecutive row tiles, no skip');
    const tinyClustered = megaDefines({ hidden: 256, inter: 128, experts: 16, topK: 4 }, 'normal', 'tiled', 'clustered');
    assert.deepEqual([tinyClustered.MM_FIT_PAIRS, tinyClustered.MM_SKIP_PADDING], [undefined, undefined], 'fitted pairs need I % 256 and H % 512');
    assert.deepEqual([d('round-robin').MM_MCAST, d('round-robin').MM_DYNAMIC, d('round-robin').MM_SKIP_PADDING], [undefined, 0, undefined]);
    assert.deepEqual([d('dynamic').MM_MCAST, d('dynamic').MM_DYNAMIC, d('dynamic').MM_SKIP_PADDING], [undefined, 1, 1]);
    assert.equal(megaDefines(FLASH, 'normal').MM_DYNAMIC, 0, 'round robin unless asked');
    for (const path of ['decode', 'decode32', 'decode64'] as const) {
      const x = megaDefines(FLASH, path, 'tiled', 'clustered');
      assert.deepEqual([x.MM_MCAST, x.MM_DYNAMIC, x.MM_SKIP_PADDING], [undefined, 1, undefined], `${path}: no clusters, no skip, dynamic units`);
    }
    assert.equal(decodeDynamicUnits(), true);
    assert.deepEqual([d('clustered').GG_L2_POLICY, d('round-robin').GG_L2_POLICY, d('dynamic').GG_L2_POLICY], [2, 1, 1], 'activations evict_last; the clustered kernel\'s weights evict_first');
    assert.equal(megaDefines(FLASH, 'decode').GG_L2_POLICY, undefined, 'the decode body sets its own');
  });
  withEnv({ ...unset, MEGAMOE_L2_POLICY: '0' }, () => assert.equal(megaDefines(FLASH, 'normal').GG_L2_POLICY, 0));
  withEnv({ ...unset, MEGAMOE_L2_POLICY: '3' }, () => assert.throws(() => megaDefines(FLASH, 'normal'), /MEGAMOE_L2_POLICY=3/));
  withEnv({ ...unset, MEGAMOE_SKIP_PADDING: '0' }, () => {
    assert.equal(skipPaddingWanted(), false);
    assert.equal(megaDefines(FLASH, 'normal', 'tiled', 'dynamic').MM_SKIP_PADDING, undefined);
  });
  withEnv({ ...unset, MEGAMOE_FIT_PAIRS: '1' }, () => {
    assert.equal(fitPairsRule(), 1);
    const c = megaDefines(FLASH, 'normal', 'tiled', 'clustered');
    assert.deepEqual([c.MM_FIT_PAIRS, c.MM_SKIP_PADDING], [1, undefined], 'fitted pairs, no skip');
    assert.equal(megaDefines(FLASH, 'normal', 'tiled', 'dynamic').MM_FIT_PAIRS, undefined, 'clusters only');
  });
  withEnv({ ...unset, MEGAMOE_FIT_PAIRS: '2' }, () => assert.equal(megaDefines(FLASH, 'normal', 'tiled', 'clustered').MM_FIT_PAIRS, 2));
  withEnv({ ...unset, MEGAMOE_ANNOUNCE: '0' }, () => {
    assert.equal(announceWanted(), false);
    assert.equal(megaDefines(FLASH, 'normal', 'tiled', 'dynamic').MM_ANNOUNCE, undefined);
  });
  withEnv(unset, () => {
    assert.deepEqual((['dynamic', 'round-robin', 'clustered'] as const).map((k) => megaDefines(FLASH, 'normal', 'tiled', k).MM_ANNOUNCE),
      [1, undefined, undefined], 'the dynamic kernel announces its units\' scales');
    assert.equal(megaDefines(FLASH, 'decode', 'tiled', 'dynamic').MM_ANNOUNCE, undefined, 'the decode body has no announcements');
  });
  withEnv({ ...unset, MEGAMOE_FIT_PAIRS: '3' }, () => assert.throws(() => fitPairsRule(), /MEGAMOE_FIT_PAIRS=3/));
  withEnv({ ...unset, MEGAMOE_DYNAMIC: '0' }, () => {
    assert.equal(megaDefines(FLASH, 'decode').MM_DYNAMIC, 0);
    assert.equal(normalDynamicMaxRows(PRO.inter), -1, 'never');
  });
  withEnv({ ...unset, MEGAMOE_DYNAMIC: '2' }, () => assert.throws(() => decodeDynamicUnits(), /MEGAMOE_DYNAMIC=2/));
  withEnv({ ...unset, MEGAMOE_SKIP_PADDING: 'yes' }, () => assert.throws(() => skipPaddingWanted(), /MEGAMOE_SKIP_PADDING=yes/));
});

test('which normal kernel runs at which rows per expert: defaults per I, knobs, no clusters', () => {
  withEnv(unset, () => {
    assert.deepEqual([normalDynamicMaxRows(FLASH.inter), megaMulticastMinRows(FLASH.inter)], [FLASH_DYNAMIC_MAX_ROWS, 128]);
    assert.deepEqual([normalDynamicMaxRows(PRO.inter), megaMulticastMinRows(PRO.inter)], [Infinity, PRO_MCAST_MIN_ROWS]);
    const flash = { multicastMinRows: 128, dynamicMaxRows: 72, clustered: true };
    assert.deepEqual([63, 72, 72.5, 127.9, 128, 384].map((r) => normalKernelFor(r, flash)),
      ['dynamic', 'dynamic', 'round-robin', 'round-robin', 'clustered', 'clustered']);
    assert.deepEqual([63, 96, 384].map((r) => normalKernelFor(r, { ...flash, clustered: false })), ['dynamic', 'round-robin', 'round-robin']);
    const pro = { multicastMinRows: 200, dynamicMaxRows: Infinity, clustered: true };
    assert.deepEqual([64, 199, 200].map((r) => normalKernelFor(r, pro)), ['dynamic', 'dynamic', 'clustered']);
  });
  withEnv({ ...unset, MEGAMOE_DYNAMIC: '1' }, () => assert.equal(normalDynamicMaxRows(FLASH.inter), Infinity));
  withEnv({ ...unset, MEGAMOE_DYNAMIC_MAX_ROWS: '72.5', MEGAMOE_MCAST_MIN_ROWS: '0' }, () => {
    assert.deepEqual([normalDynamicMaxRows(FLASH.inter), megaMulticastMinRows(FLASH.inter)], [72.5, 0]);
  });
  withEnv({ ...unset, MEGAMOE_DYNAMIC_MAX_ROWS: 'lots' }, () => assert.throws(() => normalDynamicMaxRows(FLASH.inter), /MEGAMOE_DYNAMIC_MAX_ROWS=lots/));
});

test('parameter packing: pointers in order, then timeout, tokens, m_cap, max tiles, limit, fault, rank, ranks', () => {
  const pointers = Object.fromEntries(MEGA_PARAM_POINTERS.map((n, i) => [n, BigInt(0x1000 * (i + 1))])) as Parameters<typeof packMegaParams>[0]['pointers'];
  const bytes = packMegaParams({ pointers, timeoutNs: 123456789n, numTokens: 7, mCap: 1024, maxTiles: 64, swigluLimit: 10, fault: 1, rank: 2, ranks: 4 });
  assert.equal(bytes.length, MEGA_PARAMS_BYTES);
  assert.equal(MEGA_PARAMS_BYTES, 280, '30 pointers + u64 + 7 x 4 bytes, padded to 8 (sizeof(MegaParams))');
  const dv = new DataView(bytes.buffer);
  MEGA_PARAM_POINTERS.forEach((_, i) => assert.equal(dv.getBigUint64(i * 8, true), BigInt(0x1000 * (i + 1))));
  const o = MEGA_PARAM_POINTERS.length * 8;
  assert.equal(dv.getBigUint64(o, true), 123456789n);
  assert.equal(dv.getInt32(o + 8, true), 7);
  assert.equal(dv.getInt32(o + 12, true), 1024);
  assert.equal(dv.getInt32(o + 16, true), 64);
  assert.equal(dv.getFloat32(o + 20, true), 10);
  assert.equal(dv.getInt32(o + 24, true), 1);
  assert.equal(dv.getInt32(o + 28, true), 2);
  assert.equal(dv.getInt32(o + 32, true), 4);
  const noClamp = packMegaParams({ pointers, timeoutNs: 1n, numTokens: 1, mCap: 128, maxTiles: 8, swigluLimit: -1 });
  assert.equal(new DataView(noClamp.buffer).getFloat32(o + 20, true), 0, 'a non-positive limit means no clamp');
  assert.equal(new DataView(noClamp.buffer).getInt32(o + 32, true), 1, 'one rank unless told');
});

test('control block: clean launch, a flag timeout and a barrier timeout read as errors naming where', () => {
  const ctl = new Uint8Array(MEGA_CTL_BYTES);
  const dv = new DataView(ctl.buffer);
  dv.setUint32(0, 5, true);
  assert.equal(describeMegaCtlError(decodeMegaCtl(ctl), 16), undefined);
  [2, 6, 17, 16 * 3 + 4, 4, 5].forEach((v, i) => dv.setUint32((4 + i) * 4, v, true));
  const flag = describeMegaCtlError(decodeMegaCtl(ctl), 16)!;
  assert.match(flag, /activation flag timed out/);
  assert.match(flag, /L2 waiting/);
  assert.match(flag, /CTA 17/);
  assert.match(flag, /row tile 3, activation block 4: flag 4, expected epoch 5/);
  [1, 4, 3, 9, 100, 132].forEach((v, i) => dv.setUint32((4 + i) * 4, v, true));
  const bar = describeMegaCtlError(decodeMegaCtl(ctl), 16)!;
  assert.match(bar, /grid barrier timed out in phase "gather"/);
  assert.match(bar, /100 of 132 CTAs/);
  [3, 8, 0, 2, 6, 7].forEach((v, i) => dv.setUint32((4 + i) * 4, v, true));
  const peer = describeMegaCtlError(decodeMegaCtl(ctl), 16)!;
  assert.match(peer, /a peer rank did not arrive in time in phase "waiting for every rank's L2 rows" \(CTA 0; peer rank 2: its flag 6, expected epoch 7\)/);
});

const noNvcc = findNvcc() ? undefined : 'nvcc not found (set CUDA_HOME or PATH)';

test('nvcc refuses a shared-memory plan that drifted from the kernel\'s', { skip: noNvcc }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-mm-drift-'));
  const saved = process.env.MEGAMOE_CACHE_DIR;
  process.env.MEGAMOE_CACHE_DIR = dir;
  try {
    const tiny = { hidden: 256, inter: 128, experts: 16, topK: 4 };
    const defines = { ...megaDefines(tiny, 'decode'), MM_SMEM_BYTES: megaSmemBytes('decode') + 16 };
    await assert.rejects(compileKernel({ source: 'mega_moe.cu', defines, entry: 'mega_moe_fused' }),
      (e: unknown) => e instanceof KernelCompileError && /shared-memory plan \(mega-moe.ts\) drifted/.test(e.nvccOutput));
  } finally {
    if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR; else process.env.MEGAMOE_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});
