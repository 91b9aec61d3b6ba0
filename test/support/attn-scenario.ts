// A scenario driver for the GPU attention tests: sequences (fresh, or seeded with a random history of `start`
// tokens: ring, compressed and indexer entries, compressor state), then calls (prefills, chunked prefills, decode
// batches), each run through GpuAttention on one layer and through the CPU mirror (attn-reference.ts) on the same
// random inputs; every stage's output compared. GPU only (the caller skips without a Hopper GPU).
import { DeviceTensor } from '../../src/cuda/index.js';
import { GpuAttention } from '../../src/gpu-model/attention.js';
import type { KvSequence } from '../../src/gpu-model/kv-allocator.js';
import { GpuKvCache } from '../../src/gpu-model/kv-cache.js';
import type { ModelConfig } from '../../src/model/config.js';
import { bf16, f32ToBF16Bits, fp4SimInPlace, fp8SimInPlace } from '../../src/model/ops.js';
import { RopeTable, ropeFrequencies } from '../../src/model/rope.js';
import { decodeBF16Array } from '../../src/numerics/bf16.js';
import { HostTensor } from '../../src/tensor/host.js';
import { Rng } from '../../src/util/rng.js';
import { RefCompressor, refAttendRow, refIndexerPicks, refIndexerPrepare, refKvSim, refStoreWindow } from './attn-reference.js';

export interface ScenarioOptions {
  config: ModelConfig;
  layer: number;
  blockRows: number;
  seed: number;
  /** start: tokens of random history already in the caches; tieKeys: repeat indexer keys so top-k sees exact ties */
  seqs: Array<{ start: number; tieKeys?: boolean }>;
  /** each call: items { seq index, new tokens } */
  calls: Array<Array<{ seq: number; len: number }>>;
  maxContext?: number;
  /** GpuAttention.begin's shapeContext for every call (launch shapes of a context bucket), else exact shapes */
  shapeContext?: number;
}

export interface StageStats {
  values: number;
  mismatches: number;
  maxAbs: number;
  calcDiff: number;
}

class Acc {
  values = 0; mismatches = 0; maxAbs = 0; dot = 0; norms = 0;
  add(gpu: ArrayLike<number>, ref: ArrayLike<number>): void {
    if (gpu.length !== ref.length) throw new Error(`compare: ${gpu.length} vs ${ref.length} values`);
    for (let i = 0; i < gpu.length; i++) {
      const a = gpu[i]; const b = ref[i];
      this.values++;
      if (!Object.is(a, b) && !(a === 0 && b === 0)) this.mismatches++;
      const d = Math.abs(a - b);
      if (d > this.maxAbs || Number.isNaN(d)) this.maxAbs = Number.isNaN(d) ? Infinity : d;
      this.dot += a * b; this.norms += a * a + b * b;
    }
  }
  stats(): StageStats { return { values: this.values, mismatches: this.mismatches, maxAbs: this.maxAbs, calcDiff: this.norms === 0 ? 0 : 1 - (2 * this.dot) / this.norms }; }
}

const bf16Rand = (rng: Rng, n: number, s = 1): Float32Array => { const x = new Float32Array(n); for (let i = 0; i < n; i++) x[i] = bf16(rng.normal() * s); return x; };
const f32Rand = (rng: Rng, n: number, s = 1, mean = 0): Float32Array => { const x = new Float32Array(n); for (let i = 0; i < n; i++) x[i] = Math.fround(mean + rng.normal() * s); return x; };
const dBF16 = (x: Float32Array, shape: number[]) => DeviceTensor.fromHost(new HostTensor('BF16', shape, f32ToBF16Bits(x)));
const dF32 = (x: Float32Array, shape: number[]) => DeviceTensor.fromHost(new HostTensor('F32', shape, x));
const down = (t: DeviceTensor): Float32Array => decodeBF16Array(t.toHost().data as Uint16Array);

export function runScenario(o: ScenarioOptions): Record<string, StageStats> {
  const c = o.config;
  const d = c.headDim; const H = c.nHeads; const rd = c.ropeHeadDim; const win = c.windowSize;
  const Hi = c.indexNHeads; const di = c.indexHeadDim; const topk = c.indexTopk;
  const layer = o.layer; const ratio = c.compressRatios[layer]; const hasIdx = ratio === 4;
  const shapeContext = o.shapeContext;
  const rope = ratio > 0 ? new RopeTable(rd, ropeFrequencies(rd, c.compressRopeTheta, c.yarn)) : new RopeTable(rd, ropeFrequencies(rd, c.ropeTheta));
  const rng = new Rng(o.seed);
  const maxRows = Math.max(...o.calls.map((call) => call.reduce((s, it) => s + it.len, 0)));
  using cache = GpuKvCache.create(c, { maxSequences: o.seqs.length + 1, blockRows: o.blockRows, freeBytes: 2 ** 31, memoryFraction: 1, maxBlocksPerKind: 6000, maxContext: o.maxContext });
  using attn = GpuAttention.createSync(c, cache, { maxRows, maxItems: o.seqs.length, indexerChunkRows: 16 });
  const acc = new Map<string, Acc>();
  const stage = (s: string) => { let a = acc.get(s); if (!a) { a = new Acc(); acc.set(s, a); } return a; };

  // layer parameters
  const cw = ratio === 4 ? 2 : 1;
  const width = cw * d; const widthI = 2 * di;
  const ape = ratio > 0 ? f32Rand(rng, ratio * width, 0.5) : new Float32Array(0);
  const norm = f32Rand(rng, d, 0.1, 1);
  const apeI = hasIdx ? f32Rand(rng, 4 * widthI, 0.5) : new Float32Array(0);
  const normI = f32Rand(rng, di, 0.1, 1);
  const sink = f32Rand(rng, H, 1);
  const made: DeviceTensor[] = [];
  const keep = <T extends DeviceTensor>(t: T): T => { made.push(t); return t; };
  try {
    const dApe = ratio > 0 ? keep(dF32(ape, [ratio, width])) : undefined;
    const dNorm = keep(dF32(norm, [d]));
    const dApeI = hasIdx ? keep(dF32(apeI, [4, widthI])) : undefined;
    const dNormI = keep(dF32(normI, [di]));
    const dSink = keep(dF32(sink, [H]));

    // sequences, with seeded histories
    const seqs: KvSequence[] = []; const pos: number[] = []; const rings: Float32Array[] = [];
    const mains: (RefCompressor | undefined)[] = []; const idxs: (RefCompressor | undefined)[] = [];
    const stateElems = cache.plan.layout.stateElemsPerSeq;
    for (const s of o.seqs) {
      const seq = cache.admit(s.start);
      seqs.push(seq); pos.push(s.start);
      const ring = new Float32Array(win * d); rings.push(ring);
      const main = ratio > 0 ? new RefCompressor(ratio, ratio === 4, d, rd, ape, norm, c.normEps, rope, false) : undefined;
      const idx = hasIdx ? new RefCompressor(4, true, di, rd, apeI, normI, c.normEps, rope, true) : undefined;
      mains.push(main); idxs.push(idx);
      if (s.start === 0) continue;
      for (let p = Math.max(0, s.start - win); p < s.start; p++) {
        const row = bf16Rand(rng, d);
        fp8SimInPlace(row, 0, d - rd, 64);
        ring.set(row, (p % win) * d);
        cache.writeRows('window', layer, seq, p % win, f32ToBF16Bits(row));
      }
      const seedComp = (rc: RefCompressor, kind: string, indexer: boolean) => {
        const n = Math.floor(s.start / rc.ratio);
        for (let e = 0; e < n; e++) {
          let z: Float32Array;
          if (indexer && s.tieKeys && e % 3 === 0 && e > 0) z = rc.entries[(e % 7) % rc.entries.length].slice();
          else {
            z = bf16Rand(rng, rc.dc);
            if (indexer) fp4SimInPlace(z, 0, rc.dc, 32); else fp8SimInPlace(z, 0, rc.dc - rd, 64);
          }
          rc.entries.push(z);
        }
        if (n > 0) cache.writeRows(kind, layer, seq, 0, f32ToBF16Bits(rc.flat()));
        const st = cache.stateLayout(layer, indexer);
        for (let p = Math.max(0, s.start - rc.slots); p < s.start; p++) {
          const sl = p % rc.slots;
          const a = f32Rand(rng, rc.width); const g = f32Rand(rng, rc.width);
          rc.a.set(a, sl * rc.width); rc.g.set(g, sl * rc.width);
          const base = (seq.slot * stateElems + st.offset) * 4;
          cache.state.copyFromHost(a, { offset: base + sl * rc.width * 4 });
          cache.state.copyFromHost(g, { offset: base + (rc.slots * rc.width + sl * rc.width) * 4 });
        }
      };
      if (main) seedComp(main, cache.compressedKind(layer, false), false);
      if (idx) seedComp(idx, 'indexer', true);
    }

    for (const call of o.calls) {
      const items = call.map((it) => ({ seq: seqs[it.seq], pos: pos[it.seq], len: it.len }));
      const rows = call.reduce((s, it) => s + it.len, 0);
      const q = bf16Rand(rng, rows * H * d); const kv = bf16Rand(rng, rows * d);
      const a = f32Rand(rng, rows * width); const g = f32Rand(rng, rows * width, 2);
      const aI = f32Rand(rng, rows * widthI); const gI = f32Rand(rng, rows * widthI, 2);
      const qI = bf16Rand(rng, rows * Hi * di); const wI = bf16Rand(rng, rows * Hi);

      // GPU
      const plan = attn.begin(items, undefined, { shapeContext });
      using tq = dBF16(q, [rows, H, d]);
      using tkv = dBF16(kv, [rows, d]);
      using tout = DeviceTensor.zeros('BF16', [rows, H, d]);
      using ta = dF32(a, [rows, width]);
      using tg = dF32(g, [rows, width]);
      using taI = dF32(aI, [rows, widthI]);
      using tgI = dF32(gI, [rows, widthI]);
      using tqI = dBF16(qI, [rows, Hi, di]);
      using twI = dBF16(wI, [rows, Hi]);
      attn.kvFp8Sim(tkv);
      if (ratio > 0) attn.compress(layer, { a: ta, g: tg, ape: dApe!, norm: dNorm });
      let picks: DeviceTensor | undefined;
      if (hasIdx) {
        attn.compress(layer, { a: taI, g: tgI, ape: dApeI!, norm: dNormI }, true);
        attn.indexerPrepare(tqI, twI);
        picks = attn.indexerSelect(layer, tqI, twI);
      }
      attn.attend(layer, { q: tq, kv: tkv, sink: dSink, out: tout, picks });
      attn.storeWindow(layer, tkv);

      // CPU, model.ts order
      refKvSim(kv, rows, d, rd);
      for (const [i, it] of call.entries()) {
        const row0 = plan.items[i * 4 + 3];
        mains[it.seq]?.push(a, g, row0, pos[it.seq], it.len);
        idxs[it.seq]?.push(aI, gI, row0, pos[it.seq], it.len);
      }
      if (hasIdx) refIndexerPrepare(qI, wI, rows, plan.positions, Hi, di, rd, rope);
      const o = new Float32Array(rows * H * d);
      const refPicks: (Int32Array | undefined)[] = [];
      for (let r = 0; r < rows; r++) {
        const i = plan.rowItem[r]; const s = call[i].seq;
        const T = plan.positions[r];
        const pk = hasIdx ? refIndexerPicks(qI, wI, r, Hi, di, idxs[s]!.flat(), Math.floor((T + 1) / 4), topk) : undefined;
        refPicks.push(pk);
        refAttendRow(q, kv, r, { T, P: pos[s], row0: plan.items[i * 4 + 3], ring: rings[s], comp: mains[s]?.flat(), picks: pk }, H, d, rd, win, ratio, sink, rope, o);
      }
      for (const [i, it] of call.entries()) refStoreWindow(rings[it.seq], kv, pos[it.seq], it.len, plan.items[i * 4 + 3], win, d);

      // compare
      stage('kv FP8 sim').add(down(tkv), kv);
      stage('attention out').add(down(tout), o);
      if (hasIdx) {
        stage('indexer q').add(down(tqI), qI);
        stage('indexer w').add(down(twI), wI);
        const gp = picks!.toHost().data as Int32Array;
        const pw = picks!.shape[1];
        const ps = stage('indexer picks');
        for (let r = 0; r < rows; r++) {
          const ref = refPicks[r]!;
          const want = new Float64Array(pw).fill(-1); want.set(ref);
          ps.add(Array.from(gp.subarray(r * pw, (r + 1) * pw)), want);
        }
      }
      for (const [i, it] of call.entries()) pos[it.seq] += it.len;
      for (let s = 0; s < seqs.length; s++) {
        const m = mains[s];
        if (m && m.entries.length > 0) stage('compressed entries').add(decodeBF16Array(cache.readRows(cache.compressedKind(layer, false), layer, seqs[s], 0, m.entries.length)), m.flat());
        const x = idxs[s];
        if (x && x.entries.length > 0) stage('indexer entries').add(decodeBF16Array(cache.readRows('indexer', layer, seqs[s], 0, x.entries.length)), x.flat());
        const filled = Math.min(pos[s], win);
        const ringGpu = decodeBF16Array(cache.readRows('window', layer, seqs[s], 0, win));
        const mask = (arr: Float32Array) => arr.map((v, j) => (Math.floor(j / d) < filled || pos[s] >= win ? v : 0));
        stage('window ring').add(mask(ringGpu), mask(rings[s]));
      }
    }
    return Object.fromEntries([...acc].map(([k, v]) => [k, v.stats()]));
  } finally {
    for (const t of made) t.dispose();
  }
}

export function formatStats(label: string, stats: Record<string, StageStats>): string {
  return Object.entries(stats).map(([k, s]) =>
    `${label} ${k}: ${s.values} values, ${s.mismatches} differ, max abs diff ${s.maxAbs.toExponential(2)}, calc_diff ${s.calcDiff.toExponential(2)}`).join('\n');
}
