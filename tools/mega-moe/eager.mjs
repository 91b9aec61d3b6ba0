// One eager forward per T after a warm-up, for profilers (ncu): the fused or the unfused layer, flash or pro shape,
// random weights and routing. On a GPU host after npm run build (carry .gpuhost and dist), e.g.
//   ncu --clock-control none --metrics gpu__time_duration.sum,dram__bytes.sum --csv \
//     .gpuhost/run node tools/mega-moe/eager.mjs unfused flash 8192,16384
import { DeviceMoeWeights, UnfusedMoe } from '../../dist/src/backends/unfused.js';
import { MegaMoe } from '../../dist/src/backends/mega-moe.js';
import { ensureContext } from '../../dist/src/cuda/index.js';
import { RandomFill } from '../../dist/src/kernels/random-fill.js';
import { MOE_BENCH_PRESETS, randomRouting } from '../../dist/src/bench/moe.js';
const [backend, name, tl] = process.argv.slice(2);
const shape = MOE_BENCH_PRESETS[name];
if (!shape || !tl) {
  console.error(`usage: eager.mjs unfused|mega ${Object.keys(MOE_BENCH_PRESETS).join('|')} T,T,...`);
  process.exit(2);
}
const Ts = tl.split(',').map(Number);
ensureContext();
const w = await DeviceMoeWeights.random(shape, 1);
const p = backend === 'mega' ? await MegaMoe.create(w, Math.max(...Ts)) : await UnfusedMoe.create(w, Math.max(...Ts));
const fill = await RandomFill.create();
for (const T of Ts) {
  const r = randomRouting(1000 + T, T, shape.experts, shape.topK);
  fill.bf16Normal(p.io.x.buffer, 7 + T, T * shape.hidden, p.stream);
  p.io.ids.buffer.copyFromHost(r.ids, { stream: p.stream, bytes: r.ids.byteLength });
  p.io.weights.buffer.copyFromHost(r.weights, { stream: p.stream, bytes: r.weights.byteLength });
  p.enqueue(T); p.stream.synchronize();
  console.log(`MARK T=${T}`);
  p.enqueue(T); p.stream.synchronize();
}
