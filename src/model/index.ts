// model/: the whole DeepSeek-V4 forward on the CPU (V4-MODEL 1-8), its config, parameters, checkpoint loader and
// writer, and the CausalLM contract the generation loop and the server drive.
export * from './causal-lm.js';
export * from './config.js';
export * from './params.js';
export * from './loader.js';
export * from './model.js';
export * from './checkpoint-writer.js';
export { loadDefaultCausalLM } from './default.js';
