// One whole V4 decoder layer on the GPU (src/gpu-model/layer.ts) against the CPU forward's same layer (model.ts) on
// the same input: a tiny whole-model checkpoint (the embedded default's tiny shape, random weights, vocab cut to 1024)
// with layer 0 window-only + hash-routed MoE, layer 1 ratio 4 + indexer (top-4, so it really selects), layer 2 ratio
// 128. The CPU forward runs first and its taps record every layer's input and output streams, MoE input / output and
// the indexer's picks; then each GPU layer gets the CPU's input of that layer for the same call, over the GPU's own
// paged caches. Calls: sequence A prefills 40 tokens, sequence B 126 (so the ratio-128 layer pools its first block
// during decode), then 4 decode steps of both (a batch of 2).
//
// Bounds. The first H200 run (commit e38a086) held the layer output to SPEC 5's 3e-5 and failed at layer 0 with 1.0e-3
// (worst position; 3.5e-4 over all): the attention path is not bit-exact against the CPU (FP8 GEMMs on tensor cores,
// f32 attention sums), so the MoE input drifts by ~2.3e-5, and the MoE's two e4m3 activation roundings turn that into
// one-step code flips, ~9.6e-4 at its output. SPEC 5's 3e-5 is a bar for a MoE backend on identical inputs, so the
// MoE block is now held exactly there, on the GPU's own MoE input, and the layer as a whole to a looser bound:
//   1. routing: the GPU router's ids == the CPU rule (routeFromLogits) on the GPU's own logits, weights within 1e-6
//      relative (test/gpu-routing.test.ts's comparison; hash layers: the table, exact);
//   2. the MoE block inside the layer == the unfused backend run standalone (its own upload, createBackend) on the
//      GPU's own MoE input and routing: bit for bit (same kernels, same inputs, run-to-run deterministic);
//   3. the same MoE output vs the CPU reference backend on those inputs: calc_diff <= 3e-5 (SPEC 5) over the pooled
//      rows of all calls of a layer (the GPU outputs of the 6 calls concatenated vs the reference's; 174 rows), and
//      per call only <= 5e-4. SPEC 5's 3e-5 is a statistic over many rows; calc_diff of pooled rows is the
//      energy-weighted mean of theirs, so on a decode call of 2 rows one e4m3 rounding flip of an activation
//      dominates: the second H200 run (commit 078ccf6) measured 5.0e-6 .. 1.2e-5 on the prefill calls (40 / 126 rows)
//      and 7.47e-5 on call 2 (decode, 2 rows) of layer 0, which failed the old per-call 3e-5. 5e-4 is ~7x that, and
//      far below a wrong input / weight / expert (1e-2 .. 1);
//   4. the MoE input vs the CPU forward's (rows without a discrete flip): the same split, for the same reason:
//      calc_diff <= 1e-4 pooled over all calls of a layer (the attention half's drift; 8.2e-6 .. 3.1e-5 per prefill
//      call on that run), per call <= 5e-4 (single rows reach 1.59e-4 there: call 1 layer 0 row 82, and 1.12e-4:
//      call 0 layer 0 row 25; a 2-row call is about one row);
//   5. the layer output vs the CPU forward's, every position without a flip: calc_diff <= 5e-3 (5x the 1.0e-3
//      measured; e4m3 amplification of check 4's drift); rows where a discrete choice flipped are reported and held
//      only to a sanity bound (5e-2): a routing flip must be a near-tie (the CPU's gap between the K-th and (K+1)-th
//      biased score at most twice that token's measured score drift, else the test fails), an indexer flip (another
//      top-4 over bf16-rounded scores) is reported; at most 10% of positions may flip. Check 5 is per position, so
//      no small-sample issue: the 078ccf6 run's worst position without a flip is 1.61e-3 (call 1 layer 1 row 1), its
//      worst flip row 4.1e-2 (call 0 layer 2 row 29), 17 flips in the 498 positions it reached.
// Per position, per call and pooled per layer the calc_diffs are reported (t.diagnostic) before anything is
// asserted; bar violations are collected over all calls and layers and asserted at the end, so a failure shows
// all the data. Skips with the reason where no Hopper GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import { GpuAttention } from '../src/gpu-model/attention.js';
import { GpuKvCache } from '../src/gpu-model/kv-cache.js';
import { GpuDecoderLayer, GpuLayerContext } from '../src/gpu-model/layer.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { DeepSeekV4Model, type V4Sequence } from '../src/model/model.js';
import { f32ToBF16Bits } from '../src/model/ops.js';
import { createBackend } from '../src/backends/index.js';
import type { MoeBackend } from '../src/moe/backend.js';
import { routeFromLogits, routeLayer, sqrtSoftplusF32 } from '../src/moe/router.js';
import { decodeBF16Array } from '../src/numerics/bf16.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { HostTensor } from '../src/tensor/host.js';

const skip = gpuSkipReason();
const VOCAB = 1024;
const LAYERS = 3;

/** check 3 per call / pooled per layer; check 4 per call / pooled per layer (why: the header) */
const MOE_REF_CALL = 5e-4;
const MOE_REF_POOLED = 3e-5;
const MOE_IN_CALL = 5e-4;
const MOE_IN_POOLED = 1e-4;

/** calc_diff (src/numerics/calc-diff.ts, SPEC 5) of the concatenation of every pair added, accumulated in f64. */
class PooledDiff {
  private dot = 0;
  private norms = 0;
  rows = 0;
  add(x: ArrayLike<number>, y: ArrayLike<number>, rows: number): void {
    if (x.length !== y.length) throw new Error(`PooledDiff: lengths differ (${x.length} vs ${y.length})`);
    for (let i = 0; i < x.length; i++) { const a = x[i]; const b = y[i]; this.dot += a * b; this.norms += a * a + b * b; }
    this.rows += rows;
  }
  get value(): number { return this.norms === 0 ? 0 : 1 - (2 * this.dot) / this.norms; }
}

const toks = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 13)) % VOCAB);

interface CpuCall {
  items: Array<{ seq: 'A' | 'B'; pos: number; tokens: number[] }>;
  tokens: number[];
  input: Float32Array[];
  output: Float32Array[];
  moeX: HostTensor<'BF16'>[];
  moeY: HostTensor<'BF16'>[];
  /** per layer: row -> picks */
  picks: Map<number, Int32Array>[];
}

test('GPU decoder layer == CPU forward layer, tiny: window + hash MoE, ratio 4 + indexer, ratio 128; prefills 40 / 126, 4 decode steps of 2', { skip, timeout: 600_000 }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-layer-'));
  const dir = path.join(tmp, 'tiny');
  const started = Date.now();
  makeModelCheckpointSync({ preset: 'tiny', layers: LAYERS, expertDtype: 'fp8', seed: 13, out: dir, overrides: { vocab_size: VOCAB } });
  const model = await DeepSeekV4Model.load(dir);
  const c = model.config;
  assert.deepEqual(c.compressRatios.slice(0, LAYERS), [0, 4, 128]);
  assert.equal(c.nHashLayers, 1);

  // ---- the CPU forward, taps on
  const calls: CpuCall[] = [];
  let cur: CpuCall | undefined;
  model.blockTap = (l, input, output) => { cur!.input[l] = input; cur!.output[l] = output; };
  model.moeTap = (l, x, _ids, y) => { if (l < LAYERS) { cur!.moeX[l] = x; cur!.moeY[l] = y; } };
  model.picksTap = (l, r, p) => { (cur!.picks[l] ??= new Map()).set(r, p.slice()); };
  const A = model.createSequence() as V4Sequence; const B = model.createSequence() as V4Sequence;
  const plan: Array<Array<{ seq: 'A' | 'B'; tokens: number[] }>> = [
    [{ seq: 'A', tokens: toks(1, 40) }],
    [{ seq: 'B', tokens: toks(2, 126) }],
    ...Array.from({ length: 4 }, (_, k) => [{ seq: 'A' as const, tokens: toks(3 + k, 1) }, { seq: 'B' as const, tokens: toks(9 + k, 1) }]),
  ];
  for (const items of plan) {
    cur = { items: [], tokens: [], input: [], output: [], moeX: [], moeY: [], picks: [] };
    for (const it of items) {
      const s = it.seq === 'A' ? A : B;
      cur.items.push({ seq: it.seq, pos: s.length, tokens: it.tokens });
      cur.tokens.push(...it.tokens);
    }
    await model.forward(items.map((it) => ({ seq: it.seq === 'A' ? A : B, tokens: it.tokens })), { noLogits: true });
    calls.push(cur);
  }
  model.blockTap = undefined; model.moeTap = undefined; model.picksTap = undefined;
  t.diagnostic(`checkpoint + CPU forward: ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // ---- the GPU layers over their own paged caches
  const g0 = Date.now();
  const maxRows = 128;
  using cache = GpuKvCache.create(c, { maxSequences: 2, blockRows: 16, freeBytes: 2 ** 30, memoryFraction: 1, maxBlocksPerKind: 64, maxContext: 512 });
  using attn = GpuAttention.createSync(c, cache, { maxRows, maxItems: 2 });
  using ctx = await GpuLayerContext.create(c, attn, { maxRows });
  const layers: GpuDecoderLayer[] = [];
  const standalone: MoeBackend[] = [];
  try {
    for (let l = 0; l < LAYERS; l++) layers.push(await GpuDecoderLayer.create(ctx, model.weights.layers[l]));
    // check 2's standalone unfused backends (their own weight upload), one per layer
    for (let l = 0; l < LAYERS; l++) {
      const { backend } = await createBackend('unfused');
      standalone.push(backend);
      await backend.prepare(model.weights.layers[l].moe, { maxTokens: maxRows });
    }
    t.diagnostic(`GPU layers built (kernels compiled / loaded, weights uploaded): ${((Date.now() - g0) / 1000).toFixed(1)} s`);
    assert.deepEqual(layers.map((L) => L.hashRouted), [true, false, false]);
    const gA = cache.admit(0); const gB = cache.admit(0);
    const D = c.dim; const hc = c.hcMult; const W = hc * D; const K = c.base.numExpertsPerTok; const E = c.base.nRoutedExperts;
    using hs = DeviceTensor.zeros('BF16', [ctx.mCap, hc, D]);
    let worstClean = 0; let worstAll = 0; let positions = 0; const flips: string[] = [];
    // bar violations, asserted at the end; per layer: check 3's and check 4's pools over all calls
    const bad: string[] = [];
    const moeRefPool = Array.from({ length: LAYERS }, () => new PooledDiff());
    const moeInPool = Array.from({ length: LAYERS }, () => new PooledDiff());
    for (const [ci, call] of calls.entries()) {
      const p = ctx.begin(call.items.map((it) => ({ seq: it.seq === 'A' ? gA : gB, pos: it.pos, len: it.tokens.length })), call.tokens);
      const n = p.rows;
      assert.equal(n, call.tokens.length);
      for (let l = 0; l < LAYERS; l++) {
        const layer = layers[l];
        hs.buffer.copyFromHost(f32ToBF16Bits(call.input[l], n * W), { stream: ctx.stream });
        layer.forward(hs, ctx);
        ctx.stream.synchronize();
        const outBits = new Uint16Array(n * W);
        hs.buffer.copyToHost(outBits, { bytes: outBits.byteLength });
        const out = decodeBF16Array(outBits);
        const want = call.output[l];

        // the router: GPU ids vs the CPU's on the CPU's MoE input; a flip must be a near-tie within the drift
        const r = layer.router.download(n);
        const cpuX = call.moeX[l];
        const cpuRoute = routeLayer(model.weights.layers[l].moe, cpuX, Int32Array.from(call.tokens));
        const bias = model.weights.layers[l].moe.gateBias;
        const flipped = new Set<number>();
        for (let row = 0; row < n; row++) {
          const gpuIds = Array.from(r.topkIds.subarray(row * K, (row + 1) * K), Number).sort((a, b) => a - b);
          const cpuIds = Array.from(cpuRoute.topkIds.data.subarray(row * K, (row + 1) * K)).sort((a, b) => a - b);
          if (gpuIds.join() === cpuIds.join()) continue;
          if (layer.hashRouted) { bad.push(`call ${ci} layer ${l} row ${row}: hash-routed ids differ (gpu ${gpuIds} cpu ${cpuIds})`); flipped.add(row); continue; }
          const key = (lg: Float32Array, e: number) => Math.fround(sqrtSoftplusF32(lg[row * E + e]) + (bias ? bias[e] : 0));
          const keysC = Array.from({ length: E }, (_, e) => key(cpuRoute.logits, e)).sort((a, b) => b - a);
          let drift = 0;
          for (let e = 0; e < E; e++) drift = Math.max(drift, Math.abs(key(r.logits, e) - key(cpuRoute.logits, e)));
          const gap = keysC[K - 1] - keysC[K];
          if (!(gap <= 2 * drift + 1e-6)) bad.push(`call ${ci} layer ${l} row ${row}: routing differs (gpu ${gpuIds} cpu ${cpuIds}) but the CPU's top-${K} gap ${gap} exceeds twice the score drift ${drift}`);
          flipped.add(row);
          flips.push(`call ${ci} L${l} row ${row}: routing near-tie (gap ${gap.toExponential(2)}, drift ${drift.toExponential(2)})`);
        }

        // the indexer's picks (ratio-4 layers): rows whose selection differs are reported
        const cpuPicks = call.picks[l];
        if (cpuPicks && layer.ratio === 4) {
          const topk = attn.picks.shape[1];
          const gp = attn.picks.toHost().data as Int32Array;
          for (const [row, pk] of cpuPicks) {
            const got = Array.from(gp.subarray(row * topk, (row + 1) * topk)).filter((v) => v >= 0);
            if (got.join() !== Array.from(pk).join()) {
              flipped.add(row);
              flips.push(`call ${ci} L${l} row ${row}: indexer picks gpu [${got}] cpu [${Array.from(pk)}]`);
            }
          }
        }

        // checks 1-3: the MoE block on the GPU's own input
        const where = `call ${ci} layer ${l}`;
        const gx = (layer.moe.io.x.toHost().data as Uint16Array).slice(0, n * D);
        const gy = (layer.moe.io.y.toHost().data as Uint16Array).slice(0, n * D);
        const gIds = (layer.moe.io.ids.toHost().data as BigInt64Array).slice(0, n * K);
        const gW = (layer.moe.io.weights.toHost().data as Float32Array).slice(0, n * K);
        const lw = model.weights.layers[l].moe;
        const rule = routeFromLogits(r.logits, layer.hashRouted
          ? { shape: lw.shape, tid2eid: lw.tid2eid, tokenIds: call.tokens }
          : { shape: lw.shape, bias: lw.gateBias });
        let check1 = '';
        for (let i = 0; i < n * K && !check1; i++) {
          const a = gW[i]; const b = rule.topkWeights.data[i];
          if (Number(gIds[i]) !== rule.topkIds.data[i]) check1 = `${where} row ${Math.floor(i / K)} slot ${i % K}: the GPU router's id ${gIds[i]} vs the CPU rule on the GPU's logits ${rule.topkIds.data[i]} (check 1)`;
          else if (!(Math.abs(a - b) <= 1e-6 * Math.abs(b))) check1 = `${where} row ${Math.floor(i / K)} slot ${i % K}: routing weight gpu ${a} cpu rule ${b} (check 1)`;
        }
        if (check1) bad.push(check1);
        const xT = new HostTensor('BF16', [n, D], gx);
        const idsT = new HostTensor('I64', [n, K], gIds);
        const wT = new HostTensor('F32', [n, K], gW);
        const alone = await standalone[l].forward(xT, idsT, wT);
        let firstDiff = -1;
        for (let i = 0; i < n * D && firstDiff < 0; i++) if (alone.y.data[i] !== gy[i]) firstDiff = i;
        if (firstDiff >= 0) bad.push(`${where}: the in-layer MoE output differs from the standalone unfused backend on the same input at row ${Math.floor(firstDiff / D)} col ${firstDiff % D} (bits 0x${gy[firstDiff].toString(16)} vs 0x${alone.y.data[firstDiff].toString(16)}) (check 2)`);
        const ref = await model.backends[l].forward(xT, idsT, wT);
        const gyF = decodeBF16Array(gy); const refF = decodeBF16Array(ref.y.data);
        const moeVsRef = calcDiff(gyF, refF);
        moeRefPool[l].add(gyF, refF, n);
        if (!(moeVsRef <= MOE_REF_CALL)) bad.push(`${where} (${n} rows): the GPU MoE output vs the CPU reference backend on the GPU's own input: calc_diff ${moeVsRef} > ${MOE_REF_CALL} (check 3, per call)`);

        // the MoE block vs the CPU forward's (input drift included): reported; check 4 below on rows without flips
        const gxF = decodeBF16Array(gx); const cxF = decodeBF16Array(cpuX.data);
        const moeIn = calcDiff(gxF, cxF);
        const moeOut = calcDiff(gyF, decodeBF16Array(call.moeY[l].data));

        const cleanG: number[] = []; const cleanC: number[] = [];
        let worstIn = 0; let worstInAt = -1;
        for (let row = 0; row < n; row++) {
          if (flipped.has(row)) continue;
          const a = gxF.subarray(row * D, (row + 1) * D); const b = cxF.subarray(row * D, (row + 1) * D);
          const dIn = calcDiff(a, b);
          if (dIn > worstIn) { worstIn = dIn; worstInAt = row; }
          for (let i = 0; i < D; i++) { cleanG.push(a[i]); cleanC.push(b[i]); }
        }
        const moeInClean = cleanG.length ? calcDiff(Float32Array.from(cleanG), Float32Array.from(cleanC)) : 0;
        moeInPool[l].add(cleanG, cleanC, cleanG.length / D);
        if (!(moeInClean <= MOE_IN_CALL)) bad.push(`${where}: MoE input vs the CPU forward's (${cleanG.length / D} rows without flips) calc_diff ${moeInClean} > ${MOE_IN_CALL} (check 4, per call; worst row ${worstInAt}: ${worstIn})`);

        let worstRow = 0; let worstRowAt = -1;
        const perPos: string[] = [];
        for (let row = 0; row < n; row++) {
          const dRow = calcDiff(out.subarray(row * W, (row + 1) * W), want.subarray(row * W, (row + 1) * W));
          if (!Number.isFinite(dRow)) { bad.push(`call ${ci} layer ${l} row ${row}: non-finite output`); perPos.push(`${row}:${dRow}`); positions++; continue; }
          perPos.push(`${row}:${dRow.toExponential(1)}${flipped.has(row) ? '*' : ''}`);
          worstAll = Math.max(worstAll, dRow);
          positions++;
          if (flipped.has(row)) {
            if (!(dRow <= 5e-2)) bad.push(`call ${ci} layer ${l} row ${row} (a flip): calc_diff ${dRow} > 5e-2 (sanity bound)`);
            continue;
          }
          if (dRow > worstRow) { worstRow = dRow; worstRowAt = row; }
        }
        worstClean = Math.max(worstClean, worstRow);
        const total = calcDiff(out, want.subarray(0, n * W));
        t.diagnostic(`call ${ci} (${call.items.map((it) => `${it.seq}@${it.pos}+${it.tokens.length}`).join(' ')}) layer ${l} (ratio ${layer.ratio}${layer.hashRouted ? ', hash' : ''}): `
          + `calc_diff all ${total.toExponential(2)}, worst position ${worstRow.toExponential(2)} (row ${worstRowAt}); MoE in ${moeIn.toExponential(2)} (rows without flips ${moeInClean.toExponential(2)}, worst row ${worstInAt} ${worstIn.toExponential(2)}), `
          + `MoE out ${moeOut.toExponential(2)}, GPU MoE vs the reference backend on the GPU's input ${moeVsRef.toExponential(2)}; flips ${[...flipped].length}`);
        t.diagnostic(`call ${ci} layer ${l}: per-position output calc_diff (* = a flip) ${perPos.join(' ')}`);
        if (!(worstRow <= 5e-3)) bad.push(`call ${ci} layer ${l}: position ${worstRowAt} calc_diff ${worstRow} > 5e-3 (check 5)`);
      }
    }
    for (const f of flips) t.diagnostic(f);
    for (let l = 0; l < LAYERS; l++) {
      const ref = moeRefPool[l]; const inp = moeInPool[l];
      t.diagnostic(`layer ${l}, all ${calls.length} calls pooled: GPU MoE vs the reference backend on the GPU's input ${ref.value.toExponential(2)} (${ref.rows} rows; check 3 <= ${MOE_REF_POOLED}), `
        + `MoE input vs the CPU forward's ${inp.value.toExponential(2)} (${inp.rows} rows without flips; check 4 <= ${MOE_IN_POOLED})`);
      if (!(ref.value <= MOE_REF_POOLED)) bad.push(`layer ${l}: the GPU MoE output vs the CPU reference backend on the GPU's own input, pooled over ${ref.rows} rows of all calls: calc_diff ${ref.value} > ${MOE_REF_POOLED} (SPEC 5, check 3)`);
      if (!(inp.value <= MOE_IN_POOLED)) bad.push(`layer ${l}: MoE input vs the CPU forward's, pooled over ${inp.rows} rows without flips of all calls: calc_diff ${inp.value} > ${MOE_IN_POOLED} (check 4)`);
    }
    t.diagnostic(`${positions} layer positions; worst calc_diff without flips ${worstClean.toExponential(2)}, with ${worstAll.toExponential(2)}; ${flips.length} flips; GPU part ${((Date.now() - g0) / 1000).toFixed(1)} s`);
    if (!(flips.length <= positions * 0.1)) bad.push(`${flips.length} flips in ${positions} positions (more than 10%)`);
    assert.ok(bad.length === 0, `${bad.length} bar(s) failed:\n${bad.join('\n')}`);
  } finally {
    for (const b of standalone) b.dispose();
    for (const L of layers) L.dispose();
    model.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
