// The MoE block: routing, the reference expert math, the f64 yardstick, the weight transform, guards and the
// backend interface. Backends are chosen by name in src/backends/index.ts.
export * from './types.js';
export * from './guards.js';
export * from './router.js';
export * from './experts.js';
export * from './f64-eval.js';
export * from './transform.js';
export * from './backend.js';
export * from './output-check.js';
export * from './synthetic.js';
