// Host time of the CPU sampler (src/generate/sampler.ts) on one row of V4's 129280 logits, per sampling mode: the
// cost the engine pays per generated token when the model does not sample on its device (docs/SERVER.md).
// After npm run build:  node tools/cpu-sampler-cost.mjs
import { Sampler } from '../dist/src/generate/sampler.js';

const V = 129280;
const logits = new Float32Array(V);
for (let i = 0; i < V; i++) logits[i] = Math.sin(i * 12.9898) * 4;
const modes = [
  { temperature: 0, topK: 0, topP: 1, seed: 1 },
  { temperature: 1, topK: 0, topP: 1, seed: 1 },
  { temperature: 0.8, topK: 0, topP: 0.95, seed: 1 },
  { temperature: 0.7, topK: 50, topP: 0.9, seed: 1 },
];
for (const p of modes) {
  const s = new Sampler(p);
  for (let i = 0; i < 5; i++) s.sample(logits);
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) s.sample(logits);
  console.log(`${JSON.stringify(p)}: ${((performance.now() - t0) / 50).toFixed(3)} ms per token (mean of 50 after 5 warm-ups)`);
}
