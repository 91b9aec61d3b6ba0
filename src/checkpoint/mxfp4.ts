// MXFP4 expert weights -> e4m3 with one f32 scale per 128x128 block (SPEC 3 "MXFP4 experts on Hopper").
//
// An MXFP4 weight [N, K] stores e2m1 values (two per byte, low nibble first) and one e8m0 scale 2^(b-127) per
// 32 values along K. Hopper has no FP4 tensor cores, so each 128x128 block (4 sub-scales per row, 128 rows) is
// re-expressed as e4m3 codes times ONE power-of-two f32 block scale S: value = e2m1 * 2^(b-127) = q * S with
// q = e2m1 * 2^(b-127-log2 S). e2m1 values carry one mantissa bit, e4m3 three, so q is exact as long as it
// lands in e4m3's range: at most 448, and no finer than the subnormal step 2^-9 (1.5 * 2^-8 and 2^-9 are the
// smallest exact odd/even cases). Rounding happens only when a block's sub-scales spread more than ~14 binades.
//
// Choice of S ("tight", the default): the smallest power of two with max|value| / S <= 448, i.e.
// S = 2^(e_max - 8) where e_max is the binary exponent of the block's largest |value| (then max |q| is 256 or
// 384). This keeps the most room at the small end. DeepSeek's convert.py (V4-MODEL 9.4) uses
// S = max(sub-scale) / 2^6 ("convert-py"), which is the same S whenever the max-sub-scale row of the block holds
// a 4 or 6, and up to 2 binades coarser otherwise; it is offered for byte-compatibility. For exactly converted
// blocks both give the same dequantized values, and power-of-two scales make GEMM results identical.
// S is kept a normal f32 (>= 2^-126) so no GPU flushes it to zero; values that then fall below e4m3's range
// are counted as inexact like any other. Every inexact block is reported (count, worst absolute error, worst
// error relative to that block's max |value|), never hidden.
import { E2M1_DECODE } from '../numerics/e2m1.js';
import { E4M3_DECODE, encodeE4M3 } from '../numerics/e4m3.js';
import { E8M0_DECODE } from '../numerics/e8m0.js';
import type { QuantizedWeight } from '../numerics/quant.js';
import type { ConversionReport } from '../moe/types.js';

export type Mxfp4ScaleRule = 'tight' | 'convert-py';

export interface Mxfp4ConversionOptions {
  scaleRule?: Mxfp4ScaleRule;
}

export interface Mxfp4Conversion {
  weight: QuantizedWeight;
  report: ConversionReport;
}

const BLOCK = 128;
const GROUP = 32;
const GROUPS_PER_BLOCK = BLOCK / GROUP;

/** Binary exponent of each e2m1 magnitude code 1..7 (0.5 1 1.5 2 3 4 6); code 0 (zero) has none. */
const E2M1_EXPONENT = [NaN, -1, 0, 0, 1, 1, 2, 2];

/** Largest magnitude code (0..7) of the two nibbles of each byte; magnitudes grow with the code. */
const BYTE_MAX_MAG = (() => {
  const t = new Uint8Array(256);
  for (let b = 0; b < 256; b++) t[b] = Math.max(b & 7, (b >> 4) & 7);
  return t;
})();

// shift = (b - 127) - log2(S): the power of two that moves an e2m1 value onto the e4m3 grid. Below SHIFT_MIN
// every non-zero value rounds to 0 anyway (6 * 2^-64 << 2^-10), above SHIFT_MAX everything saturates.
const SHIFT_MIN = -64;
const SHIFT_MAX = 16;
const SHIFTS = SHIFT_MAX - SHIFT_MIN + 1;

/** PAIR_CODES[shift][byte] = e4m3 code of the low nibble | (code of the high nibble << 8). */
const PAIR_CODES = new Uint16Array(SHIFTS * 256);
/** INEXACT_NIBBLES[shift]: bit i set when nibble i does not convert exactly at that shift. */
const INEXACT_NIBBLES = new Uint16Array(SHIFTS);
(() => {
  const codes = new Uint8Array(16);
  for (let s = 0; s < SHIFTS; s++) {
    let mask = 0;
    for (let nib = 0; nib < 16; nib++) {
      const v = E2M1_DECODE[nib] * 2 ** (s + SHIFT_MIN);
      codes[nib] = encodeE4M3(v); // -0 keeps its sign: code 0x80
      if (E4M3_DECODE[codes[nib]] !== v) mask |= 1 << nib;
    }
    INEXACT_NIBBLES[s] = mask;
    for (let byte = 0; byte < 256; byte++) PAIR_CODES[s * 256 + byte] = codes[byte & 15] | (codes[byte >> 4] << 8);
  }
})();

export function emptyConversionReport(): ConversionReport {
  return { blocks: 0, inexactBlocks: 0, worstAbsError: 0, worstRelError: 0 };
}

/** Sums two reports (counts add, worst errors take the max). */
export function mergeConversionReports(a: ConversionReport, b: ConversionReport): ConversionReport {
  return {
    blocks: a.blocks + b.blocks,
    inexactBlocks: a.inexactBlocks + b.inexactBlocks,
    worstAbsError: Math.max(a.worstAbsError, b.worstAbsError),
    worstRelError: Math.max(a.worstRelError, b.worstRelError),
  };
}

function checkMxfp4Shape(packedLength: number, scalesLength: number, n: number, k: number): void {
  if (!Number.isSafeInteger(n) || !Number.isSafeInteger(k) || n < 0 || k < 0) throw new Error(`MXFP4 weight: invalid shape [${n}, ${k}]`);
  if (k % GROUP !== 0) throw new Error(`MXFP4 weight: K = ${k} is not a multiple of ${GROUP} (one e8m0 scale per 32 values)`);
  if (packedLength !== (n * k) / 2) throw new Error(`MXFP4 weight: packed data has ${packedLength} bytes, [${n}, ${k}] needs ${(n * k) / 2} ([${n}, ${k / 2}])`);
  if (scalesLength !== (n * k) / GROUP) throw new Error(`MXFP4 weight: scales have ${scalesLength} entries, [${n}, ${k}] needs [${n}, ${k / GROUP}]`);
}

/** The exact value of every element, f64 (the reference the conversion is checked against). */
export function dequantizeMxfp4(packed: Uint8Array | Int8Array, scales: Uint8Array, n: number, k: number): Float64Array {
  checkMxfp4Shape(packed.length, scales.length, n, k);
  const out = new Float64Array(n * k);
  for (let i = 0; i < n * k; i++) {
    const byte = packed[i >> 1] & 0xff;
    out[i] = E2M1_DECODE[i & 1 ? byte >> 4 : byte & 15] * E8M0_DECODE[scales[(i / GROUP) | 0]];
  }
  return out;
}

/** BYTE_MAX_MAG over a little-endian u16 (two packed bytes, four nibbles): pass 1 reads 8 u16 per 32 values. */
const U16_MAX_MAG = (() => {
  const t = new Uint8Array(65536);
  for (let v = 0; v < 65536; v++) t[v] = Math.max(BYTE_MAX_MAG[v & 255], BYTE_MAX_MAG[v >> 8]);
  return t;
})();

/** Per shift, built on first use: u16 of packed input (4 nibbles) -> u32 of 4 e4m3 codes (256 KB per shift). */
const QUAD_CODES: (Uint32Array | undefined)[] = new Array(SHIFTS);
function quadCodes(si: number): Uint32Array {
  let t = QUAD_CODES[si];
  if (!t) {
    t = new Uint32Array(65536);
    const base = si * 256;
    for (let v = 0; v < 65536; v++) t[v] = (PAIR_CODES[base + (v & 255)] | (PAIR_CODES[base + (v >> 8)] << 16)) >>> 0;
    QUAD_CODES[si] = t;
  }
  return t;
}

/** Block statistics of pass 1, shared with blockStats (no allocation per block). */
const STATS = new Float64Array(3); // eMax, bMax, amax

/** Pass 1 of one 128x128 block: the largest value's exponent, the largest sub-scale code, the largest |value|. */
function blockStats(u16: Uint16Array, scales: Uint8Array, r0: number, r1: number, g0: number, g1: number, groupsPerRow: number, u16PerRow: number): void {
  let eMax = -Infinity; let bMax = -1; let amax = 0;
  for (let r = r0; r < r1; r++) {
    for (let g = g0; g < g1; g++) {
      const b = scales[r * groupsPerRow + g];
      if (b === 0xff) throw new Error(`MXFP4 weight: e8m0 scale at row ${r}, columns ${g * GROUP}..${g * GROUP + GROUP - 1} is NaN (0xFF); the checkpoint is corrupt`);
      if (b > bMax) bMax = b;
      const p0 = r * u16PerRow + g * (GROUP / 4);
      let mag = 0;
      for (let j = p0; j < p0 + GROUP / 4; j++) { const m = U16_MAX_MAG[u16[j]]; if (m > mag) mag = m; }
      if (mag === 0) continue;
      const e = E2M1_EXPONENT[mag] + b - 127;
      if (e > eMax) eMax = e;
      const v = E2M1_DECODE[mag] * E8M0_DECODE[b];
      if (v > amax) amax = v;
    }
  }
  STATS[0] = eMax; STATS[1] = bMax; STATS[2] = amax;
}

/**
 * Pass 2 of one block: 4 codes per table lookup (u16 in, u32 out), then the exactness check only where the shift
 * can make a nibble inexact. Returns the block's worst absolute error (0 when exact).
 */
function blockCodes(u16: Uint16Array, bytes: Uint8Array, scales: Uint8Array, q: Uint8Array, q32: Uint32Array, sExp: number, scale: number,
  r0: number, r1: number, g0: number, g1: number, groupsPerRow: number, u16PerRow: number, k: number): number {
  let blockAbs = 0;
  for (let r = r0; r < r1; r++) {
    for (let g = g0; g < g1; g++) {
      const b = scales[r * groupsPerRow + g];
      const shift = b - 127 - sExp;
      const si = Math.min(SHIFT_MAX, Math.max(SHIFT_MIN, shift)) - SHIFT_MIN;
      const table = quadCodes(si);
      const p0 = r * u16PerRow + g * (GROUP / 4);
      const o0 = (r * k + g * GROUP) >> 2;
      for (let j = 0; j < GROUP / 4; j++) q32[o0 + j] = table[u16[p0 + j]];
      // Clamped shifts map exactly only for zeros, so treat every non-zero nibble there as inexact.
      const mask = shift === si + SHIFT_MIN ? INEXACT_NIBBLES[si] : 0xfefe;
      if (mask === 0) continue;
      const subScale = E8M0_DECODE[b];
      const bp0 = p0 * 2;
      for (let j = 0; j < GROUP; j++) {
        const byte = bytes[bp0 + (j >> 1)];
        const nib = j & 1 ? byte >> 4 : byte & 15;
        if (((mask >> nib) & 1) === 0) continue;
        const exact = E2M1_DECODE[nib] * subScale;
        const err = Math.abs(E4M3_DECODE[q[r * k + g * GROUP + j]] * scale - exact);
        if (err > blockAbs) blockAbs = err;
      }
    }
  }
  return blockAbs;
}

/**
 * Converts one MXFP4 weight ([n, k/2] packed bytes, [n, k/32] e8m0 scales) to e4m3 codes [n, k] with f32 scales
 * [ceil(n/128), ceil(k/128)]. Throws (naming row and column) on an e8m0 NaN scale: that is a corrupt weight.
 * Speed (a flash expert is 25 M values): two small per-block functions (stable JIT feedback), tables over u16 of
 * packed input, four output codes per store.
 */
export function convertMxfp4ToE4m3(packed: Uint8Array | Int8Array, scales: Uint8Array, n: number, k: number,
  options: Mxfp4ConversionOptions = {}): Mxfp4Conversion {
  checkMxfp4Shape(packed.length, scales.length, n, k);
  const rule = options.scaleRule ?? 'tight';
  let bytes = packed instanceof Uint8Array ? packed : new Uint8Array(packed.buffer, packed.byteOffset, packed.byteLength);
  if (bytes.byteOffset % 2 !== 0) bytes = bytes.slice(); // u16 view needs 2-byte alignment
  const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
  const groupsPerRow = k / GROUP;
  const u16PerRow = k / 4;
  const nb = Math.ceil(n / BLOCK);
  const kb = Math.ceil(k / BLOCK);
  const q = new Uint8Array(n * k);
  const q32 = new Uint32Array(q.buffer); // k is a multiple of 32, so every group of codes starts on a 4-byte boundary
  const s = new Float32Array(nb * kb);
  const report = emptyConversionReport();
  report.blocks = nb * kb;

  for (let bn = 0; bn < nb; bn++) {
    const r0 = bn * BLOCK; const r1 = Math.min(n, r0 + BLOCK);
    for (let bk = 0; bk < kb; bk++) {
      const g0 = bk * GROUPS_PER_BLOCK; const g1 = Math.min(groupsPerRow, g0 + GROUPS_PER_BLOCK);
      blockStats(u16, scales, r0, r1, g0, g1, groupsPerRow, u16PerRow);
      const eMax = STATS[0]; const bMax = STATS[1]; const amax = STATS[2];
      let sExp: number;
      if (rule === 'convert-py') sExp = bMax - 127 - 6;
      else sExp = eMax === -Infinity ? 0 : eMax - 8; // an all-zero block: any scale works, 1 is the plainest
      sExp = Math.min(127, Math.max(-126, sExp));
      const scale = 2 ** sExp;
      s[bn * kb + bk] = scale;
      const blockAbs = blockCodes(u16, bytes, scales, q, q32, sExp, scale, r0, r1, g0, g1, groupsPerRow, u16PerRow, k);
      if (blockAbs > 0) {
        report.inexactBlocks++;
        report.worstAbsError = Math.max(report.worstAbsError, blockAbs);
        report.worstRelError = Math.max(report.worstRelError, blockAbs / amax);
      }
    }
  }
  return { weight: { q, s, n, k }, report };
}
