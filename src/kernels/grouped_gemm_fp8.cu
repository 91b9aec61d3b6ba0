// Block-scaled FP8 grouped GEMM for sm_90a (SPEC 3): the engine of the unfused MoE pipeline.
//
//   C[m, n] = sum_kb ( sum_{k in kb} A[m, k] * B[g][n, k] ) * sfa[m, kb] * sfb[g][n / 128, kb]
//
// A   e4m3 [m_cap, K] row-major: the permuted activations, rows grouped by expert, each group's segment starting at
//     a multiple of the kernel's row tile (128 rows for the "normal" kernel, 16 for the "decode" kernel).
// sfa f32 MN-major [K/128, m_cap] (element (kb, m) at kb * m_cap + m): one TMA box of a row tile's scales per K block.
// B   e4m3 [G, N, K] row-major, addressed as a 2D tensor [G * N, K]; sfb f32 [G, N/128, K/128] (K blocks innermost).
// tile_group int32 [m_cap / row_tile]: the expert that owns each row tile, -1 = skip; *num_m_tiles (device memory)
// says how many row tiles are live, so the launch shape never changes with the routing (CUDA-graph friendly).
//
// Each 128-wide K block is accumulated by the tensor cores (4 x wgmma k32) into a fresh f32 accumulator, which the
// consumer threads then promote: total += partial * (sfa * sfb). The tensor cores' internal accumulation is never
// trusted across K blocks (SPEC 3).
//
// Two kernels share this scheme:
//  * normal (prefill): a CTA tile is 128 rows x (128 * NSUB) columns. Producer warpgroup (one thread issues TMA,
//    registers given back with setmaxnreg) + 2 consumer warpgroups (64 rows each, registers raised to 232). For
//    NSUB = 2 each consumer handles its 64 x 256 tile as two 64 x 128 halves one after the other, reusing one
//    64-register wgmma accumulator, so the promoted totals (128 registers) and the accumulator fit the budget.
//    Options: 2-CTA clusters with TMA multicast of the weight tile (GG_MCAST 1) or of the activation tile
//    (GG_MCAST 2), and a bf16 epilogue through shared memory + TMA stores (GG_STORE 1, needs tmap_d).
//  * decode (swap A/B): for 1-16 tokens per expert the weights are the big operand, so they take wgmma's M side
//    (64-row sub-tiles) and the tokens its N side (N = 16): D^T = B * A^T. One consumer warpgroup; the CTA streams
//    64 * MSUB weight rows through a deep pipeline. This path is memory-bound by design.
// Both are persistent (grid = number of SMs), visiting work units round-robin: unit u goes to CTA u % gridDim.x.
//
// Epilogues:
//  * BF16 out (EPI 0): D bf16 [m_cap, N], round to nearest even (the down projection).
//  * SwiGLU + FP8 out (EPI 1), on TRANSFORMED L1 weights (SPEC "Weight transform", N = 2I): a 256-row transformed
//    tile holds gate and up rows of 128 activation columns, so gate/up partners sit in the same thread's registers.
//    u = clamp(u, -L, L), g = min(g, L) when L > 0; a = silu(g) * u * w[m]; then per row per 128 columns of `a`:
//    s = 2^ceil(log2(max(amax, 1e-4) / 448)), q = e4m3(a / s). Writes a_fp8 [m_cap, I] and its scales MN-major
//    [I/128, m_cap], i.e. exactly the A / sfa layout that the down projection (this kernel, EPI 0) reads.
//
// Compile-time shape: GG_SWAP (0 normal, 1 decode), GG_EPI (0 bf16, 1 swiglu), GG_N, GG_K (multiples of 128),
// GG_SUB (normal: NSUB in {1, 2}; decode: MSUB in {1, 2, 4}), GG_STAGES, GG_MCAST (normal: 0 none, 1 weights,
// 2 activations; default 0), GG_STORE (normal bf16: 1 = TMA store; default 0), GG_WTILED (weight layout: 0 = rows
// [G, N, K], 1 = tiled [G, N/128, K/128, 128, 128]; default 0; see weight_coord below), GG_SPLITK (decode bf16: K
// splits per unit over CTAs, reduced deterministically; default 1; gemm/grouped.cuh decode_body). The launcher
// (src/kernels/grouped-gemm.ts) picks these and builds the tensor maps; the harness (tools/gemm-harness)
// instantiates the templates itself and defines GG_NO_ENTRY.
//
// Kernel parameters (one ABI for every variant): tmap_a (A, box 128 K x rowTile rows; 64 rows with GG_MCAST 2),
// tmap_b (weights as [G*N, K], box 128 x 128 rows normal / 64*MSUB rows decode; GG_WTILED 1: as [G*N*K/128, 128],
// box 128 x 128 rows, 64 rows for MSUB 1), tmap_sfa (f32 [K/128, m_cap], box
// rowTile x 1), tmap_d (bf16 [m_cap, N], box 64 x 64, 128B swizzle; read only with GG_STORE 1), sfb, tile_group,
// num_m_tiles, out, out_sf, row_weight, swiglu_limit, m_cap, partial (f32 GG_SPLITK x 16 x N per live row tile) and
// arrivals (int32 N/(64 MSUB) per live row tile, zeroed once) for GG_SPLITK > 1, else null.
#include "common.cuh"
#include "gemm/ptx.cuh"
#include "gemm/wgmma_e4m3.cuh"
#include "gemm/pipeline.cuh"
#include "gemm/grouped.cuh"

// ------------------------------------------------------------------------------------------------------------------
// Kernel entry points. Templates for the harness; one extern "C" entry, specialised by -D defines, for the launcher.
// ------------------------------------------------------------------------------------------------------------------
#define GG_KERNEL_PARAMS                                                                                        \
  const __grid_constant__ gg::TmaDesc tmap_a, const __grid_constant__ gg::TmaDesc tmap_b,                        \
      const __grid_constant__ gg::TmaDesc tmap_sfa, const __grid_constant__ gg::TmaDesc tmap_d,                   \
      const float *__restrict__ sfb, const int *__restrict__ tile_group, const int *__restrict__ num_m_tiles,      \
      void *__restrict__ out, float *__restrict__ out_sf, const float *__restrict__ row_weight, float swiglu_limit, \
      int m_cap, float *__restrict__ partial, int *__restrict__ arrivals
// The flat kernel parameters packed into the bodies' argument struct, and a fresh ring (the GEMM owns its setup).
#define GG_KERNEL_ARGS                                                                                           \
  gg::GemmArgs{&tmap_a, &tmap_b, &tmap_sfa, &tmap_d, sfb, tile_group, num_m_tiles, out, out_sf, row_weight,        \
               swiglu_limit, m_cap, partial, arrivals},                                                          \
      ring

template <int kN, int kK, int kNSub, int kStages, int kEpi, int kStore, int kWTiled = 0>
__global__ void __launch_bounds__(384, 1) gg_normal_kernel(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::normal_body<kN, kK, kNSub, kStages, kEpi, 0, kStore, kWTiled>(GG_KERNEL_ARGS);
}

template <int kN, int kK, int kNSub, int kStages, int kEpi, int kStore, int kMcast, int kWTiled = 0>
__global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) gg_normal_cluster_kernel(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::normal_body<kN, kK, kNSub, kStages, kEpi, kMcast, kStore, kWTiled>(GG_KERNEL_ARGS);
}

template <int kN, int kK, int kMSub, int kStages, int kEpi, int kWTiled = 0, int kSplitK = 1>
__global__ void __launch_bounds__(256, 1) gg_decode_kernel(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::decode_body<kN, kK, kMSub, kStages, kEpi, kWTiled, gg::DecodePlan<kMSub, kStages>, gg::NoSync, true, kSplitK>(
      GG_KERNEL_ARGS);
}

#ifndef GG_NO_ENTRY
#if !defined(GG_SWAP) || !defined(GG_EPI) || !defined(GG_N) || !defined(GG_K) || !defined(GG_SUB) || !defined(GG_STAGES)
#error "grouped_gemm_fp8.cu needs -DGG_SWAP -DGG_EPI -DGG_N -DGG_K -DGG_SUB -DGG_STAGES (see src/kernels/grouped-gemm.ts)"
#endif
#ifndef GG_MCAST
#define GG_MCAST 0
#endif
#ifndef GG_STORE
#define GG_STORE 0
#endif
#ifndef GG_WTILED
#define GG_WTILED 0
#endif
#ifndef GG_SPLITK
#define GG_SPLITK 1
#endif
#ifndef GG_SMEM_BYTES
#error "grouped_gemm_fp8.cu needs -DGG_SMEM_BYTES (the launcher's shared-memory plan, checked against the kernel's)"
#endif
// The launcher's plan (grouped-gemm.ts groupedGemmSmemBytes) and the kernel's must agree; the kernel also traps on
// a launch that gives less.
#if GG_SWAP
static_assert(gg::DecodePlan<GG_SUB, GG_STAGES>::kSmemBytes == GG_SMEM_BYTES, "grouped GEMM: the TypeScript shared-memory plan (grouped-gemm.ts) drifted from the kernel's");
#else
static_assert(gg::NormalPlan<GG_SUB, GG_STAGES, GG_EPI == 0 ? GG_STORE : 0>::kSmemBytes == GG_SMEM_BYTES, "grouped GEMM: the TypeScript shared-memory plan (grouped-gemm.ts) drifted from the kernel's");
#endif
#if GG_SWAP
extern "C" __global__ void __launch_bounds__(256, 1) grouped_gemm_fp8(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::decode_body<GG_N, GG_K, GG_SUB, GG_STAGES, GG_EPI, GG_WTILED, gg::DecodePlan<GG_SUB, GG_STAGES>, gg::NoSync, true,
                  GG_SPLITK>(GG_KERNEL_ARGS);
}
#elif GG_MCAST != 0
extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(384, 1) grouped_gemm_fp8(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::normal_body<GG_N, GG_K, GG_SUB, GG_STAGES, GG_EPI, GG_MCAST, GG_STORE, GG_WTILED>(GG_KERNEL_ARGS);
}
#else
extern "C" __global__ void __launch_bounds__(384, 1) grouped_gemm_fp8(GG_KERNEL_PARAMS) {
  gg::Ring ring;
  gg::normal_body<GG_N, GG_K, GG_SUB, GG_STAGES, GG_EPI, 0, GG_STORE, GG_WTILED>(GG_KERNEL_ARGS);
}
#endif
#endif
