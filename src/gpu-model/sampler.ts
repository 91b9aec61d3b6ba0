// GPU token sampling (src/kernels/sampling.cu) with src/generate/sampler.ts's semantics: one row of logits per
// sequence, each row with its own parameters and its own random stream kept on the device, so a batch of sequences
// with different settings is one launch (and a CUDA graph node: parameters and seeds are device memory).
//
//   using s = GpuSampler.createSync(64, vocab);
//   s.setRow(0, { temperature: 0.7, topK: 50, topP: 0.9, seed: 42 });   // same seed -> same tokens as new Sampler(...)
//   s.sample(logits, rows, stream);                                       // logits F32 [rows, vocab]
//   const { tokens, status } = s.download(rows, stream);
//
// Equality with the CPU sampler (the tests assert the same token ids): the same seed draws the same uniforms, and
// greedy, top-k (with or without top-p) and a top-p nucleus of up to GPU_SAMPLER_MAX_TOP_K tokens are the CPU's exact
// f64 operations; temperature-only sampling, top-p's total mass and a wider nucleus sum the vocabulary in another
// order, so those can differ only when a uniform (or the top-p target) falls within f64 rounding (~1e-13 relative)
// of a CDF step (a wide nucleus's cut also within V * 2^-40 of one: sampling.cu wide_cut). Departure: top-k above
// GPU_SAMPLER_MAX_TOP_K is refused (setRow names the fix).
import { randomBytes } from 'node:crypto';
import { arg, DeviceTensor, type Kernel, type StreamLike } from '../cuda/index.js';
import type { SamplingParams } from '../generate/contracts.js';
import { validateSampling } from '../generate/sampler.js';
import { loadSamplingKernel, loadSamplingKernelSync } from '../kernels/model-ops.js';
import { rngState } from '../util/rng.js';
import { checkCount, checkTensor, GpuModelArgumentError } from './errors.js';

/** Candidates the kernel holds in shared memory (sampling.cu kMaxCand). */
export const GPU_SAMPLER_MAX_TOP_K = 2048;

export const SAMPLE_STATUS = Object.freeze({ OK: 0, NAN_LOGIT: 1, ALL_NEG_INF: 2 });

/** sampling.cu modes, chosen exactly as Sampler.sample branches. */
export type SamplingMode = 0 | 1 | 2 | 3;

/** The kernel's view of one row's parameters (pure; the CPU tests check the branch choice). */
export function samplingMode(p: SamplingParams, vocab: number): { mode: SamplingMode; topK: number; topP: number; invT: number } {
  validateSampling(p);
  if (p.temperature === 0 || p.topK === 1) return { mode: 0, topK: 1, topP: 1, invT: 0 };
  const invT = 1 / p.temperature;
  if ((p.topK === 0 || p.topK >= vocab) && p.topP >= 1) return { mode: 1, topK: 0, topP: 1, invT };
  if (p.topK > 0 && p.topK < vocab) {
    if (p.topK > GPU_SAMPLER_MAX_TOP_K) {
      throw new GpuModelArgumentError('GpuSampler', `top_k = ${p.topK} exceeds the GPU sampler's ${GPU_SAMPLER_MAX_TOP_K} candidates`,
        `use top_k <= ${GPU_SAMPLER_MAX_TOP_K} (or 0 = off), or sample this sequence on the CPU (src/generate/sampler.ts)`);
    }
    return { mode: 2, topK: p.topK, topP: p.topP, invT };
  }
  return { mode: 3, topK: 0, topP: p.topP, invT };
}

export class GpuSampler implements Disposable {
  readonly capacity: number;
  readonly vocab: number;
  /** The seed each row uses (drawn at random when its parameters had none), so a run can be repeated. */
  readonly seeds: Uint32Array;
  private readonly mode: DeviceTensor<'I32'>;
  private readonly topK: DeviceTensor<'I32'>;
  private readonly topP: DeviceTensor<'F64'>;
  private readonly invT: DeviceTensor<'F64'>;
  private readonly rng: DeviceTensor<'I32'>;
  readonly tokens: DeviceTensor<'I32'>;
  readonly status: DeviceTensor<'I32'>;
  private readonly all: DeviceTensor[];

  private constructor(capacity: number, vocab: number, private readonly kernel: Kernel) {
    this.capacity = capacity;
    this.vocab = vocab;
    this.seeds = new Uint32Array(capacity);
    const made: DeviceTensor[] = [];
    const mk = <D extends 'I32' | 'F64'>(dtype: D, shape: number[]): DeviceTensor<D> => {
      const t = DeviceTensor.zeros(dtype, shape);
      made.push(t);
      return t;
    };
    try {
      this.mode = mk('I32', [capacity]); this.topK = mk('I32', [capacity]); this.topP = mk('F64', [capacity]); this.invT = mk('F64', [capacity]);
      this.rng = mk('I32', [capacity, 4]); this.tokens = mk('I32', [capacity]); this.status = mk('I32', [capacity]);
    } catch (err) {
      for (const t of made) t.dispose();
      throw err;
    }
    this.all = made;
  }

  private static check(capacity: number, vocab: number): void {
    checkCount('GpuSampler', 'capacity', capacity, 1, 1 << 20, 'pass the largest number of rows sampled at once');
    checkCount('GpuSampler', 'vocab', vocab, 1, 2 ** 31 - 1, 'pass the model\'s vocab_size');
  }

  static async create(capacity: number, vocab: number): Promise<GpuSampler> {
    GpuSampler.check(capacity, vocab);
    return new GpuSampler(capacity, vocab, await loadSamplingKernel());
  }

  static createSync(capacity: number, vocab: number): GpuSampler {
    GpuSampler.check(capacity, vocab);
    return new GpuSampler(capacity, vocab, loadSamplingKernelSync());
  }

  /**
   * Sets row `row`'s parameters and restarts its random stream from the seed (as `new Sampler(params)` does).
   * Returns the seed in use. Queued on `stream` when given (pageable copies are staged before returning).
   */
  setRow(row: number, params: SamplingParams, stream?: StreamLike): number {
    checkCount('GpuSampler.setRow', 'row', row, 0, this.capacity - 1, `pass a row below the capacity ${this.capacity}`);
    const m = samplingMode(params, this.vocab);
    const seed = params.seed ?? randomBytes(4).readUInt32LE(0);
    this.seeds[row] = seed;
    const put = (t: DeviceTensor, v: ArrayBufferView, bytesPer: number) => t.buffer.copyFromHost(v, { offset: row * bytesPer, stream });
    put(this.mode, Int32Array.of(m.mode), 4);
    put(this.topK, Int32Array.of(m.topK), 4);
    put(this.topP, Float64Array.of(m.topP), 8);
    put(this.invT, Float64Array.of(m.invT), 8);
    put(this.rng, rngState(seed), 16);
    return seed;
  }

  /**
   * Queues one draw per row r < rows from logits F32 [>= rows, vocab] (rows `rowStride` apart, default vocab), with
   * row r's parameters and random stream, or with `paramRows` (I32 [>= rows], distinct values below the capacity,
   * e.g. a model's sequence slots) those of row paramRows[r]: one launch whatever rows the call's sequences hold.
   * Tokens and status land in row r either way; a negative paramRows[r] skips row r (no draw, token and status
   * untouched).
   */
  sample(logits: DeviceTensor<'F32'>, rows: number, opts: { rowStride?: number; paramRows?: DeviceTensor<'I32'>; stream?: StreamLike } = {}): void {
    const what = 'GpuSampler.sample';
    checkTensor(what, 'logits', logits, 'F32', logits.shape.map(() => undefined), `pass the logits as F32 [rows, ${this.vocab}]`);
    if (logits.shape[logits.shape.length - 1] !== this.vocab) {
      throw new GpuModelArgumentError(what, `logits is ${logits.describe()}, the sampler was made for vocab ${this.vocab}`, 'create the sampler with the model\'s vocab_size');
    }
    checkCount(what, 'rows', rows, 0, this.capacity, `sample at most the capacity of ${this.capacity} rows`);
    const stride = opts.rowStride ?? this.vocab;
    if (!(Number.isInteger(stride) && stride >= this.vocab)) throw new GpuModelArgumentError(what, `rowStride = ${stride}`, `pass a row stride >= vocab (${this.vocab})`);
    if (rows > 0 && (rows - 1) * stride + this.vocab > logits.numel) throw new GpuModelArgumentError(what, `logits (${logits.describe()}) hold fewer than ${rows} rows`, 'pass rows <= the logits\' rows');
    if (opts.paramRows && opts.paramRows.numel < rows) {
      throw new GpuModelArgumentError(what, `paramRows (${opts.paramRows.describe()}) hold fewer than ${rows} rows`, 'pass one parameter row per logit row');
    }
    if (rows === 0) return;
    this.kernel.launch({ grid: rows, block: 1024, stream: opts.stream }, [
      logits, arg.i64(stride), arg.i32(this.vocab), arg.i32(rows), this.mode, this.topK, this.topP, this.invT, this.rng, this.tokens, this.status, opts.paramRows ?? arg.ptr(0n),
    ]);
  }

  /** The tokens and status codes of the last sample() (waits for `stream` first). */
  download(rows: number, stream?: StreamLike): { tokens: Int32Array; status: Int32Array } {
    checkCount('GpuSampler.download', 'rows', rows, 0, this.capacity, `pass rows <= ${this.capacity}`);
    if (stream) stream.synchronize();
    const tokens = new Int32Array(rows); const status = new Int32Array(rows);
    this.tokens.buffer.copyToHost(tokens, { bytes: rows * 4 });
    this.status.buffer.copyToHost(status, { bytes: rows * 4 });
    return { tokens, status };
  }

  /**
   * sample() + download(), throwing the CPU sampler's errors for a NaN logit or an all -inf row.
   */
  sampleSync(logits: DeviceTensor<'F32'>, rows: number, stream?: StreamLike): Int32Array {
    this.sample(logits, rows, { stream });
    const { tokens, status } = this.download(rows, stream);
    for (let r = 0; r < rows; r++) {
      if (status[r] === SAMPLE_STATUS.NAN_LOGIT) throw new Error(`sampler: row ${r} has a NaN logit`);
      if (status[r] === SAMPLE_STATUS.ALL_NEG_INF) throw new Error(`sampler: row ${r}: every logit is -Infinity`);
    }
    return tokens;
  }

  dispose(): void {
    for (const t of this.all) t.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
