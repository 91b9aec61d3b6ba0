// The CPU side of the GPU attention tests: one layer's attention state of one sequence (window ring, compressed
// entries, indexer entries, compressor states) and the steps of model.ts attention() on it, built from the CPU
// model's own exported pieces (compressRow, indexerTopk, attendHead, rmsNorm, the QAT simulations, Hadamard, RopeTable),
// composed in model.ts's order. Where model.ts inlines a step (the key list, the ring update) this file repeats those
// few lines; each says which lines it mirrors.
import { attendHead, compressRow, indexerTopk } from '../../src/model/model.js';
import { bf16, fp4SimInPlace, fp8SimInPlace, hadamardInPlace } from '../../src/model/ops.js';
import type { RopeTable } from '../../src/model/rope.js';

const fr = Math.fround;

/** model.ts CompressorCache + compress(), for one sequence. */
export class RefCompressor {
  readonly slots: number;
  readonly width: number;
  readonly a: Float32Array;
  readonly g: Float32Array;
  entries: Float32Array[] = [];
  private readonly tmp64 = new Float64Array(1024);

  constructor(readonly ratio: number, readonly overlap: boolean, readonly dc: number, readonly rd: number, readonly ape: Float32Array,
    readonly norm: Float32Array, readonly eps: number, readonly rope: RopeTable, readonly indexer: boolean) {
    const c = overlap ? 2 : 1;
    this.slots = c * ratio;
    this.width = c * dc;
    this.a = new Float32Array(this.slots * this.width);
    this.g = new Float32Array(this.slots * this.width);
  }

  /** model.ts compress(), the per-row loop (compressRow), for rows [rowOff, rowOff + len) of a, g at positions pos.. */
  push(a: Float32Array, g: Float32Array, rowOff: number, pos: number, len: number): void {
    const z = new Float32Array(this.dc);
    const ga = new Float64Array(2 * this.ratio); const aa = new Float64Array(2 * this.ratio);
    for (let j = 0; j < len; j++) {
      const nb = compressRow(this, this, a, g, (rowOff + j) * this.width, pos + j, z, ga, aa, this.tmp64);
      if (nb < 0) continue;
      if (this.entries.length !== nb) throw new Error(`reference: block ${nb} with ${this.entries.length} cached`);
      this.entries.push(z.slice());
    }
  }

  /** The entries as one array [count, dc]. */
  flat(): Float32Array {
    const out = new Float32Array(this.entries.length * this.dc);
    this.entries.forEach((e, i) => out.set(e, i * this.dc));
    return out;
  }
}

/** model.ts attention(), 4.1/4.5 lines: the indexer query prepared in place, and the scaled head weights. */
export function refIndexerPrepare(qI: Float32Array, wI: Float32Array, rows: number, positions: Int32Array, Hi: number, di: number, rd: number, rope: RopeTable): void {
  const tmp = new Float64Array(di);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < Hi; h++) {
      const o = (r * Hi + h) * di;
      rope.apply(qI, o + di - rd, positions[r]);
      hadamardInPlace(qI, o, di, tmp);
      fp4SimInPlace(qI, o, di, 32);
    }
  }
  const sc = fr(fr(1 / Math.sqrt(di)) * fr(1 / Math.sqrt(Hi)));
  for (let i = 0; i < rows * Hi; i++) wI[i] = bf16(wI[i] * sc);
}

export function refIndexerPicks(qI: Float32Array, wI: Float32Array, r: number, Hi: number, di: number, keys: Float32Array, visible: number, topk: number): Int32Array {
  return indexerTopk(qI, r * Hi * di, wI, r * Hi, Hi, di, keys, visible, topk);
}

export interface RefAttnRow {
  /** this row's position T, its item's first position P and the row of P in this call */
  T: number;
  P: number;
  row0: number;
  ring: Float32Array;
  /** compressed entries [count, d] */
  comp?: Float32Array;
  /** the indexer's picks (ratio 4) */
  picks?: Int32Array;
}

/**
 * model.ts attention(), the 4.6 / 4.7 loop for one row: the key list (window from this call's kv or the ring, then
 * the compressed entries or the picks), attendHead per head, inverse RoPE at T. Writes o[r, H, d].
 */
export function refAttendRow(q: Float32Array, kv: Float32Array, r: number, row: RefAttnRow, H: number, d: number, rd: number, win: number,
  ratio: number, sink: Float32Array, rope: RopeTable, o: Float32Array): void {
  const nope = d - rd;
  const sigma = fr(1 / Math.sqrt(d));
  const keyArr: Float32Array[] = []; const offs: number[] = [];
  for (let p = Math.max(0, row.T - win + 1); p <= row.T; p++) {
    if (p >= row.P) { keyArr.push(kv); offs.push((row.row0 + p - row.P) * d); } else { keyArr.push(row.ring); offs.push((p % win) * d); }
  }
  if (ratio > 0 && row.comp) {
    const visible = Math.floor((row.T + 1) / ratio);
    const count = row.picks ? row.picks.length : visible;
    for (let k = 0; k < count; k++) { keyArr.push(row.comp); offs.push((row.picks ? row.picks[k] : k) * d); }
  }
  const nk = keyArr.length;
  const keyOff = Int32Array.from(offs);
  const scores = new Float64Array(nk); const probs = new Float32Array(nk); const acc = new Float64Array(d);
  for (let h = 0; h < H; h++) {
    const oo = (r * H + h) * d;
    attendHead(q, oo, d, keyArr, keyOff, nk, sigma, sink[h], o, oo, scores, probs, acc);
    rope.apply(o, oo + nope, row.T, true);
  }
}

/** model.ts attention(), the ring update: the last win rows of an item. */
export function refStoreWindow(ring: Float32Array, kv: Float32Array, P: number, len: number, row0: number, win: number, d: number): void {
  for (let p = Math.max(P, P + len - win); p < P + len; p++) ring.set(kv.subarray((row0 + p - P) * d, (row0 + p - P + 1) * d), (p % win) * d);
}

/** model.ts attention(), 4.2: the kv FP8 simulation of the nope dims, per row. */
export function refKvSim(kv: Float32Array, rows: number, d: number, rd: number): void {
  for (let r = 0; r < rows; r++) fp8SimInPlace(kv, r * d, d - rd, 64);
}
