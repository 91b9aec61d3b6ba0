// Value checks of the tensors the loader hands out (issue 9): a damaged byte in a checkpoint must be refused at
// load, by tensor name, index and value, never turn into NaN outputs or silently skewed routing.
//
// What is refused:
//   e4m3 weight codes 0x7F / 0xFF (e4m3fn's only NaN codes; it has no infinities);
//   f32 / bf16 tensors holding NaN or +-Inf (weight scales, gate.weight, gate.bias, ffn_norm.weight);
//   negative weight block scales (a real scale is amax / 448 >= 0; a negative one flips a block's sign);
//   gate.bias values beyond +-MAX_ABS_GATE_BIAS (see there);
//   tid2eid rows that name the same expert twice (the V4 reference would keep only one of the two
//   contributions, V4-MODEL 5; real tables never repeat) or an expert outside [0, E).
//
// Cost: one pass per tensor on the host, where the loader already holds the bytes. The e4m3 scan uses
// Buffer#indexOf (memchr) for the two NaN codes: measured 2.2-3.9 ms per V4-Flash expert (25.2 MB), 0.55-1.0 s
// for a whole flash layer (256 experts + shared) on the 2-vCPU development VM, against 3.2-12 s to read those
// tensors from the page cache (docs/ARCHITECTURE.md, "Input checks"). The f32/bf16 tensors are small.
import { decodeBF16 } from '../numerics/bf16.js';
import { CheckpointError } from './errors.js';

/**
 * The largest |gate.bias| accepted. Selection keys are s + bias with s = sqrt(softplus(logit)), O(1..10) for any
 * sane logit; a bias past +-1000 decides the selection by itself (the scores no longer matter) and leaves the f32
 * key a resolution of ~6e-5 or coarser: that is a damaged tensor, not a trained one.
 */
export const MAX_ABS_GATE_BIAS = 1000;

/** A tensor value that would become a wrong answer: names the file, the tensor, the index and the value. */
export class NonFiniteTensorError extends CheckpointError {
  /** The element's index, one entry per dimension. */
  readonly index: readonly number[];
  /** The offending value as text ("NaN", "Infinity", "e4m3 code 0x7F (NaN)", "-2.5"). */
  readonly value: string;

  constructor(file: string, tensor: string, index: readonly number[], value: string, problem: string) {
    super({ file, tensor }, `element [${index.join(', ')}] is ${value}: ${problem}`);
    this.name = 'NonFiniteTensorError';
    this.index = Object.freeze([...index]);
    this.value = value;
  }
}

/** Flat index -> per-dimension index. */
export function unravelIndex(flat: number, shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length).fill(0);
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    const n = shape[d] || 1;
    out[d] = rest % n;
    rest = Math.floor(rest / n);
  }
  return shape.length === 0 ? [flat] : out;
}

const CORRUPT = 'the checkpoint is damaged (re-download or re-convert this file)';

/** Index of the first e4m3 NaN code (0x7F or 0xFF), or -1. Two memchr passes, no per-byte JavaScript. */
export function findE4m3Nan(codes: Uint8Array): number {
  const buf = Buffer.from(codes.buffer, codes.byteOffset, codes.byteLength);
  const a = buf.indexOf(0x7f);
  const b = (a < 0 ? buf : buf.subarray(0, a)).indexOf(0xff);
  return b >= 0 ? b : a;
}

/** Index of the first NaN/Inf in an f32 array, or -1 (exponent bits all ones). */
export function findNonFiniteF32(x: Float32Array): number {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  for (let i = 0; i < u.length; i++) if ((u[i] & 0x7f800000) === 0x7f800000) return i;
  return -1;
}

/** Index of the first NaN/Inf in bf16 bits, or -1. */
export function findNonFiniteBF16(bits: Uint16Array): number {
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7f80) === 0x7f80) return i;
  return -1;
}

/** e4m3 weight codes: refuses the NaN codes. */
export function checkE4m3Codes(file: string, tensor: string, codes: Uint8Array, shape: readonly number[]): void {
  const i = findE4m3Nan(codes);
  if (i >= 0) {
    throw new NonFiniteTensorError(file, tensor, unravelIndex(i, shape), `e4m3 code 0x${codes[i].toString(16).toUpperCase()} (NaN)`, CORRUPT);
  }
}

/** f32 weight block scales (after e8m0 widening): finite and >= 0. */
export function checkBlockScales(file: string, tensor: string, s: Float32Array, shape: readonly number[]): void {
  const i = findNonFiniteF32(s);
  if (i >= 0) throw new NonFiniteTensorError(file, tensor, unravelIndex(i, shape), String(s[i]), `a weight scale must be finite; ${CORRUPT}`);
  for (let j = 0; j < s.length; j++) {
    if (s[j] < 0) throw new NonFiniteTensorError(file, tensor, unravelIndex(j, shape), String(s[j]), `a weight block scale is amax / 448 and never negative; ${CORRUPT}`);
  }
}

/** A bf16 tensor (gate.weight, ffn_norm.weight): finite. */
export function checkFiniteBF16(file: string, tensor: string, bits: Uint16Array, shape: readonly number[]): void {
  const i = findNonFiniteBF16(bits);
  if (i >= 0) throw new NonFiniteTensorError(file, tensor, unravelIndex(i, shape), String(decodeBF16(bits[i])), CORRUPT);
}

/** gate.bias as f32: finite and within +-MAX_ABS_GATE_BIAS. */
export function checkGateBias(file: string, tensor: string, bias: Float32Array): void {
  const i = findNonFiniteF32(bias);
  if (i >= 0) throw new NonFiniteTensorError(file, tensor, [i], String(bias[i]), `the selection bias must be finite; ${CORRUPT}`);
  for (let j = 0; j < bias.length; j++) {
    if (Math.abs(bias[j]) > MAX_ABS_GATE_BIAS) {
      throw new NonFiniteTensorError(file, tensor, [j], String(bias[j]),
        `|bias| above ${MAX_ABS_GATE_BIAS} would decide expert selection by itself (scores sqrt(softplus(logit)) are O(1..10)); ${CORRUPT}`);
    }
  }
}

/** Thrown for a tid2eid row that repeats an expert. */
export class RoutingTableError extends CheckpointError {
  readonly row: number;
  constructor(file: string, tensor: string, row: number, problem: string) {
    super({ file, tensor }, `row ${row} (token id) ${problem}`);
    this.name = 'RoutingTableError';
    this.row = row;
  }
}

/**
 * tid2eid [vocab, K] (I64 or I32) -> Int32Array, refusing experts outside [0, E) and rows with a repeated expert
 * (each token must reach K distinct experts; the reference would silently drop one contribution).
 */
export function checkTid2eid(file: string, tensor: string, src: BigInt64Array | Int32Array, K: number, E: number): Int32Array {
  const out = new Int32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const v = Number(src[i]);
    if (!(v >= 0 && v < E)) {
      throw new RoutingTableError(file, tensor, Math.floor(i / K), `maps to expert ${v}, outside [0, ${E})`);
    }
    out[i] = v;
  }
  for (let r = 0; r < out.length / K; r++) {
    const o = r * K;
    for (let j = 1; j < K; j++) {
      for (let q = 0; q < j; q++) {
        if (out[o + j] === out[o + q]) {
          const row = Array.from(out.subarray(o, o + K)).join(', ');
          throw new RoutingTableError(file, tensor, r, `names expert ${out[o + j]} twice ([${row}], slots ${q} and ${j}); every row must hold ${K} distinct experts: ${CORRUPT}`);
        }
      }
    }
  }
  return out;
}
