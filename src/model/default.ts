// The embedded default model as a CausalLM: generated on first use into the cache folder (checkpoint-writer.ts),
// then loaded like any checkpoint. `megamoe generate` and the server use it when no --model is given.
import { ensureDefaultModel } from './checkpoint-writer.js';
import { DeepSeekV4Model, type CreateModelOptions } from './model.js';

export async function loadDefaultCausalLM(options: CreateModelOptions & { dir?: string } = {}): Promise<DeepSeekV4Model> {
  return DeepSeekV4Model.load(ensureDefaultModel({ dir: options.dir }), options);
}
