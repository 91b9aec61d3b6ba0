// Device helpers of the non-attention model kernels (model_ops.cu), written so each result is the CPU forward's
// (src/model/ops.ts, model.ts, rope.ts) bit for bit:
//  - The CPU evaluates an "fp32" step in f64 and rounds with Math.fround where the reference materialises an fp32
//    value; here the same step is the same f64 operation followed by __double2float_rn, and a pure f32 step is an
//    explicitly rounded __f*_rn intrinsic (immune to FMA contraction).
//  - Sums of squares of bf16 values are exact in f64 (16-bit products) unless a row's magnitudes span more than
//    ~2^18; dot products of bf16 x f32 values have exact f64 products. Either way the GPU differs from the CPU's f64
//    loop only in the order of the f64 additions, far below the f32 rounding that follows.
//  - bf16 rounding of an f64 value goes through f32 first, as the CPU's bf16() (a Float32Array store) does.
#pragma once
#include "../common.cuh"
#include "../bf16_cvt.cuh"

namespace mo {

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

constexpr u32 kFull = 0xffffffffu;
constexpr float kAmaxFloor = 1e-4f;          // ops.ts AMAX_FLOOR = fround(1e-4)
constexpr float kInv448 = 1.0f / 448.0f;     // ops.ts INV448 = fround(1 / 448), folded with IEEE rounding

// f32 -> bf16 bits, nearest even; a NaN keeps its payload's top half (ops.ts roundBF16 + f32ToBF16Bits): bf16_cvt.cuh.
__device__ __forceinline__ u32 f32_to_bf16_bits(float f) { return bf16cvt::bits_rn<true>(f); }
__device__ __forceinline__ float bf16_round(float f) { return bf16cvt::round_rn<true>(f); }
// ops.ts bf16(v) for an f64 v: a Float32Array store (nearest) and then the bf16 rounding.
__device__ __forceinline__ float bf16_round_f64(double v) { return bf16_round(__double2float_rn(v)); }
__device__ __forceinline__ float bf16_bits_to_f32(u32 bits) { return __uint_as_float(bits << 16); }

// Eight bf16 (one uint4) widened to f32, lowest address first.
__device__ __forceinline__ void unpack8(const uint4 v, float f[8]) {
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = megamoe::bf16_lo_to_f32(w[i]);
    f[2 * i + 1] = megamoe::bf16_hi_to_f32(w[i]);
  }
}
// Eight bf16-exact f32 values -> one uint4 of bf16 bits (exact: the values are already bf16).
__device__ __forceinline__ uint4 pack8(const float f[8]) {
  u32 w[4];
#pragma unroll
  for (int i = 0; i < 4; i++) w[i] = (__float_as_uint(f[2 * i]) >> 16) | (__float_as_uint(f[2 * i + 1]) & 0xffff0000u);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;  // a butterfly: every lane holds the same value
}

// The RMS factor of ops.ts rmsNorm / model.ts hcMix: fround(1 / sqrt(fround(fround(ss / n) + eps))), eps an f64.
__device__ __forceinline__ float rms_factor(double ss, int n, double eps) {
  const float mean = __double2float_rn(__ddiv_rn(ss, (double)n));
  const float t = __double2float_rn(__dadd_rn((double)mean, eps));
  return __double2float_rn(__ddiv_rn(1.0, __dsqrt_rn((double)t)));
}

// One output value of rmsNorm: bf16(w * (x * rs)) or bf16(x * rs), f32 products as fround(a * b).
__device__ __forceinline__ float norm_value(float x, float rs, const float* w, int col) {
  const float v = __fmul_rn(x, rs);
  return bf16_round(w ? __fmul_rn(__ldg(w + col), v) : v);
}

// ops.ts pow2Ceil for a positive normal f32: 2^(exponent + (mantissa != 0)).
__device__ __forceinline__ float pow2_ceil(float r) {
  const u32 bits = __float_as_uint(r);
  const int e = (int)((bits >> 23) & 0xffu) + ((bits & 0x7fffffu) != 0u ? 1 : 0);
  return __uint_as_float((u32)e << 23);
}

// act_quant (V4-MODEL 8.2, ops.ts actQuant) of one 128-value block held by 16 consecutive lanes, 8 values each:
// amax = max(|x|, 1e-4), s = pow2Ceil(amax * fround(1/448)) or fround(amax / 448), q = e4m3(fround(x / s)).
// The whole warp calls it (full-warp shuffles); lanes without data pass zeros, and since blocks are 16-lane
// aligned they never touch a real block's amax. Returns s; codes8 receives the 8 codes, lowest address first.
__device__ __forceinline__ float quant8(const float f[8], bool pow2, uint2& codes8) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(f[i]));
  amax = megamoe::group_max<16>(amax);
  amax = fmaxf(amax, kAmaxFloor);
  const float s = pow2 ? pow2_ceil(__fmul_rn(amax, kInv448)) : __fdiv_rn(amax, 448.0f);
  codes8.x = megamoe::f32x4_to_e4m3x4(__fdiv_rn(f[0], s), __fdiv_rn(f[1], s), __fdiv_rn(f[2], s), __fdiv_rn(f[3], s));
  codes8.y = megamoe::f32x4_to_e4m3x4(__fdiv_rn(f[4], s), __fdiv_rn(f[5], s), __fdiv_rn(f[6], s), __fdiv_rn(f[7], s));
  return s;
}

// Stores one warp step of an output row: 8 bf16 values per lane at column `col` (when valid), and optionally their
// FP8 codes (row-major [rows, n]) and the block scale in the grouped GEMM's MN-major layout sf[(col/128) * sf_ld + row].
__device__ __forceinline__ void store_row_step(const float f[8], bool valid, int lane, int row, int col, int n,
                                               u16* __restrict__ y, long long y_stride, u8* __restrict__ q,
                                               float* __restrict__ sf, int sf_ld, bool pow2) {
  if (valid && y) *reinterpret_cast<uint4*>(y + (size_t)row * y_stride + col) = pack8(f);
  if (q) {  // uniform across the warp: q is a kernel argument
    uint2 codes;
    const float s = quant8(f, pow2, codes);
    if (valid) {
      *reinterpret_cast<uint2*>(q + (size_t)row * n + col) = codes;
      if ((lane & 15) == 0) sf[(size_t)(col / 128) * sf_ld + row] = s;
    }
  }
}

// Sigmoid as model.ts: 1 / (1 + Math.exp(-z)) in f64.
__device__ __forceinline__ double sigmoid_f64(float z) { return __ddiv_rn(1.0, __dadd_rn(1.0, exp(-(double)z))); }

}  // namespace mo
