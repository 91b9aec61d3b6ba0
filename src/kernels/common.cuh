// Small device helpers shared by the megamoe kernels: bf16 widening, e4m3 packing, warp reductions,
// IEEE-exact f32 arithmetic. Self-contained on purpose (no CUDA headers): the kernels compile the same
// way under nvcc and NVRTC, and nothing here depends on the toolkit's include path.
#pragma once

namespace megamoe {

// bf16 is the top half of an f32, so widening is a shift and is exact.
__device__ __forceinline__ float bf16_lo_to_f32(unsigned int pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_hi_to_f32(unsigned int pair) { return __uint_as_float(pair & 0xffff0000u); }

// Two f32 -> two e4m3 codes (round to nearest even, saturate to +-448): SPEC 3's conversion.
// PTX puts its FIRST source operand in the HIGH byte, so `lo` (the lower address) goes second.
__device__ __forceinline__ unsigned int f32x2_to_e4m3x2(float lo, float hi) {
  unsigned short packed;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(packed) : "f"(hi), "f"(lo));
  return packed;
}

// Four f32 -> four e4m3 codes in one 32-bit word, lowest address in the lowest byte.
__device__ __forceinline__ unsigned int f32x4_to_e4m3x4(float a, float b, float c, float d) {
  return f32x2_to_e4m3x2(a, b) | (f32x2_to_e4m3x2(c, d) << 16);
}

// Explicitly rounded f32 operations: immune to -use_fast_math and to FMA contraction, so a kernel's
// arithmetic is exactly the CPU reference's (Math.fround after each step).
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }

// Max over `width` consecutive lanes (width a power of two <= 32) with every lane of the warp taking part.
template <int WIDTH>
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int offset = WIDTH / 2; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

}  // namespace megamoe
