// The lightning indexer's scores on the GPU (src/kernels/indexer.cu attn_indexer_scores, through GpuAttention's
// indexerSelect) bit for bit against the CPU's score loop (model.ts indexerTopk), key by key, for decode rows and
// prefill rows (several rows per CTA, CTAs spanning items), and the picks against indexerTopk itself. The keys and
// query heads mix what the exact integer path takes (FP4-simulated vectors) with what it must hand to the double path
// (vectors off the FP4 grid, block scales far apart, extreme magnitudes, zero vectors, products below 2^-126), plus
// exact duplicates (ties), negated keys (negative dots: relu zeros, -0 weights) and negative / zero head weights.
// Skips (with the reason) where no Hopper GPU and driver exist; runs on the CPU emulator (tools/cuda-emulator).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeepSeekV4Config } from '../src/checkpoint/config.js';
import { DeviceTensor, gpuSkipReason } from '../src/cuda/index.js';
import { GpuAttention } from '../src/gpu-model/attention.js';
import { GpuKvCache } from '../src/gpu-model/kv-cache.js';
import { modelPresetConfig } from '../src/model/checkpoint-writer.js';
import { modelConfigFrom, type ModelConfig } from '../src/model/config.js';
import { indexerTopk } from '../src/model/model.js';
import { bf16, f32ToBF16Bits, fp4SimInPlace, hadamardInPlace } from '../src/model/ops.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';
import { indexerIntClass } from './support/indexer-int.js';

const skip = gpuSkipReason();

const config = (preset: 'tiny' | 'flash', layers?: number, overrides?: Record<string, unknown>): ModelConfig =>
  modelConfigFrom(parseDeepSeekV4Config(modelPresetConfig({ preset, layers, expertDtype: 'fp8', seed: 1, overrides })));

/** model.ts indexerTopk's score of block nb (the same expression, in the same order), as bf16 bits. */
function cpuScore(q: Float32Array, qOff: number, w: Float32Array, wOff: number, heads: number, di: number, keys: Float32Array, nb: number): number {
  let sum = 0;
  for (let h = 0; h < heads; h++) {
    const qo = qOff + h * di; const ko = nb * di;
    let dot = 0;
    for (let i = 0; i < di; i++) dot += q[qo + i] * keys[ko + i];
    const rl = Math.max(bf16(dot), 0);
    sum += bf16(w[wOff + h] * rl);
  }
  return f32ToBF16Bits(new Float32Array([bf16(sum)]))[0];
}

/** A vector as the indexer prepares it: Hadamard-rotated gaussians, FP4-simulated per 32-block. */
function fp4Vector(rng: Rng, di: number, scale: number, tmp: Float64Array): Float32Array {
  const x = new Float32Array(di);
  for (let i = 0; i < di; i++) x[i] = bf16(rng.normal() * scale);
  hadamardInPlace(x, 0, di, tmp);
  fp4SimInPlace(x, 0, di, 32);
  return x;
}

/** Vector kinds; 'fp4' dominates, the others are the double path's (or the integer path's edge) cases. */
function makeVector(kind: number, rng: Rng, di: number, tmp: Float64Array): Float32Array {
  switch (kind) {
    case 1: return new Float32Array(di); // zero vector
    case 2: { // block scales 2^12 apart: the common int8 unit cannot hold them (double path)
      const x = fp4Vector(rng, di, 1, tmp);
      for (let i = 0; i < di; i++) x[i] = x[i] * 2 ** (12 * Math.floor(i / 32));
      return x;
    }
    case 3: { const x = new Float32Array(di); for (let i = 0; i < di; i++) x[i] = bf16(rng.normal()); return x; } // not FP4
    case 4: return fp4Vector(rng, di, 2 ** -118, tmp); // tiny: 2^(Uq+Uk) below 2^-126 with most partners
    case 5: return fp4Vector(rng, di, 2 ** 30, tmp); // huge: amax past 2^23 (double path)
    case 6: { const x = fp4Vector(rng, di, 1, tmp); x[5] = 2 ** 22; x[7] = 2 ** -133; return x; } // a product near underflow
    case 7: return fp4Vector(rng, di, 2 ** -3, tmp); // small FP4, 2 binades down: still the integer path
    default: return fp4Vector(rng, di, 1, tmp);
  }
}

const keyKind = (n: number): number => {
  if (n % 97 === 13) return 1 + (Math.floor(n / 97) % 7); // a sprinkling of every special kind
  return n % 11 === 5 ? 7 : 0;
};

interface Case { start: number; len: number }

function runScoresCase(label: string, c: ModelConfig, cases: Case[], rowsPerCta: number, seed: number, t: { diagnostic(s: string): void }): void {
  const Hi = c.indexNHeads; const di = c.indexHeadDim; const topk = c.indexTopk;
  const layer = c.compressRatios.indexOf(4);
  assert.ok(layer >= 0, 'a ratio-4 layer');
  const rng = new Rng(seed);
  const tmp = new Float64Array(di);
  const rows = cases.reduce((s, x) => s + x.len, 0);
  const maxContext = 4 * Math.ceil(Math.max(...cases.map((x) => x.start + x.len)) / 4) + 64;
  using cache = GpuKvCache.create(c, { maxSequences: cases.length, blockRows: 16, freeBytes: 2 ** 31, memoryFraction: 1, maxBlocksPerKind: 4000, maxContext });
  using attn = GpuAttention.createSync(c, cache, { maxRows: rows, maxItems: cases.length, indexerChunkRows: rows, indexerRowsPerCta: rowsPerCta });
  const seqs = cases.map((x) => cache.admit(x.start));
  const plan = attn.begin(cases.map((x, i) => ({ seq: seqs[i], pos: x.start, len: x.len })));
  // every visible indexer key of each sequence, written straight into the cache (duplicates and negations for ties)
  const keys: Float32Array[] = [];
  for (const [i, x] of cases.entries()) {
    const nk = Math.floor((x.start + x.len) / 4);
    const k = new Float32Array(nk * di);
    for (let n = 0; n < nk; n++) {
      let v: Float32Array;
      if (n % 17 === 9 && n > 20) v = k.slice((n - 20) * di, (n - 19) * di); // an exact duplicate: a tie
      else if (n % 19 === 4 && n > 3) v = k.slice((n - 3) * di, (n - 2) * di).map((e) => -e); // negated
      else v = makeVector(keyKind(n), rng, di, tmp);
      k.set(v, n * di);
    }
    keys.push(k);
    cache.writeRows('indexer', layer, seqs[i], 0, f32ToBF16Bits(k));
  }
  // queries (already prepared: FP4 heads, some special, on even rows only: a row with one special head takes the general
  // epilogue for all its pairs, so odd rows keep the fast one at every head count) and head weights (negative, zero)
  const q = new Float32Array(rows * Hi * di);
  const w = new Float32Array(rows * Hi);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < Hi; h++) {
      const kind = r % 2 === 0 && (r * Hi + h) % 23 === 3 ? 1 + ((r + h) % 7) : 0;
      q.set(makeVector(kind, rng, di, tmp), (r * Hi + h) * di);
      w[r * Hi + h] = (r + h) % 13 === 0 ? 0 : bf16(rng.normal() * 0.1);
    }
  }
  using tq = DeviceTensor.fromHost(new HostTensor('BF16', [rows, Hi, di], f32ToBF16Bits(q)));
  using tw = DeviceTensor.fromHost(new HostTensor('BF16', [rows, Hi], f32ToBF16Bits(w)));
  const picks = attn.indexerSelect(layer, tq, tw);
  const { bits, stride } = attn.readIndexerScores(rows);
  const gp = picks.toHost().data as Int32Array;
  const pw = picks.shape[1];

  let compared = 0; let differ = 0; let fastPairs = 0; let slowPairs = 0; let zeros = 0; let ties = 0; let firstBad = '';
  let pickRows = 0;
  for (let r = 0; r < rows; r++) {
    const s = plan.rowItem[r]; const T = plan.positions[r];
    const visible = Math.floor((T + 1) / 4);
    const want = indexerTopk(q, r * Hi * di, w, r * Hi, Hi, di, keys[s], visible, topk);
    const got = Array.from(gp.subarray(r * pw, r * pw + want.length));
    assert.deepEqual(got, Array.from(want), `${label} row ${r} (T ${T}): picks`);
    pickRows++;
    if (visible <= topk) continue;
    const seen = new Set<number>();
    const qc = Array.from({ length: Hi }, (_, h) => indexerIntClass(q.subarray((r * Hi + h) * di, (r * Hi + h + 1) * di)));
    for (let n = 0; n < visible; n++) {
      const ref = cpuScore(q, r * Hi * di, w, r * Hi, Hi, di, keys[s], n);
      const g = bits[r * stride + n];
      compared++;
      if (g !== ref) { differ++; if (!firstBad) firstBad = `row ${r} block ${n}: GPU 0x${g.toString(16)}, CPU 0x${ref.toString(16)}`; }
      if (ref === 0) zeros++;
      if (seen.has(ref)) ties++; else seen.add(ref);
      const kc = indexerIntClass(keys[s].subarray(n * di, (n + 1) * di));
      for (const x of qc) {
        const F = x.U + kc.U;
        if (x.exact && kc.exact && F >= -126 && F <= 105) fastPairs++; else slowPairs++;
      }
    }
  }
  t.diagnostic(`${label}: ${rows} rows (${pickRows} picks compared), ${compared} scores compared, ${differ} differ; ${zeros} zero scores, ${ties} repeated values; q.k pairs on the integer path ${fastPairs}, on the double path ${slowPairs}`);
  assert.equal(differ, 0, `${label}: ${differ} of ${compared} scores differ (first: ${firstBad})`);
  assert.ok(compared > 0 && zeros > 0 && ties > 0, `${label}: the case should score keys, with zero scores and ties`);
  assert.ok(fastPairs > 0.8 * (fastPairs + slowPairs), `${label}: the integer path should take the FP4 pairs`);
  assert.ok(slowPairs > 0, `${label}: the double path should be exercised`);
}

test('indexer scores == CPU bit for bit, tiny shape (16 x 64, tensor cores): decode rows and a prefill chunk, 1 row per CTA', { skip }, (t) => {
  runScoresCase('tiny R1', config('tiny'), [{ start: 900, len: 1 }, { start: 1203, len: 1 }, { start: 600, len: 12 }, { start: 3, len: 1 }], 1, 5, t);
});

test('indexer scores == CPU bit for bit, tiny shape (tensor cores): 8 rows per CTA, CTAs spanning items', { skip }, (t) => {
  runScoresCase('tiny R8', config('tiny'), [{ start: 700, len: 5 }, { start: 1030, len: 1 }, { start: 500, len: 11 }, { start: 1300, len: 2 }], 8, 6, t);
});

test('indexer scores == CPU bit for bit, flash shape (64 x 128, top-512): decode rows past 2K blocks and a prefill chunk (4 rows per CTA)', { skip }, (t) => {
  runScoresCase('flash R4', config('flash', 4), [{ start: 8300, len: 1 }, { start: 2400, len: 6 }, { start: 4099, len: 1 }], 4, 7, t);
});

test('indexer scores == CPU bit for bit, 8 heads x 64 (the CUDA-core __dp4a path): 1 and 8 rows per CTA', { skip }, (t) => {
  const c = config('tiny', undefined, { index_n_heads: 8 });
  runScoresCase('dp4a R1', c, [{ start: 900, len: 1 }, { start: 600, len: 9 }], 1, 8, t);
  runScoresCase('dp4a R8', c, [{ start: 700, len: 5 }, { start: 1030, len: 1 }, { start: 500, len: 11 }], 8, 9, t);
});
