// The indexer launchers' pure choices (src/gpu-model/attention.ts): the prepare kernel, the scores' shared memory per
// CTA and rows per CTA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ATTN_SMEM_LIMIT, chooseIndexerRowsPerCta, indexerChunkRowsDefault, INDEXER_MAX_ROWS_PER_CTA, indexerPrepareOnWarps, indexerScoreSmemBytes, indexerScoresOnTensorCores,
} from '../src/gpu-model/attention.js';
import { INDEXER_KEYS_PER_CTA, INDEXER_SCORE_THREADS } from '../src/kernels/attention.js';

test('indexer scores: a thread per key; shared memory of the tensor-core path and of the CUDA-core one', () => {
  assert.equal(INDEXER_KEYS_PER_CTA, INDEXER_SCORE_THREADS);
  // flash / pro: 64 heads x 128 on the tensor cores: q 64 x 128, keys 256 x 128, products 256 x 68 int32 (key-major),
  // the heads' units (two forms) and weights, the keys' units, the warps' unit ranges
  assert.ok(indexerScoresOnTensorCores(64, 128) && indexerScoresOnTensorCores(16, 64));
  assert.equal(indexerScoreSmemBytes(64, 128), 64 * 128 + 256 * 128 + 256 * 68 * 4 + 64 * 12 + 256 * 4 + 16 * 4);
  assert.equal(indexerScoreSmemBytes(64, 128, 8), indexerScoreSmemBytes(64, 128), 'one row at a time');
  assert.ok(2 * (indexerScoreSmemBytes(64, 128) + 1024) <= 228 * 1024, 'two CTAs per SM');
  // the CUDA-core path (heads not a multiple of 16, or di 256 / 512): all rows' int8 queries plus the key staging
  assert.ok(!indexerScoresOnTensorCores(8, 128) && !indexerScoresOnTensorCores(64, 256));
  assert.equal(indexerScoreSmemBytes(8, 128, 4), 4 * 8 * 136 + 256 * 128);
  assert.ok(indexerScoreSmemBytes(64, 256, INDEXER_MAX_ROWS_PER_CTA) <= ATTN_SMEM_LIMIT);
  // 256 heads x 128: the products tile would not fit, the CUDA-core body takes it
  assert.ok(!indexerScoresOnTensorCores(256, 128) && indexerScoresOnTensorCores(128, 128));
  assert.equal(indexerScoreSmemBytes(256, 128), 256 * 136 + 256 * 128);
});

test('indexer scores rows per CTA: one for decode batches, several for prefill chunks while the grid fills the GPU', () => {
  // decode: one-row items never share keys
  assert.equal(chooseIndexerRowsPerCta(64, 8192, false, 64, 128, 132), 1);
  // a 64-row chunk at 32K context (8192 keys: 32 key CTAs): 8 rows -> 8 x 32 = 256 CTAs < 2 x 132, 4 rows -> 512
  assert.equal(chooseIndexerRowsPerCta(64, 8192, true, 64, 128, 132), 4);
  // 64K context: 64 key CTAs, 8 rows -> 512 CTAs
  assert.equal(chooseIndexerRowsPerCta(64, 16384, true, 64, 128, 132), 8);
  // a short history: too few CTAs for any sharing
  assert.equal(chooseIndexerRowsPerCta(64, 600, true, 64, 128, 132), 1);
  // shared memory caps it
  assert.equal(chooseIndexerRowsPerCta(64, 1 << 20, true, 64, 512, 132), 2);
});

test('indexer prepare: a warp per head for di 64 / 128 / 256 with the RoPE pairs in a lane; the block kernel otherwise', () => {
  assert.ok(indexerPrepareOnWarps(128, 64) && indexerPrepareOnWarps(64, 64) && indexerPrepareOnWarps(256, 64), 'flash / pro / tiny shapes');
  assert.ok(!indexerPrepareOnWarps(32, 16), 'di 32: one value a lane, pairs would straddle lanes');
  assert.ok(!indexerPrepareOnWarps(512, 64) && !indexerPrepareOnWarps(1024, 64), 'more than 8 values a lane');
  assert.ok(!indexerPrepareOnWarps(128, 63), 'an odd nope part');
});

test('indexer scoring passes: 512 rows while the scratch stays within 64 MiB (not below 64), unless MEGAMOE_INDEXER_CHUNK_ROWS says otherwise; a bad value names the fix', () => {
  assert.equal(indexerChunkRowsDefault(undefined), 512);
  assert.equal(indexerChunkRowsDefault('', 16384), 512, '64K context: 16 MiB');
  assert.equal(indexerChunkRowsDefault(undefined, 262144), 128, '1M context: 512 KiB a row');
  assert.equal(indexerChunkRowsDefault(undefined, 4 * 262144), 64, 'never below 64');
  assert.equal(indexerChunkRowsDefault('64', 16384), 64);
  assert.throws(() => indexerChunkRowsDefault('0'), /MEGAMOE_INDEXER_CHUNK_ROWS "0" is not a positive integer/);
  assert.throws(() => indexerChunkRowsDefault('4k'), /not a positive integer/);
});
