// Dense block-FP8 projections (V4-MODEL 8.1 / 8.4: wq_a, wq_b, wkv, wo_b, the indexer's wq_b, the MTP's e_proj /
// h_proj) on the GPU, as the grouped GEMM (src/kernels/grouped-gemm.ts) with ONE group: every row tile belongs to
// group 0, and the number of live row tiles sits in device memory, so one bound GEMM serves any batch up to its
// capacity (and a CUDA graph per batch size replays the same launch). No new GEMM kernel.
//
//   const lin = await DenseFp8Linear.create({ n: 1024, k: 4096, path: 'decode' }, 64);   // capacity 64 rows
//   const act = allocFp8Activations(lin.mCap, 4096, cfg.pow2ActScales);                  // the producer writes it
//   const w = uploadFp8Weight(codes, scales, 1024, 4096);                                // e4m3 [N, K], f32 [N/128, K/128]
//   const out = DeviceTensor.empty('BF16', [lin.mCap, 1024]);
//   const bound = lin.bind(act, w, out);
//   bound.run(rows, stream);                       // out[0, rows) = bf16(act . W^T), SPEC 3's block-scaled sums
//
// Numerics: the grouped GEMM's (SPEC 3): each 128-wide K block accumulated by the tensor cores, scaled by sfa * sfb,
// summed in f32, rounded to bf16. Against the CPU's fp8Linear (exact block sums) that is SPEC 5's tolerance
// (calc_diff <= 3e-5), not bit-exactness. The activation scales are whatever the producer wrote (act_quant with
// ue8m0 scales for V4, ModelConfig.pow2ActScales).
import { DeviceTensor, type StreamLike } from '../cuda/index.js';
import { GROUPED_GEMM_ROW_TILE, GroupedGemm, splitKWorkspace, type BoundGroupedGemm, type GemmPath, type GroupedGemmSpec } from '../kernels/grouped-gemm.js';
import { denseGemmSpec } from '../kernels/model-ops.js';
import type { Fp8Linear } from '../model/ops.js';
import { encodeE4M3Array } from '../numerics/e4m3.js';
import { checkCount, checkTensor, GpuModelArgumentError } from './errors.js';
import type { Fp8Activations } from './row-ops.js';

export interface DenseFp8Spec {
  /** out_features (a multiple of 128) */
  n: number;
  /** in_features (a multiple of 128) */
  k: number;
  /**
   * 'decode': weights on wgmma's M side, 16-row tiles (few rows); 'normal': 128-row tiles (prefill). Default: decode
   * up to DENSE_DECODE_MAX_ROWS of capacity, else both, each call taking decode up to that many rows and normal above.
   */
  path?: GemmPath;
}

/** A linear's weight on the device: e4m3 codes [N, K] row-major and f32 block scales [N/128, K/128]. */
export interface DeviceFp8Weight {
  w: DeviceTensor<'F8_E4M3'>;
  s: DeviceTensor<'F32'>;
}

/** Uploads an FP8 linear (checkpoint codes and its block scales widened to f32, e.g. from e8m0). */
export function uploadFp8Weight(codes: Uint8Array, scales: Float32Array, n: number, k: number, stream?: StreamLike): DeviceFp8Weight {
  const what = 'uploadFp8Weight';
  if (!(n > 0 && k > 0 && n % 128 === 0 && k % 128 === 0)) throw new GpuModelArgumentError(what, `[${n}, ${k}] is not a multiple of 128 x 128`, 'the grouped GEMM covers whole 128 x 128 scale blocks');
  if (codes.length !== n * k) throw new GpuModelArgumentError(what, `${codes.length} codes do not fill [${n}, ${k}]`, 'pass the weight\'s e4m3 bytes, row-major');
  if (scales.length !== (n / 128) * (k / 128)) throw new GpuModelArgumentError(what, `${scales.length} scales do not fill [${n / 128}, ${k / 128}]`, 'pass the block scales as f32, K blocks innermost');
  const w = DeviceTensor.empty('F8_E4M3', [n, k], { stream });
  try {
    w.buffer.copyFromHost(codes, { stream });
    const s = DeviceTensor.empty('F32', [n / 128, k / 128], { stream });
    s.buffer.copyFromHost(scales, { stream });
    return { w, s };
  } catch (err) {
    w.dispose();
    throw err;
  }
}

/**
 * Uploads a CPU model's FP8 linear (ops.ts Fp8Linear: the loader decoded the e4m3 codes to values and widened the
 * block scales to f32): the values re-encode to the same codes exactly, so the GPU multiplies the checkpoint's bytes.
 */
export function uploadFp8Linear(lin: Fp8Linear, stream?: StreamLike): DeviceFp8Weight {
  return uploadFp8Weight(encodeE4M3Array(lin.w), lin.s, lin.out, lin.in, stream);
}

/**
 * Rows at or below which the 'decode' path is the default (the MoE's measured crossover is ~14 rows per expert): 16,
 * or a multiple of 16 from the A/B knob MEGAMOE_DENSE_DECODE_ROWS (the dense crossover is not measured yet).
 */
export const DENSE_DECODE_MAX_ROWS = decodeMaxRows(process.env.MEGAMOE_DENSE_DECODE_ROWS);

function decodeMaxRows(v: string | undefined): number {
  if (v === undefined || v === '') return 16;
  const n = Number(v);
  if (!(Number.isInteger(n) && n >= 16 && n % 16 === 0 && n <= 4096)) {
    throw new GpuModelArgumentError('MEGAMOE_DENSE_DECODE_ROWS', `"${v}"`, 'set a multiple of 16 up to 4096, or unset it');
  }
  return n;
}

/** denseGemmSpec, with the A/B knob MEGAMOE_DENSE_DECODE=nosplit (the decode path without its K split). */
function gemmSpec(path: GemmPath, n: number, k: number): GroupedGemmSpec {
  const s = denseGemmSpec(path, n, k);
  return process.env.MEGAMOE_DENSE_DECODE === 'nosplit' ? { ...s, splitK: 1 } : s;
}

export class DenseFp8Linear implements Disposable {
  readonly n: number;
  readonly k: number;
  /** The path of calls above DENSE_DECODE_MAX_ROWS rows (all calls unless `decodeToo`). */
  readonly path: GemmPath;
  /** Whether calls of up to DENSE_DECODE_MAX_ROWS rows take the decode path (a normal-path linear by default). */
  readonly decodeToo: boolean;
  readonly rowTile: number;
  /** Row capacity: the requested one rounded up to the row tile (size the activations and the output with it). */
  readonly mCap: number;
  private readonly tileGroup: DeviceTensor<'I32'>;
  private readonly numMTiles: DeviceTensor<'I32'>;
  private readonly decodeTiles: DeviceTensor<'I32'> | undefined;
  /**
   * The decode GEMM's split-K workspace (denseDecodeSplitK; absent when it does not split), shared by every binding:
   * launch one linear's bindings on one stream (the model does), or two could interleave their partial sums.
   */
  private readonly splitK: { partial: DeviceTensor<'F32'>; arrivals: DeviceTensor<'I32'> } | undefined;

  private constructor(private readonly gemm: GroupedGemm, private readonly decodeGemm: GroupedGemm | undefined,
    spec: Required<DenseFp8Spec>, capacity: number) {
    this.n = spec.n; this.k = spec.k; this.path = spec.path; this.decodeToo = decodeGemm !== undefined;
    this.rowTile = GROUPED_GEMM_ROW_TILE[spec.path];
    this.mCap = Math.ceil(capacity / this.rowTile) * this.rowTile;
    // Every row tile is group 0 (the decode path's 16-row tiles too).
    this.tileGroup = DeviceTensor.zeros('I32', [this.mCap / GROUPED_GEMM_ROW_TILE.decode]);
    this.numMTiles = DeviceTensor.zeros('I32', [1]);
    this.decodeTiles = decodeGemm ? DeviceTensor.zeros('I32', [1]) : undefined;
    const dg = spec.path === 'decode' ? gemm : decodeGemm;
    // Decode calls of a two-path linear have at most DENSE_DECODE_MAX_ROWS rows.
    const decodeRowTiles = dg === decodeGemm ? Math.ceil(Math.min(DENSE_DECODE_MAX_ROWS, this.mCap) / GROUPED_GEMM_ROW_TILE.decode) : this.mCap / GROUPED_GEMM_ROW_TILE.decode;
    const ws = dg ? splitKWorkspace(dg.config, decodeRowTiles) : undefined;
    this.splitK = ws && ws.arrivals > 0
      ? { partial: DeviceTensor.empty('F32', [ws.partialFloats]), arrivals: DeviceTensor.zeros('I32', [ws.arrivals]) }
      : undefined;
  }

  private static spec(spec: DenseFp8Spec, capacity: number): Required<DenseFp8Spec> & { decodeToo: boolean } {
    checkCount('DenseFp8Linear', 'capacity', capacity, 1, 1 << 20, 'pass the largest number of rows one call multiplies');
    const path = spec.path ?? (capacity <= DENSE_DECODE_MAX_ROWS ? 'decode' : 'normal');
    if (path !== 'decode' && path !== 'normal') throw new GpuModelArgumentError('DenseFp8Linear', `path "${String(path)}"`, "use 'decode' or 'normal'");
    // Unpinned and sized for prefills: decode steps still take the decode path (measured: docs/GPU-MODEL.md), unless
    // the A/B knob MEGAMOE_DENSE_DECODE=off pins such linears to the normal path.
    const decodeToo = spec.path === undefined && path === 'normal' && process.env.MEGAMOE_DENSE_DECODE !== 'off';
    return { n: spec.n, k: spec.k, path, decodeToo };
  }

  /** Compiles (cached) the grouped GEMM(s) for this shape (groupedGemmConfig's checks name any bad dimension). */
  static async create(spec: DenseFp8Spec, capacity: number): Promise<DenseFp8Linear> {
    const s = DenseFp8Linear.spec(spec, capacity);
    const [main, decode] = await Promise.all([
      GroupedGemm.create(gemmSpec(s.path, s.n, s.k)),
      s.decodeToo ? GroupedGemm.create(gemmSpec('decode', s.n, s.k)) : undefined,
    ]);
    return new DenseFp8Linear(main, decode, s, capacity);
  }

  static createSync(spec: DenseFp8Spec, capacity: number): DenseFp8Linear {
    const s = DenseFp8Linear.spec(spec, capacity);
    const decode = s.decodeToo ? GroupedGemm.createSync(gemmSpec('decode', s.n, s.k)) : undefined;
    return new DenseFp8Linear(GroupedGemm.createSync(gemmSpec(s.path, s.n, s.k)), decode, s, capacity);
  }

  /** Binds activations (mCap rows), a weight and a bf16 output [mCap, N]: the tensor maps are encoded once here. */
  bind(act: Fp8Activations, weight: DeviceFp8Weight, out: DeviceTensor<'BF16'>): BoundDenseFp8 {
    checkDenseBinding(this.n, this.k, this.mCap, act, weight, out);
    const bindOn = (g: GroupedGemm, numMTiles: DeviceTensor<'I32'>) => g.bind({
      a: act.q, sfa: act.sf, weights: weight.w, sfb: weight.s, groups: 1, tileGroup: this.tileGroup, numMTiles, out, mCap: this.mCap,
      partial: this.splitK?.partial, arrivals: this.splitK?.arrivals,
    });
    const main = { gemm: bindOn(this.gemm, this.numMTiles), numMTiles: this.numMTiles, rowTile: this.rowTile };
    const decode = this.decodeGemm && this.decodeTiles
      ? { gemm: bindOn(this.decodeGemm, this.decodeTiles), numMTiles: this.decodeTiles, rowTile: GROUPED_GEMM_ROW_TILE.decode }
      : undefined;
    return new BoundDenseFp8(main, decode, this.mCap);
  }

  dispose(): void {
    this.tileGroup.dispose();
    this.numMTiles.dispose();
    this.decodeTiles?.dispose();
    this.splitK?.partial.dispose();
    this.splitK?.arrivals.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** The binding checks, separate so the CPU tests reach them without a GPU. */
export function checkDenseBinding(n: number, k: number, mCap: number, act: Fp8Activations, weight: DeviceFp8Weight, out: DeviceTensor<'BF16'>): void {
  const what = `dense FP8 linear [${n}, ${k}]`;
  checkTensor(what, 'act.q', act.q, 'F8_E4M3', [mCap, k], `allocate the activations with allocFp8Activations(linear.mCap = ${mCap}, ${k})`);
  checkTensor(what, 'act.sf', act.sf, 'F32', [k / 128, mCap], `allocate the activations with allocFp8Activations(${mCap}, ${k})`);
  checkTensor(what, 'weight.w', weight.w, 'F8_E4M3', [n, k], `upload the weight with uploadFp8Weight(codes, scales, ${n}, ${k})`);
  checkTensor(what, 'weight.s', weight.s, 'F32', [n / 128, k / 128], 'pass the f32 block scales [N/128, K/128]');
  checkTensor(what, 'out', out, 'BF16', [mCap, n], `allocate the output as BF16 [${mCap}, ${n}]`);
}

interface BoundPath { gemm: BoundGroupedGemm; numMTiles: DeviceTensor<'I32'>; rowTile: number }

/**
 * One bound dense GEMM: run(rows) sets the live row tiles (a device memset, capturable) and launches, on the decode
 * path when it has one and rows <= DENSE_DECODE_MAX_ROWS.
 */
export class BoundDenseFp8 {
  /** @internal use DenseFp8Linear.bind */
  constructor(private readonly main: BoundPath, private readonly decode: BoundPath | undefined, readonly mCap: number) {}

  get rowTile(): number { return this.main.rowTile; }

  run(rows: number, stream?: StreamLike): void {
    checkCount('dense FP8 linear', 'rows', rows, 0, this.mCap, `pass rows <= the capacity ${this.mCap} (create the linear for the largest batch)`);
    if (rows === 0) return;
    const p = this.decode && rows <= DENSE_DECODE_MAX_ROWS ? this.decode : this.main;
    p.numMTiles.buffer.memset32(Math.ceil(rows / p.rowTile), { stream });
    p.gemm.launch(stream);
  }
}
