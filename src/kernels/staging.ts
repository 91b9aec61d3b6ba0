// Launcher of the activation-staging kernel (staging.cu): bf16 hidden states + router output -> e4m3 codes, f32
// per-128-column scales, and the ids / weights, all in buffers preallocated for `capacity` tokens (so a captured
// CUDA graph can replay the same addresses for any T <= capacity). Bit-exact against quantizeRowsF32Scale.
//
//   using stager = await Stager.create({ hiddenSize: 4096, topk: 6 }, 8192);
//   stager.stage(x, topkIds, topkWeights, { stream });     // x BF16 [T, H], ids I64 [T, K], weights F32 [T, K]
//   stager.out.xFp8 / xSf / topkIds / topkWeights           // [capacity, ...]; the first T rows are valid
import { arg, DeviceTensor, loadKernel, loadKernelSync, registerKernel, type Kernel, type StreamLike } from '../cuda/index.js';
import { checkTokenCapacity, GuardError } from '../moe/guards.js';
import { QUANT_BLOCK } from '../numerics/quant.js';
import type { DType } from '../tensor/host.js';
import { MOE_PRESET_SHAPES } from './presets.js';

export const STAGING_SOURCE = 'staging.cu';
export const STAGING_ENTRY = 'megamoe_stage_tokens';
/** One warp per token row, this many warps per block (staging.cu kWarpsPerBlock). */
export const STAGING_WARPS_PER_BLOCK = 8;

export interface StagingShape {
  /** H: a positive multiple of 128. */
  hiddenSize: number;
  /** K: slots per token, 1..32. */
  topk: number;
}

/** The shapes CI compiles (`megamoe kernels --check`) and the tests/benchmarks use. */
export const STAGING_VARIANTS: ReadonlyArray<{ label: string; shape: StagingShape }> = Object.freeze(
  MOE_PRESET_SHAPES.map((p) => ({ label: p.label, shape: { hiddenSize: p.hidden, topk: p.topK } })));

export function checkStagingShape(shape: StagingShape): void {
  const { hiddenSize: H, topk: K } = shape;
  if (!(Number.isInteger(H) && H > 0 && H % QUANT_BLOCK === 0)) {
    throw new GuardError('DIM_NOT_ALIGNED', `staging: hidden_size ${H} is not a positive multiple of ${QUANT_BLOCK}`,
      'FP8 staging quantizes 128-column blocks; use a hidden size that is a multiple of 128');
  }
  if (!(Number.isInteger(K) && K >= 1 && K <= 32)) {
    throw new GuardError('BAD_INPUT', `staging: num_experts_per_tok ${K} is outside [1, 32]`,
      'the staging kernel copies one top-k slot per lane of a warp; use 1 <= K <= 32');
  }
}

/** The -D defines that specialise staging.cu on a shape. */
export function stagingDefines(shape: StagingShape): Record<string, number> {
  return { STAGING_HIDDEN: shape.hiddenSize, STAGING_TOPK: shape.topk };
}

/** Grid and block of one launch for T tokens (T >= 1). */
export function stagingLaunchDims(tokens: number): { grid: number; block: number } {
  return { grid: Math.ceil(tokens / STAGING_WARPS_PER_BLOCK), block: STAGING_WARPS_PER_BLOCK * 32 };
}

/** DRAM bytes one staging of T tokens must move (read + written): the figure its GB/s is computed from. */
export function stagingTrafficBytes(tokens: number, shape: StagingShape): { read: number; written: number; total: number } {
  const H = shape.hiddenSize;
  const K = shape.topk;
  const read = tokens * (H * 2 + K * 8 + K * 4);
  const written = tokens * (H + (H / QUANT_BLOCK) * 4 + K * 8 + K * 4);
  return { read, written, total: read + written };
}

registerKernel({
  name: 'staging',
  source: STAGING_SOURCE,
  entry: STAGING_ENTRY,
  variants: STAGING_VARIANTS.map((v) => ({ label: v.label, defines: stagingDefines(v.shape) })),
});

/** The staging outputs, each sized for `capacity` tokens; after stage(), rows [0, tokens) are valid. */
export interface StagedTokens {
  /** e4m3 codes [capacity, H] */
  xFp8: DeviceTensor<'F8_E4M3'>;
  /** f32 scales [capacity, H / 128] */
  xSf: DeviceTensor<'F32'>;
  /** I64 [capacity, K], -1 = masked slot */
  topkIds: DeviceTensor<'I64'>;
  /** F32 [capacity, K] */
  topkWeights: DeviceTensor<'F32'>;
}

export interface StageOptions {
  /** Tokens to stage (default: x's row count). Lets a capacity-sized input hold a smaller batch. */
  tokens?: number;
  stream?: StreamLike;
}

function checkInput(what: string, t: DeviceTensor, dtype: DType, cols: number, tokens: number, fix: string): void {
  if (t.dtype !== dtype || t.shape.length !== 2 || t.shape[1] !== cols) {
    throw new GuardError('BAD_INPUT', `staging: ${what} is ${t.describe()}, expected ${dtype}[T, ${cols}]`, fix);
  }
  if (t.shape[0] < tokens) {
    throw new GuardError('BAD_INPUT', `staging: ${what} has ${t.shape[0]} rows but ${tokens} tokens were asked for`,
      'pass tokens <= the rows of every input');
  }
  if (t.disposed) throw new GuardError('BAD_INPUT', `staging: ${what} was disposed`, 'pass a live device tensor');
}

/** A staging kernel specialised on one shape, with its capacity-sized output buffers. */
export class Stager implements Disposable {
  readonly shape: StagingShape;
  readonly capacity: number;
  readonly out: StagedTokens;
  /** Tokens staged by the last stage() call. */
  tokens = 0;
  private readonly kernel: Kernel;

  private constructor(shape: StagingShape, capacity: number, kernel: Kernel) {
    this.shape = shape;
    this.capacity = capacity;
    this.kernel = kernel;
    const H = shape.hiddenSize;
    const K = shape.topk;
    const made: DeviceTensor[] = [];
    try {
      const alloc = <D extends DType>(dtype: D, cols: number): DeviceTensor<D> => {
        const t = DeviceTensor.empty(dtype, [capacity, cols]);
        made.push(t);
        return t;
      };
      this.out = {
        xFp8: alloc('F8_E4M3', H),
        xSf: alloc('F32', H / QUANT_BLOCK),
        topkIds: alloc('I64', K),
        topkWeights: alloc('F32', K),
      };
    } catch (err) {
      for (const t of made) t.dispose();
      throw err;
    }
  }

  private static checkCapacity(capacity: number): void {
    if (!(Number.isInteger(capacity) && capacity >= 0)) {
      throw new GuardError('BAD_INPUT', `staging: capacity ${capacity} is not a non-negative integer`, 'pass the maximum tokens per batch');
    }
  }

  /** Compiles (cached) and loads the kernel for `shape`, and allocates outputs for `capacity` tokens. */
  static async create(shape: StagingShape, capacity: number): Promise<Stager> {
    checkStagingShape(shape);
    Stager.checkCapacity(capacity);
    const kernel = await loadKernel({ source: STAGING_SOURCE, entry: STAGING_ENTRY, defines: stagingDefines(shape) });
    return new Stager(shape, capacity, kernel);
  }

  /** create(), blocking. */
  static createSync(shape: StagingShape, capacity: number): Stager {
    checkStagingShape(shape);
    Stager.checkCapacity(capacity);
    const kernel = loadKernelSync({ source: STAGING_SOURCE, entry: STAGING_ENTRY, defines: stagingDefines(shape) });
    return new Stager(shape, capacity, kernel);
  }

  /**
   * Queues the staging of `tokens` rows (default x.shape[0]) on `stream`. Refuses (GuardError TOKEN_CAPACITY) a
   * batch larger than the capacity, before touching the GPU. T = 0 launches nothing.
   */
  stage(x: DeviceTensor, topkIds: DeviceTensor, topkWeights: DeviceTensor, options: StageOptions = {}): void {
    const H = this.shape.hiddenSize;
    const K = this.shape.topk;
    const tokens = options.tokens ?? x.shape[0];
    if (!(Number.isInteger(tokens) && tokens >= 0)) {
      throw new GuardError('BAD_INPUT', `staging: tokens ${tokens} is not a non-negative integer`, 'pass a token count');
    }
    checkTokenCapacity(tokens, this.capacity, 'the staging buffers');
    checkInput('x', x, 'BF16', H, tokens, `pass the hidden states as BF16 [tokens, ${H}]`);
    checkInput('topk_ids', topkIds, 'I64', K, tokens, `pass the router ids as I64 [tokens, ${K}] (widen I32 ids with idsToI64)`);
    checkInput('topk_weights', topkWeights, 'F32', K, tokens, `pass the router weights as F32 [tokens, ${K}]`);
    if (x.ptr % 16n !== 0n) {
      throw new GuardError('BAD_INPUT', 'staging: x is not 16-byte aligned', 'pass a tensor at the start of a device allocation (the kernel uses 16-byte loads)');
    }
    this.tokens = tokens;
    if (tokens === 0) return;
    const { grid, block } = stagingLaunchDims(tokens);
    const o = this.out;
    this.kernel.launch({ grid, block, stream: options.stream }, [
      x, topkIds, topkWeights, o.xFp8, o.xSf, o.topkIds, o.topkWeights, arg.i32(tokens),
    ]);
  }

  /** Downloads the first `tokens` (default: the last staged count) rows of every output (tests, debugging). */
  download(tokens = this.tokens, stream?: StreamLike): { xFp8: Uint8Array; xSf: Float32Array; topkIds: BigInt64Array; topkWeights: Float32Array } {
    if (!(Number.isInteger(tokens) && tokens >= 0 && tokens <= this.capacity)) {
      throw new RangeError(`staging download: tokens ${tokens} must be in [0, ${this.capacity}]`);
    }
    if (stream) stream.synchronize();
    const H = this.shape.hiddenSize;
    const K = this.shape.topk;
    const xFp8 = new Uint8Array(tokens * H);
    const xSf = new Float32Array(tokens * (H / QUANT_BLOCK));
    const ids = new BigInt64Array(tokens * K);
    const w = new Float32Array(tokens * K);
    this.out.xFp8.buffer.copyToHost(xFp8, { bytes: xFp8.byteLength });
    this.out.xSf.buffer.copyToHost(xSf, { bytes: xSf.byteLength });
    this.out.topkIds.buffer.copyToHost(ids, { bytes: ids.byteLength });
    this.out.topkWeights.buffer.copyToHost(w, { bytes: w.byteLength });
    return { xFp8, xSf, topkIds: ids, topkWeights: w };
  }

  dispose(): void {
    for (const t of Object.values(this.out)) t.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
