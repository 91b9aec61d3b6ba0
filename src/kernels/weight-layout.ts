// Weight layouts of the grouped FP8 GEMM (grouped_gemm_fp8.cu, GG_WTILED). Pure functions, no GPU.
//
//   'rows'  : e4m3 [G, N, K] row-major (what checkpoints and the CPU reference use).
//   'tiled' : e4m3 [G, N/128, K/128, 128, 128]: the 128-row x 128-byte block (tile row nb, K block kb) of expert g is
//             one contiguous 16 KB run, rows inside it 128 bytes apart. A GEMM weight TMA box (128 rows x one K block)
//             then reads consecutive bytes instead of 128 segments K bytes apart (docs/GEMM.md, "Tiled weights").
//
// Experts are the outermost dimension of both layouts, so one expert (groups = 1) can be tiled on its own and copied
// to offset g * N * K of the stacked device buffer. Scales (sfb) never change layout.

export type WeightLayout = 'rows' | 'tiled';

/** Rows and bytes per tile edge (= the FP8 scale block and the GEMM's K block). */
export const WEIGHT_TILE = 128;

function checkShape(what: string, codes: Uint8Array, groups: number, n: number, k: number): void {
  for (const [name, v] of [['groups', groups], ['n', n], ['k', k]] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`${what}: ${name} = ${v} must be a positive integer`);
  }
  if (n % WEIGHT_TILE !== 0 || k % WEIGHT_TILE !== 0) {
    throw new RangeError(`${what}: N = ${n} and K = ${k} must be multiples of ${WEIGHT_TILE} (the tile edge); pad the weight`);
  }
  if (codes.length !== groups * n * k) {
    throw new RangeError(`${what}: got ${codes.length} bytes, expected groups x N x K = ${groups} x ${n} x ${k} = ${groups * n * k}`);
  }
}

/** Byte offset of element (g, row, col) of a [groups, n, k] weight in the tiled layout. */
export function tiledOffset(g: number, row: number, col: number, n: number, k: number): number {
  const nb = Math.floor(row / WEIGHT_TILE);
  const kb = Math.floor(col / WEIGHT_TILE);
  return (((g * (n / WEIGHT_TILE) + nb) * (k / WEIGHT_TILE) + kb) * WEIGHT_TILE + (row % WEIGHT_TILE)) * WEIGHT_TILE
    + (col % WEIGHT_TILE);
}

function checkOut(what: string, src: Uint8Array, out: Uint8Array): void {
  if (out.length !== src.length) throw new RangeError(`${what}: out has ${out.length} bytes, expected ${src.length}`);
  const overlap = out.buffer === src.buffer && out.byteOffset < src.byteOffset + src.length && src.byteOffset < out.byteOffset + out.length;
  if (overlap) throw new RangeError(`${what}: out overlaps the input; the permutation cannot run in place, pass a separate buffer`);
}

// Moves every 128-byte segment between the two layouts. toTiled: rows -> tiled, else tiled -> rows. Works on 32-bit
// words when both buffers are 4-byte aligned (8x fewer element moves; Int32 copies keep every bit pattern), else bytes.
function permute(src: Uint8Array, dst: Uint8Array, groups: number, n: number, k: number, toTiled: boolean): void {
  const T = WEIGHT_TILE;
  const kbs = k / T;
  const aligned = src.byteOffset % 4 === 0 && dst.byteOffset % 4 === 0;
  const unit = aligned ? 4 : 1;
  const s = aligned ? new Int32Array(src.buffer, src.byteOffset, src.length / 4) : src;
  const d = aligned ? new Int32Array(dst.buffer, dst.byteOffset, dst.length / 4) : dst;
  const seg = T / unit; // elements per 128-byte segment
  const rowLen = k / unit;
  let tiled = 0; // element offset in the tiled buffer, walked in its own (sequential) order
  for (let g = 0; g < groups; g++) {
    for (let nb = 0; nb < n / T; nb++) {
      const rowBase = (g * n + nb * T) * rowLen; // element offset of row nb*T of expert g in the rows layout
      for (let kb = 0; kb < kbs; kb++) {
        for (let r = 0; r < T; r++) {
          const rows = rowBase + r * rowLen + kb * seg;
          if (toTiled) for (let i = 0; i < seg; i++) d[tiled + i] = s[rows + i];
          else for (let i = 0; i < seg; i++) d[rows + i] = s[tiled + i];
          tiled += seg;
        }
      }
    }
  }
}

/**
 * Rows layout [groups, n, k] -> tiled layout [groups, n/128, k/128, 128, 128] (a new array, or `out` when given:
 * it must have the same length and must not overlap `codes`).
 */
export function tileWeights(codes: Uint8Array, groups: number, n: number, k: number, out?: Uint8Array): Uint8Array {
  checkShape('tileWeights', codes, groups, n, k);
  const dst = out ?? new Uint8Array(codes.length);
  checkOut('tileWeights', codes, dst);
  permute(codes, dst, groups, n, k, true);
  return dst;
}

/** The inverse of tileWeights: tiled [groups, n/128, k/128, 128, 128] -> rows [groups, n, k]. */
export function untileWeights(tiled: Uint8Array, groups: number, n: number, k: number, out?: Uint8Array): Uint8Array {
  checkShape('untileWeights', tiled, groups, n, k);
  const dst = out ?? new Uint8Array(tiled.length);
  checkOut('untileWeights', tiled, dst);
  permute(tiled, dst, groups, n, k, false);
  return dst;
}
