// bf16 x bf16 GEMMs of a decode step's few rows (m <= 16): D[b][r, n] = sum_k X[b][r, k] W[b][n, k], f32
// accumulation, f32 or bf16 out (round to nearest even), b over a strided batch. The decoder's bf16 projections (wo_a's
// groups, the compressors' a / g, weights_proj) stream MBs of weights for one to a few rows, where cuBLASLt's plans
// ran well below HBM speed (docs/GPU-MODEL.md); this is a weight-streaming kernel on the tensor cores.
//
// Swap A/B on mma.sync m16n8k16 (attn_mma.cuh): 16 weight rows are the M side, the token rows the N side (NT n-tiles of
// 8: m <= 8 or <= 16). A CTA of 8 warps owns one 16-column tile of D; warp w takes the K slice [w k/8, (w+1) k/8) in
// 32-wide steps, each lane loading 16 contiguous bytes of its weight rows g, g+8 and its token row(s) per step (the k
// order inside a step is permuted identically on both sides, which a dot product does not see), kUnroll steps' loads
// in flight. The 8 warps' partial tiles are summed through shared memory in warp order, so the result is the same bits
// on every run (not cuBLASLt's: another f32 summation order, which SPEC 5 allows for these GEMMs).
// Host (src/kernels/bf16-skinny.ts): k % 256 == 0, n % 16 == 0, 1 <= m <= 16, rows and strides 16-byte aligned.
#include <stdint.h>
#include "attn_common.cuh"
#include "attn_mma.cuh"

namespace {
constexpr int kSkThreads = 256;
constexpr int kSkWarps = kSkThreads / 32;

__device__ __forceinline__ uint4 ldg16(const uint16_t* p) { return *reinterpret_cast<const uint4*>(p); }

template <int NT, bool kF32Out>
__device__ __forceinline__ void skinny_body(const uint16_t* __restrict__ X, const uint16_t* __restrict__ W,
                                            void* __restrict__ D, int m, int k, long long ldx, long long ldd,
                                            long long sx, long long sw, long long sd) {
  constexpr int kUnroll = NT == 1 ? 8 : 4;
  __shared__ float red[kSkWarps][NT][32][4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const long long b = blockIdx.y;
  const int n0 = blockIdx.x * 16;
  const int ks = k / kSkWarps;  // a multiple of 32
  const int kbeg = warp * ks + 8 * t;
  const uint16_t* w0 = W + b * sw + (size_t)(n0 + g) * k + kbeg;
  const uint16_t* w1 = w0 + (size_t)8 * k;
  const uint16_t* xr[NT];
  bool xv[NT];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) {
    const int row = nt * 8 + g;
    xv[nt] = row < m;
    xr[nt] = X + b * sx + (long long)(xv[nt] ? row : 0) * ldx + kbeg;
  }
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; nt++) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
  const int steps = ks / 32;
  for (int s0 = 0; s0 < steps; s0 += kUnroll) {
    uint4 wa[kUnroll], wb[kUnroll], xb[kUnroll][NT];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (s0 + u < steps) {
        const int off = (s0 + u) * 32;
        wa[u] = ldg16(w0 + off);
        wb[u] = ldg16(w1 + off);
#pragma unroll
        for (int nt = 0; nt < NT; nt++) xb[u][nt] = xv[nt] ? ldg16(xr[nt] + off) : uint4{0u, 0u, 0u, 0u};
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      if (s0 + u < steps) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
          attn::mma_bf16_16816(acc[nt], wa[u].x, wb[u].x, wa[u].y, wb[u].y, xb[u][nt].x, xb[u][nt].y);
          attn::mma_bf16_16816(acc[nt], wa[u].z, wb[u].z, wa[u].w, wb[u].w, xb[u][nt].z, xb[u][nt].w);
        }
      }
    }
  }
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int i = 0; i < 4; i++) red[warp][nt][lane][i] = acc[nt][i];
  __syncthreads();
  if (warp != 0) return;
  // acc[nt][i]: D row (token) nt * 8 + 2t + (i & 1), column n0 + g + 8 (i >> 1)
#pragma unroll
  for (int nt = 0; nt < NT; nt++)
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float s = red[0][nt][lane][i];
      for (int w = 1; w < kSkWarps; w++) s += red[w][nt][lane][i];
      const int r = nt * 8 + 2 * t + (i & 1);
      if (r >= m) continue;
      const long long at = b * sd + (long long)r * ldd + n0 + g + 8 * (i >> 1);
      if (kF32Out) reinterpret_cast<float*>(D)[at] = s;
      else reinterpret_cast<uint16_t*>(D)[at] = attn::f32_to_bf16_bits(s);
    }
}
}  // namespace

// grid (n / 16, batch count), 256 threads. f32_out: D is f32 (else bf16). Strides and leading dims in elements.
extern "C" __global__ void __launch_bounds__(kSkThreads)
bf16_skinny_gemm(const uint16_t* __restrict__ X, const uint16_t* __restrict__ W, void* __restrict__ D, int m, int k,
                 long long ldx, long long ldd, long long sx, long long sw, long long sd, int f32_out) {
  if (m <= 8) {
    if (f32_out) skinny_body<1, true>(X, W, D, m, k, ldx, ldd, sx, sw, sd);
    else skinny_body<1, false>(X, W, D, m, k, ldx, ldd, sx, sw, sd);
  } else {
    if (f32_out) skinny_body<2, true>(X, W, D, m, k, ldx, ldd, sx, sw, sd);
    else skinny_body<2, false>(X, W, D, m, k, ldx, ldd, sx, sw, sd);
  }
}
