// The one-shot L1 weight transform for the fused kernel (SPEC 3, "Weight transform").
// W13 [2I, H] = rows of W1 (gate) then rows of W3 (up). The transform interleaves them in granules of 8 rows:
// new row r takes gate row 8*floor(r/16) + (r mod 8) when r mod 16 < 8, else the same index of up. A 128-row
// tile j then holds gate rows [64j, 64j+64) and up rows [64j, 64j+64), so the SwiGLU pairs of one output
// column block sit in the same accumulator tile. Block scales stay in their natural layout
// [2I/128, H/128] (gate blocks, then up blocks); `transformedRowSource` says which scale row a new row uses.
//
// Idempotence: a transformed weight carries `layout: 'gate-up-interleaved-8'`, and its code buffer is also
// remembered in a WeakSet, so transforming it again is refused even when the caller rebuilt the object
// around the same buffer.
import { QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import { GuardError } from './guards.js';

export const GRANULE = 8;
export type L1Layout = 'gate-then-up' | 'gate-up-interleaved-8';

/** An L1 weight W13 [2I, H] (n = 2I, k = H): e4m3 codes, f32 scales [2I/128, H/128] (natural order in both layouts). */
export interface L1Weight extends QuantizedWeight {
  layout: L1Layout;
}

const transformedBuffers = new WeakSet<Uint8Array>();

/** Stacks W1 then W3 into one natural-layout L1 weight (copies the codes). */
export function concatL1(w1: QuantizedWeight, w3: QuantizedWeight): L1Weight {
  if (w1.n !== w3.n || w1.k !== w3.k) {
    throw new GuardError('WEIGHT_SHAPE', `w1 [${w1.n}, ${w1.k}] and w3 [${w3.n}, ${w3.k}] differ`, 'gate and up projections must have the same shape');
  }
  const q = new Uint8Array(2 * w1.q.length);
  q.set(w1.q, 0); q.set(w3.q, w1.q.length);
  const s = new Float32Array(w1.s.length + w3.s.length);
  s.set(w1.s, 0); s.set(w3.s, w1.s.length);
  return { q, s, n: 2 * w1.n, k: w1.k, layout: 'gate-then-up' };
}

/** Where transformed row r of a [2I, H] L1 weight comes from. */
export interface RowSource {
  half: 'gate' | 'up';
  /** row inside W1 or W3 */
  row: number;
  /** row in the natural W13 */
  naturalRow: number;
  /** row of the natural scale tensor [2I/128, H/128] this row's blocks use */
  scaleRow: number;
}

export function transformedRowSource(r: number, inter: number): RowSource {
  if (!(Number.isInteger(r) && r >= 0 && r < 2 * inter)) {
    throw new GuardError('BAD_INPUT', `row ${r} is outside [0, ${2 * inter})`, 'pass a row of the [2I, H] L1 weight');
  }
  const row = GRANULE * Math.floor(r / (2 * GRANULE)) + (r % GRANULE);
  const half = r % (2 * GRANULE) < GRANULE ? 'gate' : 'up';
  const naturalRow = half === 'gate' ? row : inter + row;
  return { half, row, naturalRow, scaleRow: Math.floor(naturalRow / QUANT_BLOCK) };
}

function checkRows(what: string, rows: number, cols: number, length: number, experts: number): void {
  if (!(Number.isInteger(rows) && rows > 0 && rows % (2 * GRANULE) === 0)) {
    throw new GuardError('DIM_NOT_ALIGNED', `${what}: 2I = ${rows} rows is not a positive multiple of ${2 * GRANULE}`,
      'the gate/up interleave needs I to be a multiple of 8 (and the kernels need 128)');
  }
  if (length !== experts * rows * cols) {
    throw new GuardError('WEIGHT_SHAPE', `${what}: ${length} codes do not fill [${experts}, ${rows}, ${cols}]`, 'pass the whole L1 weight');
  }
}

/**
 * Row permutation on raw codes: dst = interleave(src) for `experts` stacked [rows, cols] matrices
 * (inverse = true undoes it). Any element type; src and dst must not overlap.
 */
export function interleaveGateUpRows<A extends Uint8Array | Float32Array>(src: A, rows: number, cols: number,
  dst: A, experts = 1, inverse = false): A {
  checkRows('interleaveGateUpRows', rows, cols, src.length, experts);
  if (dst.length !== src.length) throw new GuardError('BAD_INPUT', `destination holds ${dst.length}, source ${src.length}`, 'pass a destination of the same size');
  if (dst.buffer === src.buffer) throw new GuardError('BAD_INPUT', 'source and destination share a buffer', 'transform into a fresh buffer');
  const inter = rows / 2;
  // Whole granules at a time: new rows [16j, 16j + 8) are gate rows [8j, 8j + 8) and new rows [16j + 8, 16j + 16)
  // are up rows [8j, 8j + 8) (transformedRowSource), each a contiguous run of 8 rows in both layouts, so one copy
  // moves 8 rows (a flash expert: 512 copies instead of 4096 per-row lookups and copies).
  const run = GRANULE * cols;
  for (let e = 0; e < experts; e++) {
    const base = e * rows * cols;
    for (let j = 0; j < rows / (2 * GRANULE); j++) {
      const newGate = base + 2 * GRANULE * j * cols; const newUp = newGate + run;
      const natGate = base + GRANULE * j * cols; const natUp = natGate + inter * cols;
      if (inverse) {
        dst.set(src.subarray(newGate, newGate + run), natGate);
        dst.set(src.subarray(newUp, newUp + run), natUp);
      } else {
        dst.set(src.subarray(natGate, natGate + run), newGate);
        dst.set(src.subarray(natUp, natUp + run), newUp);
      }
    }
  }
  return dst;
}

export function isTransformedL1(w: L1Weight): boolean {
  return w.layout === 'gate-up-interleaved-8' || transformedBuffers.has(w.q);
}

/** The forward transform; refuses a weight that is already transformed. Scales are copied unchanged. */
export function transformL1(w: L1Weight): L1Weight {
  if (isTransformedL1(w)) {
    throw new GuardError('BAD_INPUT', 'the L1 weight is already gate/up interleaved',
      'the transform is applied once at load; pass the natural (gate then up) weight or use it as it is');
  }
  const q = interleaveGateUpRows(w.q, w.n, w.k, new Uint8Array(w.q.length));
  transformedBuffers.add(q);
  return { q, s: w.s.slice(), n: w.n, k: w.k, layout: 'gate-up-interleaved-8' };
}

/** The inverse transform: restores the natural layout exactly. */
export function inverseTransformL1(w: L1Weight): L1Weight {
  if (!isTransformedL1(w)) {
    throw new GuardError('BAD_INPUT', 'the L1 weight is not transformed', 'only a weight returned by transformL1 can be inverted');
  }
  const q = interleaveGateUpRows(w.q, w.n, w.k, new Uint8Array(w.q.length), 1, true);
  return { q, s: w.s.slice(), n: w.n, k: w.k, layout: 'gate-then-up' };
}
