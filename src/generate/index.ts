// Sampling and the generation loop, plus the per-step pieces a batching engine reuses.
export * from './contracts.js';
export { Sampler, argmax, samplingDistribution, topIds, validateSampling, type Distribution } from './sampler.js';
export { StopMatcher, type StopPush } from './stop.js';
export { GenerationState, generate, defaultStop, FLUSH_TOKEN_ID, type GenerationStateOptions, type StepOutcome } from './generate.js';
export { StreamDecoder } from '../tokenizer/detokenizer.js';
export { createEngineParts, engineParts, type GenerationParts } from './engine-parts.js';
