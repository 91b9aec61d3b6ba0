// Same-process A/B of the fused layer with and without the 2-CTA weight multicast and the unfused layer, their CUDA
// graphs timed interleaved (one run of each per round, order alternating; L2 flushed before each), with the clock and
// power after each T (docs/MEGA_MOE.md, "Timing"). On a GPU host after npm run build, carrying .gpuhost and dist:
//   .gpuhost/run node tools/mega-moe/ab-interleaved.mjs 2048,4096,8192,16384 20
import { DeviceMoeWeights, UnfusedMoe } from '../../dist/src/backends/unfused.js';
import { MegaMoe } from '../../dist/src/backends/mega-moe.js';
import { CudaEvent, DeviceBuffer, ensureContext } from '../../dist/src/cuda/index.js';
import { RandomFill } from '../../dist/src/kernels/random-fill.js';
import { randomRouting } from '../../dist/src/bench/moe.js';
import { execSync } from 'node:child_process';
const shape = { hidden: 4096, inter: 2048, experts: 256, topK: 6, swigluLimit: 10 };
const Ts = (process.argv[2] ?? '1,8192').split(',').map(Number);
const runs = Number(process.argv[3] ?? 20);
ensureContext();
const flush = DeviceBuffer.alloc(256 << 20);
const e0 = CudaEvent.create(), e1 = CudaEvent.create();
const w = await DeviceMoeWeights.random(shape, 1);
const maxT = Math.max(...Ts);
process.env.MEGAMOE_MCAST_MIN_ROWS = '0'; // the clustered kernel whenever the normal path runs
const mega = await MegaMoe.create(w, maxT);
process.env.MEGAMOE_MCAST = '0';
const mega0 = await MegaMoe.create(w, maxT);
const unf = await UnfusedMoe.create(w, maxT);
const fill = await RandomFill.create();
const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
for (const T of Ts) {
  const r = randomRouting(1000 + T, T, shape.experts, shape.topK);
  for (const p of [mega, mega0, unf]) {
    fill.bf16Normal(p.io.x.buffer, 7 + T, T * shape.hidden, p.stream);
    p.io.ids.buffer.copyFromHost(r.ids, { stream: p.stream, bytes: r.ids.byteLength });
    p.io.weights.buffer.copyFromHost(r.weights, { stream: p.stream, bytes: r.weights.byteLength });
    p.stream.synchronize();
  }
  const gm = mega.captureGraph(T), g0 = mega0.captureGraph(T), gu = unf.captureGraph(T);
  const sample = (p, g) => { flush.memset8(0x5a, { stream: p.stream }); e0.record(p.stream); g.launch(p.stream); e1.record(p.stream); e1.synchronize(); return e1.elapsedMsSince(e0) * 1e3; };
  const order = [['fused+mcast', mega, gm], ['fused', mega0, g0], ['unfused', unf, gu]];
  for (let i = 0; i < 3; i++) for (const [, p, g] of order) sample(p, g);
  const res = Object.fromEntries(order.map(([k]) => [k, []]));
  for (let i = 0; i < runs; i++) for (const [k, p, g] of (i % 2 ? [...order].reverse() : order)) res[k].push(sample(p, g));
  console.log(`T=${T}: interleaved (alternating order), median / min: ` + Object.entries(res).map(([k, v]) => `${k} ${med(v).toFixed(1)} / ${Math.min(...v).toFixed(1)}`).join(', ') +
    `; ` + execSync('nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader').toString().trim());
  mega.checkErrors(); mega0.checkErrors(); gm.dispose(); g0.dispose(); gu.dispose();
}
console.log(execSync('nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader').toString());
