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
export async function loadModel(dir: string, opts: { backend?: string; enableExpertParallel?: boolean } = {}): Promise<CausalLM> {
  return DeepSeekV4Model.load(dir, { backend: opts.backend, enableExpertParallel: opts.enableExpertParallel });
}
