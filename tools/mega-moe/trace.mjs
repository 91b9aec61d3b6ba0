// Phase timeline of the fused kernel per T (per-CTA %globaltimer stamps: MegaMoe.setTrace), flash shape unless a
// preset is named. On a GPU host:
//   .gpuhost/run node tools/mega-moe/trace.mjs 1,8,4096 [flash|pro]    (after npm run build; carry .gpuhost and dist)
import { DeviceMoeWeights } from '../../dist/src/backends/unfused.js';
import { MegaMoe } from '../../dist/src/backends/mega-moe.js';
import { DeviceBuffer, ensureContext } from '../../dist/src/cuda/index.js';
import { RandomFill } from '../../dist/src/kernels/random-fill.js';
import { MOE_BENCH_PRESETS, randomRouting } from '../../dist/src/bench/moe.js';
import { MEGA_TRACE_SLOTS as S } from '../../dist/src/kernels/mega-moe-layout.js';
const shape = MOE_BENCH_PRESETS[process.argv[3] ?? 'flash'];
if (!shape) {
  console.error(`usage: trace.mjs T,T,... [${Object.keys(MOE_BENCH_PRESETS).join('|')}]`);
  process.exit(2);
}
const Ts = (process.argv[2] ?? '1,8,512,4096').split(',').map(Number);
const ctx = ensureContext(); const sms = ctx.properties().smCount;
const w = await DeviceMoeWeights.random(shape, 1);
const mega = await MegaMoe.create(w, Math.max(...Ts));
const fill = await RandomFill.create();
const flush = DeviceBuffer.alloc(256 << 20);
const trace = DeviceBuffer.alloc(sms * S * 8);
for (const T of Ts) {
  const r = randomRouting(1000 + T, T, shape.experts, shape.topK);
  fill.bf16Normal(mega.io.x.buffer, 7 + T, T * shape.hidden, mega.stream);
  mega.io.ids.buffer.copyFromHost(r.ids, { stream: mega.stream, bytes: r.ids.byteLength });
  mega.io.weights.buffer.copyFromHost(r.weights, { stream: mega.stream, bytes: r.weights.byteLength });
  mega.stream.synchronize();
  mega.setTrace(trace);
  const agg = Array.from({ length: S }, () => []);
  for (let it = 0; it < 6; it++) {
    trace.memset8(0); flush.memset8(0x5a, { stream: mega.stream });
    mega.enqueue(T); mega.stream.synchronize(); mega.checkErrors();
    const t = new BigUint64Array(sms * S); trace.copyToHost(t);
    const t0 = t.filter((_, i) => i % S === 0 && t[i] > 0n).reduce((a, b) => (a < b ? a : b));
    if (it < 2) continue;
    for (let s = 0; s < S; s++) {
      const v = []; for (let c = 0; c < sms; c++) { const x = t[c * S + s]; if (x > 0n) v.push(Number(x - t0) / 1e3); }
      v.sort((a, b) => a - b);
      agg[s].push(v.length ? [v[0], v[v.length >> 1], v[v.length - 1]] : [NaN, NaN, NaN]);
    }
  }
  mega.setTrace(undefined);
  const names = ['start', 'dispatched', 'L1 done(c)', 'L2 done(c)', 'gemm barrier', 'combine done', 'L1 issued(p)', 'L2 issued(p)',
    ...(T <= 8 ? ['staged', 'counted', 'scanned', 'ranked'] : ['staged+counted', 'scan passed', 'rank passed', '(unused)'])];
  console.log(`T=${T} path=${mega.path(T)} touched=${r.touched}: stamp [min/median/max over CTAs] us, median of 4 launches`);
  agg.forEach((a, s) => { if (a.some((x) => Number.isNaN(x[0]))) return; const m = (k) => { const v = a.map((x) => x[k]).sort((p, q) => p - q); return v[v.length >> 1].toFixed(1); }; console.log(`  ${names[s].padEnd(14)} ${m(0)} / ${m(1)} / ${m(2)}`); });
}
mega.dispose(); w.dispose();
