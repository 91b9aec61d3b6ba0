// Seeded random FP8 expert weights generated on the GPU, for benchmarks and large-shape tests: a V4-Pro layer is
// 385 experts x 66 MB, which would take minutes to generate on the host and seconds to upload; here it takes
// milliseconds. Counter-based (every element is a pure function of (seed, index)), so results do not depend on the
// launch shape. The values are plausible, not checkpoint-exact: codes ~ e4m3(N(0, 1) * code_std) (a normal from the
// sum of four uniform bytes, so |code| stays well inside e4m3's +-448 for code_std <= 100), and scales
// base * (0.75 + 0.5 * u).
#include "common.cuh"

namespace {

__device__ __forceinline__ unsigned int mix32(unsigned long long x) {
  // splitmix64 finaliser, folded to 32 bits
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return (unsigned int)(x ^ (x >> 32));
}

// Approximately N(0, 1): (sum of 4 uniform bytes - 510) / 147.8 (the sum's standard deviation).
__device__ __forceinline__ float approx_normal(unsigned int h) {
  const int s = (int)(h & 0xff) + (int)((h >> 8) & 0xff) + (int)((h >> 16) & 0xff) + (int)(h >> 24);
  return (float)(s - 510) * (1.0f / 147.8f);
}

}  // namespace

// n16 = number of 16-byte groups; element i of the buffer depends on (seed, i) only.
extern "C" __global__ void __launch_bounds__(256)
megamoe_fill_e4m3(uint4* __restrict__ out, unsigned long long n16, unsigned long long seed, float code_std) {
  for (unsigned long long v = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; v < n16;
       v += (unsigned long long)gridDim.x * blockDim.x) {
    const unsigned long long base = (seed << 40) ^ (v * 16);
    float f[16];
#pragma unroll
    for (int i = 0; i < 16; i++) f[i] = approx_normal(mix32(base + i)) * code_std;
    uint4 q;
    q.x = megamoe::f32x4_to_e4m3x4(f[0], f[1], f[2], f[3]);
    q.y = megamoe::f32x4_to_e4m3x4(f[4], f[5], f[6], f[7]);
    q.z = megamoe::f32x4_to_e4m3x4(f[8], f[9], f[10], f[11]);
    q.w = megamoe::f32x4_to_e4m3x4(f[12], f[13], f[14], f[15]);
    out[v] = q;
  }
}

extern "C" __global__ void __launch_bounds__(256)
megamoe_fill_scales(float* __restrict__ out, unsigned long long n, unsigned long long seed, float base) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const float u = (float)(mix32((seed << 40) ^ i) >> 8) * (1.0f / 16777216.0f);
    out[i] = base * (0.75f + 0.5f * u);
  }
}

// bf16 hidden states ~ N(0, 1) (x is RMS-normalised), for benchmarks.
extern "C" __global__ void __launch_bounds__(256)
megamoe_fill_bf16_normal(unsigned short* __restrict__ out, unsigned long long n, unsigned long long seed) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    const float f = approx_normal(mix32((seed << 40) ^ i));
    const unsigned int bits = __float_as_uint(f);
    out[i] = (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}
