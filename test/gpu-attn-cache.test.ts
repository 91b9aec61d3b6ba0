// The paged attention caches on the GPU (src/gpu-model/kv-cache.ts): sized from cuMemGetInfo's free memory, block
// tables uploaded, rows written and read back through the tables, and the refusals (a sequence or a step that does not
// fit is refused with KvCacheCapacityError before anything changes; never a crash). Skips without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { DeviceTensor, ensureContext, gpuSkipReason } from '../src/cuda/index.js';
import { GpuAttention } from '../src/gpu-model/attention.js';
import { KvCacheCapacityError } from '../src/gpu-model/kv-allocator.js';
import { GpuKvCache } from '../src/gpu-model/kv-cache.js';
import { modelPresetConfig } from '../src/model/checkpoint-writer.js';
import { modelConfigFrom } from '../src/model/config.js';

const skip = gpuSkipReason();
const config = (preset: 'tiny' | 'flash', layers?: number) =>
  modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset, layers, expertDtype: 'fp8', seed: 1 })));

test('GpuKvCache plans from cuMemGetInfo: the pool fits memoryFraction of the free memory', { skip }, (t) => {
  const before = ensureContext().memoryInfo().freeBytes;
  using cache = GpuKvCache.create(config('flash', 43), { maxSequences: 16, memoryFraction: 0.05, maxContext: 65536 });
  const after = ensureContext().memoryInfo().freeBytes;
  t.diagnostic(`free ${(before / 2 ** 30).toFixed(1)} GiB; pool ${(cache.plan.totalBytes / 2 ** 30).toFixed(2)} GiB, ${cache.plan.tokenCapacity} tokens; kinds ${cache.plan.kinds.map((k) => `${k.kind.name} ${k.blocks}`).join(', ')}`);
  assert.ok(cache.plan.totalBytes <= before * 0.05);
  assert.ok(before - after >= cache.plan.totalBytes * 0.99, 'the pool was allocated');
});

test('GpuKvCache rows round-trip through scattered blocks; a too-long step is refused atomically', { skip }, () => {
  const c = config('tiny');
  using cache = GpuKvCache.create(c, { maxSequences: 3, blockRows: 4, freeBytes: 2 ** 28, maxBlocksPerKind: 12, maxContext: 1024 });
  using attn = GpuAttention.createSync(c, cache, { maxRows: 256, maxItems: 3 });
  const a = cache.admit(8); const b = cache.admit(8);
  cache.ensureLength(a, 24); cache.ensureLength(b, 24); cache.ensureLength(a, 40); // a's blocks interleave with b's
  cache.syncTables();
  const bits = new Uint16Array(10 * 128).map((_, i) => (i * 7919) & 0x7fff);
  cache.writeRows('comp-r4', 1, a, 0, bits);
  assert.deepEqual(cache.readRows('comp-r4', 1, a, 0, 10), bits);
  // 12 ratio-4 blocks of 4 entries: a holds 3, b 2; 7 left = 28 entries = 112 more tokens
  const free = cache.allocator.freeBlocks(cache.kindIndex('comp-r4'));
  assert.throws(() => attn.begin([{ seq: a, pos: 40, len: 60 }, { seq: b, pos: 24, len: 80 }]), (e: unknown) =>
    e instanceof KvCacheCapacityError && /"comp-r4"/.test(e.message) && /release finished sequences/.test(e.fix));
  assert.equal(cache.allocator.freeBlocks(cache.kindIndex('comp-r4')), free, 'nothing taken');
  assert.equal(a.length, 40);
  attn.begin([{ seq: a, pos: 40, len: 60 }]); // fits alone
  assert.throws(() => cache.admit(2000), (e: unknown) => e instanceof KvCacheCapacityError && /maximum context/.test(e.message));
  cache.admit(0);
  assert.throws(() => cache.admit(0), (e: unknown) => e instanceof KvCacheCapacityError && /sequence slots/.test(e.message));
  // a launch with a mis-shaped tensor is refused before the GPU sees it
  using q = DeviceTensor.zeros('BF16', [60, 4, 64]);
  using kv = DeviceTensor.zeros('BF16', [60, 128]);
  using sink = DeviceTensor.zeros('F32', [4]);
  assert.throws(() => attn.attend(0, { q, kv, sink, out: q }), /q is BF16\[60, 4, 64\], expected BF16\[60, 4, 128\]/);
});
