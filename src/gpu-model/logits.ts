// The logits GEMM on the GPU (V4-MODEL 2.4 / 6): logits f32 [rows, V] = y [rows, D] . head [V, D]^T, where y is the
// final norm's bf16 output and head.weight is bf16 on disk (fp32 in the model, so the products are exact in f32 and
// only the summation order differs from the CPU's: a tolerance, not bit-exactness). Through cuBLASLt's bf16 GEMM with
// f32 output (src/cuda/cublaslt.ts); one cuBLASLt plan per row count, made by prepare() (not inside a graph capture:
// a plan allocates its workspace).
//
//   using lg = new GpuLogits(cfg.vocabSize, cfg.dim);
//   lg.prepare([1, 8, 64]);                     // before capturing graphs for those batch sizes
//   lg.run(y, head, logits, rows, stream);      // y BF16 [>= rows, D], head BF16 [V, D], logits F32 [>= rows, V]
import { CublasLtBf16Gemm, cublasLtStatus } from '../cuda/cublaslt.js';
import type { DeviceTensor, StreamLike } from '../cuda/index.js';
import { checkCount, checkTensor, GpuModelArgumentError } from './errors.js';

export class GpuLogits implements Disposable {
  private readonly plans = new Map<number, CublasLtBf16Gemm>();

  constructor(readonly vocab: number, readonly dim: number) {
    checkCount('GpuLogits', 'vocab', vocab, 1, 2 ** 31 - 1, 'pass the model\'s vocab_size');
    if (!(Number.isInteger(dim) && dim > 0 && dim % 8 === 0)) throw new GpuModelArgumentError('GpuLogits', `D = ${dim}`, 'the bf16 GEMM needs a hidden size that is a multiple of 8');
  }

  /** Makes the cuBLASLt plans for these row counts (each m is its own plan). */
  prepare(rowCounts: readonly number[]): void {
    for (const m of rowCounts) this.plan(m);
  }

  private plan(m: number): CublasLtBf16Gemm {
    let p = this.plans.get(m);
    if (!p) {
      const st = cublasLtStatus();
      if (!st.available) throw new GpuModelArgumentError('GpuLogits', `cuBLASLt is not available (${st.reason})`, 'install the CUDA toolkit\'s libcublasLt or set MEGAMOE_LIBCUBLASLT');
      p = new CublasLtBf16Gemm(m, this.vocab, this.dim);
      this.plans.set(m, p);
    }
    return p;
  }

  run(y: DeviceTensor<'BF16'>, head: DeviceTensor<'BF16'>, logits: DeviceTensor<'F32'>, rows: number, stream?: StreamLike): void {
    const what = 'GpuLogits.run';
    const V = this.vocab; const D = this.dim;
    checkTensor(what, 'y', y, 'BF16', [undefined, D], `pass the final norm's output as BF16 [rows, ${D}]`);
    checkTensor(what, 'head', head, 'BF16', [V, D], `upload head.weight as BF16 [${V}, ${D}] (the checkpoint's bf16 bits)`);
    checkTensor(what, 'logits', logits, 'F32', [undefined, V], `allocate the logits as F32 [rows, ${V}]`);
    checkCount(what, 'rows', rows, 0, Math.min(y.shape[0], logits.shape[0]), 'pass rows <= the rows of y and logits');
    if (rows === 0) return;
    this.plan(rows).run(y, head, logits, stream);
  }

  dispose(): void {
    for (const p of this.plans.values()) p.dispose();
    this.plans.clear();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
