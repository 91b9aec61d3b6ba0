// MoE combine (SPEC 3): per token, y_routed = bf16(sum over its K slots of f32(o_j)) and, with the shared expert,
// y = bf16(f32(y_routed) + f32(y_shared)). o_j and y_shared are bf16 rows of the L2 grouped GEMM's output, found
// through the dispatch's slot_row [T, K] (-1 = masked slot, contributes nothing) and the shared expert's rows
// (group_offset[E] + t). The sum runs over k = 0..K-1 in order, starting from +0, exactly as the CPU reference.
//
// The per-vector work is cmb::combine_vec (moe/combine.cuh, shared with the fused kernel). Work split: a thread owns 8 consecutive columns (one 16-byte vector of bf16) of one token; blockIdx.y is the token.
// Its K + 1 loads are independent, so they are all in flight at once.
#include "common.cuh"

#ifndef COMBINE_HIDDEN
#define COMBINE_HIDDEN 4096
#endif
#ifndef COMBINE_TOPK
#define COMBINE_TOPK 6
#endif
#ifndef COMBINE_EXPERTS
#define COMBINE_EXPERTS 256  // routed experts E: the shared expert's group offset is group_offset[E]
#endif
#ifndef COMBINE_SHARED
#define COMBINE_SHARED 1
#endif
#define CMB_HIDDEN COMBINE_HIDDEN
#define CMB_TOPK COMBINE_TOPK
#define CMB_EXPERTS COMBINE_EXPERTS
#define CMB_SHARED COMBINE_SHARED
#include "moe/combine.cuh"

namespace {
constexpr int kThreads = 128;
}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads)
megamoe_combine(const uint4* __restrict__ out,        // bf16 [M_cap, H]: the L2 GEMM's rows
                const int* __restrict__ slot_row,     // [T, K]
                const int* __restrict__ group_offset, // [E + shared + 1]
                int num_tokens,
                uint4* __restrict__ y_routed,         // bf16 [T, H]
                uint4* __restrict__ y) {              // bf16 [T, H] (routed + shared); unused without a shared expert
  const int v = blockIdx.x * kThreads + threadIdx.x;
  const int t = blockIdx.y;
  if (v >= cmb::kVecPerRow || t >= num_tokens) return;
  cmb::combine_vec<false>(out, slot_row, group_offset, t, v, y_routed, y);
}
