// The serving engine, independent of HTTP: continuous batching over CausalLM.step (engine.ts), the parts it is
// built from (parts.ts) and its refusals (errors.ts).
export * from './engine.js';
export * from './errors.js';
export * from './parts.js';
