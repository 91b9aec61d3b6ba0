// The model row-op kernels (model_ops.cu: embedding, RMSNorm + act_quant, RoPE, hc_pre / hc_head / hc_post, the q
// renorm), the GPU
// sampler (sampling.cu) and the dense FP8 projections' grouped-GEMM variants: their registration for
// `megamoe kernels --check` and their loading. The launchers with the shape checks live in src/gpu-model/ (kernels
// register here because `megamoe kernels` discovers src/kernels/ modules); this module knows files, entries, defines.
import { loadKernel, loadKernelSync, registerKernel, type Kernel } from '../cuda/index.js';
import { GROUPED_GEMM_ENTRY, GROUPED_GEMM_SOURCE, groupedGemmConfig, type GemmPath, type GroupedGemmSpec } from './grouped-gemm.js';

export const MODEL_OPS_SOURCE = 'model_ops.cu';
export const MODEL_OPS_ENTRIES = ['mo_embed', 'mo_rms_norm', 'mo_rope', 'mo_hc_pre', 'mo_hc_head', 'mo_hc_pre_mix', 'mo_hc_head_mix', 'mo_hc_pre_mix_tiled', 'mo_hc_head_mix_tiled', 'mo_hc_pre_fin', 'mo_hc_head_fin', 'mo_hc_post', 'mo_mtp_combine', 'mo_q_renorm'] as const;
export type ModelOpsEntry = (typeof MODEL_OPS_ENTRIES)[number];

export const SAMPLING_SOURCE = 'sampling.cu';
export const SAMPLING_ENTRY = 'mo_sample';

/** The hc stream count is the only compile-time shape of model_ops.cu (per-thread accumulators); V4 uses 4. */
export function modelOpsDefines(hcMult: number): Record<string, number> {
  return { MO_HC: hcMult };
}

registerKernel({
  name: 'model_ops',
  source: MODEL_OPS_SOURCE,
  entry: MODEL_OPS_ENTRIES.join(','),
  variants: [{ label: 'hc4', defines: modelOpsDefines(4) }],
});

registerKernel({
  name: 'sampling',
  source: SAMPLING_SOURCE,
  entry: SAMPLING_ENTRY,
  variants: [{ label: 'default', defines: {} }],
});

export type ModelOpsKernels = Record<ModelOpsEntry, Kernel>;

/** Compiles (cached) and loads every model_ops entry for `hcMult` streams. */
export async function loadModelOpsKernels(hcMult: number): Promise<ModelOpsKernels> {
  const out: Partial<ModelOpsKernels> = {};
  for (const entry of MODEL_OPS_ENTRIES) out[entry] = await loadKernel({ source: MODEL_OPS_SOURCE, entry, defines: modelOpsDefines(hcMult) });
  return out as ModelOpsKernels;
}

export function loadModelOpsKernelsSync(hcMult: number): ModelOpsKernels {
  const out: Partial<ModelOpsKernels> = {};
  for (const entry of MODEL_OPS_ENTRIES) out[entry] = loadKernelSync({ source: MODEL_OPS_SOURCE, entry, defines: modelOpsDefines(hcMult) });
  return out as ModelOpsKernels;
}

export async function loadSamplingKernel(): Promise<Kernel> {
  return loadKernel({ source: SAMPLING_SOURCE, entry: SAMPLING_ENTRY, defines: {} });
}

export function loadSamplingKernelSync(): Kernel {
  return loadKernelSync({ source: SAMPLING_SOURCE, entry: SAMPLING_ENTRY, defines: {} });
}

// ---------------------------------------------------------------------------------------------------------------
// Dense block-FP8 projections reuse the grouped GEMM (grouped_gemm_fp8.cu) with one group: these are the V4 shapes.

/** The config fields the dense FP8 projections' shapes come from (a ModelConfig has them all). */
export interface DenseShapeSource {
  dim: number;
  qLoraRank: number;
  nHeads: number;
  headDim: number;
  oGroups: number;
  oLoraRank: number;
  indexNHeads: number;
  indexHeadDim: number;
}

/** Every FP8 linear of V4-MODEL 8.1 outside the MoE block: name, N (out_features), K (in_features). */
export function denseProjectionShapes(c: DenseShapeSource): Array<{ name: string; n: number; k: number }> {
  return [
    { name: 'wq_a', n: c.qLoraRank, k: c.dim },
    { name: 'wq_b', n: c.nHeads * c.headDim, k: c.qLoraRank },
    { name: 'wkv', n: c.headDim, k: c.dim },
    { name: 'wo_b', n: c.dim, k: c.oGroups * c.oLoraRank },
    { name: 'indexer.wq_b', n: c.indexNHeads * c.indexHeadDim, k: c.qLoraRank },
    { name: 'mtp.e_proj/h_proj', n: c.dim, k: c.dim },
  ];
}

/** CTAs a decode-path dense GEMM aims to keep busy (about one per SM of an H100 / H200, 132). */
const DENSE_SPLIT_TARGET_CTAS = 128;

/**
 * K splits of a decode-path dense GEMM: one CTA walks a 64-row weight unit's K blocks one after another, so a GEMM
 * with few units (wq_a, wkv: N <= 1024, 16 and 8 units) leaves most SMs idle; splitting K over CTAs (powers of two
 * dividing K/128, at least 2 K blocks each) fills ~128 of them (measured: docs/GPU-MODEL.md, "Session 4").
 */
export function denseDecodeSplitK(n: number, k: number): number {
  const units = n / 64;
  const kBlocks = k / 128;
  let s = 1;
  while (units * s * 2 <= DENSE_SPLIT_TARGET_CTAS && kBlocks % (s * 2) === 0 && kBlocks / (s * 2) >= 2) s *= 2;
  return s;
}

/** The grouped-GEMM specialisation of a dense projection [n, k] on one path (the decode path split over K). */
export function denseGemmSpec(path: GemmPath, n: number, k: number): GroupedGemmSpec {
  return path === 'decode' ? { path, epilogue: 'bf16', n, k, splitK: denseDecodeSplitK(n, k) } : { path, epilogue: 'bf16', n, k };
}

/**
 * V4-Flash's published attention dims (SPEC 1, V4-MODEL 0.1), ONLY to pick the variants CI compiles; a real
 * model's shapes always come from its config (denseProjectionShapes(modelConfig)); others compile on first use.
 */
const FLASH_DENSE_SHAPES: DenseShapeSource = Object.freeze({
  dim: 4096, qLoraRank: 1024, nHeads: 64, headDim: 512, oGroups: 8, oLoraRank: 1024, indexNHeads: 64, indexHeadDim: 128,
});

registerKernel({
  name: 'dense_fp8',
  source: GROUPED_GEMM_SOURCE,
  entry: GROUPED_GEMM_ENTRY,
  // Flash, both paths, without the MTP projection (same kernel as any N = K = 4096 GEMM): 10 variants.
  variants: denseProjectionShapes(FLASH_DENSE_SHAPES).slice(0, 5).flatMap(({ name, n, k }) => (['decode', 'normal'] as const).map((path) => ({
    label: `flash-${name}-${path}`, defines: groupedGemmConfig(denseGemmSpec(path, n, k)).defines,
  }))),
});
