// Activation staging (SPEC 3): bf16 hidden [T, H] -> e4m3 [T, H] + f32 scales [T, H/128], per token per 128
// columns, bit-exact against numerics/quant.ts quantizeRowsF32Scale; the router's top-k ids (I64) and weights
// (F32) ride along into the same preallocated (capacity-sized) staging buffers.
//
// Shape: the hidden size and top-k are compile-time constants (-DSTAGING_HIDDEN=..., -DSTAGING_TOPK=...), so the
// column loop unrolls completely and every predicate below is a constant. T is a launch argument.
//
// The row's work is stg::stage_row (moe/staging.cuh, shared with the fused kernel). Work split: one warp per token row. A lane owns 16 consecutive columns (two 16-byte loads of 8 bf16), so 8
// lanes cover one 128-column scale block and the block's amax is a 3-step shuffle among those 8 lanes: no shared
// memory, no block-level sync. Each lane then writes its 16 e4m3 codes as one 16-byte store. A warp covers 512
// columns per step; H = 4096 takes 8 steps, H = 7168 takes 14 (loads for up to 4 steps are issued before any
// math, to keep enough bytes in flight to saturate HBM).
#include "common.cuh"

#ifndef STAGING_HIDDEN
#define STAGING_HIDDEN 4096  // V4-Flash; the launcher always passes the layer's real value
#endif
#ifndef STAGING_TOPK
#define STAGING_TOPK 6
#endif

#ifndef STAGING_HIDDEN
#define STAGING_HIDDEN 4096  // V4-Flash; the launcher always passes the layer's real value
#endif
#ifndef STAGING_TOPK
#define STAGING_TOPK 6
#endif
#define STG_HIDDEN STAGING_HIDDEN
#define STG_TOPK STAGING_TOPK
#include "moe/staging.cuh"

namespace {
constexpr int kWarpsPerBlock = 8;
}  // namespace

// Min 4 blocks per SM caps registers at 64 (no spills at H = 7168): 32 warps per SM, so T = 4096 fits in one wave.
extern "C" __global__ void __launch_bounds__(kWarpsPerBlock * 32, 4)
megamoe_stage_tokens(const uint4* __restrict__ x,            // bf16 [T, H]
                     const long long* __restrict__ ids_in,   // I64 [T, K], -1 = masked slot (copied as is)
                     const float* __restrict__ w_in,         // F32 [T, K]
                     uint4* __restrict__ x_fp8,               // e4m3 [capacity, H]
                     float* __restrict__ x_sf,                // F32 [capacity, H/128]
                     long long* __restrict__ ids_out,         // I64 [capacity, K]
                     float* __restrict__ w_out,               // F32 [capacity, K]
                     int num_tokens) {
  const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= num_tokens) return;  // the whole warp leaves together, so the shuffles below stay full-warp
  stg::stage_row(x, ids_in, w_in, x_fp8, x_sf, ids_out, w_out, row, threadIdx.x & 31);
}
