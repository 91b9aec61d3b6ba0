// A small binding of cuBLASLt: its FP8 GEMM, used ONLY as a benchmark anchor ("how fast is NVIDIA's dense FP8 GEMM at
// this shape on this GPU"; cuBLASLt on Hopper has per-tensor FP8 scaling, not the 128x128 block scaling of SPEC 3,
// so it cannot compute the MoE's numbers), and its bf16 GEMM with f32 output, the model's logits (the head is a plain
// fp32 linear over bf16 values, V4-MODEL 2.4: bf16 x bf16 products are exact in f32, so only the summation order
// differs from the CPU's).
//
// D [M, N] (FP8: bf16, bf16: f32; row-major) = X [M, K] . W [N, K]^T (both e4m3 or both bf16, row-major), f32
// accumulation, alpha 1.
// cuBLASLt is column-major and Hopper's FP8 kernels accept only the "TN" form (A transposed, B not), so we hand it
// the transposed problem D^T = W . X^T: A = W viewed column-major as [K, N] with op T, B = X viewed as [K, M] with
// op N, D viewed as [N, M] column-major = D [M, N] row-major. No copies.
//
// Loaded lazily like the driver: a machine without libcublasLt gets `cublasLtStatus()` = unavailable with a reason,
// never an exception at import.
import koffi from 'koffi';
import { ensureContext } from './device.js';
import { loadFirstLibrary } from './library.js';
import { DeviceBuffer } from './memory.js';
import { streamHandle, type StreamLike } from './stream.js';

type Addr = bigint | number;

// Enum values from cublasLt.h / library_types.h (CUDA 12-13).
const CUDA_R_32F = 0;
const CUDA_R_16BF = 14;
const CUDA_R_8F_E4M3 = 28;
const CUBLAS_COMPUTE_32F = 68;
const CUBLAS_OP_N = 0;
const CUBLAS_OP_T = 1;
const CUBLASLT_MATMUL_DESC_TRANSA = 3;
const CUBLASLT_MATMUL_DESC_TRANSB = 4;
const CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
const CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5; // int32
const CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6; // int64, elements
const WORKSPACE_BYTES = 32 * 1024 * 1024;

interface LtFunctions {
  cublasLtCreate(outHandle: Addr): number;
  cublasLtDestroy(handle: Addr): number;
  cublasLtGetVersion(): number;
  cublasLtMatmulDescCreate(outDesc: Addr, computeType: number, scaleType: number): number;
  cublasLtMatmulDescDestroy(desc: Addr): number;
  cublasLtMatmulDescSetAttribute(desc: Addr, attr: number, buf: Addr, size: number): number;
  cublasLtMatrixLayoutCreate(outLayout: Addr, type: number, rows: bigint, cols: bigint, ld: bigint): number;
  cublasLtMatrixLayoutDestroy(layout: Addr): number;
  cublasLtMatrixLayoutSetAttribute(layout: Addr, attr: number, buf: Addr, size: number): number;
  cublasLtMatmulPreferenceCreate(outPref: Addr): number;
  cublasLtMatmulPreferenceDestroy(pref: Addr): number;
  cublasLtMatmulPreferenceSetAttribute(pref: Addr, attr: number, buf: Addr, size: number): number;
  cublasLtMatmulAlgoGetHeuristic(handle: Addr, desc: Addr, a: Addr, b: Addr, c: Addr, d: Addr, pref: Addr,
    requested: number, results: Addr, outCount: Addr): number;
  cublasLtMatmul(handle: Addr, desc: Addr, alpha: Addr, a: Addr, aDesc: Addr, b: Addr, bDesc: Addr, beta: Addr,
    c: Addr, cDesc: Addr, d: Addr, dDesc: Addr, algo: Addr, workspace: Addr, workspaceSize: number, stream: Addr): number;
}

const PROTOTYPES: ReadonlyArray<readonly [keyof LtFunctions, string]> = [
  ['cublasLtCreate', 'int cublasLtCreate(uintptr_t out)'],
  ['cublasLtDestroy', 'int cublasLtDestroy(uintptr_t handle)'],
  ['cublasLtGetVersion', 'size_t cublasLtGetVersion()'],
  ['cublasLtMatmulDescCreate', 'int cublasLtMatmulDescCreate(uintptr_t out, int computeType, int scaleType)'],
  ['cublasLtMatmulDescDestroy', 'int cublasLtMatmulDescDestroy(uintptr_t desc)'],
  ['cublasLtMatmulDescSetAttribute', 'int cublasLtMatmulDescSetAttribute(uintptr_t desc, int attr, uintptr_t buf, size_t size)'],
  ['cublasLtMatrixLayoutCreate', 'int cublasLtMatrixLayoutCreate(uintptr_t out, int type, uint64_t rows, uint64_t cols, int64_t ld)'],
  ['cublasLtMatrixLayoutDestroy', 'int cublasLtMatrixLayoutDestroy(uintptr_t layout)'],
  ['cublasLtMatrixLayoutSetAttribute', 'int cublasLtMatrixLayoutSetAttribute(uintptr_t layout, int attr, uintptr_t buf, size_t size)'],
  ['cublasLtMatmulPreferenceCreate', 'int cublasLtMatmulPreferenceCreate(uintptr_t out)'],
  ['cublasLtMatmulPreferenceDestroy', 'int cublasLtMatmulPreferenceDestroy(uintptr_t pref)'],
  ['cublasLtMatmulPreferenceSetAttribute', 'int cublasLtMatmulPreferenceSetAttribute(uintptr_t pref, int attr, uintptr_t buf, size_t size)'],
  ['cublasLtMatmulAlgoGetHeuristic', 'int cublasLtMatmulAlgoGetHeuristic(uintptr_t handle, uintptr_t desc, uintptr_t a, uintptr_t b, ' +
    'uintptr_t c, uintptr_t d, uintptr_t pref, int requested, uintptr_t results, uintptr_t outCount)'],
  ['cublasLtMatmul', 'int cublasLtMatmul(uintptr_t handle, uintptr_t desc, uintptr_t alpha, uint64_t a, uintptr_t aDesc, ' +
    'uint64_t b, uintptr_t bDesc, uintptr_t beta, uint64_t c, uintptr_t cDesc, uint64_t d, uintptr_t dDesc, uintptr_t algo, ' +
    'uint64_t workspace, size_t workspaceSize, uintptr_t stream)'],
];

interface Lt {
  fn: LtFunctions;
  /** 512 bytes of native scratch: out-parameters, alpha/beta, attribute values, one heuristic result. */
  scratch: { address: number; view: DataView; block: unknown };
  libraryName: string;
}

let loaded: Lt | null = null;
let failure: string | null = null;

function candidates(): string[] {
  const override = process.env.MEGAMOE_LIBCUBLASLT;
  if (override) return [override];
  return ['libcublasLt.so.13', 'libcublasLt.so.12', '/usr/local/cuda/lib64/libcublasLt.so.13', '/usr/local/cuda/lib64/libcublasLt.so.12',
    '/usr/local/cuda/lib64/libcublasLt.so'];
}

function tryLoad(): Lt | null {
  if (loaded) return loaded;
  if (failure !== null) return null;
  const r = loadFirstLibrary(candidates(), (lib) => {
    const fn: Record<string, unknown> = {};
    for (const [key, proto] of PROTOTYPES) fn[key] = lib.func(proto);
    return fn as unknown as LtFunctions;
  }, 'a cuBLASLt symbol');
  if ('errors' in r) {
    failure = `libcublasLt not found (${r.errors.join('; ')}); set MEGAMOE_LIBCUBLASLT to its path`;
    return null;
  }
  const block = koffi.alloc('uint64_t', 64);
  loaded = {
    fn: r.value,
    scratch: { address: Number(koffi.address(block)), view: new DataView(koffi.view(block, 512)), block },
    libraryName: r.name,
  };
  return loaded;
}

/** Whether cuBLASLt can be used here; never throws. */
export function cublasLtStatus(): { available: true; library: string; version: number } | { available: false; reason: string } {
  try {
    const lt = tryLoad();
    if (!lt) return { available: false, reason: failure ?? 'libcublasLt could not be loaded' };
    return { available: true, library: lt.libraryName, version: Number(lt.fn.cublasLtGetVersion()) };
  } catch (err) {
    return { available: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

export class CublasLtError extends Error {
  readonly call: string;
  readonly status: number;
  constructor(call: string, status: number, detail?: string) {
    super(`${call} failed with cublasStatus ${status}${detail ? ` (${detail})` : ''}`);
    this.name = 'CublasLtError';
    this.call = call;
    this.status = status;
  }
}

function check(call: string, status: number, detail?: string): void {
  if (status !== 0) throw new CublasLtError(call, status, detail);
}

function lt(): Lt {
  const l = tryLoad();
  if (!l) throw new Error(`cuBLASLt is not available: ${failure}`);
  return l;
}

/**
 * A strided batch: `count` GEMMs in one cublasLtMatmul, problem i at X + i strideX, W + i strideW, D + i strideD
 * (elements; the model's grouped wo_a: column slices of one row-major X and D, consecutive weight blocks).
 */
export interface GemmBatch {
  count: number;
  strideX: number;
  strideW: number;
  strideD: number;
}

/** One GEMM shape with its descriptors, chosen algorithm and workspace: run() is one cublasLtMatmul. */
abstract class CublasLtGemm {
  readonly m: number;
  readonly n: number;
  readonly k: number;
  private handle = 0n;
  private desc = 0n;
  private layouts: bigint[] = [];
  private readonly algo: Uint8Array;
  private readonly workspace: DeviceBuffer;
  private disposed = false;

  protected readonly label: string;

  /** Leading dimensions (elements) of X and D; default k and n (contiguous rows). */
  readonly ldx: number;
  readonly ldd: number;

  /** Problems per run (1 unless a strided batch was given). */
  readonly batch: number;

  protected constructor(m: number, n: number, k: number, inType: number, outType: number, label: string, ld: { x?: number; d?: number } = {},
    batch?: GemmBatch) {
    this.label = label;
    this.batch = batch?.count ?? 1;
    if (batch) {
      for (const [name, v] of [['count', batch.count], ['strideX', batch.strideX], ['strideW', batch.strideW], ['strideD', batch.strideD]] as const) {
        if (!(Number.isInteger(v) && v >= (name === 'count' ? 1 : 0))) throw new RangeError(`cuBLASLt ${label} GEMM: batch ${name} = ${v} must be a ${name === 'count' ? 'positive' : 'non-negative'} integer`);
      }
    }
    this.m = m; this.n = n; this.k = k;
    this.ldx = ld.x ?? k; this.ldd = ld.d ?? n;
    for (const [name, v, min] of [['ldx', this.ldx, k], ['ldd', this.ldd, n]] as const) {
      if (!(Number.isInteger(v) && v >= min)) throw new RangeError(`cuBLASLt ${label} GEMM: ${name} = ${v} must be an integer >= ${min}`);
    }
    ensureContext();
    const l = lt();
    const s = l.scratch;
    const out = () => s.view.getBigUint64(0, true);
    this.workspace = DeviceBuffer.alloc(WORKSPACE_BYTES);
    try {
      check('cublasLtCreate', l.fn.cublasLtCreate(s.address));
      this.handle = out();
      check('cublasLtMatmulDescCreate', l.fn.cublasLtMatmulDescCreate(s.address, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      this.desc = out();
      s.view.setInt32(0, CUBLAS_OP_T, true);
      check('cublasLtMatmulDescSetAttribute(TRANSA)', l.fn.cublasLtMatmulDescSetAttribute(this.desc, CUBLASLT_MATMUL_DESC_TRANSA, s.address, 4));
      s.view.setInt32(0, CUBLAS_OP_N, true);
      check('cublasLtMatmulDescSetAttribute(TRANSB)', l.fn.cublasLtMatmulDescSetAttribute(this.desc, CUBLASLT_MATMUL_DESC_TRANSB, s.address, 4));
      const layout = (type: number, rows: number, cols: number, ld: number, stride: number): bigint => {
        check('cublasLtMatrixLayoutCreate', l.fn.cublasLtMatrixLayoutCreate(s.address, type, BigInt(rows), BigInt(cols), BigInt(ld)),
          `${rows} x ${cols}, ld ${ld}`);
        const h = out();
        this.layouts.push(h);
        if (batch) {
          s.view.setInt32(0, batch.count, true);
          check('cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)', l.fn.cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, s.address, 4));
          s.view.setBigInt64(0, BigInt(stride), true);
          check('cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)', l.fn.cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, s.address, 8));
        }
        return h;
      };
      // Column-major views of the row-major tensors (see the header).
      const aDesc = layout(inType, k, n, k, batch?.strideW ?? 0);  // W^T
      const bDesc = layout(inType, k, m, this.ldx, batch?.strideX ?? 0);  // X^T
      const cDesc = layout(outType, n, m, this.ldd, batch?.strideD ?? 0); // D^T
      check('cublasLtMatmulPreferenceCreate', l.fn.cublasLtMatmulPreferenceCreate(s.address));
      const pref = out();
      try {
        s.view.setBigUint64(0, BigInt(WORKSPACE_BYTES), true);
        check('cublasLtMatmulPreferenceSetAttribute', l.fn.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, s.address, 8));
        // One cublasLtMatmulHeuristicResult_t (96 bytes: algo 8 x u64, workspaceSize, state, waves, int[4]) at 64.
        const results = s.address + 64;
        check('cublasLtMatmulAlgoGetHeuristic', l.fn.cublasLtMatmulAlgoGetHeuristic(this.handle, this.desc, aDesc, bDesc, cDesc, cDesc, pref,
          1, results, s.address + 8), `${label} ${m} x ${n} x ${k}`);
        if (s.view.getInt32(8, true) < 1) throw new CublasLtError('cublasLtMatmulAlgoGetHeuristic', 15, `no ${label} algorithm for ${m} x ${n} x ${k}`);
        this.algo = new Uint8Array(64);
        this.algo.set(new Uint8Array(s.view.buffer, s.view.byteOffset + 64, 64));
      } finally {
        l.fn.cublasLtMatmulPreferenceDestroy(pref);
      }
    } catch (err) {
      this.dispose();
      throw err;
    }
  }

  /** FLOPs of one run: 2 m n k per problem of the batch. */
  get flops(): number { return 2 * this.m * this.n * this.k * this.batch; }

  /** Queues D = X . W^T on `stream` (device addresses; dtypes as the subclass says). */
  run(x: bigint | { readonly ptr: bigint }, w: bigint | { readonly ptr: bigint }, d: bigint | { readonly ptr: bigint }, stream?: StreamLike): void {
    if (this.disposed) throw new Error(`this cuBLASLt ${this.label} GEMM was disposed`);
    const l = lt();
    const s = l.scratch;
    const p = (v: bigint | { readonly ptr: bigint }) => (typeof v === 'bigint' ? v : v.ptr);
    s.view.setFloat32(0, 1, true); // alpha
    s.view.setFloat32(4, 0, true); // beta
    // The algorithm struct goes at offset 256 (aligned, away from alpha/beta).
    new Uint8Array(s.view.buffer, s.view.byteOffset + 256, 64).set(this.algo);
    const [aDesc, bDesc, cDesc] = this.layouts;
    check('cublasLtMatmul', l.fn.cublasLtMatmul(this.handle, this.desc, s.address, p(w), aDesc, p(x), bDesc, s.address + 4,
      p(d), cDesc, p(d), cDesc, s.address + 256, this.workspace.ptr, WORKSPACE_BYTES, streamHandle(stream)), `${this.label} ${this.m} x ${this.n} x ${this.k}`);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const l = loaded;
    if (l) {
      for (const h of this.layouts) l.fn.cublasLtMatrixLayoutDestroy(h);
      if (this.desc) l.fn.cublasLtMatmulDescDestroy(this.desc);
      if (this.handle) l.fn.cublasLtDestroy(this.handle);
    }
    this.layouts = [];
    this.workspace?.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** D [m, n] bf16 = X [m, k] e4m3 . W [n, k]^T e4m3 (per-tensor scale 1): the benchmark anchor. */
export class CublasLtFp8Gemm extends CublasLtGemm {
  /** m, n, k multiples of 16 (cuBLASLt FP8 requirement). */
  constructor(m: number, n: number, k: number) {
    for (const [name, v] of [['M', m], ['N', n], ['K', k]] as const) {
      if (!(Number.isInteger(v) && v > 0 && v % 16 === 0)) throw new RangeError(`cuBLASLt FP8 GEMM: ${name} = ${v} must be a positive multiple of 16`);
    }
    super(m, n, k, CUDA_R_8F_E4M3, CUDA_R_16BF, 'FP8');
  }
}

/**
 * D [m, n] f32 = X [m, k] bf16 . W [n, k]^T bf16, f32 accumulation (CUBLAS_COMPUTE_32F): the model's logits.
 * k a multiple of 8 (16-byte rows for cuBLASLt's bf16 kernels); m, n >= 1.
 */
export class CublasLtBf16Gemm extends CublasLtGemm {
  constructor(m: number, n: number, k: number) {
    for (const [name, v] of [['M', m], ['N', n], ['K', k]] as const) {
      if (!(Number.isInteger(v) && v > 0)) throw new RangeError(`cuBLASLt bf16 GEMM: ${name} = ${v} must be a positive integer`);
    }
    if (k % 8 !== 0) throw new RangeError(`cuBLASLt bf16 GEMM: K = ${k} must be a multiple of 8 (16-byte rows)`);
    super(m, n, k, CUDA_R_16BF, CUDA_R_32F, 'bf16');
  }
}

/**
 * D [m, n] bf16 = bf16(X [m, k] bf16 . W [n, k]^T bf16), f32 accumulation, with optional leading dimensions of X and
 * D (a column slice of a wider row-major tensor) and an optional strided batch (the model's grouped wo_a: every group
 * in one call). k, ldx, ldd and the strides multiples of 8 (16-byte rows).
 */
export class CublasLtBf16OutGemm extends CublasLtGemm {
  /** batch: one strided-batched call for several problems of this shape (strides multiples of 8 elements). */
  constructor(m: number, n: number, k: number, ld: { x?: number; d?: number } = {}, batch?: GemmBatch) {
    for (const [name, v] of [['M', m], ['N', n], ['K', k]] as const) {
      if (!(Number.isInteger(v) && v > 0)) throw new RangeError(`cuBLASLt bf16-out GEMM: ${name} = ${v} must be a positive integer`);
    }
    const strides = batch ? [['strideX', batch.strideX], ['strideW', batch.strideW], ['strideD', batch.strideD]] as const : [];
    for (const [name, v] of [['K', k], ['ldx', ld.x ?? k], ['ldd', ld.d ?? n], ...strides] as const) {
      if (v % 8 !== 0) throw new RangeError(`cuBLASLt bf16-out GEMM: ${name} = ${v} must be a multiple of 8 (16-byte rows)`);
    }
    super(m, n, k, CUDA_R_16BF, CUDA_R_16BF, 'bf16-out', ld, batch);
  }
}
