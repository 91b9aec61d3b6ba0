// Pure numeric functions on typed arrays: no I/O, no GPU. Every other layer uses these, never its own copy.
export * from './e4m3.js';
export * from './bf16.js';
export * from './e8m0.js';
export * from './e2m1.js';
export * from './quant.js';
export * from './calc-diff.js';
