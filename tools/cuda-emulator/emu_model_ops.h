// The extra device vocabulary of src/kernels/model_ops.cu (the model's row ops) for the CPU emulator, on top of
// emu_shim.h (which has the vector types and __int_as_float): their make_ functions, __ldg, the f64 _rn intrinsics, bit casts, and a software e4m3 conversion standing in for
// PTX cvt.rn.satfinite.e4m3x2.f32 (build.sh rewrites common.cuh's asm line into a call of emu_e4m3x2).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifndef __restrict__
#define __restrict__ __restrict
#endif

inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

template <typename T>
inline T __ldg(const T* p) { return *p; }

inline double __longlong_as_double(long long b) { double d; std::memcpy(&d, &b, 8); return d; }
// -ffp-contract=off: each is one IEEE round-to-nearest-even step, as on the GPU
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

// One f32 -> e4m3 code, round to nearest even, saturating to +-448 (satfinite), NaN -> 0x7f (sign kept).
inline unsigned emu_e4m3(float v) {
  unsigned b; std::memcpy(&b, &v, 4);
  const unsigned sign = (b >> 24) & 0x80u;
  if (std::isnan(v)) return 0x7fu | sign;
  const float a = std::fabs(v);
  if (a >= 448.0f) return 0x7eu | sign;
  if (a < 0.015625f) {  // below 2^-6: subnormal codes, multiples of 2^-9 (code 8 is the smallest normal, 2^-6)
    return (unsigned)std::nearbyint(a * 512.0f) | sign;  // exact scaling, then RNE
  }
  int e = std::ilogb(a);                                   // -6 .. 8
  float m = std::nearbyint(std::ldexp(a, 3 - e));          // 8 .. 16, RNE on the 3 mantissa bits
  if (m >= 16.0f) { m = 8.0f; e++; }
  const unsigned code = ((unsigned)(e + 7) << 3) | ((unsigned)m - 8u);
  return (code > 0x7eu ? 0x7eu : code) | sign;             // 448 < a < 464 rounds to 448 (0x7e)
}
// The PTX order: the FIRST source (hi) goes to the high byte.
inline unsigned short emu_e4m3x2(float lo, float hi) { return (unsigned short)(emu_e4m3(lo) | (emu_e4m3(hi) << 8)); }

// __shfl_sync (emu_shim.h has the xor / up forms): lane src_lane's value of the calling warp.
#ifndef EMU_HAS_SHFL_SYNC
#define EMU_HAS_SHFL_SYNC 1
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane) { return emu_from<T>(emu::exchange(emu_bits(v), src_lane & 31)); }
#endif
