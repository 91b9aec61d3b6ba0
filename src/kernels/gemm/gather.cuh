// A tiles gathered row by row (Sync::kGathersA, gemm/pipeline.cuh): one K block of an A tile and its scales copied
// from arbitrary source rows into a ring stage by the whole producer warp, with cp.async instead of one TMA box. The
// fused kernel's L1 reads the staged tokens in place this way, so its symmetric buffer needs no L1 row pool
// (docs/MEGA_MOE.md, "Symmetric buffer"; a TMA box per row was 2.2-2.8x slower: the same page, session 15).
#pragma once

namespace gg {

// Rows [0, kRows) of the A tile's K block kb into the stage at shared address `dst`, laid out as a TMA box with
// SWIZZLE_128B lays it (128-byte rows, 16-byte chunk c of a row at c ^ address bits [7, 10)), and their scales into
// `dst_sf` (kRows f32). Sources: e4m3 rows of kK bytes at `x`, their scales token-major [*, kK / 128] at `x_sf`;
// src[j] is the source row of tile row lane + 32 j, -1 for a row without one (zero-filled: padding). 8 lanes take a
// row (16 bytes each, one 128-byte run), so a warp instruction reads 4 whole rows. Every lane then has the stage's
// mbarrier `bar` wait for its copies (cp.async.mbarrier.arrive without .noinc: +1 pending arrival now, -1 when they
// land), which must precede the stage's own arrive (the caller's __syncwarp, then its expect_tx arrive). The
// consumers read the stage through wgmma (the async proxy): they fence (fence_proxy_async) after the full barrier.
template <int kRows, int kK>
__device__ __forceinline__ void gather_a_stage(u32 dst, u32 dst_sf, const unsigned char* __restrict__ x,
                                               const float* __restrict__ x_sf, const int (&src)[(kRows + 31) / 32],
                                               int kb, int lane, u32 bar) {
  static_assert(kRows % 4 == 0 && kRows <= 128 && kK % 128 == 0, "gather: 4 rows a warp instruction, 128-byte K blocks");
  constexpr int kKB = kK / 128;
  const int c = lane & 7;
  const unsigned char* xk = x + kb * 128 + c * 16;
#pragma unroll
  for (int j = 0; j < (kRows + 31) / 32; j++) {
    // Rows [32 j, 32 j + 32): 4 a step (not unrolled: the producer warp runs on few registers).
#pragma unroll 1
    for (int i = 0; i < 8 && 32 * j + 4 * i < kRows; i++) {
      const int row = 32 * j + 4 * i + (lane >> 3);
      const int t = __shfl_sync(0xffffffffu, src[j], row & 31);
      const unsigned char* s = xk + (u32)(t < 0 ? 0 : t) * (u32)kK;  // (rows of a rank's staged tokens: < 2^31 bytes)
      const u32 d_row = dst + row * 128;
      const u32 d = d_row + ((c ^ ((d_row >> 7) & 7)) << 4);
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(s), "r"(t < 0 ? 0 : 16) : "memory");
    }
  }
#pragma unroll
  for (int j = 0; j < (kRows + 31) / 32; j++) {
    const int row = lane + 32 * j;
    if (row < kRows) {
      const int t = src[j];
      const float* s = x_sf + (size_t)(t < 0 ? 0 : t) * kKB + kb;
      asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst_sf + 4u * row), "l"(s), "r"(t < 0 ? 0 : 4)
                   : "memory");
    }
  }
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}

}  // namespace gg
