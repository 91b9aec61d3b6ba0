// The fused MegaMoE kernel's plan, written once for the host: the per-rank symmetric buffer (every region's offset
// and size, computed exactly from E, tokens per rank, K, H, I and the rank count), the shared-memory plan of each
// kernel path and the packing of its parameter struct. mega_moe.cu static_asserts its own sizes against the
// MM_SMEM_BYTES / MM_PARAMS_BYTES defines made here, so a drift between the two fails `megamoe kernels --check`.
// Pure: no GPU needed (tests and `megamoe info` use it anywhere).
import { DISPATCH_CHUNK_TOKENS, dispatchCapacity, type DispatchCapacity } from './moe-dispatch.js';

/** What the fused kernel is specialised on (a layer's MoE shape, as every *Shape of the project). */
export interface MegaMoeShape {
  hidden: number;
  inter: number;
  /** routed experts held by this rank (all E at EP1); group `experts` is the shared expert */
  experts: number;
  topK: number;
}

/**
 * 'normal': 128-row tiles, 2 consumer warpgroups (prefill). 'decode': 16-token tiles, weights on wgmma's M side.
 * 'decode32' / 'decode64': the decode kernel with 32- / 64-token tiles (mid T: an expert's rows stream its weights
 * once); decode64 has 2 consumer warpgroups.
 */
export type MegaMoePath = 'normal' | 'decode' | 'decode32' | 'decode64';

export const MEGA_ROW_TILE: Readonly<Record<MegaMoePath, number>> = Object.freeze({ normal: 128, decode: 16, decode32: 32, decode64: 64 });
/**
 * Pipeline depth of each path (what fits in 227 KB with the plan below; measured choices in docs/MEGA_MOE.md): decode
 * runs L1 and L2 through one ring; normal gives L2 these stages and L1 its own ring of MEGA_L1_STAGES.
 */
export const MEGA_STAGES: Readonly<Record<MegaMoePath, number>> = Object.freeze({ normal: 3, decode: 6, decode32: 6, decode64: 5 });
/** The normal path's L1 ring (SwiGLU epilogue: no TMA-store staging, so one stage more than L2). */
export const MEGA_L1_STAGES = 4;
const SMEM_LIMIT = 232448;
/** Static shared memory of the kernel (the 1 KB-aligned dynamic base), counted against the 227 KB limit. */
const STATIC_SMEM = 3072;

/**
 * Shared memory of a path's plan: normal = two rings over the same bytes, L1 = NormalPlan<2, S1, 0> (S1 stages of A
 * 16 KB + B 32 KB + sfa 512 B) and L2 = NormalPlan<2, S, 1> (64 KB bf16 staging for its TMA store, then S such
 * stages), then both rings' barriers (2 (S1 + S) x 8 bytes); decode = DecodePlan<4, S, R> (S stages of B 32 KB +
 * A R x 128 B + sfa max(128, 4 R) B, barriers, 16 R B of amax scratch per consumer warpgroup; R = 16, 32 or 64
 * tokens, 64 with 2 warpgroups). Mirrors mega_moe.cu / gemm/grouped.cuh.
 */
export function megaSmemBytes(path: MegaMoePath, stages = MEGA_STAGES[path], l1Stages = MEGA_L1_STAGES): number {
  if (path === 'normal') {
    const stage = 128 * 128 + 256 * 128 + 128 * 4;
    return Math.max(l1Stages * stage, 128 * 256 * 2 + stages * stage) + 2 * (stages + l1Stages) * 8;
  }
  const rows = MEGA_ROW_TILE[path];
  return stages * (256 * 128 + rows * 128 + Math.max(128, 4 * rows)) + 2 * stages * 8 + 4 * decodeWarpgroups(path) * rows * 4;
}

/** Consumer warpgroups of a decode path (gemm/grouped.cuh DecodePlan::kConsumerWGs). */
function decodeWarpgroups(path: MegaMoePath): number {
  return path === 'decode64' ? 2 : 1;
}

/** Threads per CTA of a path (mega_moe.cu kThreads). */
export function megaThreads(path: MegaMoePath): number {
  return path === 'normal' ? 384 : 128 * (decodeWarpgroups(path) + 1);
}

const ALIGN = 1024;
const alignUp = (v: number, a = ALIGN) => Math.ceil(v / a) * a;

/** One region of the symmetric buffer: byte offset from the rank's base and size in bytes. */
export interface BufferRegion {
  offset: number;
  bytes: number;
}

/** Every region of one rank's buffer, in address order. */
export interface MegaBufferLayout {
  shape: Readonly<MegaMoeShape>;
  /** tokens per rank the buffer holds (a bigger batch is refused) */
  maxTokens: number;
  ranks: number;
  capacity: DispatchCapacity;
  /** rows of the pools: every real row of the worst routing, without the groups' padding (mega_moe.cu row_shift) */
  poolRows: number;
  regions: {
    /** staged tokens (the staging phase's target; peers read them under expert parallelism) */
    xFp8: BufferRegion; xSf: BufferRegion; ids: BufferRegion; weights: BufferRegion;
    /** dispatch bookkeeping */
    chunkCounts: BufferRegion; groupOffset: BufferRegion; groupCount: BufferRegion;
    /** each group's first row without padding, where the pools keep its rows */
    groupCompact: BufferRegion; tileGroup: BufferRegion;
    numMTiles: BufferRegion; rowWeight: BufferRegion;
    /** each grouped row's place in the combine buffer (-1: padding) */
    rowDest: BufferRegion; slotRow: BufferRegion;
    /** L1 pool: grouped A rows, each group's rows without padding (poolRows), and their scales (MN-major, by grouped row) */
    a: BufferRegion; sfa: BufferRegion;
    /** L2 pool: the SwiGLU activations and their power-of-two scales (MN-major) */
    act: BufferRegion; actSf: BufferRegion;
    /** combine buffer: one bf16 row per (source token, slot), then one per own token for the shared expert; no
     * padding rows (the L2 epilogue writes each row at its place: mega_moe.cu MegaSync::row_dest) */
    out: BufferRegion;
    /** epoch-tagged flags, one per (16-row tile, 128 activation columns), then the tail combine's counters (one per
     * 128 output columns); the control block */
    flags: BufferRegion; ctl: BufferRegion;
    /** expert parallelism: the cross-rank barriers' epoch-tagged flags, u32 [2 barriers, ranks] (peers write them) */
    rankFlags: BufferRegion;
    /** rank -> base address table (u64 per rank) */
    rankTable: BufferRegion;
  };
  totalBytes: number;
}

/** The control block's size (MegaCtl in mega_moe.cu). */
export const MEGA_CTL_BYTES = 64;

function checkShape(s: MegaMoeShape): void {
  const dim = (v: number, m: number) => Number.isInteger(v) && v > 0 && v % m === 0;
  if (!dim(s.hidden, 256)) throw new RangeError(`mega_moe: hidden size ${s.hidden} must be a positive multiple of 256 (two 128-column halves per tile)`);
  if (!dim(s.inter, 128)) throw new RangeError(`mega_moe: intermediate size ${s.inter} must be a positive multiple of 128`);
  if (!(Number.isInteger(s.experts) && s.experts >= 1 && s.experts <= 1023)) throw new RangeError(`mega_moe: ${s.experts} experts is outside [1, 1023]`);
  if (!(Number.isInteger(s.topK) && s.topK >= 1 && s.topK <= 32)) throw new RangeError(`mega_moe: top-k ${s.topK} is outside [1, 32]`);
}

/**
 * Dispatch capacity of one rank: at EP1 the unfused dispatch's (dispatchCapacity); with N ranks every rank's T tokens
 * may send each of its rows here (at most min(K, E local) per token), plus this rank's T shared-expert rows, and the
 * count chunks are every source rank's.
 */
export function megaCapacity(shape: MegaMoeShape, maxTokens: number, ranks: number): DispatchCapacity {
  const { experts: E, topK: K } = shape;
  if (ranks === 1) return dispatchCapacity({ experts: E, topK: K, hidden: shape.hidden, shared: true }, maxTokens, 128, 16);
  const real = ranks * maxTokens * Math.min(K, E) + maxTokens;
  const nonEmpty = Math.min(E, ranks * maxTokens * K) + 1;
  const maxRows = Math.max(128, Math.ceil((real + nonEmpty * 127) / 128) * 128);
  return {
    maxTokens, maxRows, maxTiles: maxRows / 16,
    maxChunks: ranks * Math.max(1, Math.ceil(maxTokens / DISPATCH_CHUNK_TOKENS)), groups: E + 1,
  };
}

/** The symmetric buffer of one rank for `maxTokens` tokens per rank (EP1: ranks = 1; `shape.experts` = this rank's). */
export function megaBufferLayout(shape: MegaMoeShape, maxTokens: number, ranks = 1): MegaBufferLayout {
  checkShape(shape);
  if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new RangeError(`mega_moe: max tokens ${maxTokens} must be a positive integer`);
  if (!(Number.isInteger(ranks) && ranks >= 1)) throw new RangeError(`mega_moe: ${ranks} ranks must be a positive integer`);
  const { hidden: H, inter: I, experts: E, topK: K } = shape;
  // Rows for the worst routing under the normal path's 128-row padding (the decode path pads to 16: fewer).
  const capacity = megaCapacity(shape, maxTokens, ranks);
  const { maxRows: M, maxTiles, maxChunks, groups: G } = capacity;
  let at = 0;
  const take = (bytes: number): BufferRegion => {
    const r = { offset: at, bytes };
    at = alignUp(at + bytes);
    return r;
  };
  const T = maxTokens;
  // The pools hold each group's rows without padding: at most every real row, or the small-T direct layout's tiles
  // (mega_moe.cu dispatch_small_direct: a tile per touched expert + the shared expert's, one rank only; a decode
  // path's tile, up to 64 rows).
  const real = ranks === 1 ? T * (K + 1) : ranks * T * Math.min(K, E) + T;
  const direct = ranks === 1 ? MEGA_ROW_TILE.decode64 * (Math.min(E, Math.min(T, smallTokens()) * K) + 1) : 0;
  const P = Math.max(real, direct);
  const regions = {
    xFp8: take(T * H), xSf: take(T * (H / 128) * 4), ids: take(T * K * 8), weights: take(T * K * 4),
    chunkCounts: take(maxChunks * E * 4), groupOffset: take((G + 1) * 4), groupCount: take(G * 4), groupCompact: take((G + 1) * 4),
    tileGroup: take(maxTiles * 4), numMTiles: take(4), rowWeight: take(M * 4), rowDest: take(M * 4),
    slotRow: take(ranks * T * K * 4),
    a: take(P * H), sfa: take((H / 128) * M * 4),
    act: take(P * I), actSf: take((I / 128) * M * 4),
    out: take((ranks * T * K + T) * H * 2),
    // + the tail combine's epoch-tagged u64 counters, one per 128 output columns (mega_moe.cu tail_combine)
    flags: take(alignUp(maxTiles * (I / 128) * 4, 8) + (H / 128) * 8), ctl: take(MEGA_CTL_BYTES),
    rankTable: take(ranks * 8), rankFlags: take(2 * ranks * 4),
  };
  return { shape: Object.freeze({ ...shape }), maxTokens, ranks, capacity, poolRows: P, regions, totalBytes: at };
}

/** "1.23 GB" style (decimal units, as the SPEC's figures). */
export function formatBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e3).toFixed(1)} KB`;
}

/** The MegaParams fields of mega_moe.cu, in order: 30 device pointers (the last, `trace`, may be 0), then timeout
 * (u64), 3 i32, an f32, the fault-injection i32, rank and ranks (i32), padded to 8 bytes. */
export const MEGA_PARAM_POINTERS = [
  'x', 'ids', 'weights', 'yRouted', 'y',
  'xFp8', 'xSf', 'idsStaged', 'wStaged',
  'chunkCounts', 'groupOffset', 'groupCount', 'groupCompact', 'tileGroup', 'numMTiles', 'rowWeight', 'rowDest', 'slotRow',
  'a', 'sfa', 'act', 'actSf', 'out', 's13', 's2', 'flags', 'ctl', 'rankTable', 'rankFlags', 'trace',
] as const;
export type MegaParamPointer = (typeof MEGA_PARAM_POINTERS)[number];
export const MEGA_PARAMS_BYTES = Math.ceil((MEGA_PARAM_POINTERS.length * 8 + 8 + 7 * 4) / 8) * 8;

export interface MegaParamValues {
  pointers: Record<MegaParamPointer, bigint>;
  timeoutNs: bigint;
  numTokens: number;
  mCap: number;
  maxTiles: number;
  swigluLimit: number;
  /** 0 = none; MEGA_FAULT_SKIP_PUBLISH = L1 never publishes (row tile 0, block 0): the L2 wait must time out (tests) */
  fault?: number;
  /** expert parallelism: this rank of `ranks` (default 0 of 1) */
  rank?: number;
  ranks?: number;
}

export const MEGA_FAULT_SKIP_PUBLISH = 1;
/** Per-CTA %globaltimer stamps of a traced launch (mega_moe.cu kTraceSlots). */
export const MEGA_TRACE_SLOTS = 12;

/** Packs MegaParams little-endian, as the kernel reads it. */
export function packMegaParams(v: MegaParamValues): Uint8Array {
  const bytes = new Uint8Array(MEGA_PARAMS_BYTES);
  const dv = new DataView(bytes.buffer);
  MEGA_PARAM_POINTERS.forEach((name, i) => dv.setBigUint64(i * 8, v.pointers[name], true));
  let o = MEGA_PARAM_POINTERS.length * 8;
  dv.setBigUint64(o, v.timeoutNs, true); o += 8;
  dv.setInt32(o, v.numTokens, true); o += 4;
  dv.setInt32(o, v.mCap, true); o += 4;
  dv.setInt32(o, v.maxTiles, true); o += 4;
  dv.setFloat32(o, v.swigluLimit > 0 ? v.swigluLimit : 0, true); o += 4;
  dv.setInt32(o, v.fault ?? 0, true); o += 4;
  dv.setInt32(o, v.rank ?? 0, true); o += 4;
  dv.setInt32(o, v.ranks ?? 1, true);
  return bytes;
}

/**
 * The normal path's three kernels. 'clustered': 2-CTA clusters whose pairs of row tiles of one expert fetch half of
 * each weight tile and multicast it (MM_MCAST 1), units dealt round robin (a pair walks its units together).
 * 'round-robin': no clusters, units dealt round robin. 'dynamic': no clusters, units from the grid-wide counter, and a
 * consumer warpgroup whose 64 rows of a tile are all its expert's padding skips their MMAs (MM_SKIP_PADDING). Which
 * runs at which rows per expert: normalKernelFor.
 */
export type MegaNormalKernel = 'clustered' | 'round-robin' | 'dynamic';

/**
 * The -D defines of one specialisation; `normal` picks the normal path's kernel (ignored on the decode paths). The
 * launcher runs the clustered one only where the GPU can keep every cluster of the grid resident.
 */
export function megaDefines(shape: MegaMoeShape, path: MegaMoePath, weightLayout: 'rows' | 'tiled' = 'tiled',
  normal: MegaNormalKernel = 'round-robin'): Record<string, number> {
  checkShape(shape);
  const stages = MEGA_STAGES[path];
  const smem = megaSmemBytes(path, stages);
  if (smem + STATIC_SMEM > SMEM_LIMIT) throw new RangeError(`mega_moe: the ${path} plan needs ${smem} bytes of shared memory (limit ${SMEM_LIMIT - STATIC_SMEM})`);
  const dynamic = path === 'normal' ? normal === 'dynamic' : decodeDynamicUnits();
  const fit = path === 'normal' && normal === 'clustered' && fitPairsRule() > 0 && shape.inter % 256 === 0 && shape.hidden % 512 === 0;
  return {
    MM_HIDDEN: shape.hidden, MM_INTER: shape.inter, MM_EXPERTS: shape.experts, MM_TOPK: shape.topK,
    MM_PATH: path === 'normal' ? 0 : 1, ...(path === 'decode32' || path === 'decode64' ? { MM_DECODE_ROWS: MEGA_ROW_TILE[path] } : {}), MM_STAGES: stages, ...(path === 'normal' ? { MM_L1_STAGES: MEGA_L1_STAGES } : {}), MM_SMEM_BYTES: smem, MM_PARAMS_BYTES: MEGA_PARAMS_BYTES,
    ...(weightLayout === 'tiled' ? { MM_WTILED: 1 } : {}),
    ...(path === 'normal' && normal === 'clustered' ? { MM_MCAST: 1 } : {}),
    ...(path !== 'normal' ? { MM_DECODE_L2_WIDE_MIN_T: decodeL2WideMinTokens() } : {}),
    ...(process.env.MEGAMOE_SMALL_T ? { MM_SMALL_T: smallTokens() } : {}),
    ...(path === 'normal' ? { GG_L2_POLICY: normalL2Policy(normal) } : {}),
    ...(fit ? { MM_FIT_PAIRS: fitPairsRule() } : {}),
    ...(path === 'normal' && normal === 'dynamic' && announceWanted() ? { MM_ANNOUNCE: 1 } : {}),
    ...(path === 'normal' && normal === 'dynamic' && skipPaddingWanted() ? { MM_SKIP_PADDING: 1 } : {}),
    MM_DYNAMIC: dynamic ? 1 : 0,
  };
}

/** Whether the normal path uses 2-CTA weight multicast (default yes; MEGAMOE_MCAST=0 turns it off, for A/B runs). */
export function megaMulticastWanted(): boolean {
  const v = process.env.MEGAMOE_MCAST;
  if (v === undefined || v === '' || v === '1') return true;
  if (v === '0') return false;
  throw new RangeError(`MEGAMOE_MCAST=${v}: expected 0 or 1`);
}

/**
 * A tuning knob from the environment: `fallback` when unset or empty, else a number in [min, max] (an integer unless
 * `integer` is false); anything else is a RangeError naming the variable.
 */
function tuningKnob(name: string, fallback: number, min: number, max: number, integer = true): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!(integer ? Number.isSafeInteger(n) : Number.isFinite(n)) || n < min || n > max) {
    throw new RangeError(`${name}=${v}: expected ${integer ? 'an integer' : 'a number'} in [${min}, ${max}]`);
  }
  return n;
}

/**
 * Normal path: the L2 eviction policy of its TMA loads (gemm/grouped.cuh GG_L2_POLICY): 0 both operands
 * evict_normal (the unfused GEMM's), 1 the activation tiles and their scales evict_last (default), 2 also the weights
 * evict_first (the clustered kernel's default). Measured in docs/MEGA_MOE.md: 1 is up to 3.9% faster than 0 at flash
 * T = 4096-16384 and pro 4096 / 8192; 2 is 0.8-1.4% faster than 1 at flash T = 12288 (clustered) in two runs, even at
 * 8192 and 16384. MEGAMOE_L2_POLICY overrides for every kernel (A/B runs).
 */
export function normalL2Policy(kernel: MegaNormalKernel = 'round-robin'): number {
  return tuningKnob('MEGAMOE_L2_POLICY', kernel === 'clustered' ? 2 : 1, 0, 2);
}

/**
 * The dynamic normal kernel: whether its producer hands each unit's weight scales to the consumers through shared
 * memory with the unit (mega_moe.cu MM_ANNOUNCE; default yes), or each consumer loads them itself
 * (MEGAMOE_ANNOUNCE=0, A/B runs). Measured in docs/MEGA_MOE.md: 0.1-1.9% faster at pro T = 8192 (two runs), 0.3-0.9%
 * at flash 2600 / 3072, within 0.3% at pro 4096 / 6144; the round-robin and clustered kernels run without it (even,
 * and 1.5% slower).
 */
export function announceWanted(): boolean {
  return tuningKnob('MEGAMOE_ANNOUNCE', 1, 0, 1) === 1;
}

/**
 * The clustered kernel's pairs (mega_moe.cu MM_FIT_PAIRS): 0 (default) consecutive row tiles whatever their experts;
 * 1 each expert's tiles in pairs sharing the weight tile, an odd one left over split over both CTAs of a pair by N
 * tiles; 2 as 1, but an expert's last tile with at most 64 rows is never paired. MEGAMOE_FIT_PAIRS overrides (A/B
 * runs; measured in docs/MEGA_MOE.md: 1 is 3.4% faster at flash T = 6144 and 2.4% at pro 16384, 1.2-1.8% slower at
 * flash 8192-16384). Needs I a multiple of 256 and H of 512 (else 0).
 */
export function fitPairsRule(): number {
  return tuningKnob('MEGAMOE_FIT_PAIRS', 0, 0, 2);
}

/**
 * The dynamic normal kernel: whether a consumer warpgroup skips the MMAs and epilogue of its 64 rows of a tile when
 * they are all its expert's padding (default yes; MEGAMOE_SKIP_PADDING=0 turns it off, for A/B runs). Measured in
 * docs/MEGA_MOE.md: it pays only with dynamic units (a CTA that skips takes its next unit sooner); with units dealt
 * round robin it was 1-6.5% slower.
 */
export function skipPaddingWanted(): boolean {
  return tuningKnob('MEGAMOE_SKIP_PADDING', 1, 0, 1) === 1;
}

/** Normal path: the smallest I (moe_intermediate_size) at which the dynamic kernel runs at every row count below the clustered one's. */
export const NORMAL_DYNAMIC_MIN_INTER = 3072;

/**
 * megaMulticastMinRows from I = NORMAL_DYNAMIC_MIN_INTER. Measured at pro (docs/MEGA_MOE.md): the dynamic kernel 2-4%
 * faster at 128 and 160 rows per expert, the clustered one 5% faster at 192 and 256.
 */
export const PRO_MCAST_MIN_ROWS = 192;

/**
 * Normal path: rows per expert (T K / E) from which the clustered (weight multicast) kernel runs; MEGAMOE_MCAST_MIN_ROWS
 * overrides (tuning; 0 = whenever the normal path runs). Default 128 (two row tiles per expert share a weight tile
 * only from there), and PRO_MCAST_MIN_ROWS from I = NORMAL_DYNAMIC_MIN_INTER, where the dynamic kernel with the padding skip
 * is faster a little above 128 too.
 */
export function megaMulticastMinRows(inter: number): number {
  return tuningKnob('MEGAMOE_MCAST_MIN_ROWS', inter >= NORMAL_DYNAMIC_MIN_INTER ? PRO_MCAST_MIN_ROWS : 128, 0, Number.MAX_VALUE, false);
}

/**
 * Normal path: rows per expert up to which the dynamic kernel runs below the clustered one (above it: round robin).
 * Default: every row count from I = NORMAL_DYNAMIC_MIN_INTER; else up to FLASH_DYNAMIC_MAX_ROWS, where the padding
 * skip finds many all-padding halves (an expert's one tile holds fewer than 128 rows). MEGAMOE_DYNAMIC_MAX_ROWS
 * overrides; MEGAMOE_DYNAMIC=0 / 1: never / always (every path, A/B runs).
 */
export function normalDynamicMaxRows(inter: number): number {
  const forced = process.env.MEGAMOE_DYNAMIC;
  if (forced !== undefined && forced !== '') return tuningKnob('MEGAMOE_DYNAMIC', 1, 0, 1) === 1 ? Infinity : -1;
  return tuningKnob('MEGAMOE_DYNAMIC_MAX_ROWS', inter >= NORMAL_DYNAMIC_MIN_INTER ? Infinity : FLASH_DYNAMIC_MAX_ROWS, -1, Infinity, false);
}
/**
 * normalDynamicMaxRows below I = NORMAL_DYNAMIC_MIN_INTER. Measured at flash (I 2048, docs/MEGA_MOE.md): the dynamic
 * kernel 7.6% faster at 61 rows per expert, 1.2-3.5% at 72; 1-2.6% slower at 78-96, where few halves are all padding
 * and dynamic units by themselves lose 3-4.5% at flash for a reason not found.
 */
export const FLASH_DYNAMIC_MAX_ROWS = 72;

/** Rows per expert from which the normal path runs its clustered kernel, and up to which its dynamic one below that. */
export interface MegaNormalPolicy { multicastMinRows: number; dynamicMaxRows: number }

/** The normal path's policy for a shape's I, from the knobs (read when a layer is created). */
export function megaNormalPolicy(inter: number): MegaNormalPolicy {
  return { multicastMinRows: megaMulticastMinRows(inter), dynamicMaxRows: normalDynamicMaxRows(inter) };
}

/**
 * The normal path's kernel for T tokens at `rows` = T K / E rows per expert: clustered from multicastMinRows (where
 * it is available), else dynamic up to dynamicMaxRows, else round robin.
 */
export function normalKernelFor(rows: number, o: MegaNormalPolicy & { clustered: boolean }): MegaNormalKernel {
  if (o.clustered && rows >= o.multicastMinRows) return 'clustered';
  return rows <= o.dynamicMaxRows ? 'dynamic' : 'round-robin';
}

/**
 * Decode path: T from which L2 runs 256-row weight units instead of 128-row ones (default 32 tokens; measured in
 * docs/MEGA_MOE.md); MEGAMOE_DECODE_L2_WIDE_MIN_T overrides (tuning; a huge value keeps 128-row units everywhere).
 */
export function decodeL2WideMinTokens(): number {
  return tuningKnob('MEGAMOE_DECODE_L2_WIDE_MIN_T', 32, 1, 2 ** 30);
}

/** Rows per expert (T K / E) in (min, max]. */
export interface RowsRange {
  min: number;
  max: number;
}

/**
 * Rows per expert (T K / E) for which the fused layer runs the 32-token decode tiles ('decode32'): above `min`, up to
 * `max` (default (7, 24]: above 24 the 64-token tiles win, measured in docs/MEGA_MOE.md). MEGAMOE_DECODE32_ROWS=
 * "min:max" overrides (tuning), "off" never runs them.
 */
export function decode32RowsRange(): RowsRange | undefined {
  return rowsRangeKnob('MEGAMOE_DECODE32_ROWS', { min: 7, max: 24 });
}

/**
 * The same for the 64-token tiles ('decode64'; default (24, 60]: above ~60 rows most experts need two 64-token tiles
 * and the 128-row normal path wins, measured in docs/MEGA_MOE.md); MEGAMOE_DECODE64_ROWS overrides.
 */
export function decode64RowsRange(): RowsRange | undefined {
  return rowsRangeKnob('MEGAMOE_DECODE64_ROWS', { min: 24, max: 60 });
}

function rowsRangeKnob(name: string, fallback: RowsRange): RowsRange | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  if (v === 'off') return undefined;
  const m = /^(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(v);
  if (!m || Number(m[1]) > Number(m[2])) throw new RangeError(`${name}=${v}: expected "min:max" rows per expert (min <= max) or "off"`);
  return { min: Number(m[1]), max: Number(m[2]) };
}

/**
 * T at or below which one CTA does the whole dispatch (default 8, mega_moe.cu; measured: docs/MEGA_MOE.md);
 * MEGAMOE_SMALL_T overrides (tuning), up to 16: the decode path's direct dispatch puts all T tokens into one 16-row
 * tile (mega_moe.cu dispatch_small_direct).
 */
export function smallTokens(): number {
  return tuningKnob('MEGAMOE_SMALL_T', 8, 0, 16);
}

/**
 * Decode paths: whether the GEMM units come from a grid-wide counter as CTAs free up (mega_moe.cu MegaSync::kDynamic;
 * default yes) or round robin (MEGAMOE_DYNAMIC=0, A/B runs). The normal path's choice: normalDynamicMaxRows.
 */
export function decodeDynamicUnits(): boolean {
  return tuningKnob('MEGAMOE_DYNAMIC', 1, 0, 1) === 1;
}

/** What the control block says after a launch (mirrors MegaCtl and the kErr / kPhase enums). */
export interface MegaCtlState {
  epoch: number;
  errCode: number;
  errPhase: number;
  errBlock: number;
  errIndex: number;
  errValue: number;
  errExpected: number;
  /** the last small-T launch laid its tiles out directly (mega_moe.cu dispatch_small_direct) */
  smallDirect: boolean;
}

export function decodeMegaCtl(bytes: Uint8Array): MegaCtlState {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, MEGA_CTL_BYTES);
  const u = (i: number) => dv.getUint32(i * 4, true);
  return { epoch: u(0), errCode: u(4), errPhase: u(5), errBlock: u(6), errIndex: u(7), errValue: u(8), errExpected: u(9), smallDirect: u(10) !== 0 };
}

const ERR_NAMES: Readonly<Record<number, string>> = {
  1: 'grid barrier timed out', 2: 'activation flag timed out', 3: 'a peer rank did not arrive in time',
};
const PHASE_NAMES: Readonly<Record<number, string>> = {
  1: 'dispatch', 2: 'scan', 3: 'rank', 4: 'gather', 5: 'GEMMs', 6: 'L2 waiting for an L1 block',
  7: 'waiting for every rank\'s staged tokens', 8: 'waiting for every rank\'s L2 rows',
};

/** A readable account of a reported error, or undefined when the launch was clean. */
export function describeMegaCtlError(s: MegaCtlState, kbPerTile: number): string | undefined {
  if (s.errCode === 0) return undefined;
  const what = ERR_NAMES[s.errCode] ?? `error code ${s.errCode}`;
  const phase = PHASE_NAMES[s.errPhase] ?? `phase ${s.errPhase}`;
  const where = s.errCode === 2
    ? `row tile ${Math.floor(s.errIndex / kbPerTile)}, activation block ${s.errIndex % kbPerTile}: flag ${s.errValue}, expected epoch ${s.errExpected}`
    : s.errCode === 3
      ? `peer rank ${s.errIndex}: its flag ${s.errValue}, expected epoch ${s.errExpected}`
      : `barrier generation ${s.errIndex}: ${s.errValue} of ${s.errExpected} CTAs had arrived`;
  return `${what} in phase "${phase}" (CTA ${s.errBlock}; ${where})`;
}
