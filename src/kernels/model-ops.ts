// The model row-op kernels (model_ops.cu: embedding, RMSNorm + act_quant, RoPE, hc_pre / hc_head / hc_post) and the
// GPU sampler (sampling.cu): their registration for `megamoe kernels --check` and their loading. The launchers with
// the shape checks live in src/gpu-model/; this module only knows file names, entry points and defines.
import { loadKernel, loadKernelSync, registerKernel, type Kernel } from '../cuda/index.js';

export const MODEL_OPS_SOURCE = 'model_ops.cu';
export const MODEL_OPS_ENTRIES = ['mo_embed', 'mo_rms_norm', 'mo_rope', 'mo_hc_pre', 'mo_hc_head', 'mo_hc_post'] as const;
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
