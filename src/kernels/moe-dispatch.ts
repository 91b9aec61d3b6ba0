// Launcher of the MoE dispatch (moe_dispatch.cu): groups staged tokens by expert into the grouped GEMM's A/sfa
// layout, all on the device. Also the CPU simulation of the same index math (simulateDispatch), which the tests
// compare the GPU against row for row, and the capacity arithmetic every buffer of the unfused pipeline is sized by.
import { arg, DeviceBuffer, loadKernel, registerKernel, type Defines, type Kernel, type StreamLike } from '../cuda/index.js';
import { MOE_PRESET_SHAPES } from './presets.js';

/** Tokens per count/rank chunk; must equal kChunkTokens in moe_dispatch.cu. */
export const DISPATCH_CHUNK_TOKENS = 64;
const SCAN_THREADS = 1024;
const GATHER_WARPS = 8;

export interface DispatchShape {
  /** routed experts E */
  experts: number;
  /** K */
  topK: number;
  /** H */
  hidden: number;
  /** whether group E is the shared expert (every token, weight 1) */
  shared: boolean;
}

export interface DispatchCapacity {
  maxTokens: number;
  /** Rows of A (and of every per-row buffer): the most any routing of maxTokens tokens can need. */
  maxRows: number;
  /** Entries of tile_group: maxRows / the smallest BLOCK_M the GEMM may use. */
  maxTiles: number;
  /** Entries of chunk_counts / DISPATCH_CHUNK_TOKENS-token chunks. */
  maxChunks: number;
  /** groups = E (+1 with the shared expert) */
  groups: number;
}

function checkShape(s: DispatchShape): void {
  const ok = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi;
  const maxExperts = SCAN_THREADS - (s.shared ? 1 : 0);
  if (!ok(s.experts, 1, maxExperts)) {
    throw new RangeError(`moe dispatch: ${s.experts} routed experts is outside [1, ${maxExperts}] (one scan thread per group)`);
  }
  if (!ok(s.topK, 1, 32)) throw new RangeError(`moe dispatch: top-k ${s.topK} is outside [1, 32]`);
  if (!(Number.isInteger(s.hidden) && s.hidden > 0 && s.hidden % 128 === 0)) {
    throw new RangeError(`moe dispatch: hidden size ${s.hidden} is not a positive multiple of 128`);
  }
}

/**
 * Rows the grouped A buffer needs for `maxTokens` tokens: every real row (T*K routed + T shared) plus, per group
 * that can be non-empty, up to blockM - 1 rows of padding. Rounded up to blockM.
 */
export function dispatchCapacity(shape: DispatchShape, maxTokens: number, blockM = 128, minBlockM = 16): DispatchCapacity {
  checkShape(shape);
  if (!(Number.isInteger(maxTokens) && maxTokens >= 0)) throw new RangeError(`moe dispatch: capacity ${maxTokens} tokens is not a non-negative integer`);
  if (!(blockM % minBlockM === 0)) throw new RangeError(`moe dispatch: BLOCK_M ${blockM} is not a multiple of ${minBlockM}`);
  const shared = shape.shared ? 1 : 0;
  const real = maxTokens * (shape.topK + shared);
  const nonEmpty = maxTokens === 0 ? 0 : Math.min(shape.experts, maxTokens * shape.topK) + shared;
  const maxRows = Math.max(blockM, Math.ceil((real + nonEmpty * (blockM - 1)) / blockM) * blockM);
  return {
    maxTokens,
    maxRows,
    maxTiles: maxRows / minBlockM,
    maxChunks: Math.max(1, Math.ceil(maxTokens / DISPATCH_CHUNK_TOKENS)),
    groups: shape.experts + shared,
  };
}

/** What the dispatch produces, as host arrays (the simulation's result, or a download of the GPU's). */
export interface DispatchPlan {
  /** [groups + 1] padded row offset of each group; the last entry is the padded total */
  groupOffset: Int32Array;
  /** [groups] real rows per group */
  groupCount: Int32Array;
  numMTiles: number;
  /** [numMTiles] group of each tile */
  tileGroup: Int32Array;
  /** [T*K] row of each (token, slot); -1 masked */
  slotRow: Int32Array;
  /** [padded total] token of each row, -1 padding */
  rowToken: Int32Array;
  /** [padded total] routing weight of each row, 0 padding, 1 shared */
  rowWeight: Float32Array;
}

function idAt(ids: Int32Array | BigInt64Array, i: number): number {
  return Number(ids[i]);
}

/**
 * CPU simulation of moe_dispatch.cu's index math, in the same stable (token, slot) order: the GPU must match it
 * exactly. ids [T*K] (-1 masked; anything outside [0, E) is treated as masked, as the kernel does).
 */
export function simulateDispatch(shape: DispatchShape, ids: Int32Array | BigInt64Array, weights: Float32Array,
  tokens: number, blockM = 128): DispatchPlan {
  checkShape(shape);
  const { experts: E, topK: K } = shape;
  if (ids.length < tokens * K || weights.length < tokens * K) {
    throw new RangeError(`simulateDispatch: ids/weights hold ${ids.length}/${weights.length} slots, ${tokens} tokens x top-${K} need ${tokens * K}`);
  }
  const groups = E + (shape.shared ? 1 : 0);
  const groupCount = new Int32Array(groups);
  for (let s = 0; s < tokens * K; s++) {
    const e = idAt(ids, s);
    if (e >= 0 && e < E) groupCount[e]++;
  }
  if (shape.shared) groupCount[E] = tokens;
  const groupOffset = new Int32Array(groups + 1);
  for (let g = 0; g < groups; g++) groupOffset[g + 1] = groupOffset[g] + Math.ceil(groupCount[g] / blockM) * blockM;
  const total = groupOffset[groups];
  const numMTiles = total / blockM;
  const tileGroup = new Int32Array(numMTiles);
  for (let g = 0; g < groups; g++) tileGroup.fill(g, groupOffset[g] / blockM, groupOffset[g + 1] / blockM);
  const rowToken = new Int32Array(total).fill(-1);
  const rowWeight = new Float32Array(total);
  const slotRow = new Int32Array(tokens * K);
  const next = Int32Array.from(groupOffset.subarray(0, groups));
  for (let s = 0; s < tokens * K; s++) {
    const e = idAt(ids, s);
    if (e >= 0 && e < E) {
      const row = next[e]++;
      slotRow[s] = row;
      rowToken[row] = Math.floor(s / K);
      rowWeight[row] = weights[s];
    } else {
      slotRow[s] = -1;
    }
  }
  if (shape.shared) {
    for (let t = 0; t < tokens; t++) {
      rowToken[groupOffset[E] + t] = t;
      rowWeight[groupOffset[E] + t] = 1;
    }
  }
  return { groupOffset, groupCount, numMTiles, tileGroup, slotRow, rowToken, rowWeight };
}

/** The compile-time specialisation of moe_dispatch.cu for a shape (also what the kernel registry lists). */
export function dispatchDefines(shape: DispatchShape): Defines {
  return {
    DISPATCH_EXPERTS: shape.experts,
    DISPATCH_TOPK: shape.topK,
    DISPATCH_HIDDEN: shape.hidden,
    DISPATCH_SHARED: shape.shared ? 1 : 0,
  };
}

// CI compiles (`megamoe kernels --check`) the presets' E, K, H with the shared expert, and the two specialisations the
// unfused EP baseline (src/backends/unfused-ep.ts) adds, at EP2: by owner rank (N groups, no shared expert) and the
// owner's one-slot dispatch (E/N groups, top-k 1, no shared expert).
registerKernel({
  name: 'moe_dispatch',
  source: 'moe_dispatch.cu',
  entry: 'megamoe_dispatch_count, megamoe_dispatch_scan, megamoe_dispatch_rank, megamoe_dispatch_gather',
  variants: [
    ...MOE_PRESET_SHAPES.map((p) => ({ label: p.label, defines: dispatchDefines({ ...p, shared: true }) })),
    ...MOE_PRESET_SHAPES.map((p) => ({ label: `${p.label} ep2 by-rank`, defines: dispatchDefines({ experts: 2, topK: p.topK, hidden: p.hidden, shared: false }) })),
    ...MOE_PRESET_SHAPES.map((p) => ({ label: `${p.label} ep2 owner`, defines: dispatchDefines({ experts: p.experts / 2, topK: 1, hidden: p.hidden, shared: false }) })),
  ],
});

/** Device buffers the dispatch writes, sized once for a capacity (reused by every forward). */
export class DispatchBuffers {
  readonly capacity: DispatchCapacity;
  readonly hidden: number;
  readonly topK: number;
  /** e4m3 [maxRows, H] */
  readonly a: DeviceBuffer;
  /** f32 scales of A, MN-major [H/128][maxRows] by default (see sfaStrides) */
  readonly sfa: DeviceBuffer;
  /** [maxChunks][E] */
  readonly chunkCounts: DeviceBuffer;
  /** [groups + 1] */
  readonly groupOffset: DeviceBuffer;
  /** [groups] */
  readonly groupCount: DeviceBuffer;
  /** [maxTiles] */
  readonly tileGroup: DeviceBuffer;
  /** [1] */
  readonly numMTiles: DeviceBuffer;
  /** [maxTokens, K] */
  readonly slotRow: DeviceBuffer;
  /** [maxRows] */
  readonly rowWeight: DeviceBuffer;
  /** [maxRows] */
  readonly rowToken: DeviceBuffer;
  /** sfa element strides: row m, K block kb at m * row + kb * kb */
  readonly sfaStrides: { row: number; kb: number };
  private readonly owned: DeviceBuffer[];

  constructor(shape: DispatchShape, capacity: DispatchCapacity, sfaLayout: 'mn-major' | 'k-major' = 'mn-major') {
    this.capacity = capacity;
    this.hidden = shape.hidden;
    this.topK = shape.topK;
    const { maxRows, maxTiles, maxChunks, groups, maxTokens } = capacity;
    const kBlocks = shape.hidden / 128;
    this.sfaStrides = sfaLayout === 'mn-major' ? { row: 1, kb: maxRows } : { row: kBlocks, kb: 1 };
    this.owned = [];
    const alloc = (bytes: number) => { const b = DeviceBuffer.alloc(bytes); this.owned.push(b); return b; };
    try {
      this.a = alloc(maxRows * shape.hidden);
      this.sfa = alloc(maxRows * kBlocks * 4);
      this.chunkCounts = alloc(maxChunks * shape.experts * 4);
      this.groupOffset = alloc((groups + 1) * 4);
      this.groupCount = alloc(groups * 4);
      this.tileGroup = alloc(maxTiles * 4);
      this.numMTiles = alloc(4);
      this.slotRow = alloc(Math.max(1, maxTokens * shape.topK) * 4);
      this.rowWeight = alloc(maxRows * 4);
      this.rowToken = alloc(maxRows * 4);
      // Defined contents from the start: padding rows of A/sfa are never written by the dispatch, and a GEMM
      // reads them (their outputs are ignored); zeros keep those outputs finite and runs reproducible.
      this.a.memset8(0);
      this.sfa.memset32(0);
      this.tileGroup.memset32(0xffffffff);
      this.numMTiles.memset32(0);
    } catch (err) {
      this.dispose();
      throw err;
    }
  }

  /** Downloads the index outputs of the last dispatch of `tokens` tokens (synchronous; tests and debugging). */
  downloadPlan(tokens: number): DispatchPlan {
    const groups = this.capacity.groups;
    const groupOffset = new Int32Array(groups + 1);
    this.groupOffset.copyToHost(groupOffset);
    const groupCount = new Int32Array(groups);
    this.groupCount.copyToHost(groupCount);
    const nt = new Int32Array(1);
    this.numMTiles.copyToHost(nt);
    const total = groupOffset[groups];
    const tileGroup = new Int32Array(nt[0]);
    this.tileGroup.copyToHost(tileGroup, { bytes: nt[0] * 4 });
    const slotRow = new Int32Array(tokens * this.topK);
    this.slotRow.copyToHost(slotRow, { bytes: slotRow.byteLength });
    const rowToken = new Int32Array(total);
    this.rowToken.copyToHost(rowToken, { bytes: total * 4 });
    const rowWeight = new Float32Array(total);
    this.rowWeight.copyToHost(rowWeight, { bytes: total * 4 });
    return { groupOffset, groupCount, numMTiles: nt[0], tileGroup, slotRow, rowToken, rowWeight };
  }

  dispose(): void {
    for (const b of this.owned) b.dispose();
    this.owned.length = 0;
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** Where the staged tokens are (staging's capacity-sized outputs). */
export interface DispatchInputs {
  /** e4m3 [>= T, H] */
  xFp8: bigint;
  /** f32 [>= T, H/128] row-major */
  xSf: bigint;
  /** I64 [>= T, K] */
  ids: bigint;
  /** F32 [>= T, K] */
  weights: bigint;
}

/** The four dispatch kernels of one shape, compiled once. */
export class MoeDispatch {
  readonly shape: DispatchShape;
  private constructor(shape: DispatchShape, private readonly kCount: Kernel, private readonly kScan: Kernel,
    private readonly kRank: Kernel, private readonly kGather: Kernel) {
    this.shape = shape;
  }

  /** Compiles (cached) and loads the four kernels specialised on `shape`. */
  static async create(shape: DispatchShape): Promise<MoeDispatch> {
    checkShape(shape);
    const defines = dispatchDefines(shape);
    const load = (entry: string) => loadKernel({ source: 'moe_dispatch.cu', defines, entry });
    const [count, scan, rank, gather] = await Promise.all([
      load('megamoe_dispatch_count'), load('megamoe_dispatch_scan'), load('megamoe_dispatch_rank'), load('megamoe_dispatch_gather'),
    ]);
    return new MoeDispatch(shape, count, scan, rank, gather);
  }

  /**
   * Queues the dispatch of `tokens` tokens on `stream` (4 launches, no host sync: graph-capturable).
   * tokens must be in [1, capacity]; T = 0 is the caller's short cut (nothing to launch).
   */
  launch(stream: StreamLike, input: DispatchInputs, out: DispatchBuffers, tokens: number, blockM: number): void {
    const cap = out.capacity;
    if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= cap.maxTokens)) {
      throw new RangeError(`moe dispatch: ${tokens} tokens is outside [1, ${cap.maxTokens}] (the capacity the buffers were made for)`);
    }
    if (out.hidden !== this.shape.hidden || out.topK !== this.shape.topK) {
      throw new RangeError('moe dispatch: buffers were made for another shape');
    }
    const maxTilesNow = cap.maxRows / blockM;
    if (!Number.isInteger(maxTilesNow)) throw new RangeError(`moe dispatch: BLOCK_M ${blockM} does not divide the ${cap.maxRows}-row capacity`);
    const chunks = Math.ceil(tokens / DISPATCH_CHUNK_TOKENS);
    this.kCount.launch({ grid: chunks, block: 256, stream }, [input.ids, arg.i32(tokens), out.chunkCounts]);
    this.kScan.launch({ grid: 1, block: SCAN_THREADS, stream }, [
      out.chunkCounts, arg.i32(tokens), arg.i32(blockM), arg.i32(Math.min(cap.maxTiles, maxTilesNow)),
      out.groupOffset, out.groupCount, out.tileGroup, out.numMTiles, out.rowWeight, out.rowToken,
    ]);
    this.kRank.launch({ grid: chunks, block: 32, stream }, [
      input.ids, input.weights, arg.i32(tokens), out.chunkCounts, out.groupOffset,
      out.slotRow, out.rowWeight, out.rowToken,
    ]);
    this.kGather.launch({ grid: Math.ceil(tokens / GATHER_WARPS), block: GATHER_WARPS * 32, stream }, [
      input.xFp8, input.xSf, arg.i32(tokens), out.slotRow, out.groupOffset, out.a, out.sfa,
      arg.i64(out.sfaStrides.row), arg.i64(out.sfaStrides.kb),
    ]);
  }

}
