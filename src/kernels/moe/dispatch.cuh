// MoE dispatch as device functions: the four steps of moe_dispatch.cu (count, scan, rank, gather), written once
// and called both by its four kernels (the unfused pipeline) and by the fused MegaMoE kernel (mega_moe.cu), which
// runs them as phases of one persistent launch. Each function takes its work index and thread layout explicitly,
// so the caller chooses the grid mapping. The contract (layouts, ordering) is the header of moe_dispatch.cu.
//
// Compile-time shape (the including .cu defines them before including this file):
//   DSP_EXPERTS (E), DSP_TOPK (K), DSP_HIDDEN (H), DSP_SHARED (1: group E is the shared expert).
#pragma once

namespace dsp {

constexpr int kExperts = DSP_EXPERTS;
constexpr int kTopK = DSP_TOPK;
constexpr int kHidden = DSP_HIDDEN;
constexpr int kShared = DSP_SHARED;
constexpr int kGroups = kExperts + kShared;
constexpr int kScaleBlocks = kHidden / 128;
constexpr int kVecPerRow = kHidden / 16;  // 16-byte vectors of e4m3 per row
constexpr int kChunkTokens = 64;          // tokens per count/rank chunk (must match moe-dispatch.ts)
constexpr int kChunkSlots = kChunkTokens * kTopK;

static_assert(kHidden % 128 == 0, "the hidden size must be a multiple of 128 (SPEC 4)");
static_assert(kTopK >= 1 && kTopK <= 32, "top-k must be in [1, 32]");
static_assert(kShared == 0 || kShared == 1, "the shared-expert switch is 0 or 1");

// Expert parallelism: a rank owns experts [base, base + kExperts) of the layer; ids are global, so it subtracts its
// base (0 on one rank: ids are then local already).
__device__ __forceinline__ int expert_of(long long id, long long base = 0) {
  // Masked (-1), another rank's and, defensively, out-of-range ids select nothing (the host guards refuse the last).
  id -= base;
  return (id >= 0 && id < kExperts) ? (int)id : -1;
}

__device__ __forceinline__ int round_up(int v, int m) { return (v + m - 1) / m * m; }

__device__ __forceinline__ int num_chunks(int num_tokens) { return (num_tokens + kChunkTokens - 1) / kChunkTokens; }

// 1. Histogram of chunk c's slots into chunk_counts[c][E], by the `nthreads` threads of a block (all of them call
// it; hist is kExperts ints of shared memory). Shared-memory atomics: the totals do not depend on their order.
__device__ __forceinline__ void count_chunk(const long long* __restrict__ ids, int num_tokens, int c,
                                            int* __restrict__ chunk_counts, int* hist, int tid, int nthreads,
                                            long long id_base = 0) {
  for (int e = tid; e < kExperts; e += nthreads) hist[e] = 0;
  __syncthreads();
  const int first = c * kChunkSlots;
  const int last = min(first + kChunkSlots, num_tokens * kTopK);
  for (int s = first + tid; s < last; s += nthreads) {
    const int e = expert_of(ids[s], id_base);
    if (e >= 0) atomicAdd(&hist[e], 1);
  }
  __syncthreads();
  int* out = chunk_counts + (size_t)c * kExperts;
  for (int e = tid; e < kExperts; e += nthreads) out[e] = hist[e];
  __syncthreads();  // hist may be reused by the caller's next chunk
}

// Group g's row tiles -> tile_group, and its padding rows weight 0 / token -1 (so a reader of any row sees defined
// values), by the `n` threads i of [0, n) (consecutive threads: consecutive rows). Part of the scan (kFill), or, in
// the fused kernel, spread over the whole grid after it (from one CTA, these scattered stores were most of the
// scan's time: docs/MEGA_MOE.md).
__device__ __forceinline__ void fill_group(int offset, int count, int block_m, int g, int* __restrict__ tile_group,
                                           float* __restrict__ row_weight, int* __restrict__ row_token, int i, int n) {
  const int padded = round_up(count, block_m);
  for (int t = offset / block_m + i; t < (offset + padded) / block_m; t += n) tile_group[t] = g;
  for (int m = offset + count + i; m < offset + padded; m += n) {
    row_weight[m] = 0.0f;
    row_token[m] = -1;
  }
}

// Column g of the [nc, E] chunk counts: its sum (kBase false) or, in place, its exclusive prefix from `base` (kBase
// true: the per-chunk base rows); the return value is the total. 16 chunks per batch of loads in flight.
template <bool kBase>
__device__ __forceinline__ int chunk_column(int* __restrict__ chunk_counts, int nc, int g, int base) {
  constexpr int kBatch = 16;
  int running = base;
  for (int c0 = 0; c0 < nc; c0 += kBatch) {
    int v[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; j++) v[j] = c0 + j < nc ? chunk_counts[(size_t)(c0 + j) * kExperts + g] : 0;
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      if (kBase && c0 + j < nc) chunk_counts[(size_t)(c0 + j) * kExperts + g] = running;
      running += v[j];
    }
  }
  return running;
}

// 2. The scan, by all `nthreads` threads of ONE block (scratch: 2 kGroups + 1 ints of shared memory: the exclusive
// offsets + total, then each group's row count, so nothing written to global memory is read back), over `nc` chunks
// (num_chunks(T) on one rank; every source rank's chunks under expert parallelism) and `shared_tokens` rows of the
// shared expert (this rank's own tokens). Per group:
// total rows, padded to block_m, exclusive scan -> group_offset [kGroups + 1], group_count, num_m_tiles, tile_group
// past the last tile (-1 up to max_tiles); chunk_counts become per-chunk base rows; with kFill also each group's
// tiles and padding rows (fill_group), else the caller runs fill_group for every group before the GEMMs. The totals
// are integers: any thread layout gives the same outputs.
// group_compact (the fused kernel; may be null): also each group's first row without padding (the exclusive prefix of
// the row counts, [kGroups + 1]), where its pools keep their rows.
template <bool kFill = true>
__device__ __forceinline__ void scan(int* __restrict__ chunk_counts, int nc, int shared_tokens, int block_m, int max_tiles,
                                     int* __restrict__ group_offset, int* __restrict__ group_count,
                                     int* __restrict__ tile_group, int* __restrict__ num_m_tiles,
                                     float* __restrict__ row_weight, int* __restrict__ row_token, int* scratch,
                                     int tid, int nthreads, int* __restrict__ group_compact = nullptr) {
  // Padded row count of every group, then an exclusive scan of them by warp 0 in 32-group steps.
  for (int g = tid; g < kGroups; g += nthreads) {
    // the shared expert: every token once
    const int count = g < kExperts ? chunk_column<false>(chunk_counts, nc, g, 0) : shared_tokens;
    group_count[g] = count;
    scratch[g] = round_up(count, block_m);
    scratch[kGroups + 1 + g] = count;
  }
  __syncthreads();
  if (tid < 32) {
    int carry = 0;
    for (int g0 = 0; g0 < kGroups; g0 += 32) {
      const int g = g0 + tid;
      const int v = g < kGroups ? scratch[g] : 0;
      int incl = v;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, incl, o);
        if (tid >= o) incl += n;
      }
      if (g < kGroups) scratch[g] = carry + incl - v;  // exclusive offset
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (tid == 0) scratch[kGroups] = carry;
    if (group_compact != nullptr) {
      carry = 0;
      for (int g0 = 0; g0 < kGroups; g0 += 32) {
        const int g = g0 + tid;
        const int v = g < kGroups ? scratch[kGroups + 1 + g] : 0;
        int incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int n = __shfl_up_sync(0xffffffffu, incl, o);
          if (tid >= o) incl += n;
        }
        if (g < kGroups) group_compact[g] = carry + incl - v;
        carry += __shfl_sync(0xffffffffu, incl, 31);
      }
      if (tid == 0) group_compact[kGroups] = carry;
    }
  }
  __syncthreads();
  const int total = scratch[kGroups];
  for (int g = tid; g < kGroups; g += nthreads) {
    const int offset = scratch[g];
    group_offset[g] = offset;
    if (kFill) fill_group(offset, scratch[kGroups + 1 + g], block_m, g, tile_group, row_weight, row_token, 0, 1);
    // Per-chunk base rows: chunk c's first row of expert g = offset + counts of the chunks before c.
    if (g < kExperts) chunk_column<true>(chunk_counts, nc, g, offset);
  }
  if (tid == 0) {
    group_offset[kGroups] = total;
    num_m_tiles[0] = total / block_m;
  }
  // Unused tiles read as "skip" for any consumer that looks past num_m_tiles.
  for (int t = total / block_m + tid; t < max_tiles; t += nthreads) tile_group[t] = -1;
}

// 3. One warp ranks chunk c's slots in (token, slot) order (next_row: kExperts ints of shared memory owned by this
// warp): slot_row, row_token, row_weight; then (with_shared) the shared expert's rows of the chunk's tokens.
// __match_any_sync, no atomics, so deterministic. Expert parallelism: ids are global (id_base: this rank's first
// expert), row_token counts from token_base (the source rank's first token), and only the own rank's tokens have
// shared-expert rows here.
// kDest (the fused kernel): row_token holds each row's place in the combine buffer instead of its token: slot s of
// source token token_base + s / K at (token_base K + s), the shared expert's row of token t at shared_dest + t.
template <bool kDest = false>
__device__ __forceinline__ void rank_chunk(const long long* __restrict__ ids, const float* __restrict__ weights,
                                           int num_tokens, int c, const int* __restrict__ chunk_base,
                                           const int* __restrict__ group_offset, int* __restrict__ slot_row,
                                           float* __restrict__ row_weight, int* __restrict__ row_token, int* next_row,
                                           int lane, long long id_base = 0, int token_base = 0,
                                           bool with_shared = true, int shared_dest = 0) {
  for (int e = lane; e < kExperts; e += 32) next_row[e] = chunk_base[(size_t)c * kExperts + e];
  __syncwarp();
  const int first = c * kChunkSlots;
  const int last = min(first + kChunkSlots, num_tokens * kTopK);
  // The chunk's ids and weights, all loads in flight at once (a load per 32-slot step was a round trip each on the
  // dispatch's critical path: docs/MEGA_MOE.md).
  constexpr int kSteps = (kChunkSlots + 31) / 32;
  int experts[kSteps];
  float slot_weight[kSteps];
#pragma unroll
  for (int j = 0; j < kSteps; j++) {
    const int s = first + 32 * j + lane;
    experts[j] = s < last ? expert_of(ids[s], id_base) : -1;
    slot_weight[j] = s < last ? weights[s] : 0.0f;
  }
#pragma unroll
  for (int j = 0; j < kSteps; j++) {
    const int s = first + 32 * j + lane;
    if (first + 32 * j >= last) break;
    const int e = experts[j];
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
        row_weight[row] = slot_weight[j];
        row_token[row] = kDest ? token_base * kTopK + s : token_base + s / kTopK;
      }
    }
  }
  if (kShared && with_shared) {
    const int base = group_offset[kExperts];
    const int t_end = min((c + 1) * kChunkTokens, num_tokens);
    for (int t = c * kChunkTokens + lane; t < t_end; t += 32) {
      row_weight[base + t] = 1.0f;
      row_token[base + t] = kDest ? shared_dest + t : token_base + t;
    }
  }
  __syncwarp();
}

// 4. One warp copies token t's e4m3 row (16-byte vectors) and its scales to each of its K (+1 shared, with_shared)
// rows; a token with no row here (expert parallelism: all its experts on other ranks) is not read at all. a_row_of
// maps a grouped row to its row of `a` (the fused kernel's pool keeps each group's rows without padding); the scales
// keep the grouped row.
struct SameRow {
  __device__ __forceinline__ int operator()(int row) const { return row; }
};
template <class RowOf = SameRow>
__device__ __forceinline__ void gather_token(const uint4* __restrict__ x_fp8, const float* __restrict__ x_sf, int t,
                                             const int* __restrict__ slot_row, const int* __restrict__ group_offset,
                                             uint4* __restrict__ a, float* __restrict__ sfa, long long sfa_row_stride,
                                             long long sfa_kb_stride, int lane, bool with_shared = true,
                                             const RowOf& a_row_of = RowOf()) {
  int rows[kTopK + kShared];
  bool any = false;
#pragma unroll
  for (int k = 0; k < kTopK; k++) {
    rows[k] = slot_row[(size_t)t * kTopK + k];
    any |= rows[k] >= 0;
  }
  if (kShared) {
    rows[kTopK] = with_shared ? group_offset[kExperts] + t : -1;
    any |= with_shared;
  }
  if (!any) return;

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
      // Plain (coherent) loads: in the fused kernel the rows were written earlier in the same launch.
      if (v0 + i < kVecPerLane && v < kVecPerRow) buf[i] = src[v];
    }
#pragma unroll
    for (int r = 0; r < kTopK + kShared; r++) {
      const int row = rows[r];
      if (row < 0) continue;
      uint4* dst = a + (size_t)a_row_of(row) * kVecPerRow;
#pragma unroll
      for (int i = 0; i < kBatch; i++) {
        const int v = (v0 + i) * 32 + lane;
        if (v0 + i < kVecPerLane && v < kVecPerRow) dst[v] = buf[i];
      }
    }
  }
  for (int kb = lane; kb < kScaleBlocks; kb += 32) {
    const float sf = x_sf[(size_t)t * kScaleBlocks + kb];
#pragma unroll
    for (int r = 0; r < kTopK + kShared; r++) {
      const int row = rows[r];
      if (row >= 0) sfa[(size_t)row * sfa_row_stride + (size_t)kb * sfa_kb_stride] = sf;
    }
  }
}

}  // namespace dsp
