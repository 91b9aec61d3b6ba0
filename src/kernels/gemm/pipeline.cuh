// The stage ring of a TMA -> wgmma pipeline: kStages shared-memory stages, each guarded by a "full" mbarrier (the
// producer's arrive.expect_tx + the TMA bytes) and an "empty" one (the consumers' releases). Producer and consumer
// threads each walk the ring with their own Ring; the parity flips every time the ring wraps. A Ring outlives one
// GEMM: the fused kernel runs L1 and then L2 units through the same barriers without re-initialising them.
#pragma once

namespace gg {

struct Ring {
  int stage = 0;
  u32 phase = 0;
  // Dynamic unit scheduling (Sync::kDynamic): units announced so far (the unit-slot index), and the
  // producer's first unit of the next GEMM (the one its last grab returned past this GEMM's units).
  int seq = 0;
  int carry = 0;
  template <int kStages>
  __device__ __forceinline__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// Barrier addresses of a plan with kStages stages whose barriers start at byte kOffBar: full[s], then empty[s].
template <int kStages>
struct RingBars {
  u32 base;  // shared address of full[0]
  __device__ __forceinline__ u32 full(int s) const { return base + 8u * s; }
  __device__ __forceinline__ u32 empty(int s) const { return base + 8u * (kStages + s); }
  // full: one arrive (the producer's, with expect_tx); empty: `consumers` arrives.
  __device__ __forceinline__ void init(u32 consumers) const {
    for (int s = 0; s < kStages; s++) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), consumers);
    }
    fence_mbar_init();
  }
};

// The GEMM's run-time operands, one struct for every variant (the kernel ABI stays the flat parameter list of
// grouped_gemm_fp8.cu; its entry points pack it). See grouped_gemm_fp8.cu's header for each buffer's layout.
struct GemmArgs {
  const TmaDesc* tmap_a;
  const TmaDesc* tmap_b;
  const TmaDesc* tmap_sfa;
  const TmaDesc* tmap_d;
  const float* __restrict__ sfb;
  const int* __restrict__ tile_group;
  const int* __restrict__ num_m_tiles;
  void* __restrict__ out;
  float* __restrict__ out_sf;
  const float* __restrict__ row_weight;
  float swiglu_limit;
  int m_cap;
  // Split-K decode GEMMs only (decode_body's kSplitK): f32 partial totals and per-tile arrival counters.
  float* __restrict__ partial = nullptr;
  int* __restrict__ arrivals = nullptr;
};

// Cross-CTA hooks of a GEMM body. The standalone GEMM has none; the fused kernel (mega_moe.cu) waits for an L2 A
// block before loading it and publishes each L1 output block once it is written.
//   kWaits:     the producer asks unit_ready(mt) once per unit (every A block of row tile mt published: then it
//               loads the whole unit without further checks), else prefetch-hints the unit's weights into L2 and
//               calls wait(mt, kb) before loading A block kb; wait() returning false means "abort": the stage is
//               loaded anyway (the kernel reports the error; no hang, and a cluster peer gets its multicast half).
//   kPublishes: every consumer thread calls publish(mt, nt, ctid, nthreads) after its epilogue stores of unit
//               (mt, nt).
//   kCompletes: (decode body, bf16 epilogue) every consumer thread calls complete<kCols>(mt, wb, ctid, nthreads)
//               after its stores of unit (mt, wb), which covers kCols output columns.
//   first_unit(cta, ctas): the first work unit of CTA (or 2-CTA cluster) `cta` of `ctas` (then every ctas-th),
//               so a second GEMM can continue the first one's round robin.
//   a_tile(mt): (decode body) the row tile of A and its scales that row tile mt's units read: mt, or, in the fused
//               kernel's small-T dispatch, tile 0 for all (every expert's tile holds all T tokens).
//   kSkipsPadding: (normal body) live_rows(mt, g) is how many of row tile mt's 128 rows hold tokens (the rest is its
//               expert's padding); a consumer warpgroup whose 64 rows are all padding skips its MMAs and its epilogue
//               (nothing reads padding rows' outputs), still passing every stage on.
//   kDynamic:   (decode body; normal body without clusters) units are not dealt round robin: the producer starts at ring.carry and takes each next
//               unit from grab() (a grid-wide counter), announcing every unit to its consumers through a shared-memory
//               slot read after the unit's first full barrier, and ends the GEMM with a marker stage (no data).
//   kAnnounces: (normal body) the producer resolves every unit and hands it to the consumers in shared memory (as
//               with kDynamic), with the unit's weight scales (a bulk copy on its first stage's barrier), so no
//               global load of theirs stands between two units.
//   kScattersRows: (bf16 epilogues) output row m goes to row row_dest(m) of ga.out, none where it is negative
//               (padding), instead of row m: the fused kernel's combine buffer holds only real rows, by (token, slot).
//               The normal body then copies its staged tile out with 16-byte stores, a row per warp instruction.
//   kCompactRows: the A rows (both GEMMs) and the SwiGLU epilogue's output rows (L1) keep each group's rows without
//               padding: grouped row m of group g sits at m + row_shift(g) (<= 0), and the rows from rows_end(g) on
//               (the group's padding) are not written. A tile's box then starts at its first row's place; the rows
//               past its group's end are the next group's, read as padding (their outputs are discarded). The
//               scales keep the grouped rows (a scale box starts at a multiple of the tile rows).
//   kFitsPairs: (normal body, weight multicast) pair_slot(s, g) places row tile s (of expert g) in the pairs' schedule:
//               half >= 0: one of the two row tiles first, first + 1 of g that a pair takes together, both CTAs on N
//               tiles [half, half + 1) * N tiles / 2 (the weight tile multicast); half < 0: both CTAs take row tile s,
//               CTA r its N tiles 2 v + r. Row tile s has N tiles / 2 units either way.
struct PairSlot {
  int first;  // the pair's first row tile (half >= 0)
  int half;   // which half of the N tiles, or -1: both CTAs on row tile s
};
struct NoSync {
  static constexpr bool kWaits = false;
  static constexpr bool kPublishes = false;
  static constexpr bool kCompletes = false;
  static constexpr bool kDynamic = false;
  static constexpr bool kSkipsPadding = false;
  static constexpr bool kFitsPairs = false;
  static constexpr bool kAnnounces = false;
  static constexpr bool kScattersRows = false;
  static constexpr bool kCompactRows = false;
  __device__ __forceinline__ int row_dest(int m) const { return m; }
  __device__ __forceinline__ int row_shift(int) const { return 0; }
  __device__ __forceinline__ int rows_end(int) const { return 0x7fffffff; }
  __device__ __forceinline__ int live_rows(int, int) const { return 128; }
  __device__ __forceinline__ PairSlot pair_slot(int s, int) const { return {s, -1}; }
  __device__ __forceinline__ int grab() const { return 0; }
  __device__ __forceinline__ int first_unit(int cta, int) const { return cta; }
  __device__ __forceinline__ int a_tile(int mt) const { return mt; }
  __device__ __forceinline__ bool unit_ready(int) const { return true; }
  __device__ __forceinline__ bool wait(int, int) const { return true; }
  __device__ __forceinline__ void publish(int, int, int, int) const {}
  template <int kCols>
  __device__ __forceinline__ void complete(int, int, int, int) const {}
};

}  // namespace gg
