// Activation staging (SPEC 3) of ONE token row by one warp, shared by staging.cu (the unfused pipeline's kernel)
// and the fused MegaMoE kernel (mega_moe.cu). The contract and the work split are staging.cu's header; the
// including file defines STG_HIDDEN (H) and STG_TOPK (K) first.
#pragma once

namespace stg {

constexpr int kHidden = STG_HIDDEN;
constexpr int kTopK = STG_TOPK;
constexpr int kBlock = 128;                            // scale block along H (SPEC 3)
constexpr int kScalesPerRow = kHidden / kBlock;
constexpr int kColsPerLane = 16;                       // two uint4 of 8 bf16 in, one uint4 of 16 e4m3 out
constexpr int kLanesPerBlock = kBlock / kColsPerLane;  // 8
constexpr int kColsPerStep = 32 * kColsPerLane;        // 512
constexpr int kSteps = (kHidden + kColsPerStep - 1) / kColsPerStep;
constexpr int kUnroll = kSteps < 4 ? kSteps : 4;
constexpr float kAmaxFloor = 1e-4f;  // same f32 constant as numerics AMAX_FLOOR
constexpr float kE4M3Max = 448.0f;

static_assert(kHidden % kBlock == 0, "the hidden size must be a multiple of 128 (SPEC 4)");
static_assert(kTopK >= 1 && kTopK <= 32, "top-k must be in [1, 32]: one lane copies one slot");

// The whole warp calls it for one row (the shuffles are full-warp). Scale sf of (row, block kb) goes to
// x_sf[row * sf_row_stride + kb * sf_kb_stride]: row-major by default, MN-major (the GEMM's sfa) with (1, m_cap).
__device__ __forceinline__ void stage_row(const uint4* __restrict__ x, const long long* __restrict__ ids_in,
                                          const float* __restrict__ w_in, uint4* __restrict__ x_fp8,
                                          float* __restrict__ x_sf, long long* __restrict__ ids_out,
                                          float* __restrict__ w_out, int row, int lane,
                                          long long sf_row_stride = kScalesPerRow, long long sf_kb_stride = 1) {
  if (lane < kTopK) {
    const size_t slot = (size_t)row * kTopK + lane;
    ids_out[slot] = ids_in[slot];
    w_out[slot] = w_in[slot];
  }

  const uint4* xrow = x + (size_t)row * (kHidden / 8);
  uint4* qrow = x_fp8 + (size_t)row * (kHidden / 16);
  float* sfrow = x_sf + (size_t)row * sf_row_stride;

#pragma unroll
  for (int s0 = 0; s0 < kSteps; s0 += kUnroll) {
    // Issue every load of this group of steps first (memory-level parallelism), then quantize.
    uint4 v[kUnroll][2];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const int col = (s0 + u) * kColsPerStep + lane * kColsPerLane;
      if (s0 + u < kSteps && col < kHidden) {
        v[u][0] = __ldg(xrow + col / 8);
        v[u][1] = __ldg(xrow + col / 8 + 1);
      } else {
        v[u][0] = make_uint4(0, 0, 0, 0);
        v[u][1] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (s0 + u >= kSteps) break;  // compile-time after unrolling
      const int col = (s0 + u) * kColsPerStep + lane * kColsPerLane;
      const unsigned int w[8] = {v[u][0].x, v[u][0].y, v[u][0].z, v[u][0].w,
                                 v[u][1].x, v[u][1].y, v[u][1].z, v[u][1].w};
      float f[16];
#pragma unroll
      for (int i = 0; i < 8; i++) {
        f[2 * i] = megamoe::bf16_lo_to_f32(w[i]);
        f[2 * i + 1] = megamoe::bf16_hi_to_f32(w[i]);
      }
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < 16; i++) amax = fmaxf(amax, fabsf(f[i]));
      // Lanes past H (only when H % 512 != 0) hold zeros and form whole 8-lane groups, so they never
      // touch a real block's amax; they simply skip the stores.
      amax = megamoe::group_max<kLanesPerBlock>(amax);
      amax = fmaxf(amax, kAmaxFloor);
      const float sf = megamoe::div_rn(amax, kE4M3Max);  // IEEE division, as the CPU's Math.fround(amax / 448)
      const float inv = megamoe::div_rn(1.0f, sf);       // IEEE reciprocal, as Math.fround(1 / sf)
      if (col < kHidden) {
        uint4 q;
        q.x = megamoe::f32x4_to_e4m3x4(megamoe::mul_rn(f[0], inv), megamoe::mul_rn(f[1], inv),
                                       megamoe::mul_rn(f[2], inv), megamoe::mul_rn(f[3], inv));
        q.y = megamoe::f32x4_to_e4m3x4(megamoe::mul_rn(f[4], inv), megamoe::mul_rn(f[5], inv),
                                       megamoe::mul_rn(f[6], inv), megamoe::mul_rn(f[7], inv));
        q.z = megamoe::f32x4_to_e4m3x4(megamoe::mul_rn(f[8], inv), megamoe::mul_rn(f[9], inv),
                                       megamoe::mul_rn(f[10], inv), megamoe::mul_rn(f[11], inv));
        q.w = megamoe::f32x4_to_e4m3x4(megamoe::mul_rn(f[12], inv), megamoe::mul_rn(f[13], inv),
                                       megamoe::mul_rn(f[14], inv), megamoe::mul_rn(f[15], inv));
        qrow[col / 16] = q;
        if ((lane & (kLanesPerBlock - 1)) == 0) sfrow[(size_t)(col / kBlock) * sf_kb_stride] = sf;
      }
    }
  }
}

}  // namespace stg
