// Tensor-core helpers of the attention kernels: mma.sync m16n8k16 bf16 x bf16 -> f32 (warp-wide), with a plain-CUDA
// fallback for the CPU emulator (tools/cuda-emulator defines MEGAMOE_EMU) that computes the same fragment semantics
// from the lanes' registers (a warp all-gather, or warp shuffles), so the emulator exercises the callers' fragment
// bookkeeping.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16" with .bf16), lane = 4 g + t (g = lane / 4, t = lane % 4);
// each .b32 register holds two bf16, the lower column / row index in the low half:
//   A (16 x 16, row-major): a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8, 2t+9], a3 = A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col"):      b0 = B[2t, 2t+1][g],  b1 = B[2t+8, 2t+9][g]
//   C, D (16 x 8, f32):     c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
#pragma once
#include <stdint.h>

namespace attn {

// D = A B + C, in place on c.
__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
#if defined(MEGAMOE_EMU) && defined(EMU_HAS_WARP_ALLGATHER) && !defined(MEGAMOE_EMU_MMA_SHFL)
  // every lane's six fragment registers at once; then lane (g, t) reads what the shuffle version below fetches
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const unsigned mine[6] = {a0, a1, a2, a3, b0, b1};
  unsigned all[32][6];
  emu_warp_allgather(mine, all);
  auto lo = [](unsigned v) { return __uint_as_float(v << 16); };
  auto hi = [](unsigned v) { return __uint_as_float(v & 0xffff0000u); };
  float ar0[16], ar1[16], bc0[16], bc1[16];  // A rows g, g+8 and B columns 2t, 2t+1, over k = 0..15
  for (int s = 0; s < 4; s++) {
    const unsigned* x = all[4 * g + s];             // A[g][2s..], A[g+8][2s..], A[g][2s+8..], A[g+8][2s+8..]
    const unsigned* y0 = all[4 * (2 * t) + s];      // B[2s, 2s+1][2t], B[2s+8, 2s+9][2t]
    const unsigned* y1 = all[4 * (2 * t + 1) + s];  // the same for column 2t+1
    ar0[2 * s] = lo(x[0]); ar0[2 * s + 1] = hi(x[0]); ar0[2 * s + 8] = lo(x[2]); ar0[2 * s + 9] = hi(x[2]);
    ar1[2 * s] = lo(x[1]); ar1[2 * s + 1] = hi(x[1]); ar1[2 * s + 8] = lo(x[3]); ar1[2 * s + 9] = hi(x[3]);
    bc0[2 * s] = lo(y0[4]); bc0[2 * s + 1] = hi(y0[4]); bc0[2 * s + 8] = lo(y0[5]); bc0[2 * s + 9] = hi(y0[5]);
    bc1[2 * s] = lo(y1[4]); bc1[2 * s + 1] = hi(y1[4]); bc1[2 * s + 8] = lo(y1[5]); bc1[2 * s + 9] = hi(y1[5]);
  }
  for (int k = 0; k < 16; k++) {
    c[0] = fmaf(ar0[k], bc0[k], c[0]);
    c[1] = fmaf(ar0[k], bc1[k], c[1]);
    c[2] = fmaf(ar1[k], bc0[k], c[2]);
    c[3] = fmaf(ar1[k], bc1[k], c[3]);
  }
#elif defined(MEGAMOE_EMU)
  // through __shfl_sync (16 64-bit shuffles); the emulator's default is the all-gather above (same semantics, one
  // exchange: build with -DMEGAMOE_EMU_MMA_SHFL to run this one)
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const unsigned long long a01 = (unsigned long long)a0 | ((unsigned long long)a1 << 32);
  const unsigned long long a23 = (unsigned long long)a2 | ((unsigned long long)a3 << 32);
  const unsigned long long b01 = (unsigned long long)b0 | ((unsigned long long)b1 << 32);
  float ar0[16], ar1[16], bc0[16], bc1[16];  // A rows g, g+8 and B columns 2t, 2t+1, over k = 0..15
  for (int s = 0; s < 4; s++) {
    const unsigned long long x01 = __shfl_sync(0xffffffffu, a01, 4 * g + s);      // A[g|g+8][2s, 2s+1]
    const unsigned long long x23 = __shfl_sync(0xffffffffu, a23, 4 * g + s);      // A[g|g+8][2s+8, 2s+9]
    const unsigned long long y0 = __shfl_sync(0xffffffffu, b01, 4 * (2 * t) + s);     // B[2s.. | 2s+8..][2t]
    const unsigned long long y1 = __shfl_sync(0xffffffffu, b01, 4 * (2 * t + 1) + s); // B[..][2t+1]
    const unsigned w[8] = {(unsigned)x01, (unsigned)(x01 >> 32), (unsigned)x23, (unsigned)(x23 >> 32),
                           (unsigned)y0, (unsigned)(y0 >> 32), (unsigned)y1, (unsigned)(y1 >> 32)};
    auto lo = [](unsigned v) { return __uint_as_float(v << 16); };
    auto hi = [](unsigned v) { return __uint_as_float(v & 0xffff0000u); };
    ar0[2 * s] = lo(w[0]); ar0[2 * s + 1] = hi(w[0]); ar0[2 * s + 8] = lo(w[2]); ar0[2 * s + 9] = hi(w[2]);
    ar1[2 * s] = lo(w[1]); ar1[2 * s + 1] = hi(w[1]); ar1[2 * s + 8] = lo(w[3]); ar1[2 * s + 9] = hi(w[3]);
    bc0[2 * s] = lo(w[4]); bc0[2 * s + 1] = hi(w[4]); bc0[2 * s + 8] = lo(w[5]); bc0[2 * s + 9] = hi(w[5]);
    bc1[2 * s] = lo(w[6]); bc1[2 * s + 1] = hi(w[6]); bc1[2 * s + 8] = lo(w[7]); bc1[2 * s + 9] = hi(w[7]);
  }
  for (int k = 0; k < 16; k++) {  // products of bf16 are exact in f32; the hardware's sum order is its own
    c[0] = fmaf(ar0[k], bc0[k], c[0]);
    c[1] = fmaf(ar0[k], bc1[k], c[1]);
    c[2] = fmaf(ar1[k], bc0[k], c[2]);
    c[3] = fmaf(ar1[k], bc1[k], c[3]);
  }
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// Two bf16-exact f32 values as one bf16x2 word (lo in the low half): truncation is exact for bf16-rounded inputs.
__device__ __forceinline__ unsigned pack_bf16x2_exact(float lo, float hi) {
  return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xffff0000u);
}

}  // namespace attn
