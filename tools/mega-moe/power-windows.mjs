// Sustained back-to-back CUDA-graph replays of the fused layer, one knob value at a time (no L2 flush, 1.5 s each,
// twice in turn), printing the wall-clock window of each so that nvidia-smi samples (power, SM clock) taken meanwhile
// can be attributed to it (docs/MEGA_MOE.md, session 7). On a GPU host after npm run build (carry .gpuhost, dist):
//   nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm --format=csv -lms 100 > smi.csv &
//   .gpuhost/run node tools/mega-moe/power-windows.mjs MEGAMOE_DYNAMIC 0,1 flash 4096
import { DeviceMoeWeights } from '../../dist/src/backends/unfused.js';
import { MegaMoe } from '../../dist/src/backends/mega-moe.js';
import { CudaEvent, ensureContext } from '../../dist/src/cuda/index.js';
import { RandomFill } from '../../dist/src/kernels/random-fill.js';
import { MOE_BENCH_PRESETS, randomRouting } from '../../dist/src/bench/moe.js';
const [knob, values, preset, tArg] = process.argv.slice(2);
const shape = MOE_BENCH_PRESETS[preset]; const T = Number(tArg);
if (!knob || !values || !shape || !(T >= 1)) {
  console.error(`usage: power-windows.mjs KNOB v1,v2,... ${Object.keys(MOE_BENCH_PRESETS).join('|')} T`);
  process.exit(2);
}
ensureContext();
const w = await DeviceMoeWeights.random(shape, 1);
const fill = await RandomFill.create();
const r = randomRouting(1000 + T, T, shape.experts, shape.topK);
const impls = [];
for (const v of values.split(',')) {
  process.env[knob] = v;
  const p = await MegaMoe.create(w, T);
  fill.bf16Normal(p.io.x.buffer, 7 + T, T * shape.hidden, p.stream);
  p.io.ids.buffer.copyFromHost(r.ids, { stream: p.stream, bytes: r.ids.byteLength });
  p.io.weights.buffer.copyFromHost(r.weights, { stream: p.stream, bytes: r.weights.byteLength });
  p.stream.synchronize();
  impls.push({ v, p, g: p.captureGraph(T) });
}
const e0 = CudaEvent.create(), e1 = CudaEvent.create();
for (let pass = 0; pass < 2; pass++) for (const x of impls) {
  const t0 = Date.now(); let n = 0; const us = [];
  while (Date.now() - t0 < 1500) {
    e0.record(x.p.stream);
    for (let i = 0; i < 20; i++) x.g.launch(x.p.stream);
    e1.record(x.p.stream); e1.synchronize(); n += 20; us.push(e1.elapsedMsSince(e0) * 1e3 / 20);
  }
  us.sort((a, b) => a - b);
  console.log(`WINDOW ${knob}=${x.v} pass ${pass} from ${t0} to ${Date.now()} launches ${n} median ${us[us.length >> 1].toFixed(1)} us (first ${us[0].toFixed(1)})`);
}
