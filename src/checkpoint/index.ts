// checkpoint/: file formats and naming only (safetensors, index.json, config.json, DeepSeek-V4 tensor names,
// MXFP4 -> FP8 conversion, synthetic checkpoints). Hands out host tensors; knows nothing of backends.
export * from './errors.js';
export * from './safetensors.js';
export * from './checkpoint.js';
export * from './config.js';
export * from './names.js';
export * from './mxfp4.js';
export * from './moe-layer.js';
export * from './synthetic.js';
