// The paged attention caches' host-side logic (src/gpu-model/kv-allocator.ts): cache kinds from the config, pool
// sizing from a memory budget, block tables, and the refusals (a sequence that does not fit is refused with an error
// naming what to change, and nothing changes). CPU only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { modelPresetConfig } from '../src/model/checkpoint-writer.js';
import { modelConfigFrom, type ModelConfig } from '../src/model/config.js';
import { KvBlockAllocator, KvCacheCapacityError, kvLayout, planKvPool, rowsNeeded } from '../src/gpu-model/kv-allocator.js';

const config = (preset: 'tiny' | 'flash' | 'pro', layers?: number, overrides?: Record<string, unknown>): ModelConfig =>
  modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset, layers, expertDtype: 'fp8', seed: 1, overrides })));

test('kvLayout: tiny (ratios 0, 4, 128 + MTP 0) has window, comp-r4, comp-r128 and indexer kinds and three compressor states', () => {
  const c = config('tiny');
  const l = kvLayout(c);
  assert.deepEqual(l.kinds.map((k) => [k.name, k.layers, k.rowElems, k.ratio]), [
    ['window', [0, 1, 2, 3], 128, 0], ['comp-r4', [1], 128, 4], ['comp-r128', [2], 128, 128], ['indexer', [1], 64, 4],
  ]);
  // ratio 4: overlap (c = 2): main [8, 256] and indexer [8, 128]; ratio 128: [128, 128]; kv + score each
  assert.deepEqual(l.states.map((s) => [s.layer, s.indexer, s.slots, s.width, s.offset]), [
    [1, false, 8, 256, 0], [1, true, 8, 128, 2 * 8 * 256], [2, false, 128, 128, 2 * 8 * 256 + 2 * 8 * 128],
  ]);
  assert.equal(l.stateElemsPerSeq, 2 * 8 * 256 + 2 * 8 * 128 + 2 * 128 * 128);
});

test('kvLayout: flash (43 layers) puts 21 layers in comp-r4 / indexer, 20 in comp-r128, 44 in the window', () => {
  const l = kvLayout(config('flash', 43));
  const by = Object.fromEntries(l.kinds.map((k) => [k.name, k.layers.length]));
  assert.deepEqual(by, { window: 44, 'comp-r4': 21, 'comp-r128': 20, indexer: 21 });
  assert.equal(l.kinds.find((k) => k.name === 'indexer')!.rowElems, 128);
  assert.equal(rowsNeeded(l.kinds[1], 4099, 128), 1024);
  assert.equal(rowsNeeded(l.kinds[0], 5, 128), 128, 'the ring is whole from admission');
});

test('planKvPool: the budget splits across kinds by bytes per token and the plan fits the budget', () => {
  const l = kvLayout(config('flash', 43), 65536);
  const free = 40 * 2 ** 30;
  const p = planKvPool(l, { freeBytes: free, memoryFraction: 0.5, reserveBytes: 2 ** 30, maxSequences: 64, blockRows: 64 });
  assert.ok(p.totalBytes <= p.budgetBytes, `${p.totalBytes} <= ${p.budgetBytes}`);
  assert.ok(p.totalBytes > 0.95 * p.budgetBytes, 'most of the budget is used');
  const r4 = p.kinds.find((k) => k.kind.name === 'comp-r4')!;
  const r128 = p.kinds.find((k) => k.kind.name === 'comp-r128')!;
  const idx = p.kinds.find((k) => k.kind.name === 'indexer')!;
  // the three growing kinds hold about the same number of tokens
  const tok = (k: typeof r4) => k.blocks * 64 * k.kind.ratio;
  assert.ok(Math.abs(tok(r4) / tok(idx) - 1) < 0.01 && Math.abs(tok(r4) / tok(r128) - 1) < 0.05, `${tok(r4)} ${tok(idx)} ${tok(r128)}`);
  assert.equal(p.kinds[0].blocks, 64 * 2, 'window: 128 rows = 2 blocks per slot');
  assert.ok(p.tokenCapacity > 1e6, `capacity ${p.tokenCapacity}`);
});

test('planKvPool refuses a budget below the slots\' fixed part, naming the numbers and the fix', () => {
  const l = kvLayout(config('flash', 43));
  assert.throws(() => planKvPool(l, { freeBytes: 64 * 2 ** 20, maxSequences: 256 }), (e: unknown) =>
    e instanceof KvCacheCapacityError && /256 sequences/.test(e.message) && /lower maxSequences/.test(e.fix) && /MiB/.test(e.message));
  assert.throws(() => planKvPool(l, { freeBytes: 1e9, maxSequences: 0 }), RangeError);
  assert.throws(() => planKvPool(l, { freeBytes: 1e9, maxSequences: 1, memoryFraction: 1.5 }), RangeError);
});

function smallAllocator(blocksPerKind: number, maxSequences = 4) {
  const l = kvLayout(config('tiny'), 1024);
  const plan = planKvPool(l, { freeBytes: 2 ** 30, maxSequences, blockRows: 4, maxBlocksPerKind: blocksPerKind });
  return new KvBlockAllocator(plan);
}

test('KvBlockAllocator: admit takes the ring and the blocks for the prompt; tables list them, -1 elsewhere', () => {
  const a = smallAllocator(40);
  const [win, r4, r128, idx] = [0, 1, 2, 3];
  const s = a.admit(37);
  assert.equal(s.blocks[win].length, 4, 'window 16 rows / 4 per block');
  assert.equal(s.blocks[r4].length, 3, '37 / 4 = 9 entries -> 3 blocks');
  assert.equal(s.blocks[idx].length, 3);
  assert.equal(s.blocks[r128].length, 0);
  const kp = a.plan.kinds[r4];
  const row = Array.from(a.tables[r4].subarray(s.slot * kp.maxBlocksPerSeq, (s.slot + 1) * kp.maxBlocksPerSeq));
  assert.deepEqual(row.slice(0, 3), s.blocks[r4]);
  assert.ok(row.slice(3).every((b) => b === -1));
  a.ensureLength(s, 128);
  assert.equal(s.blocks[r128].length, 1);
  assert.equal(s.blocks[r4].length, 8);
  assert.ok(a.dirty.every(Boolean));
  a.markClean();
  a.ensureLength(s, 129); // 32 entries r4 = 8 blocks still; nothing changes
  assert.ok(a.dirty.every((d) => !d));
});

test('KvBlockAllocator: interleaved growth hands out distinct blocks; release returns them for reuse', () => {
  const a = smallAllocator(64);
  const s1 = a.admit(8); const s2 = a.admit(8);
  for (let len = 9; len <= 64; len++) { a.ensureLength(s1, len); a.ensureLength(s2, len); }
  for (let k = 0; k < a.plan.kinds.length; k++) {
    const all = [...s1.blocks[k], ...s2.blocks[k]];
    assert.equal(new Set(all).size, all.length, `kind ${k}: no block shared`);
  }
  const freeBefore = a.freeBlocks(1);
  const held = s1.blocks[1].length;
  a.release(s1);
  assert.equal(a.freeBlocks(1), freeBefore + held);
  assert.equal(a.liveSequences, 1);
  a.release(s1); // no-op
  assert.throws(() => a.ensureLength(s1, 70), /not live/);
  const s3 = a.admit(64);
  assert.equal(s3.slot, s1.slot, 'the freed slot is reused');
});

test('KvBlockAllocator refuses a sequence that does not fit, atomically, naming the kind and the fix', () => {
  const a = smallAllocator(8, 4); // 8 blocks of 4 entries per growing kind: 32 ratio-4 entries = 128 tokens in all
  const s1 = a.admit(100); // 25 entries -> 7 blocks
  const free = a.plan.kinds.map((_, k) => a.freeBlocks(k));
  assert.throws(() => a.admit(40), (e: unknown) => e instanceof KvCacheCapacityError && /"comp-r4"/.test(e.message) && /release other sequences/.test(e.fix));
  assert.deepEqual(a.plan.kinds.map((_, k) => a.freeBlocks(k)), free, 'nothing was taken');
  assert.equal(a.liveSequences, 1);
  assert.throws(() => a.ensureLength(s1, 200), KvCacheCapacityError);
  assert.equal(s1.length, 100);
  assert.equal(s1.blocks[1].length, 7);
  assert.throws(() => a.admit(5000), (e: unknown) => e instanceof KvCacheCapacityError && /maximum context of 1024/.test(e.message));
  // slots
  a.admit(3); a.admit(3); a.admit(3); // under one ratio-4 block each: only slots run out
  assert.throws(() => a.admit(0), (e: unknown) => e instanceof KvCacheCapacityError && /all 4 sequence slots/.test(e.message) && /maxSequences/.test(e.fix));
});
