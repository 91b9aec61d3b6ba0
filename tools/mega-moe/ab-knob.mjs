// Same-process A/B of a build-time tuning knob of the fused layer (an environment variable read when its kernel is
// built, e.g. MEGAMOE_DYNAMIC or MEGAMOE_SMALL_T: docs/MEGA_MOE.md "Tuning knobs"): one MegaMoe per value, plus the
// unfused layer, on the same weights and inputs; their CUDA graphs timed interleaved (one timed run of each per round,
// each after an untimed run of itself, order alternating; L2 flushed), median per T; each fused output compared with
// the unfused one (the share of equal bf16 values). On a GPU host after npm run build, carrying .gpuhost and dist:
//   .gpuhost/run node tools/mega-moe/ab-knob.mjs MEGAMOE_DYNAMIC 0,1 flash 1,8,64,512 20
// A value may set several knobs at once, `K=V+K2=V2` (KNOB is then only a label), e.g.
//   ab-knob.mjs combo default,MEGAMOE_MCAST=0+MEGAMOE_SKIP_PADDING=1 pro 8192 6
// (`default`: no knob set).
import { DeviceMoeWeights, UnfusedMoe } from '../../dist/src/backends/unfused.js';
import { MegaMoe } from '../../dist/src/backends/mega-moe.js';
import { CudaEvent, DeviceBuffer, ensureContext } from '../../dist/src/cuda/index.js';
import { RandomFill } from '../../dist/src/kernels/random-fill.js';
import { MOE_BENCH_PRESETS, randomRouting } from '../../dist/src/bench/moe.js';

const [knob, values, preset = 'flash', tokens = '1,8,64,512', roundsArg = '20'] = process.argv.slice(2);
if (!knob || !values || !MOE_BENCH_PRESETS[preset]) {
  console.error(`usage: ab-knob.mjs KNOB v1,v2,... [${Object.keys(MOE_BENCH_PRESETS).join('|')}] [T,T,...] [rounds]`);
  process.exit(2);
}
const shape = MOE_BENCH_PRESETS[preset];
const Ts = tokens.split(',').map(Number);
const rounds = Number(roundsArg);
ensureContext();
const flush = DeviceBuffer.alloc(256 << 20);
const e0 = CudaEvent.create(), e1 = CudaEvent.create();
const w = await DeviceMoeWeights.random(shape, 1);
const maxT = Math.max(...Ts);
const impls = [];
const settingsOf = (v) => v === 'default' ? [] : v.includes('=') ? v.split('+').map((kv) => kv.split('=')) : [[knob, v]];
for (const v of values.split(',')) {
  const set = settingsOf(v);
  for (const [k, x] of set) process.env[k] = x;
  impls.push([set.length ? set.map(([k, x]) => `${k}=${x}`).join('+') : 'default', await MegaMoe.create(w, maxT)]);
  for (const [k] of set) delete process.env[k];
}
impls.push(['unfused', await UnfusedMoe.create(w, maxT)]);
const fill = await RandomFill.create();
const median = (s) => { s.sort((a, b) => a - b); return s[s.length >> 1]; };
for (const T of Ts) {
  const r = randomRouting(1000 + T, T, shape.experts, shape.topK);
  const runs = [];
  for (const [label, p] of impls) {
    fill.bf16Normal(p.io.x.buffer, 7 + T, T * shape.hidden, p.stream);
    p.io.ids.buffer.copyFromHost(r.ids, { stream: p.stream, bytes: r.ids.byteLength });
    p.io.weights.buffer.copyFromHost(r.weights, { stream: p.stream, bytes: r.weights.byteLength });
    p.stream.synchronize();
    runs.push({ label, p, graph: p.captureGraph(T), us: [] });
  }
  for (let i = 0; i < rounds + 2; i++) {
    for (const x of i % 2 ? [...runs].reverse() : runs) {
      x.graph.launch(x.p.stream);  // the untimed run of the same layer: warm translations and caches
      flush.memset8(0x5a, { stream: x.p.stream });
      e0.record(x.p.stream); x.graph.launch(x.p.stream); e1.record(x.p.stream); e1.synchronize();
      if (i >= 2) x.us.push(e1.elapsedMsSince(e0) * 1e3);
    }
  }
  const ref = runs.at(-1).p.downloadOutputs(T).y.data;
  const cells = runs.map((x) => {
    x.graph.dispose();
    if (x.label !== 'unfused') x.p.checkErrors();
    const y = x.p.downloadOutputs(T).y.data;
    let same = 0;
    for (let i = 0; i < y.length; i++) if (y[i] === ref[i]) same++;
    const path = x.label === 'unfused' ? x.p.rowTile(T).mode : x.p.path(T);
    return `${x.label} [${path}] ${median(x.us).toFixed(1)} us (${((same / y.length) * 100).toFixed(1)}% = unfused)`;
  });
  console.log(`${preset} T=${T}: ${cells.join(', ')}`);
}
for (const [, p] of impls) p.dispose();
w.dispose();
