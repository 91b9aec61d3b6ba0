// The OpenAI-compatible HTTP server (app.ts), its protocol types and schemas (protocol.ts), errors (errors.ts)
// and Prometheus metrics (metrics.ts). The engine behind it is src/engine/.
export * from './app.js';
export * from './errors.js';
export * from './metrics.js';
export * from './protocol.js';
