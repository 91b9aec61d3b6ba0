#!/usr/bin/env node
// Times the CPU model (docs/MODEL.md): checkpoint load, prefill of 512 tokens, decode steps after it.
//   npm run build && node scripts/bench-model.mjs [CHECKPOINT_DIR] [--prefill N] [--decode N]
// Without a directory it uses the embedded default (generated into the cache folder on first use).
// Prints wall time and this process's CPU time (user + system): on a shared machine the CPU time is what the
// same run takes on an idle one (the forward is single-threaded).
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'src');
const { DeepSeekV4Model } = await import(path.join(root, 'model', 'model.js'));
const { ensureDefaultModel } = await import(path.join(root, 'model', 'checkpoint-writer.js'));

const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? Number(args[i + 1]) : def; };
const dir = args.find((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--'))) ?? ensureDefaultModel();
const prefillN = opt('--prefill', 512);
const decodeN = opt('--decode', 40);
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const fmt = (ms) => `${ms.toFixed(ms < 100 ? 1 : 0)} ms`;

let t = performance.now(); let c = cpu();
const m = await DeepSeekV4Model.load(dir);
const loadWall = performance.now() - t; const loadCpu = cpu() - c;
const cfg = m.config;
console.log(`model    ${dir}: D ${cfg.dim}, ${cfg.nLayers} layers (ratios ${cfg.compressRatios.join(', ')}), vocab ${cfg.vocabSize}, ${m.weights.mtp.length} MTP`);
console.log(`load     ${fmt(loadWall)} wall, ${fmt(loadCpu)} cpu (tensors ${fmt(m.weights.timings.tensorsMs)}, MoE router + shared experts ${fmt(m.weights.timings.moeMs)}; routed experts load on first use)`);
console.log(`         per block (attention, norms, hc, MoE router + shared expert): ${m.weights.timings.blockMs.map(fmt).join(", ")}`);

const vocab = cfg.vocabSize;
const toks = (n, seed) => Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % vocab);
// warm-up: JIT and the first use of every weight (routed experts, SIMD copies)
{ const w = m.createSequence(); await m.step([{ seq: w, tokens: toks(Math.min(64, prefillN), 9) }]); for (let i = 0; i < 4; i++) await m.step([{ seq: w, tokens: [i] }]); m.releaseSequence(w); }

let bestWall = Infinity; let bestCpu = Infinity;
const s = m.createSequence();
for (let rep = 0; rep < 2; rep++) {
  const q = rep === 0 ? s : m.createSequence();
  t = performance.now(); c = cpu();
  await m.step([{ seq: q, tokens: toks(prefillN, rep) }]);
  bestWall = Math.min(bestWall, performance.now() - t); bestCpu = Math.min(bestCpu, cpu() - c);
  if (q !== s) m.releaseSequence(q);
}
console.log(`prefill  ${prefillN} tokens: ${fmt(bestWall)} wall, ${fmt(bestCpu)} cpu (best of 2)`);
const walls = []; const cpus = [];
for (let i = 0; i < decodeN; i++) {
  t = performance.now(); c = cpu();
  await m.step([{ seq: s, tokens: [(i * 31) % vocab] }]);
  walls.push(performance.now() - t); cpus.push(cpu() - c);
}
const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
console.log(`decode   ${decodeN} steps after the prefill: median ${fmt(med(walls))} wall (min ${fmt(Math.min(...walls))}), ${fmt(med(cpus))} cpu`);
m.dispose();
