#!/usr/bin/env node
// Host cost of loading one MoE layer's routed experts (issue 8: "seconds per layer"): serial read (+ FP4 -> FP8
// conversion) on the main thread vs worker threads (src/checkpoint/expert-workers.ts), then the weight transform
// and tiling the unfused backend applies per expert.
//   npm run build && node scripts/bench-expert-load.mjs DIR [--layer L] [--threads 1,4,16] [--experts N]
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'src');
const { loadMoeLayer } = await import(path.join(root, 'checkpoint', 'moe-layer.js'));
const { loadExpertsParallel } = await import(path.join(root, 'checkpoint', 'expert-workers.js'));
const { concatL1, transformL1 } = await import(path.join(root, 'moe', 'transform.js'));
const { tileWeights } = await import(path.join(root, 'kernels', 'weight-layout.js'));

const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
const dir = args[0];
const layerIdx = Number(opt('--layer', '0'));
const threadList = opt('--threads', `1,${os.availableParallelism()}`).split(',').map(Number);
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
console.log(`host     ${os.cpus()[0]?.model ?? '?'}, ${os.availableParallelism()} threads, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);

// serial, as DeviceMoeWeights.fromLayer does it today: experts.get, transform, tile
{
  const layer = loadMoeLayer(dir, { layer: layerIdx });
  const ids = layer.experts.ids.slice(0, Number(opt('--experts', String(layer.experts.ids.length))));
  const H = layer.shape.hiddenSize; const I = layer.shape.moeIntermediateSize;
  let tRead = 0; let tTr = 0; let tTile = 0;
  for (const id of ids) {
    const a = performance.now(); const ffn = layer.experts.get(id); const b = performance.now();
    const l1 = transformL1(concatL1(ffn.w1, ffn.w3)); const c = performance.now();
    tileWeights(l1.q, 1, 2 * I, H); tileWeights(ffn.w2.q, 1, H, I);
    tRead += b - a; tTr += c - b; tTile += performance.now() - c;
    layer.experts.release(id);
  }
  console.log(`serial   ${ids.length} ${layer.expertDtype} experts of layer ${layerIdx}: read${layer.expertDtype === 'fp4' ? ' + FP4->FP8' : ''} ${s(tRead)}, transform ${s(tTr)}, tile ${s(tTile)}; total ${s(tRead + tTr + tTile)}`);
  layer.close();
}
for (const threads of threadList) {
  const layer = loadMoeLayer(dir, { layer: layerIdx });
  const t = performance.now(); const c = cpu();
  const r = await loadExpertsParallel(dir, layer, { threads });
  console.log(`threads  ${r.threads}: read${layer.expertDtype === 'fp4' ? ' + FP4->FP8' : ''} of ${r.experts} experts ${s(performance.now() - t)} wall, ${s(cpu() - c)} cpu (all threads)`);
  layer.close();
}
