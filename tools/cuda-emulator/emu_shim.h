// The CUDA device vocabulary the attention-side kernels use (src/kernels/attention.cu, compressor.cu, indexer.cu),
// mapped onto host C++ so the same source runs on a CPU: every CUDA thread of a block is a fiber, blocks run one
// after another, __syncthreads and the warp shuffles are cooperative barriers. For checking a kernel's LOGIC
// (indexing, barriers, rounding) on a machine without a GPU; it says nothing about speed. Only kernels written in
// plain CUDA C++ can run here (no PTX asm, no wgmma / TMA).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

using std::max;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static

namespace emu {
struct Dim3 { unsigned x, y, z; };
struct Fiber;
Fiber* current();
const Dim3& thread_idx();
extern Dim3 g_block_idx, g_block_dim, g_grid_dim;
unsigned char* dyn_smem();
void sync_block();
void sync_warp();
// lane values of the calling warp: write own, read another lane's (with the two barriers around it)
uint64_t exchange(uint64_t mine, int src_lane);
int lane_id();
}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)

inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }

template <typename T>
inline uint64_t emu_bits(T v) { uint64_t b = 0; std::memcpy(&b, &v, sizeof(T)); return b; }
template <typename T>
inline T emu_from(uint64_t b) { T v; std::memcpy(&v, &b, sizeof(T)); return v; }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask) {
  return emu_from<T>(emu::exchange(emu_bits(v), emu::lane_id() ^ mask));
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, int delta) {
  const int l = emu::lane_id();
  return emu_from<T>(emu::exchange(emu_bits(v), l >= delta ? l - delta : l));
}

// Fibers share one OS thread and switch only at barriers, so a plain add is atomic here.
inline int atomicAdd(int* p, int v) { const int old = *p; *p = old + v; return old; }

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
// built with -ffp-contract=off: each operation is one IEEE round-to-nearest-even step, as the _rn intrinsics
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __double2float_rn(double d) { return static_cast<float>(d); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }  // one rounding, as on the GPU
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }

// the CUDA vector types the kernels load through (16-byte aligned, as on the GPU)
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };

// __dp4a(a, b, c): c + the sum of the four signed byte products of a and b (int32 wrap-around, as the GPU's IDP4A)
inline int __dp4a(int a, int b, int c) {
  uint32_t acc = static_cast<uint32_t>(c);
  for (int i = 0; i < 4; i++) {
    const int x = static_cast<int8_t>(static_cast<uint32_t>(a) >> (8 * i));
    const int y = static_cast<int8_t>(static_cast<uint32_t>(b) >> (8 * i));
    acc += static_cast<uint32_t>(x * y);
  }
  return static_cast<int>(acc);
}
// __byte_perm(x, y, s): byte n of the result is byte (s >> 4n) & 7 of the 8 bytes {y, x} (x the low four)
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t v = (static_cast<uint64_t>(y) << 32) | x;
  unsigned r = 0;
  for (int n = 0; n < 4; n++) r |= static_cast<unsigned>((v >> (8 * ((s >> (4 * n)) & 7u))) & 0xffu) << (8 * n);
  return r;
}

// ---- additions for the tensor-core attention kernel (attn_mma.cuh's emulated mma, attention.cu's vector loads) ----
#ifndef MEGAMOE_EMU
#define MEGAMOE_EMU 1  // kernels pick their plain-CUDA fallbacks (no inline PTX here)
#endif
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane) {
  return emu_from<T>(emu::exchange(emu_bits(v), src_lane & 31));
}
#define EMU_HAS_SHFL_SYNC 1  // (emu_model_ops.h then keeps its own copy out)
struct alignas(8) float2 { float x, y; };
// All 32 lanes' `words` 32-bit values of the calling warp at once (one exchange instead of one per shuffle): what the
// emulated mma.sync of attn_mma.cuh uses, so flash-sized tensor-core kernels run in reasonable time here.
#define EMU_HAS_WARP_ALLGATHER 1
template <int N>
inline void emu_warp_allgather(const unsigned (&mine)[N], unsigned (&all)[32][N]) {
  static unsigned buf[32][32][N];  // [warp][lane][word]: fibers switch only at barriers, blocks run one at a time
  const emu::Dim3& ti = emu::thread_idx();
  const int linear = (int)(ti.x + blockDim.x * (ti.y + blockDim.y * ti.z));
  const int w = linear >> 5, l = linear & 31;
  for (int i = 0; i < N; i++) buf[w][l][i] = mine[i];
  emu::sync_warp();
  for (int j = 0; j < 32; j++)
    for (int i = 0; i < N; i++) all[j][i] = buf[w][j][i];
  emu::sync_warp();
}
