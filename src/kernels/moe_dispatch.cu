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
// Four launches, each sized by T only (so a captured graph replays them for any routing):
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

namespace {

constexpr int kExperts = DISPATCH_EXPERTS;
constexpr int kTopK = DISPATCH_TOPK;
constexpr int kHidden = DISPATCH_HIDDEN;
constexpr int kShared = DISPATCH_SHARED;
constexpr int kGroups = kExperts + kShared;
constexpr int kScaleBlocks = kHidden / 128;
constexpr int kVecPerRow = kHidden / 16;           // 16-byte vectors of e4m3 per row
constexpr int kChunkTokens = 64;                   // tokens per count/rank chunk (must match moe-dispatch.ts)
constexpr int kChunkSlots = kChunkTokens * kTopK;
constexpr int kScanThreads = 1024;
constexpr int kGatherWarps = 8;

static_assert(kHidden % 128 == 0, "DISPATCH_HIDDEN must be a multiple of 128 (SPEC 4)");
static_assert(kTopK >= 1 && kTopK <= 32, "DISPATCH_TOPK must be in [1, 32]");
static_assert(kGroups <= kScanThreads, "the scan gives each group one thread: at most 1024 groups");
static_assert(kShared == 0 || kShared == 1, "DISPATCH_SHARED is 0 or 1");

__device__ __forceinline__ int expert_of(long long id) {
  // Masked (-1) and, defensively, out-of-range ids select nothing (the host guards refuse them earlier).
  return (id >= 0 && id < kExperts) ? (int)id : -1;
}

__device__ __forceinline__ int round_up(int v, int m) { return (v + m - 1) / m * m; }

}  // namespace

// 1. Histogram of each chunk's slots. chunk_counts is [num_chunks][kExperts].
extern "C" __global__ void __launch_bounds__(256)
megamoe_dispatch_count(const long long* __restrict__ ids, int num_tokens, int* __restrict__ chunk_counts) {
  __shared__ int hist[kExperts];
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int first = blockIdx.x * kChunkSlots;
  const int last = min(first + kChunkSlots, num_tokens * kTopK);
  for (int s = first + threadIdx.x; s < last; s += blockDim.x) {
    const int e = expert_of(ids[s]);
    if (e >= 0) atomicAdd(&hist[e], 1);  // shared-memory atomics: the totals do not depend on their order
  }
  __syncthreads();
  int* out = chunk_counts + (size_t)blockIdx.x * kExperts;
  for (int e = threadIdx.x; e < kExperts; e += blockDim.x) out[e] = hist[e];
}

// 2. One block, one thread per group. group_offset has kGroups + 1 entries (the last is the padded row total).
extern "C" __global__ void __launch_bounds__(kScanThreads)
megamoe_dispatch_scan(int* __restrict__ chunk_counts, int num_tokens, int block_m, int max_tiles,
                      int* __restrict__ group_offset, int* __restrict__ group_count, int* __restrict__ tile_group,
                      int* __restrict__ num_m_tiles, float* __restrict__ row_weight, int* __restrict__ row_token) {
  __shared__ int warp_sums[kScanThreads / 32];
  const int g = threadIdx.x;
  const int lane = g & 31;
  const int warp = g >> 5;
  const int num_chunks = (num_tokens + kChunkTokens - 1) / kChunkTokens;

  int count = 0;
  if (g < kExperts) {
    // Independent loads (coalesced across threads): unrolled so several are in flight.
#pragma unroll 8
    for (int c = 0; c < num_chunks; c++) count += chunk_counts[(size_t)c * kExperts + g];
  } else if (g < kGroups) {
    count = num_tokens;  // the shared expert: every token once
  }
  const int padded = round_up(count, block_m);

  // Block-wide exclusive scan of `padded`: warp inclusive scan, then a scan of the warp totals.
  int incl = padded;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += v;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = warp_sums[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += v;
    }
    warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  const int offset = incl - padded + (warp > 0 ? warp_sums[warp - 1] : 0);
  const int total = warp_sums[kScanThreads / 32 - 1];

  if (g < kGroups) {
    group_offset[g] = offset;
    group_count[g] = count;
    // This group's tiles.
    for (int t = offset / block_m; t < (offset + padded) / block_m; t++) tile_group[t] = g;
    // Padding rows: weight 0 and no token, so a reader of any row sees defined values.
    for (int m = offset + count; m < offset + padded; m++) {
      row_weight[m] = 0.0f;
      row_token[m] = -1;
    }
  }
  if (g == 0) {
    group_offset[kGroups] = total;
    num_m_tiles[0] = total / block_m;
  }
  // Unused tiles read as "skip" for any consumer that looks past num_m_tiles.
  for (int t = total / block_m + g; t < max_tiles; t += kScanThreads) tile_group[t] = -1;

  // Per-chunk base rows: chunk c's first row of expert g = offset + counts of chunks before c.
  if (g < kExperts) {
    int running = offset;
    for (int c = 0; c < num_chunks; c++) {
      int* p = chunk_counts + (size_t)c * kExperts + g;
      const int v = *p;
      *p = running;
      running += v;
    }
  }
}

// 3. One warp per chunk ranks the chunk's slots in (token, slot) order. chunk_base = chunk_counts after the scan.
extern "C" __global__ void __launch_bounds__(32)
megamoe_dispatch_rank(const long long* __restrict__ ids, const float* __restrict__ weights, int num_tokens,
                      const int* __restrict__ chunk_base, const int* __restrict__ group_offset,
                      int* __restrict__ slot_row, float* __restrict__ row_weight, int* __restrict__ row_token) {
  __shared__ int next_row[kExperts];
  const int lane = threadIdx.x;
  const int c = blockIdx.x;
  for (int e = lane; e < kExperts; e += 32) next_row[e] = chunk_base[(size_t)c * kExperts + e];
  __syncwarp();

  const int first = c * kChunkSlots;
  const int last = min(first + kChunkSlots, num_tokens * kTopK);
  for (int s0 = first; s0 < last; s0 += 32) {
    const int s = s0 + lane;
    const int e = s < last ? expert_of(ids[s]) : -1;
    // Lanes with the same expert: their rank among those lanes, in lane (= slot) order.
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const unsigned lower = peers & ((1u << lane) - 1u);
    int row = -1;
    if (e >= 0) row = next_row[e] + __popc(lower);
    __syncwarp();
    if (e >= 0 && lower == 0) next_row[e] += __popc(peers);  // the first lane of each expert moves its cursor
    __syncwarp();
    if (s < last) {
      slot_row[s] = row;
      if (row >= 0) {
        row_weight[row] = weights[s];
        row_token[row] = s / kTopK;
      }
    }
  }
  if (kShared) {
    // The shared expert's rows, in token order.
    const int base = group_offset[kExperts];
    const int t_end = min((c + 1) * kChunkTokens, num_tokens);
    for (int t = c * kChunkTokens + lane; t < t_end; t += 32) {
      row_weight[base + t] = 1.0f;
      row_token[base + t] = t;
    }
  }
}

// 4. One warp per token: copy the token's e4m3 row and its scales to every destination row.
extern "C" __global__ void __launch_bounds__(kGatherWarps * 32)
megamoe_dispatch_gather(const uint4* __restrict__ x_fp8, const float* __restrict__ x_sf, int num_tokens,
                        const int* __restrict__ slot_row, const int* __restrict__ group_offset,
                        uint4* __restrict__ a, float* __restrict__ sfa, long long sfa_row_stride,
                        long long sfa_kb_stride) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * kGatherWarps + (threadIdx.x >> 5);
  if (t >= num_tokens) return;

  int rows[kTopK + kShared];
#pragma unroll
  for (int k = 0; k < kTopK; k++) rows[k] = slot_row[(size_t)t * kTopK + k];
  if (kShared) rows[kTopK] = group_offset[kExperts] + t;

  const uint4* src = x_fp8 + (size_t)t * kVecPerRow;
  // Up to 8 vectors per lane in flight (a 4096-wide row is 256 vectors = 8 per lane).
  constexpr int kVecPerLane = (kVecPerRow + 31) / 32;
  constexpr int kBatch = kVecPerLane < 8 ? kVecPerLane : 8;
#pragma unroll 1
  for (int v0 = 0; v0 < kVecPerLane; v0 += kBatch) {
    uint4 buf[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; i++) {
      const int v = (v0 + i) * 32 + lane;
      if (v0 + i < kVecPerLane && v < kVecPerRow) buf[i] = __ldg(src + v);
    }
#pragma unroll
    for (int r = 0; r < kTopK + kShared; r++) {
      const int row = rows[r];
      if (row < 0) continue;
      uint4* dst = a + (size_t)row * kVecPerRow;
#pragma unroll
      for (int i = 0; i < kBatch; i++) {
        const int v = (v0 + i) * 32 + lane;
        if (v0 + i < kVecPerLane && v < kVecPerRow) dst[v] = buf[i];
      }
    }
  }
  for (int kb = lane; kb < kScaleBlocks; kb += 32) {
    const float sf = __ldg(x_sf + (size_t)t * kScaleBlocks + kb);
#pragma unroll
    for (int r = 0; r < kTopK + kShared; r++) {
      const int row = rows[r];
      if (row >= 0) sfa[(size_t)row * sfa_row_stride + (size_t)kb * sfa_kb_stride] = sf;
    }
  }
}
