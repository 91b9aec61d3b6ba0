// Registration of the attention-side kernels (attention.cu, compressor.cu, indexer.cu) so `megamoe kernels --check`
// compiles them in CI. Their launchers live in src/gpu-model/attention.ts; this module only names sources and entries
// (it sits in src/kernels/ because that is the folder the kernels command imports).
//
// One variant each: every dimension is a launch argument (the straightforward kernels loop over runtime sizes), so
// the tiny, flash and pro shapes share one cubin per file and CI compiles three files, not three per shape.
import { registerKernel } from '../cuda/kernel-registry.js';

export const ATTENTION_SOURCE = 'attention.cu';
export const COMPRESSOR_SOURCE = 'compressor.cu';
export const INDEXER_SOURCE = 'indexer.cu';

export const ATTENTION_ENTRIES = Object.freeze({
  kvFp8Sim: 'attn_kv_fp8_sim',
  windowStore: 'attn_window_store',
  sparse: 'attn_sparse',
  sparseMma1: 'attn_sparse_mma1',
  sparseMma2: 'attn_sparse_mma2',
  sparseMma2s: 'attn_sparse_mma2s',
  sparseMma4: 'attn_sparse_mma4',
  sparseMma4s: 'attn_sparse_mma4s',
  mmaSelftest: 'attn_mma_selftest',
} as const);
export const COMPRESSOR_ENTRIES = Object.freeze({ pool: 'attn_compress_pool', state: 'attn_compress_state' } as const);
export const INDEXER_ENTRIES = Object.freeze({
  prepare: 'attn_indexer_prepare',
  prepareWarp: 'attn_indexer_prepare_warp',
  scores: 'attn_indexer_scores',
  topk: 'attn_indexer_topk',
} as const);

/** Block sizes fixed in the .cu files (kThreads etc.). */
export const ATTN_THREADS = 256;
export const ATTN_MAX_GROUP_DIMS = 8192;
/** attn_sparse_mma1/2/4: threads per CTA, heads per CTA at most (4 m-tiles of 16), the head dims they are built for. */
export const ATTN_MMA_THREADS = 256;
export const ATTN_MMA_MAX_HEADS = 64;
export const ATTN_MMA_DIMS: readonly number[] = Object.freeze([64, 128, 256, 512]);
export const COMPRESSOR_THREADS = 256;
export const COMPRESSOR_MAX_DC = 512;
export const INDEXER_PREP_THREADS = 128;
export const INDEXER_PREP_MAX_DI = 1024;
/** attn_indexer_prepare_warp: threads per CTA (a warp per head), the di it is built for, most RoPE pairs. */
export const INDEXER_PREP_WARP_THREADS = 256;
export const INDEXER_PREP_WARP_DIS: readonly number[] = Object.freeze([64, 128, 256]);
export const INDEXER_PREP_WARP_MAX_PAIRS = 128;
export const INDEXER_SCORE_THREADS = 256;
export const INDEXER_KEYS_PER_CTA = 256;
export const INDEXER_TOPK_THREADS = 512;

registerKernel({ name: 'attention', source: ATTENTION_SOURCE, entry: Object.values(ATTENTION_ENTRIES).join(','), variants: [{ label: 'default', defines: {} }] });
registerKernel({ name: 'compressor', source: COMPRESSOR_SOURCE, entry: Object.values(COMPRESSOR_ENTRIES).join(','), variants: [{ label: 'default', defines: {} }] });
registerKernel({ name: 'indexer', source: INDEXER_SOURCE, entry: Object.values(INDEXER_ENTRIES).join(','), variants: [{ label: 'default', defines: {} }] });
