// Routing (SPEC 2, steps 1-4) in two launches:
//   1. megamoe_router_logits_{gemv,mid,prefill}: logits[T, E] (f32) = x[T, H] (bf16) . Wg[E, H]^T (bf16), on the
//      tensor cores (mma.sync m16n8k16 bf16 -> f32: bf16 x bf16 products are exact in f32, the sums are f32).
//      Three tile shapes of the same template; the launcher picks one by T (see routing.ts).
//   2. megamoe_router_topk: per token, scores s = sqrt(softplus(l)), top-K of s + bias (ties to the lower expert
//      index) or the hash table's ids, weights from the unbiased s, optional normalisation, routed scaling.
//
// Shape: H, E and K are compile-time (-DROUTER_HIDDEN, -DROUTER_EXPERTS, -DROUTER_TOPK). T is a launch argument.
//
// Determinism: every logit is produced by the same fixed sequence of mma instructions and a fixed-order sum of the
// split-K partials (no atomics), so the logits, and hence the ids, are identical from run to run.
#include "common.cuh"
#include "cp_async.cuh"

#ifndef ROUTER_HIDDEN
#define ROUTER_HIDDEN 4096  // V4-Flash; the launcher always passes the layer's real values
#endif
#ifndef ROUTER_EXPERTS
#define ROUTER_EXPERTS 256
#endif
#ifndef ROUTER_TOPK
#define ROUTER_TOPK 6
#endif

namespace {

constexpr int kHidden = ROUTER_HIDDEN;
constexpr int kExperts = ROUTER_EXPERTS;
constexpr int kTopK = ROUTER_TOPK;
constexpr int kChunk = 32;                 // k elements one lane-quad covers per step: 4 lanes x 8 bf16
constexpr int kChunks = kHidden / kChunk;

static_assert(kHidden % 128 == 0, "ROUTER_HIDDEN must be a multiple of 128 (SPEC 4)");
static_assert(kExperts % 8 == 0, "ROUTER_EXPERTS must be a multiple of 8 (one mma n-tile)");
static_assert(kTopK >= 1 && kTopK <= kExperts && kTopK <= 32, "ROUTER_TOPK must be in [1, min(E, 32)]");

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

constexpr int kStages = 2;  // double buffering of the cp.async groups

// Dynamic shared memory of one block of a tile: the cp.async stages of every warp. The split-K reduction
// buffer [WK][BM][BN] f32 reuses the same bytes after the main loop (it is never larger).
template <int BM, int BNW, int WN, int WK, int U>
constexpr int router_tile_smem_bytes() {
  return WN * WK * kStages * U * (2 * (BM / 16) + BNW / 8) * 32 * 16;
}

// Block tile: BM tokens x (BNW * WN) experts. Warp (wn, wk) owns BNW experts of the tile and the k-chunks
// c = kbeg + wk, + WK, ... (chunks interleave across warps so the warps of a block read adjacent bytes together);
// the WK partial sums meet in shared memory and are added in the fixed order wk = 0, 1, ...
// A k-chunk is 32 columns; a stage holds U chunks: per lane, 2 uint4 per m16 tile (rows g, g+8) and 1 per n8 tile.
//
// Fragment trick: a dot product does not care about the order of k, so each lane copies 8 CONSECUTIVE bf16
// (16 bytes) of a row at k = 32c + 8t (t = lane % 4) and feeds them to two m16n8k16 steps as if they were the
// k pairs {2t, 2t+1, 2t+8, 2t+9} (step 0) and the same of the next 16 (step 1). A and B use the same
// permutation, so each product pairs the right x and w elements, with 16-byte copies and no ldmatrix
// (test/kernels-router-fragments.test.ts emulates this lane by lane).
template <int BM, int BNW, int WN, int WK, int U>
__device__ __forceinline__ void router_logits_tile(const uint4* __restrict__ x, const uint4* __restrict__ w,
                                                   float* __restrict__ partials, int num_tokens, uint4* smem) {
  constexpr int MT = BM / 16;
  constexpr int NT = BNW / 8;
  constexpr int BN = BNW * WN;
  constexpr int kSlots = 2 * MT + NT;               // uint4 per lane per chunk
  constexpr int kStageVecs = U * kSlots * 32;        // uint4 per warp per stage
  constexpr int kRowVecs = kHidden / 8;              // uint4 per row
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int wk = warp % WK;
  const int wn = warp / WK;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int m0 = blockIdx.y * BM;
  const int n0 = blockIdx.x * BN + wn * BNW;
  // Split-K across blocks (gridDim.z): block z sums the chunks [kbeg, kend) and writes its own partial tile;
  // the top-k kernel adds the partials in the fixed order z = 0, 1, ... (deterministic, no atomics).
  const int kbeg = (int)(((long long)blockIdx.z * kChunks) / gridDim.z);
  const int kend = (int)(((long long)(blockIdx.z + 1) * kChunks) / gridDim.z);
  float* __restrict__ logits = partials + (size_t)blockIdx.z * num_tokens * kExperts;
  const int my_chunks = kend - kbeg > wk ? (kend - kbeg - wk + WK - 1) / WK : 0;
  const int groups = (my_chunks + U - 1) / U;
  uint4* wbuf = smem + (size_t)warp * kStages * kStageVecs;

  // Row pointers and predicates do not change along k: compute them once.
  const uint4* arow[MT][2];
  bool aok[MT][2];
#pragma unroll
  for (int mi = 0; mi < MT; mi++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int r = m0 + mi * 16 + g + 8 * h;
      aok[mi][h] = r < num_tokens;
      arow[mi][h] = x + (size_t)(aok[mi][h] ? r : 0) * kRowVecs + t;
    }
  const uint4* brow[NT];
  bool bok[NT];
#pragma unroll
  for (int ni = 0; ni < NT; ni++) {
    const int n = n0 + ni * 8 + g;
    bok[ni] = n < kExperts;
    brow[ni] = w + (size_t)(bok[ni] ? n : 0) * kRowVecs + t;
  }

  // Queues the copies of group `grp` (chunks grp*U .. grp*U+U-1 of this warp) into stage `stage`.
#define MEGAMOE_ROUTER_ISSUE(grp, stage)                                                                      \
  {                                                                                                        \
    uint4* dst = wbuf + (stage) * kStageVecs + lane;                                                       \
    _Pragma("unroll") for (int u = 0; u < U; u++) {                                                        \
      const int j = (grp) * U + u;                                                                         \
      const bool kin = j < my_chunks;                                                                      \
      const int c = kbeg + wk + WK * (kin ? j : 0);                                                        \
      /* x rows are shared by the WN warps of a block: let L1 keep them; gate rows: once per block, L2 only */ \
      _Pragma("unroll") for (int mi = 0; mi < MT; mi++) _Pragma("unroll") for (int h = 0; h < 2; h++)      \
          cp_async16<true>(dst + (u * kSlots + 2 * mi + h) * 32, arow[mi][h] + 4 * c, kin && aok[mi][h]);    \
      _Pragma("unroll") for (int ni = 0; ni < NT; ni++)                                                    \
          cp_async16<false>(dst + (u * kSlots + 2 * MT + ni) * 32, brow[ni] + 4 * c, kin && bok[ni]);        \
    }                                                                                                      \
    cp_async_commit();                                                                                     \
  }

  float acc[MT][NT][4];
#pragma unroll
  for (int mi = 0; mi < MT; mi++)
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
      for (int r = 0; r < 4; r++) acc[mi][ni][r] = 0.0f;

  if (groups > 0) MEGAMOE_ROUTER_ISSUE(0, 0);
  for (int grp = 0; grp < groups; grp++) {
    if (grp + 1 < groups) {
      MEGAMOE_ROUTER_ISSUE(grp + 1, (grp + 1) & 1);
      cp_async_wait<1>();  // this lane's copies of group grp have landed
    } else {
      cp_async_wait<0>();
    }
    const uint4* src = wbuf + (grp & 1) * kStageVecs + lane;
#pragma unroll
    for (int u = 0; u < U; u++) {
      uint4 a[MT][2];
      uint4 b[NT];
#pragma unroll
      for (int mi = 0; mi < MT; mi++) {
        a[mi][0] = src[(u * kSlots + 2 * mi) * 32];
        a[mi][1] = src[(u * kSlots + 2 * mi + 1) * 32];
      }
#pragma unroll
      for (int ni = 0; ni < NT; ni++) b[ni] = src[(u * kSlots + 2 * MT + ni) * 32];
#pragma unroll
      for (int mi = 0; mi < MT; mi++)
#pragma unroll
        for (int ni = 0; ni < NT; ni++) {
          mma_bf16_16816(acc[mi][ni], a[mi][0].x, a[mi][1].x, a[mi][0].y, a[mi][1].y, b[ni].x, b[ni].y);
          mma_bf16_16816(acc[mi][ni], a[mi][0].z, a[mi][1].z, a[mi][0].w, a[mi][1].w, b[ni].z, b[ni].w);
        }
    }
  }

  // Accumulator layout of m16n8: c0, c1 -> (row g, cols 2t, 2t+1); c2, c3 -> (row g + 8, same cols).
  if constexpr (WK == 1) {
#pragma unroll
    for (int mi = 0; mi < MT; mi++)
#pragma unroll
      for (int ni = 0; ni < NT; ni++) {
        const int n = n0 + ni * 8 + 2 * t;
        const int r0 = m0 + mi * 16 + g;
        if (n < kExperts) {
          if (r0 < num_tokens)
            *reinterpret_cast<float2*>(logits + (size_t)r0 * kExperts + n) = make_float2(acc[mi][ni][0], acc[mi][ni][1]);
          if (r0 + 8 < num_tokens)
            *reinterpret_cast<float2*>(logits + (size_t)(r0 + 8) * kExperts + n) =
                make_float2(acc[mi][ni][2], acc[mi][ni][3]);
        }
      }
  } else {
    // red: [WK][BM][BN] partial tiles, over the (now idle) stage buffers: wait until every warp is done with them.
    float* red = reinterpret_cast<float*>(smem);
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < MT; mi++)
#pragma unroll
      for (int ni = 0; ni < NT; ni++) {
        const int col = wn * BNW + ni * 8 + 2 * t;
        const int row = mi * 16 + g;
        float* p = red + ((size_t)wk * BM + row) * BN + col;
        p[0] = acc[mi][ni][0];
        p[1] = acc[mi][ni][1];
        p[8 * BN] = acc[mi][ni][2];
        p[8 * BN + 1] = acc[mi][ni][3];
      }
    __syncthreads();
    for (int i = threadIdx.x; i < BM * BN; i += blockDim.x) {
      const int row = i / BN;
      const int col = i % BN;
      const int r = m0 + row;
      const int n = blockIdx.x * BN + col;
      if (r < num_tokens && n < kExperts) {
        float s = red[i];
#pragma unroll
        for (int k = 1; k < WK; k++) s += red[(size_t)k * BM * BN + i];
        logits[(size_t)r * kExperts + n] = s;
      }
    }
  }
}
#undef MEGAMOE_ROUTER_ISSUE

}  // namespace

// Tile configurations (BM, BNW, WN, WK, U); threads = 32 * WN * WK; dynamic shared memory =
// router_tile_smem_bytes (routing.ts routerTileSmemBytes mirrors it). Grid: x = ceil(E / (BNW * WN)),
// y = ceil(T / BM), z = number of K splits S (partials [S, T, E]).
// gemv:    16 x 8  tile, 16 warps split K, 2 chunks a stage (96 KiB). Small T: the gate is streamed once.
// mid:     32 x 32 tile, 2 x 4 warps, 2 chunks a stage (96 KiB).
// prefill: 64 x 64 tile, 4 x 2 warps, 1 chunk a stage (80 KiB). Fewest re-reads of x and Wg per FLOP.
// __launch_bounds__(threads, 1): without the explicit minimum ptxas capped mid at 80 registers and spilled.
#define MEGAMOE_ROUTER_LOGITS_KERNEL(NAME, BM, BNW, WN, WK, U)                                                \
  static_assert(router_tile_smem_bytes<BM, BNW, WN, WK, U>() >= (WK) * (BM) * (BNW) * (WN) * 4,              \
                "the split-K reduction must fit in the stage buffers it reuses");                           \
  extern "C" __global__ void __launch_bounds__(32 * WN * WK, 1)                                              \
      NAME(const uint4* __restrict__ x, const uint4* __restrict__ w, float* __restrict__ partials,              \
           int num_tokens) {                                                                                 \
    extern __shared__ uint4 megamoe_router_smem[];                                                          \
    router_logits_tile<BM, BNW, WN, WK, U>(x, w, partials, num_tokens, megamoe_router_smem);                \
  }

MEGAMOE_ROUTER_LOGITS_KERNEL(megamoe_router_logits_gemv, 16, 8, 1, 16, 2)
MEGAMOE_ROUTER_LOGITS_KERNEL(megamoe_router_logits_mid, 32, 16, 2, 4, 2)
MEGAMOE_ROUTER_LOGITS_KERNEL(megamoe_router_logits_prefill, 64, 16, 4, 2, 1)

namespace {

constexpr int kPerLane = (kExperts + 31) / 32;  // experts one lane owns: e = lane + 32 * i
constexpr int kTopkWarps = 8;
constexpr int kMaxSplits = 8;  // routing.ts ROUTER_MAX_SPLITS: the most K splits the logits kernels are launched with

// s = sqrt(softplus(l)), softplus(z) = max(z, 0) + log1p(exp(-|z|)) (stable for any z), rounded to f32 after
// EVERY step exactly as the CPU router (moe/router.ts sqrtSoftplusF32) does:
//   e = f32(exp(-|l|)), lp = f32(log1p(e)), sp = f32(max(l, 0) + lp), s = f32(sqrt(sp)).
// exp and log1p are evaluated in f64 and rounded once, like the CPU's f64 Math.exp/Math.log1p + Math.fround: two
// f64 libms differ by at most an f64 ulp or so, which changes the f32 rounding only about once in 2^29 values,
// whereas f32 expf/log1pf would be off by an f32 ulp often enough to flip near-tied selections. The add and the
// sqrt are IEEE f32 operations (the CPU's f64 op + fround gives the same: 53 >= 2*24 + 2).
__device__ __forceinline__ float router_score(float logit) {
  const float e = __double2float_rn(exp(-fabs((double)logit)));
  const float lp = __double2float_rn(log1p((double)e));
  const float sp = megamoe::add_rn(fmaxf(logit, 0.0f), lp);
  return __fsqrt_rn(sp);
}

// The better of two (value, expert) candidates: larger value, ties to the lower expert index.
__device__ __forceinline__ bool better(float v, int e, float bv, int be) { return v > bv || (v == bv && e < be); }

}  // namespace

// One warp per token. partials: [S, T, E] (S = num_splits, the K splits of the logits kernel; S = 1 reads the
// logits directly). logits_out (nullable): the summed logits [T, E], for tests and debugging.
// Score routing: token_ids == nullptr; selection by top-K of s + bias (bias nullable = zero).
// Hash routing: token_ids [T] (I64) and tid2eid [vocab, K] (I32 or I64); a token id outside [0, vocab) or a
// table entry outside [0, E) gives a masked slot (id -1, weight 0) rather than a wild read.
extern "C" __global__ void __launch_bounds__(kTopkWarps * 32)
megamoe_router_topk(const float* __restrict__ partials, int num_splits, float* __restrict__ logits_out,
                    const float* __restrict__ bias, const long long* __restrict__ token_ids,
                    const void* __restrict__ tid2eid, int tid2eid_is_i64, long long vocab, int normalize,
                    float routed_scaling_factor, long long* __restrict__ ids_out, float* __restrict__ w_out,
                    int num_tokens) {
  const int lane = threadIdx.x & 31;
  const int token = blockIdx.x * kTopkWarps + (threadIdx.x >> 5);
  if (token >= num_tokens) return;  // whole warp
  const size_t split_stride = (size_t)num_tokens * kExperts;
  const float* row = partials + (size_t)token * kExperts;

  int my_id = -1;      // lane j < K ends up holding slot j
  float my_w = 0.0f;

  if (token_ids == nullptr) {
    float score[kPerLane];
    float sel[kPerLane];
    // Gather this lane's logits first, every load issued before the first add, then the splits of each logit added in
    // the fixed order z = 0, 1, ..., as the logits kernel promises. The split loop is outside (z < num_splits is the
    // same for the whole warp) and the expert index is clamped instead of branched on: per-expert predicated loads
    // compiled to one branch region per expert, and ncu's samples of a one-token launch waited in each (GPU-MODEL.md).
    float logit[kPerLane];
    float part[kPerLane][kMaxSplits];
#pragma unroll
    for (int z = 0; z < kMaxSplits; z++) {
      if (z < num_splits) {
#pragma unroll
        for (int i = 0; i < kPerLane; i++) {
          const int e = lane + 32 * i;
          part[i][z] = row[(size_t)z * split_stride + (e < kExperts ? e : kExperts - 1)];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kPerLane; i++) {
      float l = part[i][0];
#pragma unroll
      for (int z = 1; z < kMaxSplits; z++)
        if (z < num_splits) l += part[i][z];
      logit[i] = l;  // (a clamped lane's value is never used: e >= kExperts is skipped below)
    }
#pragma unroll
    for (int i = 0; i < kPerLane; i++) {
      const int e = lane + 32 * i;
      score[i] = 0.0f;
      sel[i] = -__int_as_float(0x7f800000);  // -inf: never beats a real candidate
      if (e < kExperts) {
        const float l = logit[i];
        if (logits_out != nullptr) logits_out[(size_t)token * kExperts + e] = l;
        score[i] = router_score(l);
        sel[i] = bias != nullptr ? megamoe::add_rn(score[i], bias[e]) : score[i];
      }
    }
    unsigned taken = 0;  // bit i: expert lane + 32 i already selected
#pragma unroll 1
    for (int j = 0; j < kTopK; j++) {
      float bv = -__int_as_float(0x7f800000);
      int be = 0x7fffffff;
      float bs = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; i++) {
        const int e = lane + 32 * i;
        if (e < kExperts && !((taken >> i) & 1u) && better(sel[i], e, bv, be)) {
          bv = sel[i];
          be = e;
          bs = score[i];
        }
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
        const int oe = __shfl_xor_sync(0xffffffffu, be, offset);
        const float os = __shfl_xor_sync(0xffffffffu, bs, offset);
        if (better(ov, oe, bv, be)) {
          bv = ov;
          be = oe;
          bs = os;
        }
      }
      // Every lane now holds the same winner. be stays INT_MAX only if every candidate was NaN.
      if (be < kExperts && (be & 31) == lane) taken |= 1u << (be >> 5);
      if (lane == j) {
        my_id = be < kExperts ? be : -1;
        my_w = be < kExperts ? bs : 0.0f;
      }
    }
  } else {
    if (lane < kTopK) {
      const long long tid = token_ids[token];
      long long id = -1;
      if (tid >= 0 && tid < vocab) {
        const size_t slot = (size_t)tid * kTopK + lane;
        id = tid2eid_is_i64 ? static_cast<const long long*>(tid2eid)[slot]
                            : (long long)static_cast<const int*>(tid2eid)[slot];
      }
      if (id >= 0 && id < kExperts) {
        float l = row[id];
        for (int z = 1; z < num_splits; z++) l += row[(size_t)z * split_stride + id];
        my_id = (int)id;
        my_w = router_score(l);
      }
    }
    if (logits_out != nullptr) {
      for (int e = lane; e < kExperts; e += 32) {
        float l = row[e];
        for (int z = 1; z < num_splits; z++) l += row[(size_t)z * split_stride + e];
        logits_out[(size_t)token * kExperts + e] = l;
      }
    }
  }

  // Weights: sum in slot order 0..K-1 (as the CPU does), w /= max(sum, 1e-20), w *= routed_scaling_factor.
  if (normalize) {
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kTopK; j++) sum = megamoe::add_rn(sum, __shfl_sync(0xffffffffu, my_w, j));
    my_w = megamoe::div_rn(my_w, fmaxf(sum, 1e-20f));
  }
  my_w = megamoe::mul_rn(my_w, routed_scaling_factor);
  if (lane < kTopK) {
    ids_out[(size_t)token * kTopK + lane] = my_id;
    w_out[(size_t)token * kTopK + lane] = my_w;
  }
}
