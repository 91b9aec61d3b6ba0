// The GPU attention launchers' pure parts (src/gpu-model/attention.ts): call planning and its refusals, key counts,
// the heads-per-CTA choice, shape and tensor checks, and the kernel registrations. CPU only: these run before any
// launch, so a bad call fails here with its fix instead of in a kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { registeredKernels } from '../src/cuda/kernel-registry.js';
import {
  AttentionArgError, ATTN_SMEM_TWO_CTAS, attentionKeyCount, attentionMmaSmemBytes, attentionSmemBytes, attnShapeFrom, chooseHeadsPerCtaMma, chooseSparseKernel, sparseMmaEntry, checkAttnShape, checkTensor, chooseHeadsPerCta, layerRatio,
  maxNewBlocks, maxNewBlocksOfLengths, planAttentionCall, ATTN_SMEM_LIMIT,
} from '../src/gpu-model/attention.js';
import type { KvSequence } from '../src/gpu-model/kv-allocator.js';
import { modelPresetConfig } from '../src/model/checkpoint-writer.js';
import { modelConfigFrom } from '../src/model/config.js';
import '../src/kernels/attention.js';

const config = (preset: 'tiny' | 'flash' | 'pro', layers?: number, overrides?: Record<string, unknown>) =>
  modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset, layers, expertDtype: 'fp8', seed: 1, overrides })));

const seq = (id: number, slot = id): KvSequence => ({ id, slot, length: 0, blocks: [], released: false });
const limits = { maxRows: 64, maxItems: 4, maxContext: 1000 };
const argErr = (re: RegExp) => (e: unknown) => e instanceof AttentionArgError && re.test(e.message);

test('planAttentionCall lays rows out item after item with positions and first rows', () => {
  const p = planAttentionCall([{ seq: seq(1, 3), pos: 10, len: 3 }, { seq: seq(2, 0), pos: 0, len: 1 }, { seq: seq(5, 1), pos: 99, len: 2 }], limits);
  assert.equal(p.rows, 6);
  assert.deepEqual(Array.from(p.items), [3, 10, 3, 0, 0, 0, 1, 3, 1, 99, 2, 4]);
  assert.deepEqual(Array.from(p.rowItem), [0, 0, 0, 1, 2, 2]);
  assert.deepEqual(Array.from(p.positions), [10, 11, 12, 0, 99, 100]);
  assert.equal(maxNewBlocks(p, 4), 1); // 10..12 completes block 2 (t = 11); 99..100 none
  assert.equal(maxNewBlocks(planAttentionCall([{ seq: seq(1), pos: 2, len: 37 }], limits), 4), 9); // blocks 0..8 end at 3..35
});

test('maxNewBlocksOfLengths (bucket launch shapes): at least what any position completes, and reached at some position', () => {
  for (const ratio of [4, 128]) {
    for (const len of [1, 2, 3, 4, 5, 37, 128, 129, 300]) {
      const bound = maxNewBlocksOfLengths(planAttentionCall([{ seq: seq(1), pos: 0, len }], { ...limits, maxRows: 400, maxContext: 4000 }), ratio);
      assert.equal(bound, Math.ceil(len / ratio));
      let most = 0;
      for (let pos = 0; pos < 2 * ratio; pos++) most = Math.max(most, maxNewBlocks(planAttentionCall([{ seq: seq(1), pos, len }], { ...limits, maxRows: 400, maxContext: 4000 }), ratio));
      assert.equal(most, bound, `ratio ${ratio} len ${len}`);
    }
  }
});

test('planAttentionCall refuses bad calls before any launch, naming the fix', () => {
  assert.throws(() => planAttentionCall([], limits), argErr(/no items/));
  assert.throws(() => planAttentionCall([1, 2, 3, 4, 5].map((i) => ({ seq: seq(i), pos: 0, len: 1 })), limits), argErr(/5 items exceed maxItems 4/));
  assert.throws(() => planAttentionCall([{ seq: seq(1), pos: 0, len: 65 }], limits), argErr(/65 rows exceed maxRows 64.*chunk the prefill/));
  assert.throws(() => planAttentionCall([{ seq: seq(1), pos: 990, len: 11 }], limits), argErr(/exceed the maximum context 1000/));
  assert.throws(() => planAttentionCall([{ seq: seq(1), pos: 0, len: 0 }], limits), argErr(/len 0/));
  assert.throws(() => planAttentionCall([{ seq: seq(1), pos: -1, len: 1 }], limits), argErr(/pos -1/));
  assert.throws(() => planAttentionCall([{ seq: seq(1), pos: 0, len: 1 }, { seq: seq(1), pos: 1, len: 1 }], limits), argErr(/appears twice/));
  assert.throws(() => planAttentionCall([{ seq: { ...seq(1), released: true }, pos: 0, len: 1 }], limits), argErr(/released/));
});

test('attentionKeyCount follows V4-MODEL 4.6: window, then all visible blocks or the top-k', () => {
  assert.equal(attentionKeyCount(0, 128, 0, 512, false), 1);
  assert.equal(attentionKeyCount(500, 128, 0, 512, false), 128);
  assert.equal(attentionKeyCount(126, 128, 128, 512, false), 127); // block 0 not complete yet
  assert.equal(attentionKeyCount(127, 128, 128, 512, false), 129);
  assert.equal(attentionKeyCount(32767, 128, 128, 512, false), 128 + 256);
  assert.equal(attentionKeyCount(2047, 128, 4, 512, true), 128 + 512);
  assert.equal(attentionKeyCount(100000, 128, 4, 512, true), 128 + 512);
  assert.equal(attentionKeyCount(18, 16, 4, 4, true), 16 + 4);
});

test('chooseHeadsPerCta: the largest power of two that divides H and fits registers and shared memory', () => {
  assert.equal(chooseHeadsPerCta(64, 512, 640), 16); // 16 x 512 = the register budget
  assert.equal(chooseHeadsPerCta(4, 128, 40), 4);
  assert.equal(chooseHeadsPerCta(128, 512, 640), 16);
  // ratio 128 at 1M tokens: 128 + 8192 keys -> fewer heads per CTA
  const hpb = chooseHeadsPerCta(64, 512, 128 + 8192);
  assert.ok(hpb < 16 && attentionSmemBytes(hpb, 512, 128 + 8192) <= ATTN_SMEM_LIMIT, `hpb ${hpb}`);
  assert.throws(() => chooseHeadsPerCta(64, 512, 60000), argErr(/do not fit shared memory.*split-K/));
  assert.equal(chooseHeadsPerCta(6, 128, 100), 2, 'H = 6: 2 divides it, 4 does not');
  // Few rows: fewer heads per CTA, so rows x H / hpb CTAs cover the SMs (one head each at one row of 64 heads).
  assert.equal(chooseHeadsPerCta(64, 512, 640, undefined, { rows: 1, sms: 132 }), 1);
  assert.equal(chooseHeadsPerCta(64, 512, 640, undefined, { rows: 8, sms: 132 }), 2);
  assert.equal(chooseHeadsPerCta(64, 512, 640, undefined, { rows: 256, sms: 132 }), 16, 'many rows: the register budget decides');
});

test('chooseHeadsPerCtaMma / chooseSparseKernel: the tensor-core kernel where its scores fit, else attn_sparse', () => {
  // keys 640 -> 640 pointers, q 32 x 512 bf16, scores 32 x (640 + 8) f32; d 512 needs no key-split partials
  assert.equal(attentionMmaSmemBytes(32, 512, 640), 640 * 8 + 32 * 512 * 2 + 32 * 648 * 4);
  assert.equal(attentionMmaSmemBytes(4, 128, 40), 48 * 8 + 16 * 128 * 2 + 16 * 72 * 4 + 3 * 16 * 128 * 4, 'm-tile padded to 16 rows');
  assert.equal(chooseHeadsPerCtaMma(64, 512, 640), 32, '64 heads x 640 scores do not fit');
  assert.equal(chooseHeadsPerCtaMma(64, 512, 128), 64, 'window-only: one CTA per row');
  assert.equal(chooseHeadsPerCtaMma(4, 128, 40), 4, 'tiny: one padded m-tile');
  assert.equal(chooseHeadsPerCtaMma(64, 512, 640, undefined, { rows: 1, sms: 132 }), 16, 'decode: never below one full m-tile');
  assert.equal(chooseHeadsPerCtaMma(64, 512, 640, undefined, { rows: 256, sms: 132 }), 32);
  assert.equal(chooseHeadsPerCtaMma(64, 512, 128, undefined, { rows: 64, sms: 132 }), 16, 'batch 64: 256 CTAs');
  assert.equal(chooseHeadsPerCtaMma(64, 96, 128), undefined, 'd 96: not built');
  assert.equal(chooseHeadsPerCtaMma(64, 512, 128 + 8192), undefined, '8320 scores x 16 heads do not fit');
  for (let n = 640; n < 4000; n += 97) {
    const h = chooseHeadsPerCtaMma(64, 512, n);
    if (h !== undefined) assert.ok(attentionMmaSmemBytes(h, 512, n) <= ATTN_SMEM_LIMIT);
  }
  // 640 keys: 118 KiB with both m-tiles' queries (one CTA per SM), 102 KiB with one (two CTAs per SM)
  assert.equal(attentionMmaSmemBytes(32, 512, 640, 1), 640 * 8 + 16 * 512 * 2 + 32 * 648 * 4);
  assert.ok(attentionMmaSmemBytes(32, 512, 640) > ATTN_SMEM_TWO_CTAS && attentionMmaSmemBytes(32, 512, 640, 1) <= ATTN_SMEM_TWO_CTAS);
  assert.deepEqual(chooseSparseKernel(64, 512, 640), { kernel: 'mma', hpb: 32, smem: attentionMmaSmemBytes(32, 512, 640, 1), entry: 'sparseMma2s' });
  assert.deepEqual(chooseSparseKernel(64, 512, 640, undefined, undefined, false, false), { kernel: 'mma', hpb: 32, smem: attentionMmaSmemBytes(32, 512, 640), entry: 'sparseMma2' }, 'MEGAMOE_ATTN_QPASS=0');
  assert.equal(chooseSparseKernel(64, 512, 128, undefined, { rows: 4096, sms: 132 }).entry, 'sparseMma4', 'window only: two CTAs per SM with every query');
  assert.equal(chooseSparseKernel(64, 512, 160, undefined, { rows: 4096, sms: 132 }).entry, 'sparseMma4', 'the ratio-128 layer at 4K: 107 KiB');
  // the ratio-128 layer at 16K tokens: 256 keys, 64 heads: 134 KiB, 102 KiB with two of the four m-tiles' queries
  assert.deepEqual(chooseSparseKernel(64, 512, 256, undefined, { rows: 4096, sms: 132 }), { kernel: 'mma', hpb: 64, smem: attentionMmaSmemBytes(64, 512, 256, 2), entry: 'sparseMma4s' });
  assert.equal(chooseSparseKernel(64, 512, 384, undefined, { rows: 4096, sms: 132 }).entry, 'sparseMma4', 'not two CTAs even so: one pass');
  assert.equal(chooseSparseKernel(64, 512, 640, undefined, { rows: 1, sms: 132 }).entry, 'sparseMma1');
  const ref = chooseSparseKernel(64, 512, 128 + 8192);
  assert.equal(ref.kernel, 'ref');
  assert.equal(ref.hpb, chooseHeadsPerCta(64, 512, 128 + 8192));
  assert.equal(chooseSparseKernel(64, 512, 640, undefined, undefined, true).kernel, 'ref', 'MEGAMOE_ATTN_REF=1');
  assert.deepEqual([1, 4, 16, 32, 64].map(sparseMmaEntry), ['sparseMma1', 'sparseMma1', 'sparseMma1', 'sparseMma2', 'sparseMma4']);
});

test('checkAttnShape accepts tiny, flash and pro and refuses what the kernels cannot do', () => {
  for (const c of [config('tiny'), config('flash', 4), config('pro', 4)]) checkAttnShape(attnShapeFrom(c));
  const s = attnShapeFrom(config('tiny'));
  assert.throws(() => checkAttnShape({ ...s, headDim: 96 }), argErr(/head_dim 96/));
  assert.throws(() => checkAttnShape({ ...s, headDim: 1024 }), argErr(/head_dim 1024/));
  assert.throws(() => checkAttnShape({ ...s, indexHeadDim: 96 }), argErr(/index_head_dim 96/));
  assert.throws(() => checkAttnShape({ ...s, indexHeads: 512, indexHeadDim: 512 }), argErr(/indexer query/));
});

test('checkTensor and layerRatio: dtype, shape (leading dim at least the rows) and layer kinds', () => {
  checkTensor('q', { dtype: 'BF16', shape: [10, 4, 128] }, 'BF16', [8, 4, 128], 'fix');
  assert.throws(() => checkTensor('q', { dtype: 'F32', shape: [8, 4, 128] }, 'BF16', [8, 4, 128], 'pass BF16'), argErr(/q is F32\[8, 4, 128\], expected BF16\[8, 4, 128\].*pass BF16/));
  assert.throws(() => checkTensor('q', { dtype: 'BF16', shape: [7, 4, 128] }, 'BF16', [8, 4, 128], 'fix'), argErr(/leading dim at least 8/));
  assert.throws(() => checkTensor('q', { dtype: 'BF16', shape: [8, 4, 64] }, 'BF16', [8, 4, 128], 'fix'), AttentionArgError);
  assert.throws(() => checkTensor('picks', undefined, 'I32', [8, 4], 'pass picks'), argErr(/picks is missing/));
  const s = attnShapeFrom(config('tiny'));
  assert.deepEqual([0, 1, 2, 3].map((l) => layerRatio(s, l)), [
    { ratio: 0, indexer: false }, { ratio: 4, indexer: true }, { ratio: 128, indexer: false }, { ratio: 0, indexer: false }]);
  assert.throws(() => layerRatio(s, 4), argErr(/layer 4 is outside \[0, 4\)/));
});

test('the attention, compressor and indexer kernels are registered for `megamoe kernels --check`', () => {
  const names = new Map(registeredKernels().map((k) => [k.name, k]));
  assert.match(names.get('attention')!.entry!, /attn_sparse.*attn_sparse_mma1.*attn_sparse_mma2.*attn_sparse_mma4.*attn_mma_selftest/);
  assert.match(names.get('compressor')!.entry!, /attn_compress_pool.*attn_compress_state/);
  assert.match(names.get('indexer')!.entry!, /attn_indexer_prepare.*attn_indexer_scores.*attn_indexer_topk/);
  for (const n of ['attention', 'compressor', 'indexer']) assert.equal(names.get(n)!.variants.length, 1);
});
