// The bf16 GEMM of a decode step's few rows (bf16_skinny.cu): D[b] = X[b] W[b]^T for 1..16 rows, f32 or bf16 out, in
// place of a cuBLASLt plan where the shape allows (src/gpu-model/layer.ts GpuLayerContext.gemm). Same run() as the
// cuBLASLt plans of src/cuda/cublaslt.ts, so a layer does not care which it got.
import { arg, loadKernelSync, registerKernel, type Kernel, type StreamLike } from '../cuda/index.js';
import type { GemmBatch } from '../cuda/cublaslt.js';

export const BF16_SKINNY_SOURCE = 'bf16_skinny.cu';
export const BF16_SKINNY_ENTRY = 'bf16_skinny_gemm';
/** Rows the kernel takes at most (two 8-row n-tiles of mma.sync m16n8k16). */
export const BF16_SKINNY_MAX_ROWS = 16;
const THREADS = 256;

registerKernel({ name: 'bf16_skinny', source: BF16_SKINNY_SOURCE, entry: BF16_SKINNY_ENTRY, variants: [{ label: 'default', defines: {} }] });

/**
 * Whether the kernel takes this shape: 1..16 rows, k a multiple of 256 (8 warps x 32-wide steps), n of 16 (one
 * CTA's column tile), leading dims and batch strides multiples of 8 elements (16-byte rows).
 * `MEGAMOE_BF16_SKINNY=off` keeps every call on cuBLASLt (an A/B knob).
 */
export function skinnyBf16Supported(m: number, n: number, k: number, ld: { x?: number; d?: number } = {}, batch?: GemmBatch): boolean {
  if (process.env.MEGAMOE_BF16_SKINNY === 'off') return false;
  const ok8 = (v: number) => Number.isInteger(v) && v > 0 && v % 8 === 0;
  if (!(Number.isInteger(m) && m >= 1 && m <= BF16_SKINNY_MAX_ROWS)) return false;
  if (!(Number.isInteger(n) && n > 0 && n % 16 === 0 && Number.isInteger(k) && k > 0 && k % 256 === 0)) return false;
  if (!ok8(ld.x ?? k) || !(Number.isInteger(ld.d ?? n) && (ld.d ?? n) >= n) || (ld.x ?? k) < k) return false;
  return !batch || (Number.isInteger(batch.count) && batch.count >= 1 && batch.count <= 65535 && ok8(batch.strideX) && ok8(batch.strideW) && Number.isInteger(batch.strideD) && batch.strideD >= 0);
}

let kernel: Kernel | undefined;

/** One skinny-GEMM shape: run() is one launch of grid (n / 16, batch count). */
export class SkinnyBf16Gemm {
  private readonly ldx: number;
  private readonly ldd: number;
  constructor(readonly out: 'f32' | 'bf16', readonly m: number, readonly n: number, readonly k: number,
    ld: { x?: number; d?: number } = {}, private readonly batch?: GemmBatch) {
    if (!skinnyBf16Supported(m, n, k, ld, batch)) {
      throw new RangeError(`bf16 skinny GEMM: m ${m}, n ${n}, k ${k} (ld ${JSON.stringify(ld)}) is not a shape it takes: 1..${BF16_SKINNY_MAX_ROWS} rows, n % 16, k % 256, 16-byte rows`);
    }
    this.ldx = ld.x ?? k;
    this.ldd = ld.d ?? n;
    kernel ??= loadKernelSync({ source: BF16_SKINNY_SOURCE, entry: BF16_SKINNY_ENTRY, defines: {} });
  }

  run(x: bigint | { readonly ptr: bigint }, w: bigint | { readonly ptr: bigint }, d: bigint | { readonly ptr: bigint }, stream?: StreamLike): void {
    const b = this.batch;
    kernel!.launch({ grid: [this.n / 16, b?.count ?? 1], block: THREADS, stream }, [
      x, w, d, arg.i32(this.m), arg.i32(this.k), arg.i64(this.ldx), arg.i64(this.ldd),
      arg.i64(b?.strideX ?? 0), arg.i64(b?.strideW ?? 0), arg.i64(b?.strideD ?? 0), arg.i32(this.out === 'f32' ? 1 : 0),
    ]);
  }

  /** Nothing to free (the kernel is shared); present so callers can dispose plans alike. */
  dispose(): void {}
}
