// MoE dispatch: groups the staged tokens by expert for the grouped GEMMs, entirely on the device (no host sync), so
// the whole MoE layer can be captured in a CUDA graph while the routing changes from call to call.
//
// Inputs (staging's output): x_fp8 e4m3 [T, H], x_sf f32 [T, H/128] (row-major), ids I64 [T, K] (-1 = masked slot),
// weights f32 [T, K]. Groups: g = 0..E-1 are the routed experts; with DISPATCH_SHARED = 1, group E is the shared
// expert, which every token visits once with weight 1, so it rides the same grouped GEMMs as the routed experts.
//
// Outputs, in the grouped GEMM's A-side layout (see grouped_gemm_fp8.cu):
//   a        e4m3 [M_cap, H]   rows grouped by expert; group g owns rows [group_offset[g], group_offset[g+1]), whose
//                              first group_count[g] rows are real and the rest padding up to a multiple of block_m
//   sfa      f32              scale of row m, K block kb at sfa[m * sfa_row_stride + kb * sfa_kb_stride] (strides are
//                              arguments, so the GEMM's choice of MN-major or K-major costs nothing here)
//   tile_group int [max_tiles] expert of each block_m-row tile, -1 past the last tile (and nothing for empty experts:
//                              an expert no token chose owns no tile, so it costs no GEMM work at all)
//   num_m_tiles int [1]        how many tiles are in use (read by the GEMM from device memory)
//   row_weight f32 [M_cap]     the routing weight of each row (1 for the shared expert, 0 for padding): the L1
//                              SwiGLU epilogue multiplies by it before quantizing (SPEC 2 step 5)
//   row_token int [M_cap]      source token of each row (-1 for padding)
//   slot_row int [T, K]        row of each (token, slot), -1 for masked slots: the combine reads it
//   shared_row = group_offset[E] + t for token t (rows of the shared expert are in token order)
//
// Order: within an expert, rows are in (token, slot) order. The order does not change any result (each GEMM row is
// computed independently), but a stable order makes runs reproducible byte for byte and lets the tests compare
// the whole permutation against a CPU simulation (src/kernels/moe-dispatch.ts, simulateDispatch).
//
// The steps are device functions in moe/dispatch.cuh (shared with the fused kernel, mega_moe.cu). Here they are
// four launches, each sized by T only (so a captured graph replays them for any routing):
//   1. megamoe_dispatch_count  one block per chunk of kChunkTokens tokens: histogram of its slots -> chunk_counts[c][e]
//   2. megamoe_dispatch_scan   one block: per expert total, padded exclusive scan -> group offsets, tile_group,
//                              num_m_tiles; turns chunk_counts into per-chunk base rows; marks padding rows
//   3. megamoe_dispatch_rank   one warp per chunk: stable rank of each slot within its expert -> slot_row,
//                              row_token, row_weight (warp-wide __match_any_sync, no atomics, so deterministic)
//   4. megamoe_dispatch_gather one warp per token: copies its e4m3 row (16-byte vectors) and its scales to each of
//                              its K (+1 shared) destination rows; reads x once, writes it K + 1 times
#include "common.cuh"

#ifndef DISPATCH_EXPERTS
#define DISPATCH_EXPERTS 256  // routed experts E; the launcher always passes the layer's value
#endif
#ifndef DISPATCH_TOPK
#define DISPATCH_TOPK 6
#endif
#ifndef DISPATCH_HIDDEN
#define DISPATCH_HIDDEN 4096
#endif
#ifndef DISPATCH_SHARED
#define DISPATCH_SHARED 1  // 1: group E is the shared expert
#endif
#define DSP_EXPERTS DISPATCH_EXPERTS
#define DSP_TOPK DISPATCH_TOPK
#define DSP_HIDDEN DISPATCH_HIDDEN
#define DSP_SHARED DISPATCH_SHARED
#include "moe/dispatch.cuh"

namespace {
constexpr int kScanThreads = 1024;
constexpr int kGatherWarps = 8;
static_assert(dsp::kGroups <= kScanThreads, "the launcher checks at most 1024 groups");
}  // namespace

// 1. Histogram of each chunk's slots. chunk_counts is [num_chunks][kExperts].
extern "C" __global__ void __launch_bounds__(256)
megamoe_dispatch_count(const long long* __restrict__ ids, int num_tokens, int* __restrict__ chunk_counts) {
  __shared__ int hist[dsp::kExperts];
  dsp::count_chunk(ids, num_tokens, blockIdx.x, chunk_counts, hist, threadIdx.x, blockDim.x);
}

// 2. One block. group_offset has kGroups + 1 entries (the last is the padded row total).
extern "C" __global__ void __launch_bounds__(kScanThreads)
megamoe_dispatch_scan(int* __restrict__ chunk_counts, int num_tokens, int block_m, int max_tiles,
                      int* __restrict__ group_offset, int* __restrict__ group_count, int* __restrict__ tile_group,
                      int* __restrict__ num_m_tiles, float* __restrict__ row_weight, int* __restrict__ row_token) {
  __shared__ int scratch[2 * dsp::kGroups + 1];
  dsp::scan(chunk_counts, dsp::num_chunks(num_tokens), num_tokens, block_m, max_tiles, group_offset, group_count, tile_group, num_m_tiles,
            row_weight, row_token, scratch, threadIdx.x, blockDim.x);
}

// 3. One warp per chunk ranks the chunk's slots in (token, slot) order. chunk_base = chunk_counts after the scan.
extern "C" __global__ void __launch_bounds__(32)
megamoe_dispatch_rank(const long long* __restrict__ ids, const float* __restrict__ weights, int num_tokens,
                      const int* __restrict__ chunk_base, const int* __restrict__ group_offset,
                      int* __restrict__ slot_row, float* __restrict__ row_weight, int* __restrict__ row_token) {
  __shared__ int next_row[dsp::kExperts];
  dsp::rank_chunk(ids, weights, num_tokens, blockIdx.x, chunk_base, group_offset, slot_row, row_weight, row_token,
                  next_row, threadIdx.x);
}

// 4. One warp per token: copy the token's e4m3 row and its scales to every destination row.
extern "C" __global__ void __launch_bounds__(kGatherWarps * 32)
megamoe_dispatch_gather(const uint4* __restrict__ x_fp8, const float* __restrict__ x_sf, int num_tokens,
                        const int* __restrict__ slot_row, const int* __restrict__ group_offset,
                        uint4* __restrict__ a, float* __restrict__ sfa, long long sfa_row_stride,
                        long long sfa_kb_stride) {
  const int t = blockIdx.x * kGatherWarps + (threadIdx.x >> 5);
  if (t >= num_tokens) return;
  dsp::gather_token(x_fp8, x_sf, t, slot_row, group_offset, a, sfa, sfa_row_stride, sfa_kb_stride, threadIdx.x & 31);
}
