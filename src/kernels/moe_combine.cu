// MoE combine (SPEC 3): per token, y_routed = bf16(sum over its K slots of f32(o_j)) and, with the shared expert,
// y = bf16(f32(y_routed) + f32(y_shared)). o_j and y_shared are bf16 rows of the L2 grouped GEMM's output, found
// through the dispatch's slot_row [T, K] (-1 = masked slot, contributes nothing) and the shared expert's rows
// (group_offset[E] + t). The sum runs over k = 0..K-1 in order, starting from +0, exactly as the CPU reference.
//
// Work split: a thread owns 8 consecutive columns (one 16-byte vector of bf16) of one token; blockIdx.y is the token.
// Its K + 1 loads are independent, so they are all in flight at once.
#include "common.cuh"

#ifndef COMBINE_HIDDEN
#define COMBINE_HIDDEN 4096
#endif
#ifndef COMBINE_TOPK
#define COMBINE_TOPK 6
#endif
#ifndef COMBINE_EXPERTS
#define COMBINE_EXPERTS 256  // routed experts E: the shared expert's group offset is group_offset[E]
#endif
#ifndef COMBINE_SHARED
#define COMBINE_SHARED 1
#endif

namespace {

constexpr int kHidden = COMBINE_HIDDEN;
constexpr int kTopK = COMBINE_TOPK;
constexpr int kExperts = COMBINE_EXPERTS;
constexpr int kShared = COMBINE_SHARED;
constexpr int kVecPerRow = kHidden / 8;  // 16-byte vectors of 8 bf16
constexpr int kThreads = 128;

static_assert(kHidden % 128 == 0, "COMBINE_HIDDEN must be a multiple of 128 (SPEC 4)");
static_assert(kTopK >= 1 && kTopK <= 32, "COMBINE_TOPK must be in [1, 32]");

// f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (numerics/bf16.ts encodeBF16).
__device__ __forceinline__ unsigned int f32_to_bf16_bits(float f) {
  const unsigned int bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return ((bits >> 16) & 0x8000u) | 0x7fc0u;
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ unsigned int pack_bf16x2(float lo, float hi) {
  return f32_to_bf16_bits(lo) | (f32_to_bf16_bits(hi) << 16);
}

__device__ __forceinline__ void widen(const uint4& v, float (&f)[8]) {
  f[0] = megamoe::bf16_lo_to_f32(v.x); f[1] = megamoe::bf16_hi_to_f32(v.x);
  f[2] = megamoe::bf16_lo_to_f32(v.y); f[3] = megamoe::bf16_hi_to_f32(v.y);
  f[4] = megamoe::bf16_lo_to_f32(v.z); f[5] = megamoe::bf16_hi_to_f32(v.z);
  f[6] = megamoe::bf16_lo_to_f32(v.w); f[7] = megamoe::bf16_hi_to_f32(v.w);
}

__device__ __forceinline__ uint4 narrow(const float (&f)[8]) {
  return make_uint4(pack_bf16x2(f[0], f[1]), pack_bf16x2(f[2], f[3]), pack_bf16x2(f[4], f[5]), pack_bf16x2(f[6], f[7]));
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads)
megamoe_combine(const uint4* __restrict__ out,        // bf16 [M_cap, H]: the L2 GEMM's rows
                const int* __restrict__ slot_row,     // [T, K]
                const int* __restrict__ group_offset, // [E + shared + 1]
                int num_tokens,
                uint4* __restrict__ y_routed,         // bf16 [T, H]
                uint4* __restrict__ y) {              // bf16 [T, H] (routed + shared); unused without a shared expert
  const int v = blockIdx.x * kThreads + threadIdx.x;
  const int t = blockIdx.y;
  if (v >= kVecPerRow || t >= num_tokens) return;

  int rows[kTopK];
#pragma unroll
  for (int k = 0; k < kTopK; k++) rows[k] = __ldg(slot_row + (size_t)t * kTopK + k);
  uint4 vals[kTopK + 1];
#pragma unroll
  for (int k = 0; k < kTopK; k++) vals[k] = rows[k] >= 0 ? __ldg(out + (size_t)rows[k] * kVecPerRow + v) : make_uint4(0, 0, 0, 0);
  if (kShared) vals[kTopK] = __ldg(out + (size_t)(__ldg(group_offset + kExperts) + t) * kVecPerRow + v);

  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; i++) acc[i] = 0.0f;
#pragma unroll
  for (int k = 0; k < kTopK; k++) {
    if (rows[k] < 0) continue;  // masked slot: skipped, not added as zero (identical anyway: +0 + x = x)
    float f[8];
    widen(vals[k], f);
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = megamoe::add_rn(acc[i], f[i]);
  }
  const uint4 routed = narrow(acc);
  y_routed[(size_t)t * kVecPerRow + v] = routed;
  if (kShared) {
    float r[8], s[8];
    widen(routed, r);
    widen(vals[kTopK], s);
#pragma unroll
    for (int i = 0; i < 8; i++) r[i] = megamoe::add_rn(r[i], s[i]);
    y[(size_t)t * kVecPerRow + v] = narrow(r);
  }
}
