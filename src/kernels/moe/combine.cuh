// MoE combine (SPEC 3) of one token's 8 consecutive columns (one 16-byte vector of bf16), shared by moe_combine.cu
// (the unfused pipeline's kernel) and the fused MegaMoE kernel (mega_moe.cu). The contract is moe_combine.cu's
// header; the including file defines CMB_HIDDEN (H), CMB_TOPK (K), CMB_EXPERTS (E), CMB_SHARED first.
#pragma once

namespace cmb {

constexpr int kHidden = CMB_HIDDEN;
constexpr int kTopK = CMB_TOPK;
constexpr int kExperts = CMB_EXPERTS;
constexpr int kShared = CMB_SHARED;
constexpr int kVecPerRow = kHidden / 8;  // 16-byte vectors of 8 bf16

static_assert(kHidden % 128 == 0, "the hidden size must be a multiple of 128 (SPEC 4)");
static_assert(kTopK >= 1 && kTopK <= 32, "top-k must be in [1, 32]");

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

// Vector v of token t. kCoherent: plain loads (the rows were written earlier in the same launch, by other CTAs);
// otherwise read-only-cache loads (a separate kernel).
template <bool kCoherent>
__device__ __forceinline__ uint4 load_vec(const uint4* p) {
  if (kCoherent) return *p;
  return __ldg(p);
}

// The loads of one vector (slot rows, then the K + 1 rows' vectors) apart from its sum, so a caller can put
// several vectors' loads in flight before summing any (the fused kernel's combine runs on one CTA per SM).
struct VecIn {
  int rows[kTopK];
  uint4 vals[kTopK + 1];
};

__device__ __forceinline__ void load_rows(const int* __restrict__ slot_row, int t, VecIn& in) {
#pragma unroll
  for (int k = 0; k < kTopK; k++) in.rows[k] = slot_row[(size_t)t * kTopK + k];
}

template <bool kCoherent>
__device__ __forceinline__ void load_vals(const uint4* __restrict__ out, const int* __restrict__ group_offset, int t,
                                          int v, VecIn& in) {
#pragma unroll
  for (int k = 0; k < kTopK; k++)
    in.vals[k] = in.rows[k] >= 0 ? load_vec<kCoherent>(out + (size_t)in.rows[k] * kVecPerRow + v) : make_uint4(0, 0, 0, 0);
  if (kShared) in.vals[kTopK] = load_vec<kCoherent>(out + (size_t)(group_offset[kExperts] + t) * kVecPerRow + v);
}

// The fused kernel's combine buffer has no padding: token t's routed rows sit at t K + k, in slot order (its masked
// slots' rows are never written nor read), and its shared-expert row at shared0 + t (dsp::rank_chunk<true>).
template <bool kCoherent>
__device__ __forceinline__ void load_slot_vals(const uint4* __restrict__ out, int t, int v, long long shared0, VecIn& in) {
#pragma unroll
  for (int k = 0; k < kTopK; k++)
    in.vals[k] = in.rows[k] >= 0 ? load_vec<kCoherent>(out + ((size_t)t * kTopK + k) * kVecPerRow + v) : make_uint4(0, 0, 0, 0);
  if (kShared) in.vals[kTopK] = load_vec<kCoherent>(out + (size_t)(shared0 + t) * kVecPerRow + v);
}

__device__ __forceinline__ void sum_vec(const VecIn& in, int t, int v, uint4* __restrict__ y_routed,
                                        uint4* __restrict__ y) {
  float acc[8];
#pragma unroll
  for (int i = 0; i < 8; i++) acc[i] = 0.0f;
#pragma unroll
  for (int k = 0; k < kTopK; k++) {
    if (in.rows[k] < 0) continue;  // masked slot: skipped, not added as zero (identical anyway: +0 + x = x)
    float f[8];
    widen(in.vals[k], f);
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = megamoe::add_rn(acc[i], f[i]);
  }
  const uint4 routed = narrow(acc);
  y_routed[(size_t)t * kVecPerRow + v] = routed;
  if (kShared) {
    float r[8], s[8];
    widen(routed, r);
    widen(in.vals[kTopK], s);
#pragma unroll
    for (int i = 0; i < 8; i++) r[i] = megamoe::add_rn(r[i], s[i]);
    y[(size_t)t * kVecPerRow + v] = narrow(r);
  }
}

template <bool kCoherent>
__device__ __forceinline__ void combine_vec(const uint4* __restrict__ out, const int* __restrict__ slot_row,
                                            const int* __restrict__ group_offset, int t, int v,
                                            uint4* __restrict__ y_routed, uint4* __restrict__ y) {
  VecIn in;
  load_rows(slot_row, t, in);
  load_vals<kCoherent>(out, group_offset, t, v, in);
  sum_vec(in, t, v, y_routed, y);
}

}  // namespace cmb
