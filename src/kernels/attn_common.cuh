// Device helpers of the attention-side kernels (attention.cu, compressor.cu, indexer.cu): the CPU forward's rounding
// primitives (src/model/ops.ts, rope.ts) ported so the GPU rounds at the same points with the same results, and the
// paged-cache addressing of src/gpu-model/kv-cache.ts.
//
// Exactness notes (why double appears here): the CPU evaluates fp32 operations of the reference in f64 and rounds to
// f32 where the reference materialises a tensor. Where the f64 result is exact (sums of squares of bf16 values, the
// Hadamard butterflies, exp/cos/sin rounded once to f32) the GPU computes the same thing in double and rounds once,
// so it gets the same bits. Explicit __f*_rn intrinsics keep nvcc from contracting into FMAs.
#pragma once
#include <stdint.h>
#include "bf16_cvt.cuh"

namespace attn {

// ---- bf16 ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ float bf16_to_f32(uint16_t b) { return __uint_as_float(((unsigned)b) << 16); }

// Round to nearest even (ops.ts bf16(); a NaN becomes the canonical one: bf16_cvt.cuh).
__device__ __forceinline__ unsigned f32x2_to_bf16x2(float lo, float hi) { return bf16cvt::pack_rn<false>(lo, hi); }
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float v) { return (uint16_t)bf16cvt::bits_rn<false>(v); }
__device__ __forceinline__ float bf16_round(float v) { return bf16cvt::round_rn<false>(v); }

// ---- e4m3 / e2m1 rounding on values (ops.ts e4m3Round, e2m1Round, pow2Ceil) ----------------------------------------
__device__ __forceinline__ float e4m3_round(float v) {
  unsigned b = __float_as_uint(v);
  unsigned a = b & 0x7fffffffu;
  if (a >= 0x43e00000u) return v < 0.f ? -448.f : 448.f;  // |v| >= 448 (also inf)
  if (a < 0x3c800000u) {                                   // |v| < 2^-6: subnormal e4m3, multiples of 2^-9
    float s = fabsf(v) * 512.f;                            // exact (power of two)
    float q = floorf(s);
    float frac = s - q;                                    // exact
    if (frac > 0.5f || (frac == 0.5f && fmodf(q, 2.f) == 1.f)) q += 1.f;
    float r = q / 512.f;
    return v < 0.f ? -r : r;
  }
  unsigned r = (b + 0x7ffffu + ((b >> 20) & 1u)) & 0xfff00000u;
  float f = __uint_as_float(r);
  return f > 448.f ? 448.f : (f < -448.f ? -448.f : f);
}

__device__ __forceinline__ float e2m1_round(float v) {
  float a = fabsf(v);
  float r;
  if (a <= 0.25f) r = 0.f;
  else if (a < 0.75f) r = 0.5f;
  else if (a <= 1.25f) r = 1.f;
  else if (a < 1.75f) r = 1.5f;
  else if (a <= 2.5f) r = 2.f;
  else if (a < 3.5f) r = 3.f;
  else if (a <= 5.f) r = 4.f;
  else r = 6.f;
  return v < 0.f ? -r : r;
}

// 2^ceil(log2(r)) for a positive normal f32 r, from its bits.
__device__ __forceinline__ float pow2_ceil(float r) {
  unsigned bits = __float_as_uint(r);
  int e = (int)((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0u ? 1 : 0);
  return ldexpf(1.f, e);
}

// FP8 QAT simulation of one block of n values held in x (ops.ts fp8SimInPlace): s = 2^ceil(log2(max(amax,1e-4)/448)).
__device__ __forceinline__ void fp8_sim_block(float* x, int n) {
  float amax = 0.f;
  for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float s = pow2_ceil(__fmul_rn(fmaxf(amax, 1e-4f), 1.0f / 448.0f));
  for (int i = 0; i < n; i++) x[i] = __fmul_rn(e4m3_round(__fdiv_rn(x[i], s)), s);
}

// FP4 QAT simulation of one block (ops.ts fp4SimInPlace): s = 2^ceil(log2(max(amax, 6*2^-126)/6)), bf16 out.
__device__ __forceinline__ void fp4_sim_block(float* x, int n) {
  float amax = 0.f;
  for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
  const float s = pow2_ceil(__fmul_rn(fmaxf(amax, 6.0f * 1.17549435e-38f), 1.0f / 6.0f));
  for (int i = 0; i < n; i++) {
    float q = __fdiv_rn(x[i], s);
    q = fminf(fmaxf(q, -6.f), 6.f);
    x[i] = bf16_round(__fmul_rn(e2m1_round(q), s));
  }
}

// ---- RoPE (rope.ts): angle = f32(t * f_i), cos/sin rounded once to f32, then bf16(f32(a c - b s)) ------------------
// The CPU table holds fr(Math.cos(ang)); double cos/sin rounded to float give the same value (both are accurate to well
// under one double ulp, and a float rounding boundary that close is never hit in practice).
__device__ __forceinline__ void rope_cs(const float* freqs, int i, int t, float& c, float& s) {
  const float ang = __fmul_rn((float)t, freqs[i]);
  double sd, cd;
  sincos((double)ang, &sd, &cd);
  c = __double2float_rn(cd);
  s = __double2float_rn(sd);
}

// Rotates the pair (a, b) by the angle whose rope_cs values are c, s (inverse: by the conjugate).
__device__ __forceinline__ void rope_rotate(float& a, float& b, float c, float s, bool inverse) {
  if (inverse) s = -s;
  const float na = bf16_round(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
  const float nb = bf16_round(__fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)));
  a = na;
  b = nb;
}

// Rotates the pair (x[0], x[1]) by position t (inverse: by the conjugate).
__device__ __forceinline__ void rope_pair(float& a, float& b, const float* freqs, int i, int t, bool inverse) {
  float c, s;
  rope_cs(freqs, i, t, c, s);
  rope_rotate(a, b, c, s, inverse);
}

// ---- block reductions ----------------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); `red` holds 32 doubles of shared memory. All threads
// get the result. Sums of squares of bf16 values are exact in double, so the order does not matter.
__device__ __forceinline__ double block_sum_double(double v, double* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < nw; w++) t += red[w];
  return t;
}

// RMSNorm of one vector x[0, n) in shared memory, in place (ops.ts rmsNorm): rs = f32(1 / sqrt(f32(f32(ss/n) + eps))),
// y = bf16(f32(w * f32(x * rs))). `w` may be null (weightless).
__device__ __forceinline__ void rms_norm_shared(float* x, int n, const float* w, float eps, double* red) {
  double ss = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)x[i] * (double)x[i];
  ss = block_sum_double(ss, red);
  const float m = __double2float_rn(ss / (double)n);
  const float t = __double2float_rn((double)m + (double)eps);
  const float rs = __double2float_rn(1.0 / sqrt((double)t));
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = __fmul_rn(x[i], rs);
    x[i] = bf16_round(w ? __fmul_rn(w[i], v) : v);
  }
  __syncthreads();
}

// Walsh-Hadamard over n (a power of two) values in shared memory, times n^-1/2, bf16 out (ops.ts hadamardInPlace).
// The butterflies run in double on a copy (exact for bf16 inputs), like the CPU's f64 scratch.
__device__ __forceinline__ void hadamard_shared(float* x, double* tmp, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) tmp[i] = (double)x[i];
  __syncthreads();
  for (int h = 1; h < n; h <<= 1) {
    for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
      const int i = (p / h) * 2 * h + (p % h);
      const double a = tmp[i], b = tmp[i + h];
      tmp[i] = a + b;
      tmp[i + h] = a - b;
    }
    __syncthreads();
  }
  const double sc = 1.0 / sqrt((double)n);
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = bf16_round(__double2float_rn(tmp[i] * sc));
  __syncthreads();
}

// ---- paged caches (kv-cache.ts PagedView): pool [blocks, layers, block_rows, row_elems] bf16 -------------------------
struct Paged {
  uint16_t* base;
  const int* table;  // [slots, table_stride], -1 = no block
  int table_stride;
  int block_rows;
  int layer_slot;
  int layers;
  int row_elems;
};

__device__ __forceinline__ uint16_t* paged_row(const Paged& p, int slot, int row) {
  const int blk = p.table[(size_t)slot * p.table_stride + row / p.block_rows];
  return p.base + (((size_t)blk * p.layers + p.layer_slot) * p.block_rows + (row % p.block_rows)) * p.row_elems;
}

// Per-item metadata of one call (one item = one sequence's new tokens): [items, 4] int32.
struct Item {
  int slot;   // the sequence's cache slot
  int pos;    // P: position of the item's first new token
  int len;    // L: new tokens
  int row0;   // row of position P in this call's activations
};
__device__ __forceinline__ Item load_item(const int* items, int i) {
  const int* p = items + 4 * i;
  return Item{p[0], p[1], p[2], p[3]};
}

}  // namespace attn
