// Launchers of the model's row operations on the GPU (src/kernels/model_ops.cu), each the CPU op of src/model/ bit for
// bit (docs/GPU-MODEL.md says which CPU function and where the match is exact by construction vs with overwhelming
// probability). Every argument is checked before anything is queued; a bad one is a GpuModelArgumentError naming
// the fix. All launches are plain kernel launches on the given stream: capturable into a CUDA graph.
//
//   const ops = await GpuRowOps.create(cfg.hcMult);
//   ops.embed(ids, embedTable, hs, { copies: cfg.hcMult });                 // bf16 [T, hc, D]
//   ops.hcPre(hs, hcAttn, { post, comb, y }, { normWeight: attnNorm, quant: act });   // hc_pre + attn_norm + act_quant
//   ops.rope(q, positions, freqs, { heads: H, headStride: d, ropeOffset: d - rd, rd });
//   ops.hcPost(f, hs, post, comb, hs);                                       // in place
import { arg, DeviceTensor, type Kernel, type StreamLike } from '../cuda/index.js';
import { loadModelOpsKernels, loadModelOpsKernelsSync, type ModelOpsKernels } from '../kernels/model-ops.js';
import { checkCount, checkTensor, GpuModelArgumentError } from './errors.js';

/** f64 kernel arguments travel as their IEEE bits (the driver API has no double helper here). */
function f64Bits(v: number): bigint {
  const b = new DataView(new ArrayBuffer(8));
  b.setFloat64(0, v, true);
  return b.getBigUint64(0, true);
}

/** FP8 activations exactly as the grouped GEMM reads them: e4m3 [mCap, K] row-major, f32 scales MN-major [K/128, mCap]. */
export interface Fp8Activations {
  q: DeviceTensor<'F8_E4M3'>;
  sf: DeviceTensor<'F32'>;
  /** Scale rounding: powers of two (scale_fmt "ue8m0", ModelConfig.pow2ActScales) or amax / 448. */
  pow2: boolean;
}

/** Allocates FP8 activations for up to mCap rows of K columns (K a multiple of 128). */
export function allocFp8Activations(mCap: number, k: number, pow2: boolean, stream?: StreamLike): Fp8Activations {
  checkCount('allocFp8Activations', 'mCap', mCap, 1, 2 ** 24, 'pass the row capacity (a multiple of the GEMM row tile)');
  if (!(Number.isInteger(k) && k > 0 && k % 128 === 0)) throw new GpuModelArgumentError('allocFp8Activations', `K = ${k} is not a positive multiple of 128`, 'FP8 activations are quantized in 128-column blocks');
  const q = DeviceTensor.empty('F8_E4M3', [mCap, k], { stream });
  try {
    return { q, sf: DeviceTensor.empty('F32', [k / 128, mCap], { stream }), pow2 };
  } catch (err) {
    q.dispose();
    throw err;
  }
}

/** The hc parameters of one sub-layer (or the head) on the device: fn f32 [mix, hc*D], base f32 [mix], scale f32 [3] / [1]. */
export interface DeviceHcParams {
  fn: DeviceTensor<'F32'>;
  base: DeviceTensor<'F32'>;
  scale: DeviceTensor<'F32'>;
}

export function uploadHcParams(p: { fn: Float32Array; base: Float32Array; scale: Float32Array }, mix: number, width: number, stream?: StreamLike): DeviceHcParams {
  if (p.fn.length !== mix * width) throw new GpuModelArgumentError('uploadHcParams', `fn has ${p.fn.length} values, expected [${mix}, ${width}]`, 'pass hc_*_fn of this sub-layer');
  const up = (a: Float32Array, shape: number[]) => {
    const t = DeviceTensor.empty('F32', shape, { stream });
    t.buffer.copyFromHost(a, { stream });
    return t;
  };
  return { fn: up(p.fn, [mix, width]), base: up(p.base, [p.base.length]), scale: up(p.scale, [p.scale.length]) };
}

const HC_MIX_COLS = 1024;   // model_ops.cu kMixCols: columns of the 4D row per block of the split mixing logits
const HC_MIX_LOGITS = 4;    // model_ops.cu kMixLogits: logits per block
const HC_MIX_THREADS = 128; // model_ops.cu kMixThreads
/** Up to this many rows hc_pre / hc_head split the mixing logits over many blocks (given a scratch, allocHcMixScratch). */
export const HC_SPLIT_MAX_ROWS = 64;

/**
 * Rows per block of the split mixing logits (mo_hc_*_mix): 1 below 4 rows, 2 below 16, 4 below 32, else 8. A block
 * fetches its slice of hc_fn once for all its rows; the partials are the same bits for any choice (model_ops.cu).
 * `force` (tests) overrides it.
 */
export function hcMixRowsPerBlock(rows: number, force?: 1 | 2 | 4 | 8): number {
  if (force !== undefined) return force;
  return rows < 4 ? 1 : rows < 16 ? 2 : rows < 32 ? 4 : 8;
}

/** Column chunks of the split mixing logits for hidden size D. */
function hcMixChunks(hc: number, D: number): number { return Math.ceil((hc * D) / HC_MIX_COLS); }

/** MEGAMOE_HC_TILED=0 (A/Bs): more than HC_SPLIT_MAX_ROWS rows take the one-block path again, not the tiled kernel. */
const HC_TILED_DEFAULT = process.env.MEGAMOE_HC_TILED !== '0';
const HC_TILE_ROWS = 32;    // model_ops.cu kTileRows: rows per block of the tiled mixing logits
const HC_TILE_COLS = 64;    // model_ops.cu kTileCols: columns per stage (a chunk is a multiple)
const HC_TILE_THREADS = 256; // model_ops.cu kTileThreads

/** Resident blocks per SM of the tiled mixing logits (126 registers a thread for hc_pre's: two 256-thread blocks). */
const HC_TILE_BLOCKS_PER_SM = 2;
const HC_TILE_LD = HC_TILE_COLS + 4; // model_ops.cu kTileLd
const HC_TILE_X_RING = 3;            // model_ops.cu kTileXRing

/** Mixing logits per row: hc_pre's pre, post and comb, (2 + hc) x hc of them; hc_head's pre, hc. */
function hcMixLogits(entry: 'mo_hc_pre' | 'mo_hc_head', hc: number): number {
  return entry === 'mo_hc_pre' ? (2 + hc) * hc : hc;
}

/**
 * Dynamic shared memory of mo_hc_*_mix_tiled for `mix` logits (model_ops.cu's layout): 32 bytes of alignment slack,
 * two f64 stages [32 + logits padded to 8, 68], the raw x ring [3, 256] x 16 bytes, the squares [32, 8] f64.
 */
export function hcTiledSmemBytes(mix: number): number {
  const npad = Math.ceil(mix / 8) * 8;
  return 32 + 2 * (HC_TILE_ROWS + npad) * HC_TILE_LD * 8 + HC_TILE_X_RING * HC_TILE_THREADS * 16 + HC_TILE_ROWS * 8 * 8;
}

/**
 * Column chunks of the tiled mixing logits (mo_hc_*_mix_tiled) for `rows` rows: the count, at most the split path's
 * (the scratch's second dimension), whose (rows / 32) x chunks blocks take the fewest stages on the busiest SM, two
 * blocks resident per SM (waves x columns per block); on a tie the fewer chunks. Chunks are multiples of 64 columns.
 * At 4096 rows: 2 chunks, one wave of 256 blocks (3 chunks were 1.45 waves: the second ran on 45% of the SMs).
 * Returns the chunk count and its width.
 */
export function hcTiledChunks(hc: number, D: number, rows: number, sms = ROW_OPS_SMS): { chunks: number; cols: number } {
  const W = hc * D;
  const tiles = Math.ceil(rows / HC_TILE_ROWS);
  const slots = HC_TILE_BLOCKS_PER_SM * sms;
  const widthOf = (c: number) => Math.ceil(W / c / HC_TILE_COLS) * HC_TILE_COLS;
  let best = 1; let bestCost = Infinity;
  for (let c = 1; c <= hcMixChunks(hc, D); c++) {
    const cols = widthOf(c);
    const chunks = Math.ceil(W / cols);
    const cost = Math.ceil((tiles * chunks) / slots) * cols;
    if (cost < bestCost) { best = c; bestCost = cost; }
  }
  const cols = widthOf(best);
  return { chunks: Math.ceil(W / cols), cols };
}

/**
 * The f64 scratch of the split / tiled mixing logits (per-chunk partial sums, [rows, chunks, (2 + hc) * hc + 1]) for
 * up to maxRows rows of hidden size D (13 MB for 4096 rows at flash): allocate it once with the other per-call
 * buffers and pass it as HcOptions.mixScratch to both hcPre and hcHead (calls on one stream may share it).
 */
export function allocHcMixScratch(hc: number, D: number, maxRows: number, stream?: StreamLike): DeviceTensor<'F64'> {
  checkCount('allocHcMixScratch', 'maxRows', maxRows, 1, 2 ** 24, 'pass the most rows one call runs');
  return DeviceTensor.empty('F64', [maxRows, hcMixChunks(hc, D), (2 + hc) * hc + 1], { stream });
}

export interface HcOptions {
  /** normEps of the config (the weightless rms factor of the streams and the fused norm). */
  normEps: number;
  hcEps: number;
  /** Sinkhorn iterations (hc_pre only). */
  sinkhornIters?: number;
  /** Fuse the following RMSNorm (attn_norm / ffn_norm / the final norm) into the kernel: y is then normalised. */
  normWeight?: DeviceTensor<'F32'>;
  /** Also quantize y (after the norm when fused) for the next FP8 GEMM. */
  quant?: Fp8Activations;
  /**
   * Output row r reads token srcRows[r] of hs (int32 [rows]): hc_head over each sequence's last token without a copy.
   * An index outside hs's rows cannot be refused without a host sync: that row's outputs become NaN.
   */
  srcRows?: DeviceTensor<'I32'>;
  /** Output rows (default: srcRows' length, else hs's rows). */
  rows?: number;
  /**
   * allocHcMixScratch's buffer: up to its rows the mixing logits run first as their own kernel, then the per-token
   * kernel adds their partials: up to HC_SPLIT_MAX_ROWS split over (column chunks, logit groups, rows) blocks
   * (mo_hc_*_mix), above that in 32-row tiles on the f64 tensor cores (mo_hc_*_mix_tiled). More rows than the
   * scratch holds, or none given, run one block per token. Same results up to the order of exact f64 additions.
   */
  mixScratch?: DeviceTensor<'F64'>;
  /** Tests: the tiled mixing logits at any row count the scratch holds (default: from HC_SPLIT_MAX_ROWS + 1 rows). */
  mixTiled?: boolean;
  /** Output rows per block of the one-block-per-token path (tests; default hcTokensPerBlock). Same results. */
  tokensPerBlock?: 1 | 2 | 4;
  /** Rows per block of the split path's mix kernel (tests; default hcMixRowsPerBlock). Same results. */
  mixRowsPerBlock?: 1 | 2 | 4 | 8;
  stream?: StreamLike;
}

/** SMs the row kernels' block counts (hc, rope) are sized for (an H100 / H200 has 132). */
const ROW_OPS_SMS = 132;

/**
 * Output rows per block of mo_hc_pre / mo_hc_head's one-block path (1, 2 or 4; the split path is always 1): the
 * fewest that keep the blocks within one per SM (rows <= 132: 1, <= 264: 2), else 4. Each weight a block fetches
 * serves that many rows (hc_fn is read once per block from L2, 1.5 MB at flash); the results are the same bits for
 * any choice (model_ops.cu says why). `force` (tests) overrides it.
 */
export function hcTokensPerBlock(rows: number, force?: 1 | 2 | 4): number {
  if (force !== undefined) return force;
  return rows <= ROW_OPS_SMS ? 1 : rows <= 2 * ROW_OPS_SMS ? 2 : 4;
}

const NORM_WARPS_PER_BLOCK = 8; // model_ops.cu kNormWarpsPerBlock
/** Warps one rmsNorm / actQuant launch aims for at few rows: about one 8-warp block per SM of an H100 / H200 (132). */
export const NORM_TARGET_WARPS = 1024;

/**
 * mo_rms_norm's split of a row's 256-column steps over warps for `rows` rows of n columns: 1 (one warp per row, the
 * kernel's original split) once rows reach NORM_TARGET_WARPS; below that up to one step per warp, so rows x split
 * approaches NORM_TARGET_WARPS. The parts come out even (no empty part): split = ceil(steps / ceil(steps / s)).
 * Outputs are bit-identical for every split (model_ops.cu says why); only the speed depends on it.
 */
export function rmsNormSplit(rows: number, n: number): number {
  const steps = Math.ceil(n / 256);
  if (rows <= 0 || rows >= NORM_TARGET_WARPS || steps <= 1) return 1;
  const want = Math.min(steps, Math.max(1, Math.floor(NORM_TARGET_WARPS / rows)));
  const per = Math.ceil(steps / want);
  return Math.ceil(steps / per);
}
const ROPE_THREADS = 128;

/**
 * mo_rope's blocks per row: a row's pairs split over blocks until they are about 2 per thread or the blocks about two
 * per SM, so a decode step's one row (64 heads x 32 pairs at flash) is not one block walking its 16 pairs per thread
 * load after load. Each block computes the row's cos / sin itself; the bits do not depend on the split.
 */
export function ropeBlocksPerRow(rows: number, pairs: number): number {
  return Math.max(1, Math.min(Math.ceil(pairs / (2 * ROPE_THREADS)), Math.floor((2 * ROW_OPS_SMS) / Math.max(1, rows))));
}
const HC_THREADS = 256;         // model_ops.cu kHcThreads

export class GpuRowOps {
  private constructor(readonly hcMult: number, private readonly k: ModelOpsKernels) {
    // the tiled mixing logits' shared memory passes the 48 KiB default: allowed once here, not per launch
    k.mo_hc_pre_mix_tiled.setMaxDynamicSharedMemory(hcTiledSmemBytes(hcMixLogits('mo_hc_pre', hcMult)));
    k.mo_hc_head_mix_tiled.setMaxDynamicSharedMemory(hcTiledSmemBytes(hcMixLogits('mo_hc_head', hcMult)));
  }

  static async create(hcMult: number): Promise<GpuRowOps> {
    GpuRowOps.checkHc(hcMult);
    return new GpuRowOps(hcMult, await loadModelOpsKernels(hcMult));
  }

  static createSync(hcMult: number): GpuRowOps {
    GpuRowOps.checkHc(hcMult);
    return new GpuRowOps(hcMult, loadModelOpsKernelsSync(hcMult));
  }

  /**
   * Wraps kernels the caller loaded (or stand-ins that record launches: the CPU tests of the argument checks).
   */
  static fromKernels(hcMult: number, kernels: ModelOpsKernels): GpuRowOps {
    GpuRowOps.checkHc(hcMult);
    return new GpuRowOps(hcMult, kernels);
  }

  private static checkHc(hc: number): void {
    checkCount('GpuRowOps', 'hc_mult', hc, 1, 8, 'model_ops.cu supports 1..8 hyper-connection streams (V4: 4)');
  }

  private kernel(name: keyof ModelOpsKernels): Kernel { return this.k[name]; }

  /**
   * Embedding gather: out[t, c, :] = table[ids[t], :] for c < copies (copies = hc_mult for the streams, 1 for the MTP's
   * embedding). An id outside [0, V) cannot be refused without a host sync: its rows become NaN and `bad` (int32 [1],
   * optional) is incremented, so the forward fails loudly instead of reading out of bounds.
   */
  embed(ids: DeviceTensor<'I32'>, table: DeviceTensor<'BF16'>, out: DeviceTensor<'BF16'>,
    opts: { copies?: number; tokens?: number; bad?: DeviceTensor<'I32'>; stream?: StreamLike } = {}): void {
    const what = 'embed';
    checkTensor(what, 'table', table, 'BF16', [undefined, undefined], 'pass embed.weight as BF16 [vocab, D]');
    const [V, D] = table.shape;
    if (D % 8 !== 0) throw new GpuModelArgumentError(what, `D = ${D} is not a multiple of 8`, 'the gather copies 16-byte chunks; use a hidden size that is a multiple of 8');
    checkTensor(what, 'ids', ids, 'I32', [undefined], 'pass the token ids as I32 [T] (Int32Array)');
    const tokens = opts.tokens ?? ids.shape[0];
    checkCount(what, 'tokens', tokens, 0, ids.shape[0], 'pass tokens <= the length of ids');
    const copies = opts.copies ?? 1;
    checkCount(what, 'copies', copies, 1, 64, 'pass copies = hc_mult for the residual streams or 1');
    const rows = out.shape[0];
    const outOk = out.dtype === 'BF16' && out.numel >= tokens * copies * D && out.shape[out.shape.length - 1] === D && rows >= tokens;
    if (!outOk) throw new GpuModelArgumentError(what, `out is ${out.describe()}`, `pass out as BF16 [>= ${tokens}, ${copies > 1 ? `${copies}, ` : ''}${D}]`);
    if (opts.bad) checkTensor(what, 'bad', opts.bad, 'I32', [1]);
    if (tokens === 0) return;
    this.kernel('mo_embed').launch({ grid: tokens, block: 128, stream: opts.stream }, [
      ids, table, arg.i32(V), arg.i32(D), arg.i32(copies), arg.i32(tokens), out, arg.ptr(opts.bad ?? null),
    ]);
  }

  /**
   * RMSNorm of rows of width n (ops.ts rmsNorm): out = bf16(w * (x * rs)) or without weight, fp32 inside. `quant`
   * additionally writes act_quant of the output (ops.ts actQuant) in the grouped GEMM's layout. x and out are
   * [rows, n] or wider rows given by xStride / outStride (elements, multiples of 8).
   */
  rmsNorm(x: DeviceTensor<'BF16'>, out: DeviceTensor<'BF16'> | undefined,
    opts: { n?: number; weight?: DeviceTensor<'F32'>; eps: number; rows?: number; xStride?: number; outStride?: number; quant?: Fp8Activations; stream?: StreamLike }): void {
    this.rowKernel('rmsNorm', x, out, true, opts);
  }

  /** act_quant alone (ops.ts actQuant) of bf16 rows [rows, K] into FP8 activations. */
  actQuant(x: DeviceTensor<'BF16'>, quant: Fp8Activations, opts: { rows?: number; xStride?: number; stream?: StreamLike } = {}): void {
    this.rowKernel('actQuant', x, undefined, false, { ...opts, eps: 0, quant });
  }

  private rowKernel(what: string, x: DeviceTensor<'BF16'>, out: DeviceTensor<'BF16'> | undefined, doNorm: boolean,
    opts: { n?: number; weight?: DeviceTensor<'F32'>; eps: number; rows?: number; xStride?: number; outStride?: number; quant?: Fp8Activations; stream?: StreamLike }): void {
    checkTensor(what, 'x', x, 'BF16', x.shape.map(() => undefined));
    const n = opts.n ?? x.shape[x.shape.length - 1];
    const xStride = opts.xStride ?? n;
    const outStride = opts.outStride ?? n;
    const rows = opts.rows ?? Math.floor(x.numel / xStride);
    if (!(Number.isInteger(n) && n > 0 && n % 8 === 0)) throw new GpuModelArgumentError(what, `n = ${n} is not a positive multiple of 8`, 'rows are read in 16-byte chunks of 8 bf16');
    for (const [name, s] of [['xStride', xStride], ['outStride', outStride]] as const) {
      if (!(Number.isInteger(s) && s >= n && s % 8 === 0)) throw new GpuModelArgumentError(what, `${name} = ${s}`, `pass a row stride >= n (${n}) that is a multiple of 8 elements`);
    }
    if (!(Number.isInteger(rows) && rows >= 0)) throw new GpuModelArgumentError(what, `rows = ${rows}`, 'pass a non-negative row count');
    if (rows > 0 && (rows - 1) * xStride + n > x.numel) throw new GpuModelArgumentError(what, `x (${x.describe()}) holds fewer than ${rows} rows of stride ${xStride}`, 'pass rows / xStride that fit x');
    if (doNorm && !(Number.isFinite(opts.eps) && opts.eps >= 0)) throw new GpuModelArgumentError(what, `eps = ${opts.eps}`, 'pass the config\'s norm_eps (rms_norm_eps)');
    if (opts.weight) checkTensor(what, 'weight', opts.weight, 'F32', [n], `pass the norm weight as F32 [${n}] (widened from the checkpoint's bf16)`);
    if (out) {
      checkTensor(what, 'out', out, 'BF16', out.shape.map(() => undefined));
      if (rows > 0 && (rows - 1) * outStride + n > out.numel) throw new GpuModelArgumentError(what, `out (${out.describe()}) holds fewer than ${rows} rows of stride ${outStride}`, 'pass an output as large as the input rows');
    } else if (!opts.quant) {
      throw new GpuModelArgumentError(what, 'neither out nor quant is given', 'pass an output tensor, FP8 activations, or both');
    }
    const mCap = opts.quant ? this.checkQuant(what, opts.quant, rows, n) : 0;
    if (rows === 0) return;
    // Few rows: a row's column steps over several warps (rmsNormSplit; the same bits for any split).
    const split = rmsNormSplit(rows, n);
    this.kernel('mo_rms_norm').launch({ grid: Math.ceil((rows * split) / NORM_WARPS_PER_BLOCK), block: NORM_WARPS_PER_BLOCK * 32, stream: opts.stream }, [
      x, arg.i64(xStride), arg.ptr(opts.weight ?? null), arg.u64(f64Bits(opts.eps)), arg.i32(rows), arg.i32(n), arg.i32(doNorm ? 1 : 0),
      arg.ptr(out ?? null), arg.i64(outStride), arg.ptr(opts.quant?.q ?? null), arg.ptr(opts.quant?.sf ?? null), arg.i32(mCap),
      arg.i32(opts.quant?.pow2 ? 1 : 0), arg.i32(split),
    ]);
  }

  private checkQuant(what: string, quant: Fp8Activations, rows: number, n: number): number {
    if (n % 128 !== 0) throw new GpuModelArgumentError(what, `n = ${n} is not a multiple of 128`, 'act_quant scales 128-column blocks; an FP8 linear needs in_features % 128 == 0');
    checkTensor(what, 'quant.q', quant.q, 'F8_E4M3', [undefined, n], `allocate it with allocFp8Activations(mCap, ${n})`);
    const mCap = quant.q.shape[0];
    checkTensor(what, 'quant.sf', quant.sf, 'F32', [n / 128, mCap], `allocate it with allocFp8Activations(${mCap}, ${n})`);
    if (rows > mCap) throw new GpuModelArgumentError(what, `${rows} rows exceed the FP8 activations' capacity of ${mCap}`, 'allocate activations for the largest batch');
    return mCap;
  }

  /**
   * The per-head RMS renorm of the queries in bf16 arithmetic (model.ts qHeadRenorm), in place on the first `heads`
   * heads of d contiguous values of q (rows x attention heads).
   */
  qRenorm(q: DeviceTensor<'BF16'>, opts: { heads: number; d: number; eps: number; stream?: StreamLike }): void {
    const what = 'qRenorm';
    checkTensor(what, 'q', q, 'BF16', q.shape.map(() => undefined));
    const { heads, d } = opts;
    if (!(Number.isInteger(d) && d > 0 && d % 8 === 0)) throw new GpuModelArgumentError(what, `d = ${d} is not a positive multiple of 8`, 'heads are read in 16-byte chunks of 8 bf16');
    checkCount(what, 'heads', heads, 0, Math.floor(q.numel / d), `pass at most ${Math.floor(q.numel / d)} heads of ${d} (what q holds)`);
    if (!(Number.isFinite(opts.eps) && opts.eps >= 0)) throw new GpuModelArgumentError(what, `eps = ${opts.eps}`, 'pass the config\'s norm_eps (rms_norm_eps)');
    if (heads === 0) return;
    this.kernel('mo_q_renorm').launch({ grid: Math.ceil(heads / NORM_WARPS_PER_BLOCK), block: NORM_WARPS_PER_BLOCK * 32, stream: opts.stream }, [
      q, arg.i32(heads), arg.i32(d), arg.u64(f64Bits(opts.eps)),
    ]);
  }

  /**
   * RoPE (rope.ts RopeTable.apply) in place on bf16 x: row r (position positions[r]), head h's rope pairs start at
   * r * rowStride + h * headStride + ropeOffset. freqs: f32 [rd/2] from ropeFrequencies (the layer's theta / YaRN).
   * inverse: multiply by the conjugate (the attention output).
   */
  rope(x: DeviceTensor<'BF16'>, positions: DeviceTensor<'I32'>, freqs: DeviceTensor<'F32'>,
    opts: { heads: number; headStride: number; ropeOffset: number; rd: number; rows?: number; rowStride?: number; inverse?: boolean; stream?: StreamLike }): void {
    const what = 'rope';
    checkTensor(what, 'x', x, 'BF16', x.shape.map(() => undefined));
    const { heads, headStride, ropeOffset, rd } = opts;
    if (!(Number.isInteger(rd) && rd > 0 && rd % 2 === 0)) throw new GpuModelArgumentError(what, `rd = ${rd}`, 'pass the rope head dim (an even number)');
    checkTensor(what, 'freqs', freqs, 'F32', [rd / 2], `pass ropeFrequencies(${rd}, theta, yarn) as F32 [${rd / 2}]`);
    checkTensor(what, 'positions', positions, 'I32', [undefined], 'pass the absolute positions as I32 [rows]');
    checkCount(what, 'heads', heads, 1, 1 << 16, 'pass the heads per row');
    const rowStride = opts.rowStride ?? heads * headStride;
    const rows = opts.rows ?? positions.shape[0];
    checkCount(what, 'rows', rows, 0, positions.shape[0], 'pass rows <= the number of positions');
    for (const [name, v] of [['headStride', headStride], ['ropeOffset', ropeOffset], ['rowStride', rowStride]] as const) {
      if (!(Number.isInteger(v) && v >= 0 && v % 2 === 0)) throw new GpuModelArgumentError(what, `${name} = ${v}`, 'pass even element offsets (the kernel rotates aligned bf16 pairs)');
    }
    if (ropeOffset + rd > headStride && heads > 1) throw new GpuModelArgumentError(what, `ropeOffset ${ropeOffset} + rd ${rd} runs past the head stride ${headStride}`, 'pass the offset of the rope dims inside one head (head_dim - rope_head_dim)');
    if (rows > 0 && (rows - 1) * rowStride + (heads - 1) * headStride + ropeOffset + rd > x.numel) {
      throw new GpuModelArgumentError(what, `x (${x.describe()}) is smaller than ${rows} rows x ${heads} heads`, 'pass rows / strides that fit x');
    }
    if (rows === 0) return;
    this.kernel('mo_rope').launch({ grid: [rows, ropeBlocksPerRow(rows, heads * (rd / 2))], block: ROPE_THREADS, sharedMemBytes: rd * 4, stream: opts.stream }, [
      x, positions, freqs, arg.i32(rows), arg.i32(heads), arg.i64(rowStride), arg.i32(headStride), arg.i32(ropeOffset), arg.i32(rd / 2),
      arg.i32(opts.inverse ? 1 : 0),
    ]);
  }

  /**
   * hc_pre (model.ts hcPre): hs bf16 [rows, hc, D] -> post f32 [rows, hc], comb f32 [rows, hc, hc], y bf16 [rows, D]
   * (rms-normed with normWeight when given, and FP8-quantized into `quant` when given).
   */
  hcPre(hs: DeviceTensor<'BF16'>, p: DeviceHcParams, out: { post: DeviceTensor<'F32'>; comb: DeviceTensor<'F32'>; y: DeviceTensor<'BF16'> }, opts: HcOptions): void {
    const hc = this.hcMult;
    const rows = this.checkHc('hcPre', hs, p, (2 + hc) * hc, 3, out.y, opts);
    checkTensor('hcPre', 'post', out.post, 'F32', [undefined, hc]);
    checkTensor('hcPre', 'comb', out.comb, 'F32', [undefined, hc, hc]);
    if (out.post.shape[0] < rows || out.comb.shape[0] < rows) throw new GpuModelArgumentError('hcPre', `post / comb hold fewer than ${rows} rows`, 'allocate them for the batch');
    if (!(Number.isInteger(opts.sinkhornIters) && (opts.sinkhornIters as number) >= 1)) throw new GpuModelArgumentError('hcPre', `sinkhornIters = ${opts.sinkhornIters}`, 'pass the config\'s hc_sinkhorn_iters (>= 1)');
    this.launchHc('mo_hc_pre', hs, p, out.post, out.comb, out.y, rows, opts);
  }

  /** hc_head (model.ts hcHead): hs bf16 [rows, hc, D] -> y bf16 [rows, D], normed by the final norm when given. */
  hcHead(hs: DeviceTensor<'BF16'>, p: DeviceHcParams, y: DeviceTensor<'BF16'>, opts: HcOptions): void {
    const rows = this.checkHc('hcHead', hs, p, this.hcMult, 1, y, opts);
    this.launchHc('mo_hc_head', hs, p, undefined, undefined, y, rows, { ...opts, sinkhornIters: 0 });
  }

  private checkHc(what: string, hs: DeviceTensor<'BF16'>, p: DeviceHcParams, mix: number, scales: number, y: DeviceTensor<'BF16'>, opts: HcOptions): number {
    const hc = this.hcMult;
    checkTensor(what, 'hs', hs, 'BF16', [undefined, hc, undefined], `pass the residual streams as BF16 [T, ${hc}, D]`);
    const D = hs.shape[2];
    if (D % 8 !== 0 || D > 16384) throw new GpuModelArgumentError(what, `D = ${D}`, 'the hc kernels need D % 8 == 0 and D <= 16384 (the fused norm keeps a row in shared memory)');
    checkTensor(what, 'fn', p.fn, 'F32', [mix, hc * D], `pass hc_*_fn as F32 [${mix}, ${hc * D}]`);
    checkTensor(what, 'base', p.base, 'F32', [mix]);
    checkTensor(what, 'scale', p.scale, 'F32', [scales]);
    checkTensor(what, 'y', y, 'BF16', [undefined, D]);
    if (opts.srcRows) checkTensor(what, 'srcRows', opts.srcRows, 'I32', [undefined], 'pass the source token rows as I32 [rows]');
    const rows = opts.rows ?? (opts.srcRows ? opts.srcRows.shape[0] : hs.shape[0]);
    const maxRows = Math.min(opts.srcRows ? opts.srcRows.shape[0] : hs.shape[0], y.shape[0]);
    checkCount(what, 'rows', rows, 0, maxRows, opts.srcRows ? 'pass rows <= the length of srcRows and the rows of y' : 'pass rows <= the rows of hs and y');
    for (const [name, v] of [['normEps', opts.normEps], ['hcEps', opts.hcEps]] as const) {
      if (!(Number.isFinite(v) && v >= 0)) throw new GpuModelArgumentError(what, `${name} = ${v}`, 'pass the config\'s norm_eps and hc_eps');
    }
    if (opts.normWeight) checkTensor(what, 'normWeight', opts.normWeight, 'F32', [D], `pass the norm weight as F32 [${D}]`);
    if (opts.quant) this.checkQuant(what, opts.quant, rows, D);
    if (opts.tokensPerBlock !== undefined && ![1, 2, 4].includes(opts.tokensPerBlock)) {
      throw new GpuModelArgumentError(what, `tokensPerBlock = ${opts.tokensPerBlock}`, 'pass 1, 2 or 4 (or leave it out: hcTokensPerBlock picks it)');
    }
    if (opts.mixRowsPerBlock !== undefined && ![1, 2, 4, 8].includes(opts.mixRowsPerBlock)) {
      throw new GpuModelArgumentError(what, `mixRowsPerBlock = ${opts.mixRowsPerBlock}`, 'pass 1, 2, 4 or 8 (or leave it out: hcMixRowsPerBlock picks it)');
    }
    if (opts.mixScratch) {
      checkTensor(what, 'mixScratch', opts.mixScratch, 'F64', [undefined, hcMixChunks(hc, D), (2 + hc) * hc + 1], `allocate it with allocHcMixScratch(${hc}, ${D}, maxRows)`);
    }
    return rows;
  }

  private launchHc(entry: 'mo_hc_pre' | 'mo_hc_head', hs: DeviceTensor<'BF16'>, p: DeviceHcParams, post: DeviceTensor<'F32'> | undefined,
    comb: DeviceTensor<'F32'> | undefined, y: DeviceTensor<'BF16'>, rows: number, opts: HcOptions): void {
    if (rows === 0) return;
    const D = hs.shape[2];
    const hc = this.hcMult;
    const mix = hcMixLogits(entry, hc);
    // The mixing logits as their own kernel first, given a scratch with room: small T over (chunks, logit groups, rows)
    // blocks (one block per token leaves the GPU idle), many rows in 32-row tiles (one block per 4 tokens re-read hc_fn).
    const fits = opts.mixScratch !== undefined && rows <= opts.mixScratch.shape[0];
    const tiled = fits && (opts.mixTiled ?? (rows > HC_SPLIT_MAX_ROWS && HC_TILED_DEFAULT));
    const split = tiled || (fits && rows <= HC_SPLIT_MAX_ROWS);
    let chunks = 0;
    if (tiled) {
      const t = hcTiledChunks(hc, D, rows);
      chunks = t.chunks;
      this.kernel(`${entry}_mix_tiled`).launch({ grid: [chunks, Math.ceil(rows / HC_TILE_ROWS)], block: HC_TILE_THREADS, sharedMemBytes: hcTiledSmemBytes(mix), stream: opts.stream }, [
        hs, p.fn, arg.i32(D), arg.ptr(opts.srcRows ?? null), arg.i32(hs.shape[0]), opts.mixScratch as DeviceTensor<'F64'>,
        arg.i32(rows), arg.i32(t.cols),
      ]);
    } else if (split) {
      chunks = hcMixChunks(hc, D);
      const rpb = hcMixRowsPerBlock(rows, opts.mixRowsPerBlock);
      this.kernel(`${entry}_mix`).launch({ grid: [chunks, Math.ceil(mix / HC_MIX_LOGITS), Math.ceil(rows / rpb)], block: HC_MIX_THREADS, stream: opts.stream }, [
        hs, p.fn, arg.i32(D), arg.ptr(opts.srcRows ?? null), arg.i32(hs.shape[0]), opts.mixScratch as DeviceTensor<'F64'>,
        arg.i32(rows), arg.i32(rpb),
      ]);
    }
    const k = this.kernel(split ? `${entry}_fin` : entry);
    const smem = opts.normWeight ? D * 4 : 0;
    if (smem > 48 * 1024) k.setMaxDynamicSharedMemory(smem);
    const tpb = split ? 1 : hcTokensPerBlock(rows, opts.tokensPerBlock);
    k.launch({ grid: Math.ceil(rows / tpb), block: HC_THREADS, sharedMemBytes: smem, stream: opts.stream }, [
      hs, p.fn, p.base, p.scale, arg.i32(rows), arg.i32(D), arg.u64(f64Bits(opts.normEps)), arg.u64(f64Bits(opts.hcEps)),
      arg.i32(opts.sinkhornIters ?? 0), arg.ptr(post ?? null), arg.ptr(comb ?? null), y, arg.ptr(opts.normWeight ?? null),
      arg.ptr(opts.quant?.q ?? null), arg.ptr(opts.quant?.sf ?? null), arg.i32(opts.quant ? opts.quant.q.shape[0] : 0),
      arg.i32(opts.quant?.pow2 ? 1 : 0), arg.ptr(opts.srcRows ?? null), arg.i32(hs.shape[0]),
      arg.ptr(split ? (opts.mixScratch as DeviceTensor<'F64'>) : null), arg.i32(chunks), arg.i32(tpb),
    ]);
  }

  /**
   * The MTP block's input (model.ts mtpNow): out[t, k] = bf16(e[t] + h[t, k]), e = e_proj output bf16 [>= rows, D],
   * h = h_proj output over the hc streams bf16 [>= rows * hc, D] (a dense GEMM's [mCap, D] outputs fit both).
   */
  mtpCombine(e: DeviceTensor<'BF16'>, h: DeviceTensor<'BF16'>, out: DeviceTensor<'BF16'>, rows: number, stream?: StreamLike): void {
    const what = 'mtpCombine';
    const hc = this.hcMult;
    checkTensor(what, 'out', out, 'BF16', [undefined, hc, undefined], `pass the MTP streams as BF16 [T, ${hc}, D]`);
    const D = out.shape[2];
    if (D % 8 !== 0) throw new GpuModelArgumentError(what, `D = ${D} is not a multiple of 8`, 'use a hidden size that is a multiple of 8');
    checkTensor(what, 'e', e, 'BF16', [undefined, D], `pass e_proj's output as BF16 [rows, ${D}]`);
    checkTensor(what, 'h', h, 'BF16', [undefined, D], `pass h_proj's output as BF16 [rows * ${hc}, ${D}]`);
    checkCount(what, 'rows', rows, 0, Math.min(e.shape[0], Math.floor(h.shape[0] / hc), out.shape[0]), 'pass rows <= the rows of e, h / hc and out');
    if (rows === 0) return;
    this.kernel('mo_mtp_combine').launch({ grid: Math.ceil((rows * hc * (D / 8)) / 256), block: 256, stream }, [
      e, arg.i64(D), h, arg.i32(rows), arg.i32(D), out,
    ]);
  }

  /**
   * hc_post (model.ts hcPost): out[r, k] = bf16(post[r, k] f[r] + sum_j comb[r, j, k] R[r, j]). out may be R (in place).
   */
  hcPost(f: DeviceTensor<'BF16'>, R: DeviceTensor<'BF16'>, post: DeviceTensor<'F32'>, comb: DeviceTensor<'F32'>, out: DeviceTensor<'BF16'>,
    opts: { rows?: number; stream?: StreamLike } = {}): void {
    const what = 'hcPost';
    const hc = this.hcMult;
    checkTensor(what, 'R', R, 'BF16', [undefined, hc, undefined], `pass the streams that entered hc_pre as BF16 [T, ${hc}, D]`);
    const D = R.shape[2];
    if (D % 8 !== 0) throw new GpuModelArgumentError(what, `D = ${D} is not a multiple of 8`, 'use a hidden size that is a multiple of 8');
    checkTensor(what, 'f', f, 'BF16', [undefined, D], `pass the sub-layer output as BF16 [T, ${D}]`);
    checkTensor(what, 'post', post, 'F32', [undefined, hc]);
    checkTensor(what, 'comb', comb, 'F32', [undefined, hc, hc]);
    checkTensor(what, 'out', out, 'BF16', [undefined, hc, D]);
    const rows = opts.rows ?? R.shape[0];
    checkCount(what, 'rows', rows, 0, Math.min(f.shape[0], R.shape[0], post.shape[0], comb.shape[0], out.shape[0]), 'pass rows <= the rows of every tensor');
    if (rows === 0) return;
    const threads = rows * (D / 8);
    this.kernel('mo_hc_post').launch({ grid: Math.ceil(threads / 256), block: 256, stream: opts.stream }, [
      f, R, post, comb, arg.i32(rows), arg.i32(D), out,
    ]);
  }
}
