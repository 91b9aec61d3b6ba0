// f32 -> bf16 rounding shared by the attention-side (attn_common.cuh) and the row kernels (model/row_ops.cuh): ops.ts
// bf16() / f32ToBF16Bits (nearest even) bit for bit for every non-NaN value, through the hardware conversion, one
// cvt.rn.bf16x2.f32 a pair where the integer rounding took ~6 instructions a value (docs/GPU-MODEL.md "Session 14").
// NaNs: the hardware gives the canonical 0x7fff, which is the CPU's result for the GPU's own arithmetic NaN
// (0x7fffffff; the CPU keeps a NaN's top half). kCpuNaN also keeps the top half of a NaN read from memory, as the
// CPU, with two compares and selects a pair. The row kernels take it (without it ptxas gave mo_hc_post 144 registers,
// one block per SM, 1.6x slower); the attention kernels do not (1.5-3.5% slower with it). Both measured under ncu:
// docs/GPU-MODEL.md "Session 14". The CPU emulator (MEGAMOE_EMU) runs the integer rounding.
#pragma once

namespace bf16cvt {

// The pair (lo, hi) as bf16x2, lo in the low half.
template <bool kCpuNaN>
__device__ __forceinline__ unsigned pack_rn(float lo, float hi) {
#ifdef MEGAMOE_EMU
  auto bits = [](float v) -> unsigned {
    const unsigned b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return b >> 16;
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  };
  return bits(lo) | (bits(hi) << 16);
#else
  unsigned r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));  // the FIRST source goes to the HIGH half
  if constexpr (kCpuNaN) {
    if (lo != lo) r = (r & 0xffff0000u) | (__float_as_uint(lo) >> 16);
    if (hi != hi) r = (r & 0x0000ffffu) | (__float_as_uint(hi) & 0xffff0000u);
  }
  return r;
#endif
}

// One value: its bf16 bits, or the bf16-rounded value as an f32.
template <bool kCpuNaN>
__device__ __forceinline__ unsigned bits_rn(float v) { return pack_rn<kCpuNaN>(v, 0.f) & 0xffffu; }
template <bool kCpuNaN>
__device__ __forceinline__ float round_rn(float v) { return __uint_as_float(pack_rn<kCpuNaN>(0.f, v) & 0xffff0000u); }

}  // namespace bf16cvt
