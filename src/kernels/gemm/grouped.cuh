// The two block-scaled FP8 grouped GEMM bodies (normal / prefill and decode / swap A-B) of grouped_gemm_fp8.cu,
// as templates over their shape, their shared-memory plan, their cross-CTA hooks (Sync, gemm/pipeline.cuh) and
// whether they own their setup (barrier init + register split) or run inside a kernel that did it (the fused
// MegaMoE kernel, mega_moe.cu, runs L1 and L2 through one ring). The design is grouped_gemm_fp8.cu's header and
// docs/GEMM.md. Included after common.cuh, gemm/ptx.cuh, gemm/wgmma_e4m3.cuh and gemm/pipeline.cuh.
#pragma once

#ifndef GG_L2_POLICY
#define GG_L2_POLICY 0  // the normal body's L2 eviction policies (its producer, below)
#endif

namespace gg {

constexpr int kBlockK = 128;   // K block = scale block (SPEC 3)
constexpr int kNormalRows = 128;  // normal kernel: rows per tile (2 consumer warpgroups x 64)
constexpr int kDecodeRows = 16;   // decode kernel: tokens per tile (wgmma N); the fused kernel also builds 32

// ------------------------------------------------------------------------------------------------------------------
// Shared-memory plans. Host code mirrors these formulas (grouped-gemm.ts, the harness); the kernels check the
// launch's dynamic shared memory against them and trap on a mismatch instead of corrupting memory.
// ------------------------------------------------------------------------------------------------------------------
template <int kNSub, int kStages, int kStore>
struct NormalPlan {
  static constexpr int kBlockN = 128 * kNSub;
  static constexpr u32 kABytes = kNormalRows * kBlockK;  // 16 KB, 1024-aligned (128B swizzle atom)
  static constexpr u32 kBBytes = kBlockN * kBlockK;
  static constexpr u32 kSfaBytes = kNormalRows * 4;       // 512 B, keeps 128-byte TMA alignment
  static constexpr u32 kDBytes = kStore ? kNormalRows * kBlockN * 2 : 0;  // bf16 staging for the TMA store
  static constexpr u32 kOffD = 0;
  static constexpr u32 kOffA = kOffD + kDBytes;
  static constexpr u32 kOffB = kOffA + kStages * kABytes;
  static constexpr u32 kOffSfa = kOffB + kStages * kBBytes;
  static constexpr u32 kOffBar = kOffSfa + kStages * kSfaBytes;
  static constexpr u32 kSmemBytes = kOffBar + 2 * kStages * 8;
  static constexpr int kThreads = 384;
};

// 64-token tiles need two consumer warpgroups (each takes half of a unit's 64-row sub-tiles: 16 x 2 x 2 accumulators
// and totals per thread would not fit one), so a plan of them has 384 threads (warps 8-11 produce).
template <int kMSub, int kStages, int kTokens = kDecodeRows>
struct DecodePlan {
  static_assert(kTokens == 16 || kTokens == 32 || kTokens == 64, "decode tiles hold 16, 32 or 64 tokens (wgmma N)");
  static constexpr int kRows = kTokens;                     // tokens per row tile
  static constexpr int kConsumerWGs = kRows == 64 ? 2 : 1;
  static constexpr int kRowsW = 64 * kMSub;                 // weight rows per unit
  static constexpr u32 kBBytes = kRowsW * kBlockK;          // weights, multiple of 8 KB
  static constexpr u32 kABytes = kRows * kBlockK;           // 2, 4 or 8 KB of tokens
  static constexpr u32 kSfaSlot = kRows * 4 > 128 ? kRows * 4 : 128;  // the tokens' f32 scales, 128-byte aligned
  static constexpr u32 kOffB = 0;
  static constexpr u32 kOffA = kOffB + kStages * kBBytes;
  static constexpr u32 kOffSfa = kOffA + kStages * kABytes;
  static constexpr u32 kOffBar = kOffSfa + kStages * kSfaSlot;
  static constexpr u32 kOffAmax = kOffBar + 2 * kStages * 8;  // SwiGLU: per-warp per-token amax [consumer warps][kRows] f32
  static constexpr u32 kSmemBytes = kOffAmax + 4 * kConsumerWGs * kRows * 4;
  static constexpr int kThreads = 128 * (kConsumerWGs + 1);
};

// Row tiles past the buffer's capacity are never visited, whatever *num_m_tiles says.
__device__ __forceinline__ int live_row_tiles(const int* num_m_tiles, int m_cap, int rows_per_tile) {
  const int n = *num_m_tiles;
  const int cap = m_cap / rows_per_tile;
  return n < 0 ? 0 : (n > cap ? cap : n);
}

__device__ __forceinline__ void check_smem(u32 need, const void* smem) {
  // A short launch (too little dynamic shared memory) or a misaligned base would silently corrupt the pipeline.
  if (dynamic_smem_bytes() < need || (smem_addr(smem) & 1023u) != 0) __trap();
}

// Weight layouts (GG_WTILED). The kernels always want the same thing in shared memory: R weight rows (R <= 128, the
// box height) x one 128-byte K block, 128B-swizzled. Where those bytes sit in global memory is the layout's business:
//  * rows  (0): e4m3 [G, N, K] row-major, tensor map [G*N, K]: a box is R segments of 128 bytes, K bytes apart.
//  * tiled (1): e4m3 [G, N/128, K/128, 128 rows, 128 bytes]: every 128-row x 128-byte block is one contiguous 16 KB
//    run, tensor map [G*N*K/128, 128] (a single 128-byte column), so a box is R * 128 consecutive bytes. A box never
//    crosses a 128-row tile (R is 64 or 128 and starts at a multiple of R), so the smem image and its swizzle are
//    identical to the rows layout's and the consumers do not change.
// weight_coord returns the TMA coordinates {x = byte column, y = row} of expert g's weight rows [row, row + R) of
// K block kb. Tiled row index: ((g * N/128 + row/128) * K/128 + kb) * 128 + row % 128 (< 2^31: the launcher checks
// G * N * K / 128).
struct WCoord {
  int x, y;
};
template <int kN, int kK, int kWTiled>
__device__ __forceinline__ WCoord weight_coord(int g, int row, int kb) {
  static_assert(kWTiled == 0 || kWTiled == 1, "GG_WTILED is 0 (rows) or 1 (tiled)");
  if (kWTiled) return {0, ((g * (kN / 128) + row / 128) * (kK / kBlockK) + kb) * 128 + row % 128};
  return {kb * kBlockK, g * kN + row};
}

// Dynamic scheduling (Sync::kDynamic): the unit of each announced position, ring.seq modulo kUnitSlots. The producer
// is at most kStages stages (so units) ahead of its consumers, and every GEMM of a kernel shares the array.
constexpr int kUnitSlots = 16;
__device__ __forceinline__ int* unit_slots() {
  __shared__ int slots[kUnitSlots];
  return slots;
}
// Announced units (dynamic scheduling, the fused kernel's fitted pairs, Sync::kAnnounces): the producer resolves each unit (row
// tile, N tile, expert, ...) and leaves it here, in the slot of the unit's position, before its first stage's
// arrive; the consumers read it once that stage is full, so the dependent loads of the resolution stay off their
// path (fitted pairs measured 1-2% slower with each consumer resolving its units itself: docs/MEGA_MOE.md).
__device__ __forceinline__ int4* unit_infos() {
  __shared__ int4 infos[kUnitSlots];
  return infos;
}
// The weight scales of announced units (Sync::kAnnounces): [2 units, by announcement parity][2 scale rows][kKB].
// A unit's slot is rewritten two announcements later, when its consumers are past it (kKB > kStages: they have
// released a later unit's stages by then).
template <int kKB>
__device__ __forceinline__ float* sfb_slots() {
  __shared__ __align__(16) float slots[2 * 2 * kKB];
  return slots;
}
// The consumers' next unit of a dynamically scheduled GEMM: the slot of its first stage, read once that stage is full
// (the stage stays held for the unit's K block 0); the end marker (-1) releases its stage and moves past it.
template <int kStages>
__device__ __forceinline__ int take_dynamic_unit(Ring& ring, const RingBars<kStages>& bars, int lane) {
  mbar_wait(bars.full(ring.stage), ring.phase);
  const int u = unit_slots()[ring.seq++ % kUnitSlots];
  if (u < 0) {
    if (lane == 0) mbar_arrive(bars.empty(ring.stage));
    ring.advance<kStages>();
  }
  return u;
}
// The producer's end of a dynamically scheduled GEMM: a marker stage with no data whose slot says -1. The next GEMM
// of the kernel starts at the unit the last grab returned (u, past this GEMM's n_units).
template <int kStages>
__device__ __forceinline__ void end_dynamic_gemm(Ring& ring, const RingBars<kStages>& bars, int u, int n_units) {
  mbar_wait(bars.empty(ring.stage), ring.phase ^ 1);
  unit_slots()[ring.seq++ % kUnitSlots] = -1;
  mbar_arrive(bars.full(ring.stage));
  ring.advance<kStages>();
  ring.carry = u - n_units;
}

// ==================================================================================================================
// Normal (prefill) kernel body.
//
// kMcast: 0 = no cluster. 1 = CTAs are paired (__cluster_dims__(2,1,1)) along M: a pair takes row tiles 2p and 2p+1
// of the same N tile, and when both belong to the same expert each CTA fetches one 128-row half of the weight tile
// and multicasts it to both (halving weight traffic out of L2 at large M). 2 = pairs along N: both CTAs take the
// same row tile and N tiles 2q, 2q+1; each fetches one 64-row half of the activation tile and multicasts it (halving
// activation traffic when experts have few rows and the weights stream once). In both modes the two CTAs walk the
// same stage sequence in lockstep: every consumer warp releases a stage in BOTH CTAs (empty barriers count 8 x 2
// arrivals), and a CTA whose own tile is dead (-1 or past *num_m_tiles) still passes through the stages.
// With Sync::kFitsPairs (kMcast 1), a pair's units follow the expert's rows instead (Sync::pair_slot): two full row
// tiles of an expert share the weight tile as above, while a tile left over or mostly padding goes to both CTAs with
// alternate N tiles (no multicast), so no pair straddles two experts or waits on its larger tile.
// kStore = 1: the bf16 tile is staged in shared memory (128B-swizzled, conflict-free) and written by TMA stores
// (needs tmap_d: bf16 [m_cap, N], box 64 x 64, 128B swizzle); 0: direct 4-byte stores from registers.
// ==================================================================================================================
template <int kN, int kK, int kNSub, int kStages, int kEpi, int kMcast, int kStore, int kWTiled,
          class P = NormalPlan<kNSub, kStages, kEpi == 0 ? kStore : 0>, class Sync = NoSync, bool kOwnSetup = true>
__device__ __forceinline__ void normal_body(const GemmArgs& ga, Ring& ring, const Sync& sync = Sync()) {
  const TmaDesc* tmap_a = ga.tmap_a;
  const TmaDesc* tmap_b = ga.tmap_b;
  const TmaDesc* tmap_sfa = ga.tmap_sfa;
  const TmaDesc* tmap_d = ga.tmap_d;
  const float* __restrict__ sfb = ga.sfb;
  const int* __restrict__ tile_group = ga.tile_group;
  const int* __restrict__ num_m_tiles = ga.num_m_tiles;
  void* __restrict__ out = ga.out;
  float* __restrict__ out_sf = ga.out_sf;
  const float* __restrict__ row_weight = ga.row_weight;
  const float swiglu_limit = ga.swiglu_limit;
  const int m_cap = ga.m_cap;
  constexpr int kBlockN = 128 * kNSub;
  constexpr int kKB = kK / kBlockK;
  constexpr int kNTiles = kN / kBlockN;
  constexpr int kNScaleRows = kN / 128;
  constexpr bool kTmaStore = kEpi == 0 && kStore == 1;
  constexpr int kCluster = kMcast ? 2 : 1;
  constexpr bool kPairN = kMcast == 2;                     // pairs share the row tile (A multicast)
  constexpr int kNPairs = kNTiles >= 2 ? kNTiles / 2 : 1;  // (unused unless kPairN)
  static_assert(kMcast >= 0 && kMcast <= 2, "GG_MCAST is 0, 1 (weights) or 2 (activations)");
  static_assert(!kPairN || kNTiles % 2 == 0, "activation multicast pairs N tiles: N must be a multiple of 512");
  static_assert(kN % kBlockN == 0 && kK % kBlockK == 0, "N must be a multiple of 128*NSUB, K of 128");
  static_assert(kNSub == 1 || kNSub == 2, "NSUB is 1 or 2");
  static_assert(kMcast != 1 || kNSub == 2, "the weight multicast splits a 256-row weight tile");
  static_assert(kEpi == 0 || kNSub == 2, "the SwiGLU epilogue needs 256-row transformed tiles (NSUB = 2)");
  static_assert(kEpi == 0 || (kN / 2) % 128 == 0, "SwiGLU: I = N/2 must be a multiple of 128");
  static_assert(P::kSmemBytes <= 232448, "shared-memory plan exceeds 227 KB: fewer stages");
  static_assert(P::kBBytes >= kBlockN * kBlockK && (kEpi == 1 || !kTmaStore || P::kDBytes >= kNormalRows * kBlockN * 2),
                "the plan's stages must hold this GEMM's tiles");
  static_assert(!(Sync::kWaits || Sync::kPublishes) || !kOwnSetup, "cross-CTA hooks run inside the fused kernel");
  static_assert(!Sync::kScattersRows || kTmaStore, "scattered rows: the normal body stages its bf16 tile");
  static_assert(!Sync::kCompactRows || !kPairN, "compact rows: no activation multicast (its halves are 64 rows apart)");

  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 sbase = smem_addr(smem);
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const RingBars<kStages> bars{sbase + P::kOffBar};
  auto full_bar = [&](int s) { return bars.full(s); };
  auto empty_bar = [&](int s) { return bars.empty(s); };
  const int rank = kCluster == 2 ? (int)cluster_rank() : 0;
  // Units go round robin over the CTAs, or over the clusters (both CTAs of a pair walk the same units).
  const int first_unit = kCluster == 2 ? sync.first_unit((int)cluster_id(), (int)num_clusters())
                                       : sync.first_unit((int)blockIdx.x, (int)gridDim.x);
  const int unit_step = kCluster == 2 ? (int)num_clusters() : (int)gridDim.x;
  // Dynamic scheduling (Sync::kDynamic, no cluster: a pair would have to agree on each grabbed unit): as in
  // decode_body, the producer starts at ring.carry, grabs each next unit and announces it to the consumers.
  constexpr bool kDyn = Sync::kDynamic && kCluster == 1;
  static_assert(!kDyn || kStages < kUnitSlots, "dynamic scheduling: more stages than unit slots");

  if (kOwnSetup) {  // the fused kernel initialises the ring once for all its GEMMs
    if (tid == 256) {
      check_smem(P::kSmemBytes, smem);
      prefetch_tmap(tmap_a);
      prefetch_tmap(tmap_b);
      prefetch_tmap(tmap_sfa);
      if (kTmaStore) prefetch_tmap(tmap_d);
      bars.init(8 * kCluster);  // empty: one arrive per consumer warp of every CTA of the cluster
    }
    if (kCluster == 2)
      cluster_sync();  // the peer's barriers must be initialised before any multicast or remote arrive
    else
      __syncthreads();
  }

  // Sync::kFitsPairs (weight multicast): units over pair slots (Sync::pair_slot), kNTiles / 2 per row tile.
  constexpr bool kFit = kMcast == 1 && Sync::kFitsPairs;
  constexpr int kHalfUnits = kNTiles / 2;
  static_assert(!kFit || kNTiles % 2 == 0, "fitted pairs split a row tile's N tiles in two halves: N must be a multiple of 512");
  const int n_mt = live_row_tiles(num_m_tiles, m_cap, kNormalRows);
  const int n_units = kFit ? n_mt * kHalfUnits : kPairN ? n_mt * kNPairs : (n_mt + kCluster - 1) / kCluster * kNTiles;
  // Expert of row tile mt, -1 when dead (skipped or past the live count).
  auto group_of = [&](int mt) { return mt < n_mt ? tile_group[mt] : -1; };
  // Work unit u -> this CTA's (row tile, N tile), its expert and the peer's (-1 when dead), and whether the pair
  // shares (multicasts) the weight tile.
  struct Unit {
    int mt, nt, g, g_peer;
    bool shared_w;
  };
  // Announced units (dynamic scheduling, fitted pairs, Sync::kAnnounces): the consumers take each unit's resolution
  // from unit_infos and, where the copy's size allows (16-byte multiples), its weight scales from sfb_slots.
  constexpr bool kAnnounce = kDyn || kFit || Sync::kAnnounces;
  constexpr bool kSfbSmem = kAnnounce && kKB % 4 == 0;
  constexpr u32 kSfbBytes = kKB * 4;
  static_assert(!kSfbSmem || kKB > kStages, "announced weight scales: a unit's slot is reused two units later");
  // Weight-scale rows of (expert g, N tile nt): bf16 -> one 128-row block per half; SwiGLU -> the gate block and the
  // up block of activation columns [128 nt, 128 nt + 128) (both halves of the 256-row transformed tile share them).
  auto sfb_row = [&](int g, int nt, int which) {
    const float* sfb_g = sfb + (size_t)g * kNScaleRows * kKB;
    return sfb_g + (size_t)(kEpi == 0 ? nt * kNSub + which * (kNSub - 1) : which * ((kN / 2) / 128) + nt) * kKB;
  };
  auto pack = [](const Unit& w) { return make_int4(w.mt, w.nt, w.g, (w.g_peer << 1) | (w.shared_w ? 1 : 0)); };
  auto unpack = [](int4 v) { return Unit{v.x, v.y, v.z, v.w >> 1, (v.w & 1) != 0}; };
  auto unit_of = [&](int u) -> Unit {
    Unit w;
    w.shared_w = true;
    if (kFit) {
      const int s = u / kHalfUnits, v = u - s * kHalfUnits;
      w.g = w.g_peer = group_of(s);
      const PairSlot ps = sync.pair_slot(s, w.g);
      w.shared_w = ps.half >= 0;
      w.mt = w.shared_w ? ps.first + rank : s;
      w.nt = w.shared_w ? ps.half * kHalfUnits + v : 2 * v + rank;
    } else if (kPairN) {
      w.mt = u / kNPairs;
      w.nt = 2 * (u - w.mt * kNPairs) + rank;
      w.g = w.g_peer = group_of(w.mt);
    } else {
      const int mp = u / kNTiles;
      w.nt = u - mp * kNTiles;
      w.mt = mp * kCluster + rank;
      w.g = group_of(w.mt);
      w.g_peer = kCluster == 2 ? group_of(mp * kCluster + (rank ^ 1)) : -1;
    }
    return w;
  };

  if (warp >= 8) {
    // ---------------- producer warpgroup ----------------
    if (kOwnSetup) regs_dealloc<40>();
    if (warp == 8 && lane == 0) {
      // GG_L2_POLICY: 0 both operands evict_normal (the unfused GEMM); 1 the activation tiles and scales evict_last,
      // so the weight stream does not push out the row tile every N tile re-reads (the fused kernel's default:
      // mega-moe-layout.ts normalL2Policy); 2 also the weights evict_first.
      const u64 pol = GG_L2_POLICY == 2 ? policy_evict_first() : policy_evict_normal();
      const u64 pol_a = GG_L2_POLICY >= 1 ? policy_evict_last() : pol;
      int& stage = ring.stage;
      u32& phase = ring.phase;
      int u = kDyn ? ring.carry : first_unit;
      for (int next; u < n_units; u = next) {
        next = kDyn ? sync.grab() : u + unit_step;  // dynamic: issued now, its answer needed only at the end
        const Unit w = unit_of(u);
        const int mt = w.mt, nt = w.nt, g = w.g;
        // Both CTAs of the pair skip it (dynamic: never announced; announced round robin: never happens, as every
        // row tile below n_mt has an expert, but such a unit would still pass its stages to keep the count).
        if (g < 0 && w.g_peer < 0 && (kDyn || !kAnnounce)) continue;
        const bool mcast = kMcast == 1 && g >= 0 && w.g_peer == g && w.shared_w;
        const int b_row = nt * kBlockN;  // first weight row of the tile within expert g
        // First row of the tile's A (Sync::kCompactRows: in its group's rows without padding; its scales keep mt's).
        const int a_row = mt * kNormalRows + (Sync::kCompactRows && g >= 0 ? sync.row_shift(g) : 0);
        // One check per unit: a per-K-block acquire on the producer's path costs a round trip per stage.
        const bool a_ready = !Sync::kWaits || g < 0 || sync.unit_ready(mt);
        if (!a_ready) {
          // Its A is not written yet: pull this tile's weights into L2 meanwhile.
          for (int kb = 0; kb < kKB; kb++)
#pragma unroll
            for (int h = 0; h < kNSub; h++) {
              const WCoord c = weight_coord<kN, kK, kWTiled>(g, b_row + 128 * h, kb);
              tma_prefetch_2d(tmap_b, c.x, c.y);
            }
        }
        for (int kb = 0; kb < kKB; kb++) {
          mbar_wait(empty_bar(stage), phase ^ 1);
          const int seq = ring.seq;
          if (kAnnounce && kb == 0) {  // released by this stage's arrive
            const int j = ring.seq++ % kUnitSlots;
            if (kDyn) unit_slots()[j] = u;
            unit_infos()[j] = pack(w);
          }
          const bool sfb_copy = kSfbSmem && kb == 0 && g >= 0;
          // A failed wait (abort: the kernel reports the error) still loads the stage: its data is invalid anyway,
          // and a cluster peer expects this CTA's half of the weight tile (skipping it would hang the peer).
          if (g >= 0 && !a_ready) (void)sync.wait(mt, kb);
          if (g >= 0) {
            mbar_arrive_expect_tx(full_bar(stage), P::kABytes + P::kBBytes + P::kSfaBytes + (sfb_copy ? 2 * kSfbBytes : 0));
            if (sfb_copy) {
              const u32 slot = smem_addr(sfb_slots<kKB>() + (seq & 1) * 2 * kKB);
              bulk_load_1d(slot, sfb_row(g, nt, 0), kSfbBytes, full_bar(stage));
              bulk_load_1d(slot + kSfbBytes, sfb_row(g, nt, 1), kSfbBytes, full_bar(stage));
            }
            const u32 sb = sbase + P::kOffB + stage * P::kBBytes;
            if (kPairN) {  // each CTA fetches one 64-row half of the shared activation tile for both
              tma_load_2d_multicast(sbase + P::kOffA + stage * P::kABytes + rank * (64 * kBlockK), tmap_a,
                                    full_bar(stage), kb * kBlockK, mt * kNormalRows + 64 * rank, (unsigned short)0x3,
                                    pol_a);
            } else {
              tma_load_2d(sbase + P::kOffA + stage * P::kABytes, tmap_a, full_bar(stage), kb * kBlockK, a_row, pol_a);
            }
            tma_load_2d(sbase + P::kOffSfa + stage * P::kSfaBytes, tmap_sfa, full_bar(stage), mt * kNormalRows, kb,
                        pol_a);
            if (mcast) {
              const WCoord c = weight_coord<kN, kK, kWTiled>(g, b_row + 128 * rank, kb);
              tma_load_2d_multicast(sb + rank * (128 * kBlockK), tmap_b, full_bar(stage), c.x, c.y,
                                    (unsigned short)0x3, pol);
            } else {
#pragma unroll
              for (int h = 0; h < kNSub; h++) {
                const WCoord c = weight_coord<kN, kK, kWTiled>(g, b_row + 128 * h, kb);
                tma_load_2d(sb + h * (128 * kBlockK), tmap_b, full_bar(stage), c.x, c.y, pol);
              }
            }
          } else {
            mbar_arrive(full_bar(stage));  // dead tile: no data, the consumers just pass the stage on
          }
          ring.advance<kStages>();
        }
      }
      if constexpr (kDyn) end_dynamic_gemm(ring, bars, u, n_units);
    }
    __syncwarp();
  } else {
    // ---------------- consumer warpgroups ----------------
    if (kOwnSetup) regs_alloc<232>();
    const int wg = warp >> 2;                        // 0/1: rows [64 wg, 64 wg + 64) of the tile
    const int wq = warp & 3;                         // warp within the warpgroup: 16 rows each
    const int q = lane & 3;                          // column pair within an 8-column group
    const int rl = lane >> 2;                        // row within the warp's 8-row half
    const int r0 = wg * 64 + wq * 16 + rl;           // this thread's two rows: r0 and r0 + 8
    const int r1 = r0 + 8;
    auto release = [&](int s) {
      if (kCluster == 2) {
        if (lane < 2) mbar_arrive_cluster(empty_bar(s), (u32)lane);
      } else if (lane == 0) {
        mbar_arrive(empty_bar(s));
      }
    };

    float acc[64];
    float fin[kNSub][64];
    int& stage = ring.stage;
    u32& phase = ring.phase;

    for (int u = kDyn ? 0 : first_unit;; u += kDyn ? 0 : unit_step) {
      Unit w;
      if constexpr (kDyn) {
        u = take_dynamic_unit(ring, bars, lane);  // (no cluster: a release is one arrive per warp)
        if (u < 0) break;
        w = unpack(unit_infos()[(ring.seq - 1) % kUnitSlots]);
      } else if (u >= n_units) {
        break;
      } else if constexpr (kAnnounce) {  // round robin: every unit is announced (the producer skips none)
        mbar_wait(full_bar(stage), phase);
        w = unpack(unit_infos()[ring.seq++ % kUnitSlots]);
      } else {
        w = unit_of(u);
      }
      const int mt = w.mt, nt = w.nt, g = w.g;
      if (g < 0 && w.g_peer < 0 && !kAnnounce) continue;
      if (g < 0) {  // dead tile, live peer: keep the pair's stage sequence in step
        for (int kb = 0; kb < kKB; kb++) {
          mbar_wait(full_bar(stage), phase);
          release(stage);
          ring.advance<kStages>();
        }
        continue;
      }
      // Sync::kSkipsPadding: a warpgroup whose 64 rows are all its expert's padding passes the stages on without MMAs
      // and writes nothing (nothing reads padding rows' outputs). Every tile holds at least one token, so only the
      // second warpgroup's half can be all padding; the test is the same for its four warps (wgmma needs all four).
      if (Sync::kSkipsPadding && wg == 1 && sync.live_rows(mt, g) <= 64) {
        for (int kb = 0; kb < kKB; kb++) {
          if (!kAnnounce || kb > 0) mbar_wait(full_bar(stage), phase);  // (announced: K block 0 waited above)
          release(stage);
          ring.advance<kStages>();
        }
        if (Sync::kPublishes) sync.publish(mt, nt, tid, 256);  // with the other warpgroup (a CTA barrier inside)
        continue;
      }

      // This tile's weight-scale rows: from global memory, or (announced with their copy) the unit's scale slot.
      const float* sb_row0 = sfb_row(g, nt, 0);
      const float* sb_row1 = sfb_row(g, nt, 1);
      const u32 sfb_s0 = kSfbSmem ? smem_addr(sfb_slots<kKB>() + ((ring.seq - 1) & 1) * 2 * kKB) : 0u;

#pragma unroll
      for (int s = 0; s < kNSub; s++)
#pragma unroll
        for (int i = 0; i < 64; i++) fin[s][i] = 0.0f;

      float sb0 = kSfbSmem ? 0.0f : __ldg(sb_row0), sb1 = kSfbSmem ? 0.0f : __ldg(sb_row1);
      for (int kb = 0; kb < kKB; kb++) {
        // Prefetch the next K block's weight scales (warp-uniform, L1/L2 hits) while this block computes.
        const int kn = kb + 1 < kKB ? kb + 1 : kb;
        const float nsb0 = kSfbSmem ? 0.0f : __ldg(sb_row0 + kn), nsb1 = kSfbSmem ? 0.0f : __ldg(sb_row1 + kn);

        if (!kAnnounce || kb > 0) mbar_wait(full_bar(stage), phase);  // (announced: K block 0 waited above)
        if (kSfbSmem) {
          sb0 = ld_shared_f32(sfb_s0 + 4u * kb);
          sb1 = ld_shared_f32(sfb_s0 + kSfbBytes + 4u * kb);
        }
        // Read the activation scales before releasing the stage: the producer may refill it right after.
        const u32 sfa_base = sbase + P::kOffSfa + stage * P::kSfaBytes;
        const float sa0 = ld_shared_f32(sfa_base + 4u * r0);
        const float sa1 = ld_shared_f32(sfa_base + 4u * r1);

        const u64 da = make_desc_sw128(sbase + P::kOffA + stage * P::kABytes + wg * (64 * kBlockK));
#pragma unroll
        for (int s = 0; s < kNSub; s++) {
          const u64 db = make_desc_sw128(sbase + P::kOffB + stage * P::kBBytes + s * (128 * kBlockK));
#pragma unroll
          for (int i = 0; i < 64; i++) fence_reg(acc[i]);
          wgmma_fence();
#pragma unroll
          for (int kk = 0; kk < kBlockK / 32; kk++)
            wgmma_m64n128k32_e4m3(acc, da + kk * kDescK32Step, db + kk * kDescK32Step, kk > 0 ? 1u : 0u);
          wgmma_commit();
          wgmma_wait<0>();
#pragma unroll
          for (int i = 0; i < 64; i++) fence_reg(acc[i]);
          if (s == kNSub - 1) release(stage);

          // Promotion. Accumulator i of m64nNk32: row r0 (i % 4 < 2) or r1, column 8 (i / 4) + 2 q + (i % 2).
          // bf16: scale = sfa[row] * sfb[half s]; SwiGLU: 8-column groups alternate gate (even) / up (odd).
          float sc[2][2];
          if (kEpi == 0) {
            const float sbv = s == 0 ? sb0 : sb1;
            sc[0][0] = sc[0][1] = sa0 * sbv;
            sc[1][0] = sc[1][1] = sa1 * sbv;
          } else {
            sc[0][0] = sa0 * sb0;
            sc[0][1] = sa0 * sb1;
            sc[1][0] = sa1 * sb0;
            sc[1][1] = sa1 * sb1;
          }
#pragma unroll
          for (int i = 0; i < 64; i++) fin[s][i] = fmaf(acc[i], sc[(i >> 1) & 1][(i >> 2) & 1], fin[s][i]);
        }
        if (!kSfbSmem) {
          sb0 = nsb0;
          sb1 = nsb1;
        }
        ring.advance<kStages>();
      }

      const long long m0 = (long long)mt * kNormalRows + r0;  // global rows m0 and m0 + 8
      if (kTmaStore) {
        // ---- bf16 out through shared memory + TMA store: 64-column chunks of 64 rows x 128 B, 128B-swizzled ----
        const u32 stage_d = sbase + P::kOffD + wg * (64 * kBlockN * 2);
        const bool leader = (tid & 127) == 0;
        // Scattered rows: lane l of warp wq holds the destination of the warpgroup's row 16 wq + l % 16.
        const int dest = Sync::kScattersRows ? sync.row_dest(mt * kNormalRows + 64 * wg + 16 * wq + (lane & 15)) : 0;
        if (leader && !Sync::kScattersRows) bulk_wait_read0();  // this warpgroup's previous tile has left the staging buffer
        named_barrier_sync(2 + wg, 128);
#pragma unroll
        for (int s = 0; s < kNSub; s++)
#pragma unroll
          for (int j = 0; j < 16; j++)
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
              const int chunk = 2 * s + (j >> 3);
              const int row = wq * 16 + rl + 8 * rr;
              const u32 addr = stage_d + chunk * (64 * 128) + row * 128 + (((j & 7) ^ rl) << 4) + 4 * q;
              const u32 v = pack_bf16x2(fin[s][4 * j + 2 * rr], fin[s][4 * j + 2 * rr + 1]);
              asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
            }
        if constexpr (Sync::kScattersRows) {
          // Each warp copies its 16 rows (lane l: 16-byte unit l % 8 of 64-column chunk l / 8), skipping padding.
          // (The next tile's staging writes wait at the barrier above for every warp's reads here.)
          static_assert(kBlockN == 256, "scattered rows: a 256-column tile is one 16-byte unit per lane");
          named_barrier_sync(2 + wg, 128);
          const int c = lane >> 3, j = lane & 7;
          unsigned char* d = reinterpret_cast<unsigned char*>(out) + ((size_t)nt * kBlockN + 64 * c + 8 * j) * 2;
#pragma unroll 4
          for (int i = 0; i < 16; i++) {
            const int row = wq * 16 + i;
            const int m = __shfl_sync(0xffffffffu, dest, i);
            if (m < 0) continue;
            const uint4 v = ld_shared_v4(stage_d + c * (64 * 128) + row * 128 + ((j ^ (row & 7)) << 4));
            *reinterpret_cast<uint4*>(d + (size_t)m * kN * 2) = v;
          }
        } else {
          fence_proxy_async();
          named_barrier_sync(2 + wg, 128);
          if (leader) {
#pragma unroll
            for (int c = 0; c < kBlockN / 64; c++)
              tma_store_2d(tmap_d, stage_d + c * (64 * 128), nt * kBlockN + 64 * c, mt * kNormalRows + 64 * wg);
            bulk_commit();
          }
        }
      } else if (kEpi == 0) {
        // ---- bf16 out: each thread writes bf16 pairs (4 bytes) of its two rows ----
        unsigned short* d = reinterpret_cast<unsigned short*>(out);
#pragma unroll
        for (int s = 0; s < kNSub; s++) {
#pragma unroll
          for (int j = 0; j < 16; j++) {
            const int col = nt * kBlockN + s * 128 + 8 * j + 2 * q;
            *reinterpret_cast<u32*>(d + m0 * kN + col) = pack_bf16x2(fin[s][4 * j], fin[s][4 * j + 1]);
            *reinterpret_cast<u32*>(d + (m0 + 8) * kN + col) = pack_bf16x2(fin[s][4 * j + 2], fin[s][4 * j + 3]);
          }
        }
      } else {
        // ---- SwiGLU + per-row power-of-two quantization of 128 activation columns ----
        constexpr int kI = kN / 2;
        const float lim = swiglu_limit;
        const float w_row[2] = {row_weight[m0], row_weight[m0 + 8]};
        float a[2][kNSub][16];  // [row][half][2 p + e]: activation column 64 s + 8 p + 2 q + e
        float amax[2] = {0.0f, 0.0f};
#pragma unroll
        for (int s = 0; s < kNSub; s++) {
#pragma unroll
          for (int p = 0; p < 8; p++) {
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
#pragma unroll
              for (int e = 0; e < 2; e++) {
                float gv = fin[s][(2 * p) * 4 + 2 * rr + e];
                float uv = fin[s][(2 * p + 1) * 4 + 2 * rr + e];
                if (lim > 0.0f) {
                  uv = fminf(fmaxf(uv, -lim), lim);
                  gv = fminf(gv, lim);
                }
                const float av = silu(gv) * uv * w_row[rr];
                a[rr][s][2 * p + e] = av;
                amax[rr] = fmaxf(amax[rr], fabsf(av));
              }
            }
          }
        }
        unsigned char* aq = reinterpret_cast<unsigned char*>(out);
        // Sync::kCompactRows: rows go to their group's rows without padding; padding rows are not written.
        const int shift = Sync::kCompactRows ? sync.row_shift(g) : 0;
        const int end = Sync::kCompactRows ? sync.rows_end(g) : 0x7fffffff;
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
          // The 4 lanes of a quad hold the whole row's 128 columns between them.
          float mx = amax[rr];
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          float inv;
          const float scale = pow2_scale(mx, inv);
          const long long m = m0 + 8 * rr;
          if (Sync::kCompactRows && m >= end) continue;
          unsigned char* row = aq + (m + shift) * kI + nt * 128;
#pragma unroll
          for (int s = 0; s < kNSub; s++)
#pragma unroll
            for (int p = 0; p < 8; p++) {
              const u32 pair = megamoe::f32x2_to_e4m3x2(a[rr][s][2 * p] * inv, a[rr][s][2 * p + 1] * inv);
              *reinterpret_cast<unsigned short*>(row + 64 * s + 8 * p + 2 * q) = (unsigned short)pair;
            }
          if (q == 0) out_sf[(size_t)nt * m_cap + m] = scale;
        }
      }
      if (Sync::kPublishes) sync.publish(mt, nt, tid, 256);
    }
    if (kTmaStore && !Sync::kScattersRows && (tid & 127) == 0) bulk_wait0();  // staging buffer must outlive the stores' reads
  }
  // A CTA must not leave while its peer can still arrive on its barriers or multicast into its shared memory.
  if (kCluster == 2) {
    __syncwarp();
    cluster_sync();
  }
}

// ==================================================================================================================
// Decode (swap A/B) kernel body: weights on wgmma's M side, 16 tokens on its N side.
// ==================================================================================================================

// Weight box height of a decode unit of kRowsW rows: the whole unit for the rows layout; for the tiled layout at most
// one 128-row tile (a 256-row SwiGLU unit spans two tiles that are K/128 tiles apart), so MSUB 4 issues 2 boxes.
template <int kRowsW, int kWTiled>
__host__ __device__ constexpr int decode_box_rows() {
  return kWTiled && kRowsW > 128 ? 128 : kRowsW;
}

// Pulls K blocks [kb0, kb1) of expert g's decode unit (weight rows [b_row, b_row + 64 * kMSub)) into L2: no shared
// memory, no barrier, a hint only (the loads that follow hit L2 instead of HBM).
template <int kN, int kK, int kMSub, int kWTiled>
__device__ __forceinline__ void decode_prefetch_weights(const TmaDesc* tmap_b, int g, int b_row, int kb0, int kb1) {
  constexpr int kRowsW = 64 * kMSub;
  constexpr int kBoxRowsW = decode_box_rows<kRowsW, kWTiled>();
  for (int kb = kb0; kb < kb1; kb++)
#pragma unroll
    for (int h = 0; h < kRowsW / kBoxRowsW; h++) {
      const WCoord c = weight_coord<kN, kK, kWTiled>(g, b_row + kBoxRowsW * h, kb);
      tma_prefetch_2d(tmap_b, c.x, c.y);
    }
}
// The split-K epilogue of decode_body (see there): each consumer thread stores its totals at its own slot of the
// split's partial tile (coalesced, and the reducing CTA's thread with the same tid holds the same outputs), then
// the CTA counts its arrival; the last split's CTA reduces. `flag` is shared scratch for the broadcast.
template <int kN, int kMSub, int kSplitK>
__device__ __forceinline__ void split_k_epilogue(const GemmArgs& ga, const float (&fin)[kMSub][8], int mt, int wb,
                                                 int ks, int tok0, int tid, int wq, int q, int rl, int* flag) {
  constexpr int kRowsW = 64 * kMSub;
  constexpr int kWBlocks = kN / kRowsW;
  constexpr int kTileFloats = kMSub * 8 * 128;
  const int tile = mt * kWBlocks + wb;
  auto slot = [&](int split, int s, int i) {  // tile-major: the workspace covers only the row tiles ever live
    return ga.partial + ((size_t)tile * kSplitK + split) * kTileFloats + (s * 8 + i) * 128 + tid;
  };
#pragma unroll
  for (int s = 0; s < kMSub; s++)
#pragma unroll
    for (int i = 0; i < 8; i++) __stcg(slot(ks, s, i), fin[s][i]);
  __threadfence();  // this thread's partials are visible device-wide before the CTA counts itself in
  named_barrier_sync(1, 128);
  if (tid == 0) {
    const int last = atomicAdd(ga.arrivals + tile, 1) == kSplitK - 1;
    if (last) ga.arrivals[tile] = 0;  // every split has arrived: the counter is ready for the next launch
    *flag = last;
  }
  named_barrier_sync(1, 128);
  // (The next unit's tid 0 rewrites *flag only after that unit's first barrier, past every thread's read here.)
  if (!*flag) return;
  __threadfence();
  unsigned short* d = reinterpret_cast<unsigned short*>(ga.out);
#pragma unroll
  for (int s = 0; s < kMSub; s++) {
    const int n = wb * kRowsW + 64 * s + 16 * wq + rl;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      float v = __ldcg(slot(0, s, i));
#pragma unroll
      for (int sp = 1; sp < kSplitK; sp++) v += __ldcg(slot(sp, s, i));  // split order: the same sum every run
      const long long tok = tok0 + 8 * (i >> 2) + 2 * q + (i & 1);
      d[tok * kN + n + 8 * ((i >> 1) & 1)] = f32_to_bf16(v);
    }
  }
}

// kSplitK > 1 (bf16 epilogue, standalone only): every unit (row tile, weight block) is split into kSplitK units of
// consecutive K ranges on different CTAs, so a small-N GEMM (the dense projections at decode) keeps more SMs streaming
// weights. Each split writes its f32 totals to ga.partial [tile][kSplitK][64 MSUB x 16]; the split that arrives last on
// the tile's counter (ga.arrivals [tile], zero between launches: the last one resets it) sums the
// kSplitK partials in split order and writes bf16, so the result is the same whichever CTA finishes last. Both
// workspaces are indexed by tile (mt * N / (64 MSUB) + wb), so they need only cover the row tiles a launch has live.
template <int kN, int kK, int kMSub, int kStages, int kEpi, int kWTiled, class P = DecodePlan<kMSub, kStages>,
          class Sync = NoSync, bool kOwnSetup = true, int kSplitK = 1>
__device__ __forceinline__ void decode_body(const GemmArgs& ga, Ring& ring, const Sync& sync = Sync()) {
  const TmaDesc* tmap_a = ga.tmap_a;
  const TmaDesc* tmap_b = ga.tmap_b;
  const TmaDesc* tmap_sfa = ga.tmap_sfa;
  const float* __restrict__ sfb = ga.sfb;
  const int* __restrict__ tile_group = ga.tile_group;
  const int* __restrict__ num_m_tiles = ga.num_m_tiles;
  void* __restrict__ out = ga.out;
  float* __restrict__ out_sf = ga.out_sf;
  const float* __restrict__ row_weight = ga.row_weight;
  const float swiglu_limit = ga.swiglu_limit;
  const int m_cap = ga.m_cap;
  constexpr int kRowsW = 64 * kMSub;  // this GEMM's unit (the plan may be sized for a larger one)
  constexpr int kRows = P::kRows;     // tokens per row tile (wgmma N): 16, or 32 / 64 in the fused kernel's wide paths
  constexpr int kAcc = kRows / 2;     // accumulators per thread per 64-row sub-tile
  constexpr int kCWG = P::kConsumerWGs;
  constexpr int kCThreads = 128 * kCWG;  // consumer threads [0, kCThreads); warp 4 kCWG produces
  constexpr int kMSubW = kMSub / kCWG;   // sub-tiles per consumer warpgroup: warpgroup c takes [c kMSubW, +kMSubW)
  constexpr int kKB = kK / kBlockK;
  constexpr int kWBlocks = kN / kRowsW;
  constexpr int kNScaleRows = kN / 128;
  constexpr int kBoxRowsW = decode_box_rows<kRowsW, kWTiled>();
  static_assert(kN % kRowsW == 0 && kK % kBlockK == 0, "N must be a multiple of 64*MSUB, K of 128");
  static_assert(kSplitK == 1 || kRows == kDecodeRows, "split-K: 16-token tiles only");
  static_assert(kMSub == 1 || kMSub == 2 || kMSub == 4, "MSUB is 1, 2 or 4");
  static_assert(kMSub % kCWG == 0, "64-token tiles: at least one 64-row sub-tile per consumer warpgroup");
  static_assert(kEpi == 0 || kMSub == 4, "the SwiGLU epilogue needs 256-row transformed units (MSUB = 4)");
  static_assert(kEpi == 0 || (kN / 2) % 128 == 0, "SwiGLU: I = N/2 must be a multiple of 128");
  static_assert(P::kSmemBytes <= 232448, "shared-memory plan exceeds 227 KB: fewer stages");
  static_assert(P::kBBytes >= kRowsW * kBlockK, "the plan's stages must hold this GEMM's weight tile");
  static_assert(!(Sync::kWaits || Sync::kPublishes) || !kOwnSetup, "cross-CTA hooks run inside the fused kernel");
  static_assert(!Sync::kDynamic || kStages < kUnitSlots, "dynamic scheduling: more stages than unit slots");
  static_assert(kSplitK >= 1 && kKB % kSplitK == 0, "split-K: K/128 must be a multiple of the split count");
  static_assert(kSplitK == 1 || (kEpi == 0 && kOwnSetup && !Sync::kDynamic), "split-K: bf16 epilogue, standalone GEMM only");
  constexpr int kKBSplit = kKB / kSplitK;  // K blocks per unit
  constexpr bool kDyn = Sync::kDynamic;
  constexpr u32 kUnitBBytes = kRowsW * kBlockK;  // weight bytes of one stage (a stage slot may be larger)

  extern __shared__ __align__(1024) unsigned char smem[];
  const u32 sbase = smem_addr(smem);
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const RingBars<kStages> bars{sbase + P::kOffBar};
  auto full_bar = [&](int s) { return bars.full(s); };
  auto empty_bar = [&](int s) { return bars.empty(s); };

  if (kOwnSetup) {
    if (tid == kCThreads) {
      check_smem(P::kSmemBytes, smem);
      prefetch_tmap(tmap_a);
      prefetch_tmap(tmap_b);
      prefetch_tmap(tmap_sfa);
      bars.init(4 * kCWG);  // empty: one arrive per consumer warp
    }
    __syncthreads();
  }

  const int n_units = live_row_tiles(num_m_tiles, m_cap, kRows) * kWBlocks * kSplitK;
  // Unit u -> (row tile, weight block, K split): splits of one tile are adjacent, so they land on adjacent CTAs.
  struct DUnit {
    int mt, wb, ks;
  };
  auto dunit_of = [](int u) -> DUnit {
    const int t = u / kSplitK;
    const int mt = t / kWBlocks;
    return {mt, t - mt * kWBlocks, u - t * kSplitK};
  };

  if (warp >= 4 * kCWG) {
    // ---------------- producer warpgroup: one thread keeps up to kStages tiles of weights in flight ----------------
    if (warp == 4 * kCWG && lane == 0) {
      const u64 pol_a = policy_evict_last();
      const u64 pol_b = policy_evict_first();
      int& stage = ring.stage;
      u32& phase = ring.phase;
      int u = kDyn ? ring.carry : sync.first_unit((int)blockIdx.x, (int)gridDim.x);
      for (int next; u < n_units; u = next) {
        next = kDyn ? sync.grab() : u + (int)gridDim.x;  // dynamic: issued now, its answer needed only at the end
        const DUnit du = dunit_of(u);
        const int mt = du.mt, wb = du.wb, kb0 = du.ks * kKBSplit;
        const int g = tile_group[mt];
        if (g < 0) continue;
        const int b_row = wb * kRowsW;  // first weight row of the unit within expert g
        // One check per unit: a per-K-block acquire on the producer's path costs a round trip per stage.
        const bool a_ready = !Sync::kWaits || sync.unit_ready(mt);
        if (!a_ready) {
          // Its A is not written yet: pull this unit's weights into L2 meanwhile (decode: L2 while L1 runs).
          decode_prefetch_weights<kN, kK, kMSub, kWTiled>(tmap_b, g, b_row, 0, kKB);
        }
        const int at = sync.a_tile(mt);
        // First row of the tile's tokens (Sync::kCompactRows: in its group's rows without padding; scales: at's).
        const int a_row = at * kRows + (Sync::kCompactRows ? sync.row_shift(g) : 0);
        for (int kb = kb0; kb < kb0 + kKBSplit; kb++) {
          mbar_wait(empty_bar(stage), phase ^ 1);
          if (kDyn && kb == 0) unit_slots()[ring.seq++ % kUnitSlots] = u;  // released by this stage's arrive
          if (!a_ready && !sync.wait(mt, kb)) {  // abort: pass the stage on without data
            mbar_arrive(full_bar(stage));
            ring.advance<kStages>();
            continue;
          }
          mbar_arrive_expect_tx(full_bar(stage), kUnitBBytes + P::kABytes + kRows * 4);
#pragma unroll
          for (int h = 0; h < kRowsW / kBoxRowsW; h++) {
            const WCoord c = weight_coord<kN, kK, kWTiled>(g, b_row + kBoxRowsW * h, kb);
            tma_load_2d(sbase + P::kOffB + stage * P::kBBytes + h * (kBoxRowsW * kBlockK), tmap_b, full_bar(stage),
                        c.x, c.y, pol_b);
          }
          tma_load_2d(sbase + P::kOffA + stage * P::kABytes, tmap_a, full_bar(stage), kb * kBlockK, a_row, pol_a);
          tma_load_2d(sbase + P::kOffSfa + stage * P::kSfaSlot, tmap_sfa, full_bar(stage), at * kRows, kb, pol_a);
          ring.advance<kStages>();
        }
      }
      if constexpr (kDyn) end_dynamic_gemm(ring, bars, u, n_units);
    }
    return;
  }

  // ---------------- consumer warpgroup(s) ----------------
  const int cw = warp >> 2;     // consumer warpgroup: sub-tiles [cw kMSubW, +kMSubW)
  const int wq = warp & 3;      // 16 weight rows of each 64-row sub-tile
  const int q = lane & 3;       // token pairs: tokens 8j + 2q, 8j + 2q + 1 of each 8-token chunk j
  const int rl = lane >> 2;     // weight row within the warp's 16: rl and rl + 8

  float acc[kMSubW][kAcc];
  float fin[kMSubW][kAcc];
  int& stage = ring.stage;
  u32& phase = ring.phase;

  for (int u = kDyn ? 0 : sync.first_unit((int)blockIdx.x, (int)gridDim.x);; u += kDyn ? 0 : (int)gridDim.x) {
    if constexpr (kDyn) {
      u = take_dynamic_unit(ring, bars, lane);
      if (u < 0) break;
    } else if (u >= n_units) {
      break;
    }
    const DUnit du = dunit_of(u);
    const int mt = du.mt, wb = du.wb, kb0 = du.ks * kKBSplit, kb_end = kb0 + kKBSplit;
    const int g = tile_group[mt];
    if (!kDyn && g < 0) continue;  // (dynamic: the producer never announces one)

    const float* sfb_g = sfb + (size_t)g * kNScaleRows * kKB;
    // bf16: sub-tile s's rows [wb*R + 64 s, +64) lie in one 128-row scale block. SwiGLU (R = 256): every sub-tile
    // holds gate rows of activation block wb and up rows of the same block: two scale rows for the whole unit.
    // This warpgroup's sub-tiles: sl = 0 .. kMSubW - 1 is the unit's sub-tile s = cw kMSubW + sl.
    auto sb_row = [&](int sl) -> const float* {
      return sfb_g + (size_t)((wb * kRowsW + 64 * (cw * kMSubW + sl)) / 128) * kKB;
    };
    const float* sbg_row = sfb_g + (size_t)wb * kKB;
    const float* sbu_row = sfb_g + (size_t)((kN / 2) / 128 + wb) * kKB;

#pragma unroll
    for (int sl = 0; sl < kMSubW; sl++)
#pragma unroll
      for (int i = 0; i < kAcc; i++) fin[sl][i] = 0.0f;

    // Weight scales of K block kb for sub-tile sl: [0] for row rl, [1] for row rl + 8. bf16: one block per
    // sub-tile; SwiGLU: row rl (< 8 within a 16-row granule) is a gate row, rl + 8 an up row.
    auto load_sb = [&](int kb, float (&v)[kMSubW][2]) {
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++) {
        if (kEpi == 0) {
          v[sl][0] = v[sl][1] = __ldg(sb_row(sl) + kb);
        } else {
          v[sl][0] = __ldg(sbg_row + kb);
          v[sl][1] = __ldg(sbu_row + kb);
        }
      }
    };
    float sbv[kMSubW][2];
    load_sb(kb0, sbv);
    for (int kb = kb0; kb < kb_end; kb++) {
      float nsbv[kMSubW][2];  // next K block's scales, loaded while this block waits and computes
      load_sb(kb + 1 < kb_end ? kb + 1 : kb, nsbv);
      if (!kDyn || kb > 0) mbar_wait(full_bar(stage), phase);  // (dynamic: K block 0 waited above)
      const u32 sfa_base = sbase + P::kOffSfa + stage * P::kSfaSlot;
      float ts[kRows / 4];  // this thread's tokens' scales: ts[j] is token 8 (j / 2) + 2 q + j % 2
#pragma unroll
      for (int j = 0; j < kRows / 4; j++) ts[j] = ld_shared_f32(sfa_base + 4u * (8 * (j >> 1) + 2 * q + (j & 1)));

      const u64 db = make_desc_sw128(sbase + P::kOffA + stage * P::kABytes);
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++)
#pragma unroll
        for (int i = 0; i < kAcc; i++) fence_reg(acc[sl][i]);
      wgmma_fence();
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++) {
        const u64 da = make_desc_sw128(sbase + P::kOffB + stage * P::kBBytes + (cw * kMSubW + sl) * (64 * kBlockK));
#pragma unroll
        for (int kk = 0; kk < kBlockK / 32; kk++) {
          if constexpr (kRows == 16)
            wgmma_m64n16k32_e4m3(acc[sl], da + kk * kDescK32Step, db + kk * kDescK32Step, kk > 0 ? 1u : 0u);
          else if constexpr (kRows == 32)
            wgmma_m64n32k32_e4m3(acc[sl], da + kk * kDescK32Step, db + kk * kDescK32Step, kk > 0 ? 1u : 0u);
          else
            wgmma_m64n64k32_e4m3(acc[sl], da + kk * kDescK32Step, db + kk * kDescK32Step, kk > 0 ? 1u : 0u);
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++)
#pragma unroll
        for (int i = 0; i < kAcc; i++) fence_reg(acc[sl][i]);
      if (lane == 0) mbar_arrive(empty_bar(stage));

      // Accumulator i of m64nNk32: weight row rl (i % 4 < 2) or rl + 8, token 8 (i / 4) + 2 q + (i % 2).
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++)
#pragma unroll
        for (int i = 0; i < kAcc; i++)
          fin[sl][i] = fmaf(acc[sl][i], ts[2 * (i >> 2) + (i & 1)] * sbv[sl][(i >> 1) & 1], fin[sl][i]);
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++) sbv[sl][0] = nsbv[sl][0], sbv[sl][1] = nsbv[sl][1];
      ring.advance<kStages>();
    }

    const int tok0 = mt * kRows;
    if constexpr (kSplitK > 1) {
      split_k_epilogue<kN, kMSub, kSplitK>(ga, fin, mt, wb, du.ks, tok0, tid, wq, q, rl,
                                           reinterpret_cast<int*>(smem + P::kOffAmax));
    } else if constexpr (kEpi == 0) {
      unsigned short* d = reinterpret_cast<unsigned short*>(out);
      // The output row of each of this thread's tokens (token 8 (j / 2) + 2 q + j % 2 of the tile; -1: none).
      int dest[kRows / 4];
#pragma unroll
      for (int j = 0; j < kRows / 4; j++) dest[j] = sync.row_dest(tok0 + 8 * (j >> 1) + 2 * q + (j & 1));
#pragma unroll
      for (int sl = 0; sl < kMSubW; sl++) {
        const int n = wb * kRowsW + 64 * (cw * kMSubW + sl) + 16 * wq + rl;
#pragma unroll
        for (int i = 0; i < kAcc; i++) {
          const long long tok = dest[2 * (i >> 2) + (i & 1)];
          if (!Sync::kScattersRows || tok >= 0) d[tok * kN + n + 8 * ((i >> 1) & 1)] = f32_to_bf16(fin[sl][i]);
        }
      }
      if (Sync::kCompletes) sync.template complete<kRowsW>(mt, wb, tid, kCThreads);
    } else {
      // Thread holds, for each of its sub-tiles s and each of its kTok tokens, the gate (row rl) and up (row rl + 8)
      // of activation column 32 s + 8 wq + rl of block wb.
      constexpr int kI = kN / 2;
      constexpr int kTok = kRows / 4;
      const float lim = swiglu_limit;
      float a[kTok][kMSubW];
      float amax[kTok];
#pragma unroll
      for (int t = 0; t < kTok; t++) {
        const int tok = tok0 + 8 * (t >> 1) + 2 * q + (t & 1);
        const float w = row_weight[tok];
        amax[t] = 0.0f;
#pragma unroll
        for (int sl = 0; sl < kMSubW; sl++) {
          const int ig = 4 * (t >> 1) + (t & 1);  // accumulator of (row rl, token t)
          float gv = fin[sl][ig];
          float uv = fin[sl][ig + 2];
          if (lim > 0.0f) {
            uv = fminf(fmaxf(uv, -lim), lim);
            gv = fminf(gv, lim);
          }
          a[t][sl] = silu(gv) * uv * w;
          amax[t] = fmaxf(amax[t], fabsf(a[t][sl]));
        }
        // Reduce over the 8 lanes that share q (lane bits 2..4), then over the consumer warps through shared memory.
        amax[t] = fmaxf(amax[t], __shfl_xor_sync(0xffffffffu, amax[t], 4));
        amax[t] = fmaxf(amax[t], __shfl_xor_sync(0xffffffffu, amax[t], 8));
        amax[t] = fmaxf(amax[t], __shfl_xor_sync(0xffffffffu, amax[t], 16));
      }
      float* red = reinterpret_cast<float*>(smem + P::kOffAmax);  // [consumer warp][token]
      if (rl == 0) {
#pragma unroll
        for (int t = 0; t < kTok; t++) red[warp * kRows + 8 * (t >> 1) + 2 * q + (t & 1)] = amax[t];
      }
      named_barrier_sync(1, kCThreads);
      unsigned char* aq = reinterpret_cast<unsigned char*>(out);
      // Sync::kCompactRows: rows go to their group's rows without padding; padding rows are not written.
      const int shift = Sync::kCompactRows ? sync.row_shift(g) : 0;
      const int end = Sync::kCompactRows ? sync.rows_end(g) : 0x7fffffff;
#pragma unroll
      for (int t = 0; t < kTok; t++) {
        const int tl = 8 * (t >> 1) + 2 * q + (t & 1);
        float mx = red[tl];
#pragma unroll
        for (int w = 1; w < 4 * kCWG; w++) mx = fmaxf(mx, red[w * kRows + tl]);
        float inv;
        const float scale = pow2_scale(mx, inv);
        const long long tok = tok0 + tl;
        if (Sync::kCompactRows && tok >= end) continue;
        unsigned char* row = aq + (tok + shift) * kI + wb * 128;
#pragma unroll
        for (int sl = 0; sl < kMSubW; sl++)
          row[32 * (cw * kMSubW + sl) + 8 * wq + rl] =
              (unsigned char)(megamoe::f32x2_to_e4m3x2(a[t][sl] * inv, 0.0f) & 0xFF);
        if (warp == 0 && rl == 0) out_sf[(size_t)wb * m_cap + tok] = scale;
      }
      if (Sync::kPublishes) sync.publish(mt, wb, tid, kCThreads);  // its barrier also guards `red` (below)
      named_barrier_sync(1, kCThreads);  // the next unit's epilogue may overwrite `red`
    }
  }
}

}  // namespace gg
