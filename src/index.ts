// megamoe's library API: numerics, checkpoints, the MoE block and its backends, tokenizer and generation. The CUDA layer is reachable
// through 'megamoe/cuda' style deep imports (dist/src/cuda/index.js) so that CPU-only users never load it.
export * from './tensor/host.js';
export * from './numerics/index.js';
export * from './checkpoint/index.js';
export * from './moe/index.js';
export * from './backends/index.js';
export * from './model/index.js';
export * from './tokenizer/index.js';
export * from './generate/index.js';
