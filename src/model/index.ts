// model/: the whole DeepSeek-V4 forward on the CPU (V4-MODEL 1-8), its config, parameters, checkpoint loader and
// writer, and the CausalLM contract the generation loop and the server drive.
export * from './causal-lm.js';
export * from './config.js';
export * from './params.js';
export * from './loader.js';
export * from './model.js';
export * from './checkpoint-writer.js';
export { loadDefaultCausalLM } from './default.js';

import type { CausalLM } from './causal-lm.js';
import { resolveBackendName } from '../backends/index.js';
import { DeepSeekV4Model } from './model.js';

/** Sizes of the whole-model GPU step (`device: 'gpu'`); see GpuModelOptions. */
export interface GpuLoadSizes {
  /** Concurrent sequences (the server's --max-num-seqs); default 1. */
  maxSequences?: number;
  /** Most tokens of one step (the server's --max-num-batched-tokens); default GpuModel's. */
  maxRows?: number;
  /** Longest sequence (the server's --max-model-len); default GpuModel's. */
  maxContext?: number;
  /** Decode steps as CUDA graphs (GpuModelOptions.decodeGraphs); default on, off with the server's --enforce-eager. */
  decodeGraphs?: boolean;
  /** The decode batch sizes captured (GpuModelOptions.decodeGraphSizes; the server's --cuda-graph-sizes); default GpuModel's. */
  decodeGraphSizes?: readonly number[];
}

/**
 * The one entry `megamoe generate` and `megamoe serve` load a model through: a DeepSeek-V4 checkpoint folder with
 * its MoE blocks on `backend` (reference, unfused, mega_moe / deep_gemm_mega_moe, auto). `device: 'gpu'` runs the
 * whole step on one GPU (src/gpu-model/model.ts), its MoE blocks on unfused (also for auto) or mega_moe.
 */
export async function loadModel(dir: string, opts: { backend?: string; enableExpertParallel?: boolean; device?: 'cpu' | 'gpu'; gpu?: GpuLoadSizes } = {}): Promise<CausalLM> {
  if (opts.device === 'gpu') {
    const b = opts.backend === undefined ? undefined : resolveBackendName(opts.backend);
    if (b === 'reference') {
      throw new Error(`the whole-model GPU step (device gpu) runs its MoE blocks on unfused or mega_moe; moe backend "${opts.backend}" runs on the CPU: pick unfused or mega_moe, or run on the CPU`);
    }
    // On one GPU expert parallelism is EP size 1: every expert is local (the flag is what mega_moe's guard asks for).
    const { GpuModel } = await import('../gpu-model/model.js');
    const g = opts.gpu ?? {};
    const maxSequences = g.maxSequences ?? 1;
    return GpuModel.load(dir, {
      maxSequences, maxItems: maxSequences, maxRows: g.maxRows, maxContext: g.maxContext, moeBackend: b === 'mega_moe' ? 'mega_moe' : 'unfused',
      decodeGraphs: g.decodeGraphs ?? true, decodeGraphSizes: g.decodeGraphSizes,
    });
  }
  return DeepSeekV4Model.load(dir, { backend: opts.backend, enableExpertParallel: opts.enableExpertParallel });
}
