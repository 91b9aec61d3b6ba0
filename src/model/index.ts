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
import { DeepSeekV4Model } from './model.js';

/**
 * The one entry `megamoe generate` and `megamoe serve` load a model through: a DeepSeek-V4 checkpoint folder with
 * its MoE blocks on `backend` (reference, unfused, mega_moe / deep_gemm_mega_moe, auto).
 */
export async function loadModel(dir: string, opts: { backend?: string; enableExpertParallel?: boolean; device?: 'cpu' | 'gpu' } = {}): Promise<CausalLM> {
  if (opts.device === 'gpu') {
    // The whole step on one GPU (src/gpu-model/model.ts): its MoE blocks are the unfused pipeline, no expert parallelism.
    if (opts.backend !== undefined && opts.backend !== 'unfused') {
      throw new Error(`--device gpu runs every MoE block on the unfused GPU pipeline; --backend ${opts.backend} is not available there (leave it out or pass unfused)`);
    }
    if (opts.enableExpertParallel) throw new Error('--device gpu runs on one GPU: expert parallelism is not built for the whole-model GPU step');
    const { GpuModel } = await import('../gpu-model/model.js');
    return GpuModel.load(dir, { maxSequences: 1, maxItems: 1 });
  }
  return DeepSeekV4Model.load(dir, { backend: opts.backend, enableExpertParallel: opts.enableExpertParallel });
}
