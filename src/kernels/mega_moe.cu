// The fused MegaMoE layer (SPEC 2-3) for sm_90a: ONE persistent launch per MoE layer, one CTA per SM, that stages
// the tokens, dispatches them to their experts, runs L1 (gate/up) with the clamped-SwiGLU x routing-weight epilogue
// and its power-of-two FP8 requantization, runs L2 (down), and combines, with no host round trip in between.
//
// Phases (every CTA walks them in order; "|" is a grid barrier, flags are per (row tile, activation block)):
//   stage + count | scan (CTA 0) | rank | gather |   (T <= MM_SMALL_T: CTA 0 does all four alone, in shared memory |)
//   L1 units (decode: through the ring L2 uses; normal: their own 4-stage ring) then L2 units: an L1 unit publishes
//   its 128 activation columns of its row tile with a release flag; an L2 unit's producer checks its row tile's
//   flags once (one acquire) and, if some are not yet published, prefetches the unit's weights into L2 and then
//   acquires the flag of each K block before loading it, so L2 of early row tiles overlaps the L1 tail |
//   combine (f32 sum of the K bf16 rows in slot order, + the shared expert). Decode at T <= MM_SMALL_T: no last
//   barrier; the L2 unit that completes a 128-column range combines it (tail_combine).
// The shared expert is group E of both GEMMs (every token, weight 1): it runs in the same launch as the routed ones.
//
// The GEMM bodies are grouped_gemm_fp8.cu's (gemm/grouped.cuh) with the fused kernel's hooks (MegaSync below); the
// dispatch, staging and combine are the unfused kernels' device functions (moe/*.cuh). Nothing is copied.
//
// Cross-CTA state lives in a control block (MegaCtl) that needs no reset between launches (CUDA graphs replay the
// kernel as is): the grid barrier is sense-reversing, and flags carry the launch's epoch (ctl->epoch + 1, bumped by
// CTA 0 once every CTA has read it), so a flag of an earlier launch never matches. Every spin has a deadline
// (timeout_ns): on expiry the spinner records (code, phase, block, index, value, expected) in the control block,
// raises `abort`, and every other spin gives up too, so a bug or a dead peer becomes an error the host reports
// (src/kernels/mega-moe.ts), never a hang. After an error the host resets the control block.
//
// Compile-time shape: MM_HIDDEN (H), MM_INTER (I), MM_EXPERTS (E routed; group E is the shared expert), MM_TOPK (K),
// MM_PATH (0 normal: 128-row tiles, 2 consumer warpgroups; 1 decode: MM_DECODE_ROWS-token tiles (16, or 32 / 64 for
// the mid-T "decode32" / "decode64" paths; 64 takes 2 consumer warpgroups), weights on wgmma's M side), MM_DYNAMIC
// (units from a grid-wide counter),
// MM_STAGES (decode: the ring's stages; normal: L2's), MM_L1_STAGES (normal: L1's), MM_WTILED (weight layout, as
// GG_WTILED), MM_MCAST (normal path: 1 = 2-CTA clusters whose pairs of row tiles of one expert fetch half of each
// weight tile and multicast it, as the unfused GEMM's GG_MCAST 1; MM_FIT_PAIRS: those pairs fitted to each expert's
// rows), MM_ANNOUNCE (normal path: units and their weight scales announced in shared memory), MM_SMEM_BYTES and
// MM_PARAMS_BYTES (the TypeScript
// plan's shared memory and parameter-struct sizes: a drift fails the compile).
#include "common.cuh"
#include "gemm/ptx.cuh"
#include "gemm/wgmma_e4m3.cuh"
#include "gemm/pipeline.cuh"
#include "gemm/grouped.cuh"

#if !defined(MM_HIDDEN) || !defined(MM_INTER) || !defined(MM_EXPERTS) || !defined(MM_TOPK) || !defined(MM_PATH) || \
    !defined(MM_STAGES) || !defined(MM_SMEM_BYTES) || !defined(MM_PARAMS_BYTES)
#error "mega_moe.cu needs -DMM_HIDDEN -DMM_INTER -DMM_EXPERTS -DMM_TOPK -DMM_PATH -DMM_STAGES -DMM_SMEM_BYTES -DMM_PARAMS_BYTES (src/kernels/mega-moe.ts)"
#endif
#ifndef MM_WTILED
#define MM_WTILED 0
#endif
#ifndef MM_MCAST
#define MM_MCAST 0
#endif

#define DSP_EXPERTS MM_EXPERTS
#define DSP_TOPK MM_TOPK
#define DSP_HIDDEN MM_HIDDEN
#define DSP_SHARED 1
#include "moe/dispatch.cuh"
#define STG_HIDDEN MM_HIDDEN
#define STG_TOPK MM_TOPK
#include "moe/staging.cuh"
#define CMB_HIDDEN MM_HIDDEN
#define CMB_TOPK MM_TOPK
#define CMB_EXPERTS MM_EXPERTS
#define CMB_SHARED 1
#include "moe/combine.cuh"

namespace mm {

using gg::u32;
using gg::u64;

constexpr int kH = MM_HIDDEN;
constexpr int kI = MM_INTER;
constexpr bool kDecode = MM_PATH == 1;
constexpr int kStages = MM_STAGES;
// Decode path: tokens per row tile (wgmma N). 32 (64) where experts average more than a 16-token (32-token) tile
// holds: an expert's rows then stream its weights once instead of once per tile (docs/MEGA_MOE.md). 64-token tiles
// take two consumer warpgroups (gemm/grouped.cuh DecodePlan).
#ifndef MM_DECODE_ROWS
#define MM_DECODE_ROWS 16
#endif
static_assert(MM_DECODE_ROWS == 16 || MM_DECODE_ROWS == 32 || MM_DECODE_ROWS == 64, "mega_moe: MM_DECODE_ROWS is 16, 32 or 64");
constexpr int kDecodeCWG = MM_DECODE_ROWS == 64 ? 2 : 1;  // decode path: consumer warpgroups
constexpr int kThreads = kDecode ? 128 * (kDecodeCWG + 1) : 384;
constexpr int kWarps = kThreads / 32;
constexpr int kConsumers = kDecode ? 128 * kDecodeCWG : 256;  // consumer threads (threads [0, kConsumers))
constexpr int kBlockM = kDecode ? MM_DECODE_ROWS : gg::kNormalRows;
// Normal path with multicast: the GEMMs' units go over 2-CTA clusters (the grid is launched as clusters of 2: the
// host checks that all of them are resident at once, cuOccupancyMaxActiveClusters, or runs MM_MCAST 0).
constexpr int kMcast = kDecode ? 0 : MM_MCAST;
constexpr int kCluster = kMcast ? 2 : 1;
static_assert(MM_MCAST == 0 || MM_MCAST == 1, "mega_moe: MM_MCAST is 0 or 1 (weight multicast)");
// Weight multicast: pairs fitted to each expert's rows (MegaSync::pair_slot; 0 = pairs of consecutive row tiles,
// whatever their experts; 1 = an expert's tiles in pairs, an odd one left over shared by N tiles; 2 = as 1, but a
// last tile with at most 64 rows is never paired). Needs an even number of 256-row N tiles in both GEMMs (I a
// multiple of 256, H of 512).
#ifndef MM_FIT_PAIRS
#define MM_FIT_PAIRS 0
#endif
constexpr bool kFitPairs = kMcast && MM_FIT_PAIRS;
// Normal path: units and their weight scales handed from the producer to the consumers in shared memory
// (MegaSync::kAnnounces; 0 = each consumer resolves its units and loads their scales itself). The host turns it on
// for the dynamic kernel, where it measured faster (docs/MEGA_MOE.md).
#ifndef MM_ANNOUNCE
#define MM_ANNOUNCE 0
#endif
static_assert(!kFitPairs || (MM_INTER % 256 == 0 && MM_HIDDEN % 512 == 0), "mega_moe: fitted pairs need I a multiple of 256 and H of 512");
constexpr int kL2KBlocks = kI / 128;  // flags per row tile: one per 128 activation columns (= L2 K block)
// L1's units for n_mt live row tiles, in normal_body's numbering (L2's continue from there): one per (row tile, 256
// transformed rows); weight multicast counts pairs of row tiles.
__device__ __forceinline__ int l1_units(int n_mt) {
  return kFitPairs ? n_mt * (kI / 256) : (n_mt + kCluster - 1) / kCluster * (kI / 128);
}
// T at or below which CTA 0 does the whole dispatch alone (one grid barrier before the GEMMs instead of four).
#ifndef MM_SMALL_T
#define MM_SMALL_T 8
#endif
// GEMM units from a grid-wide counter (MegaSync::kDynamic) instead of round robin; 0 = round robin. Either path,
// except the normal path's 2-CTA clusters (both CTAs of a pair walk the same units). The host picks it per path and
// rows per expert (mega-moe-layout.ts normalKernelFor).
#ifndef MM_DYNAMIC
#define MM_DYNAMIC 1
#endif
// Normal path: a consumer warpgroup whose 64 rows of a tile are all its expert's padding skips that tile's MMAs and
// epilogue (MegaSync::kSkipsPadding; 1 = on). The host turns it on with dynamic units only, where it pays
// (docs/MEGA_MOE.md: with units dealt round robin it measured 1-6.5% slower, in the clustered kernel 5-20%).
#ifndef MM_SKIP_PADDING
#define MM_SKIP_PADDING 0
#endif
constexpr bool kDynamicUnits = MM_DYNAMIC;  // (the host passes 0 for the clustered variants; normal_body checks too)
constexpr int kSmallT = MM_SMALL_T;
static_assert(kSmallT <= dsp::kChunkTokens, "mega_moe: the single-CTA dispatch handles one count/rank chunk (64 tokens)");

// Normal path: L1 and L2 have a ring each over the same shared memory: L1 (SwiGLU epilogue, no staging) kL1Stages
// deep, L2 kStages deep behind its 64 KB bf16 TMA-store staging (one ring for both would leave L1 at L2's depth:
// 3 stages instead of 4, docs/MEGA_MOE.md). Both rings' barriers sit after the larger layout; the producer drains
// L1's ring before its first L2 load.
#ifndef MM_L1_STAGES
#define MM_L1_STAGES MM_STAGES
#endif
constexpr int kL1Stages = kDecode ? kStages : MM_L1_STAGES;
using NormalL1Base = gg::NormalPlan<2, kL1Stages, 0>;
using NormalL2Base = gg::NormalPlan<2, kStages, 1>;
constexpr gg::u32 kNormalBars = NormalL1Base::kOffBar > NormalL2Base::kOffBar ? NormalL1Base::kOffBar : NormalL2Base::kOffBar;
struct NormalL1P : NormalL1Base {
  static constexpr gg::u32 kOffBar = kNormalBars;
  static constexpr gg::u32 kSmemBytes = kNormalBars + 2 * (kL1Stages + kStages) * 8;
};
struct NormalL2P : NormalL2Base {
  static constexpr gg::u32 kOffBar = kNormalBars + 2 * kL1Stages * 8;
  static constexpr gg::u32 kSmemBytes = kNormalBars + 2 * (kL1Stages + kStages) * 8;
};
using DecodeP = gg::DecodePlan<4, kStages, MM_DECODE_ROWS>;  // L1 units of 256 weight rows, L2 units of 128 or 256 (below)
// Decode L2 units: 128 weight rows (MSUB 2) below MM_DECODE_L2_WIDE_MIN_T tokens, 256 (MSUB 4) from there on: a
// 256-row stage fills its 32 KB slot (twice the bytes in flight per SM), but fewer units balance worse at T = 1
// (measured: docs/MEGA_MOE.md). Both read W2 in 128-row TMA boxes (tiled layout), so one tensor map serves both.
#ifndef MM_DECODE_L2_WIDE_MIN_T
#define MM_DECODE_L2_WIDE_MIN_T 32
#endif
template <bool B, class T, class F> struct Pick { using type = T; };
template <class T, class F> struct Pick<false, T, F> { using type = F; };
using Plan = typename Pick<kDecode, DecodeP, NormalL2P>::type;  // the whole shared memory (L2's plan on the normal path)

static_assert(Plan::kSmemBytes == MM_SMEM_BYTES, "mega_moe: the TypeScript shared-memory plan (mega-moe.ts) drifted from the kernel's");
static_assert(kH % 256 == 0 && kI % 128 == 0, "mega_moe: H must be a multiple of 256 and I of 128");
static_assert(MM_WTILED == 1, "mega_moe reads tiled weights only (its tensor maps and decode L2 boxes assume 128-row tiles)");

// Error codes and phases reported through MegaCtl (mirrored in src/kernels/mega-moe.ts).
enum : u32 { kErrNone = 0, kErrBarrierTimeout = 1, kErrFlagTimeout = 2, kErrRankTimeout = 3 };
enum : int { kFaultNone = 0, kFaultSkipPublish = 1 };
// Trace slots: 0 start, 1 dispatch done (GEMMs start), 2 consumers done with L1, 3 with L2, 4 after the GEMMs' grid
// barrier, 5 combine done; 6 / 7 the producer done issuing L1 / L2; 8-11 the dispatch's steps: single-CTA (CTA 0:
// staged, counted, scanned, ranked) or grid (every CTA: 8 staged + counted, 9 past the scan's barrier, 10 past the
// rank's; slot 1 is then past the gather's).
constexpr int kTraceSlots = 12;
enum : u32 {
  kPhaseDispatch = 1, kPhaseScan = 2, kPhaseRank = 3, kPhaseGather = 4, kPhaseGemm = 5, kPhaseL2Wait = 6,
  kPhasePeersStaged = 7, kPhasePeersDone = 8,  // expert parallelism: waiting for the other ranks (rank_barrier)
};
// The cross-rank barriers of one launch (slots of the rank_flags region: [slot][source rank]).
enum : int { kRankStaged = 0, kRankDone = 1, kRankSlots = 2 };

// The control block (64 bytes, device memory, zeroed once at allocation).
struct MegaCtl {
  u32 epoch;       // last launch's epoch
  u32 bar_count;   // grid barrier: arrivals of the current generation
  u32 bar_gen;     // grid barrier: generation
  u32 abort;       // 1 once any spin gave up
  u32 err_code, err_phase, err_block, err_index, err_value, err_expected;
  u32 small_direct;  // this launch's small-T dispatch laid tiles out directly (dispatch_small_direct): set by CTA 0
  u32 unit_next;     // decode path: the GEMMs' next unused unit (MegaSync::grab), reset by CTA 0 before the dispatch
  u32 pad[4];
};
static_assert(sizeof(MegaCtl) == 64, "MegaCtl is 64 bytes (mega-moe.ts reads it)");

// Every buffer the layer touches (device addresses), passed by value; the layout is packed by mega-moe.ts.
struct MegaParams {
  // layer inputs / outputs
  const uint4* x;            // bf16 [T, H]
  const long long* ids;      // I64 [T, K], local expert ids, -1 = masked
  const float* weights;      // f32 [T, K]
  uint4* y_routed;           // bf16 [T, H]
  uint4* y;                  // bf16 [T, H]
  // symmetric buffer (this rank's regions): staged tokens
  uint4* x_fp8;              // e4m3 [cap, H]
  float* x_sf;               // f32 [cap, H/128]
  long long* ids_staged;     // I64 [cap, K]
  float* w_staged;           // f32 [cap, K]
  // dispatch
  int* chunk_counts;         // [chunks, E]
  int* group_offset;         // [E + 2]
  int* group_count;          // [E + 1]
  int* group_compact;        // [E + 2] each group's first row without padding (where the pools keep its rows)
  int* tile_group;           // [max_tiles]
  int* num_m_tiles;          // [1]
  float* row_weight;         // [m_cap]
  int* row_dest;             // [m_cap] each row's place in the combine buffer (-1: padding; dsp::rank_chunk<true>)
  int* slot_row;             // [cap, K]
  uint4* a;                  // e4m3 [rows, H]  (L1 A; every pool keeps a group's rows without padding)
  float* sfa;                // f32 [H/128, m_cap]
  unsigned char* act;        // e4m3 [rows, I]  (L2 A)
  float* act_sf;             // f32 [I/128, m_cap]
  uint4* out;                // bf16 [ranks cap K + cap, H]  (L2 out by (source token, slot), the combine's input)
  const float* s13;          // f32 [E+1, 2I/128, H/128]
  const float* s2;           // f32 [E+1, H/128, I/128]
  u32* flags;                // [max_tiles * I/128], epoch-tagged
  MegaCtl* ctl;
  const unsigned long long* rank_table;  // [ranks] each rank's buffer base as mapped in this process (own: local)
  u32* rank_flags;           // [kRankSlots, ranks] epoch-tagged: peer q writes [slot][q] here
  unsigned long long* trace;  // optional [grid, kTraceSlots] %globaltimer stamps per CTA (phase timing), or null
  unsigned long long timeout_ns;
  int num_tokens;
  int m_cap;
  int max_tiles;
  float swiglu_limit;
  int fault;  // fault injection for the tests: kFaultSkipPublish = L1 never publishes (row tile 0, block 0)
  // Expert parallelism: this rank and the world size (1 = one rank). Every rank holds MM_EXPERTS experts, rank r
  // those from r * MM_EXPERTS, and runs the same num_tokens; ids are global.
  int rank;
  int ranks;
};
static_assert(sizeof(MegaParams) == MM_PARAMS_BYTES, "mega_moe: the TypeScript parameter packing (mega-moe.ts) drifted");

__device__ __forceinline__ bool aborted(const MegaCtl* c) {
  return *reinterpret_cast<const volatile u32*>(&c->abort) != 0;
}

__device__ __noinline__ void report(MegaCtl* c, u32 code, u32 phase, u32 index, u32 value, u32 expected) {
  if (atomicCAS(&c->err_code, 0u, code) == 0u) {
    c->err_phase = phase;
    c->err_block = blockIdx.x;
    c->err_index = index;
    c->err_value = value;
    c->err_expected = expected;
    __threadfence();
  }
  atomicExch(&c->abort, 1u);
}

// Sense-reversing grid barrier over all CTAs (all resident: one per SM). Thread 0 arrives and spins; the CTA's
// other participating threads (all of them, or the first kThreads of a named barrier: after the GEMMs only the
// consumers go on) wait at a CTA barrier. The block's writes before the barrier are visible to every CTA after it
// (__syncthreads + thread 0's fence, as cooperative groups' grid sync). Gives up, reporting, after timeout_ns.
template <int kParticipants = 0>  // 0: every thread of the CTA (__syncthreads); else named barrier 8 of that many
__device__ __forceinline__ void cta_sync() {
  if (kParticipants == 0) __syncthreads(); else gg::named_barrier_sync(8, kParticipants);
}
template <int kParticipants = 0>
__device__ __forceinline__ void grid_barrier(MegaCtl* c, u32 phase, unsigned long long timeout_ns) {
  cta_sync<kParticipants>();
  if (threadIdx.x == 0 && !aborted(c)) {
    const u32 gen = gg::ld_acquire_gpu(&c->bar_gen);
    __threadfence();
    const u32 arrived = atomicAdd(&c->bar_count, 1u);
    if (arrived == gridDim.x - 1) {
      atomicExch(&c->bar_count, 0u);
      __threadfence();
      gg::st_release_gpu(&c->bar_gen, gen + 1);
    } else {
      const u64 t0 = gg::globaltimer_ns();
      for (u32 i = 0; gg::ld_acquire_gpu(&c->bar_gen) == gen; i++) {
        if ((i & 255u) == 255u) {
          if (aborted(c)) break;
          if (gg::globaltimer_ns() - t0 > timeout_ns) {
            report(c, kErrBarrierTimeout, phase, gen, *reinterpret_cast<volatile u32*>(&c->bar_count), gridDim.x);
            break;
          }
        }
      }
    }
    __threadfence();
  }
  cta_sync<kParticipants>();
}

// Rank q's copy of a region of the symmetric buffer: the same offset from q's base (every rank's buffer has the
// same layout), as mapped in this process.
template <class T>
__device__ __forceinline__ T* peer(const MegaParams& p, T* local, int q) {
  return reinterpret_cast<T*>(reinterpret_cast<char*>(local) + (p.rank_table[q] - p.rank_table[p.rank]));
}

// Expert parallelism: after a grid barrier (this rank's writes are done), CTA 0 tells every rank (itself included)
// that this rank reached `slot` of this launch, and every CTA waits until all ranks have (the flags live in the
// waiter's own buffer: a local spin). System scope, since the peers are other processes (and other GPUs). The epoch
// is the same on every rank: each launches the layer the same number of times. Gives up, reporting the rank it
// waited for, after timeout_ns.
template <int kParticipants = 0>
__device__ __forceinline__ void rank_barrier(const MegaParams& p, int slot, u32 epoch, u32 phase) {
  if (p.ranks == 1) return;
  if (threadIdx.x == 0 && !aborted(p.ctl)) {
    if (blockIdx.x == 0) {
      __threadfence_system();
      for (int q = 0; q < p.ranks; q++) gg::st_release_sys(peer(p, p.rank_flags, q) + slot * p.ranks + p.rank, epoch);
    }
    const u64 t0 = gg::globaltimer_ns();
    for (int q = 0; q < p.ranks; q++) {
      const u32* f = p.rank_flags + slot * p.ranks + q;
      u32 v;
      for (u32 i = 0; (v = gg::ld_acquire_sys(f)) != epoch; i++) {
        if ((i & 255u) == 255u) {
          if (aborted(p.ctl)) break;
          if (gg::globaltimer_ns() - t0 > p.timeout_ns) {
            report(p.ctl, kErrRankTimeout, phase, (u32)q, v, epoch);
            break;
          }
        }
      }
    }
  }
  cta_sync<kParticipants>();
}

// The combine of vectors [v0, v0 + nv) (16 bytes = 8 columns each) of every token: work item i by the thread with
// i = first (mod step). Each thread loads kBatch vectors before summing any (more loads in flight per thread, with
// one CTA per SM), and the next batch's slot rows load while this batch is summed, so a batch costs one dependent
// round trip instead of two (measured: flash T = 8192 4443 -> 4252 us, docs/MEGA_MOE.md).
constexpr int kCombineBatch = 4;
template <int kBatch = kCombineBatch>
__device__ __forceinline__ void combine_vectors(const MegaParams& p, int v0, int nv, int first, int step) {
  const int total = p.num_tokens * nv;
  cmb::VecIn in[kBatch];
#pragma unroll
  for (int j = 0; j < kBatch; j++)
    if (first + j * step < total) cmb::load_rows(p.slot_row, (first + j * step) / nv, in[j]);
  for (int i0 = first; i0 < total; i0 += kBatch * step) {
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      const int i = i0 + j * step;
      if (i < total) cmb::load_slot_vals<true>(p.out, i / nv, v0 + i % nv, (long long)p.num_tokens * MM_TOPK, in[j]);
    }
    int next[kBatch][MM_TOPK];
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      const int i = i0 + (kBatch + j) * step;
#pragma unroll
      for (int k = 0; k < MM_TOPK; k++) next[j][k] = i < total ? p.slot_row[(size_t)(i / nv) * MM_TOPK + k] : -1;
    }
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      const int i = i0 + j * step;
      if (i < total) cmb::sum_vec(in[j], i / nv, v0 + i % nv, p.y_routed, p.y);
    }
#pragma unroll
    for (int j = 0; j < kBatch; j++)
#pragma unroll
      for (int k = 0; k < MM_TOPK; k++) in[j].rows[k] = next[j][k];
  }
}

// Expert parallelism: the same combine, each routed row read from the rank that owns its expert (through that rank's
// mapping: peer loads), where this rank's token t, slot k sits at (rank T + t) K + k (dsp::rank_chunk<true>); the
// shared expert's row is this rank's own, after every rank's routed rows.
__device__ __forceinline__ void combine_vectors_ep(const MegaParams& p, int first, int step) {
  constexpr int nv = cmb::kVecPerRow;
  const int total = p.num_tokens * nv;
  const size_t slot0 = (size_t)p.rank * p.num_tokens * MM_TOPK;  // this rank's tokens' rows in every owner's buffer
  const size_t shared0 = (size_t)p.ranks * p.num_tokens * MM_TOPK;
  const int experts = MM_EXPERTS * p.ranks;
  for (int i = first; i < total; i += step) {
    const int t = i / nv, v = i % nv;
    cmb::VecIn in;
#pragma unroll
    for (int k = 0; k < MM_TOPK; k++) {
      const long long e = p.ids_staged[(size_t)t * MM_TOPK + k];
      const int owner = e >= 0 && e < experts ? (int)(e / MM_EXPERTS) : -1;
      in.rows[k] = owner;  // (sum_vec skips a slot whose row is negative)
      in.vals[k] = owner >= 0 ? peer(p, p.out, owner)[(slot0 + (size_t)t * MM_TOPK + k) * nv + v] : make_uint4(0, 0, 0, 0);
    }
    in.vals[MM_TOPK] = p.out[(shared0 + t) * nv + v];
    cmb::sum_vec(in, t, v, p.y_routed, p.y);
  }
}

// Decode path, T <= kSmallT with 128-row L2 units: the combine runs at the tail of L2 instead of after a grid
// barrier. Each L2 unit counts itself done on the counter of its column range (u64: the launch's epoch << 32 | units done, so no reset between
// launches); the unit that completes a range (every live row tile's unit of it) combines those columns of every
// token. Counters: after the flags in the flags region, one per 128 output columns (mega-moe-layout.ts).
__device__ __forceinline__ bool tail_combine(const MegaParams& p) {
  return kDecode && p.ranks == 1 && p.num_tokens <= kSmallT && p.num_tokens < MM_DECODE_L2_WIDE_MIN_T;
}
__device__ __forceinline__ bool arrive_last(unsigned long long* c, u32 epoch, u32 needed) {
  unsigned long long old = *reinterpret_cast<volatile unsigned long long*>(c);
  for (;;) {
    const u32 count = (u32)(old >> 32) == epoch ? (u32)old + 1u : 1u;
    const unsigned long long want = ((unsigned long long)epoch << 32) | count;
    const unsigned long long seen = atomicCAS(c, old, want);
    if (seen == old) return count == needed;
    old = seen;
  }
}

// The fused kernel's GEMM hooks (gemm/pipeline.cuh NoSync's interface): L1 publishes, L2 waits (and, at small T,
// completes: the tail combine above).
template <bool kWait, bool kPublish>
struct MegaSync {
  static constexpr bool kWaits = kWait;
  static constexpr bool kPublishes = kPublish;
  static constexpr bool kCompletes = kWait;
  // Units taken from a grid-wide counter as CTAs free up, L1's and then L2's (one count: an L2 unit is only taken
  // once every L1 unit was, so each wait is on a unit some running CTA holds). Static round robin left the CTAs
  // finishing L1 up to ~340 us apart at flash T = 512 and L2 ~180 us apart at flash T = 4096 (docs/MEGA_MOE.md).
  static constexpr bool kDynamic = kDynamicUnits;
  static constexpr bool kSkipsPadding = !kDecode && MM_SKIP_PADDING;
  u32* flags;
  MegaCtl* ctl;
  unsigned long long timeout_ns;
  u32 epoch;
  int rotation;  // units before this GEMM's first (the L1 units): L2 continues L1's round robin over the CTAs / clusters
  int fault;
  const MegaParams* params;  // the layer's buffers: the tail combine's (L2), the dispatch's group offsets (live_rows)
  int a_tile0;               // L1 after dispatch_small_direct: every tile reads A tile 0 (all T tokens)
  int direct;                // the launch's dispatch was dispatch_small_direct (its tiles are not compacted)

  // Rows of row tile mt (of group g) that hold tokens: the group's rows end at its padded offset + its row count, its
  // tiles run on to the next multiple of 128. (Written by this launch's dispatch: plain loads, no __ldg.)
  __device__ __forceinline__ int live_rows(int mt, int g) const {
    return params->group_offset[g] + params->group_count[g] - mt * gg::kNormalRows;
  }

  // Weight multicast (kFitsPairs): an expert's row tiles go in pairs that share each weight tile, and one left over
  // is taken by both CTAs of a pair, half the N tiles each, so no pair straddles two experts (and loads both their
  // weights). MM_FIT_PAIRS 2: a last tile with at most 64 rows (half or more of it padding, which the skip leaves
  // out) is never paired: with a full tile it would cost its pair a full tile's time. Needs group g's first row at a
  // multiple of 128 (dsp::scan pads each group's rows).
  static constexpr bool kFitsPairs = kFitPairs;
  // Normal path: the producer announces each unit with its weight scales (gemm/pipeline.cuh kAnnounces; MM_ANNOUNCE).
  static constexpr bool kAnnounces = !kDecode && MM_ANNOUNCE;
  // L2 writes each row at its (token, slot) place of the combine buffer (dsp::rank_chunk<true>): no padding rows.
  static constexpr bool kScattersRows = kWait;
  __device__ __forceinline__ int row_dest(int m) const { return params->row_dest[m]; }
  // The pools' rows (A of both GEMMs; not their scales) keep each group's rows without padding (dsp::scan's
  // group_compact); the small-T direct layout keeps its 16-row tiles as they are.
  static constexpr bool kCompactRows = true;
  __device__ __forceinline__ int row_shift(int g) const {
    return direct ? 0 : params->group_compact[g] - params->group_offset[g];
  }
  __device__ __forceinline__ int rows_end(int g) const {
    return direct ? 0x7fffffff : params->group_offset[g] + params->group_count[g];
  }
  __device__ __forceinline__ gg::PairSlot pair_slot(int s, int g) const {
    const int rows = params->group_count[g];
    const int base = params->group_offset[g] / gg::kNormalRows;
    const int tiles = (rows + gg::kNormalRows - 1) / gg::kNormalRows, rem = rows % gg::kNormalRows;
    const bool split_last = MM_FIT_PAIRS == 2 && rem > 0 && rem <= gg::kNormalRows / 2;
    const int paired = (split_last ? tiles - 1 : tiles) & ~1;
    const int i = s - base;
    if (i < paired) return {base + (i & ~1), i & 1};
    return {s, -1};
  }
  __device__ __forceinline__ int first_unit(int cta, int ctas) const { return (cta + ctas - rotation % ctas) % ctas; }
  // The next unit of this GEMM (L1 and L2 count on from one counter: L2's units follow the rotation = L1 units).
  __device__ __forceinline__ int grab() const { return (int)atomicAdd(&ctl->unit_next, 1u) - rotation; }
  __device__ __forceinline__ int a_tile(int mt) const { return a_tile0 ? 0 : mt; }
  __device__ __forceinline__ u32* flag(int mt, int kb) const { return flags + (size_t)mt * kL2KBlocks + kb; }
  // Every A block of row tile mt published? Relaxed loads in flight together (one round trip, not kL2KBlocks), then
  // one fence makes them an acquire; the proxy fence lets the TMA loads that follow read what was published.
  __device__ __forceinline__ bool unit_ready(int mt) const {
    const u32* f = flag(mt, 0);
    bool all = true;
#pragma unroll
    for (int kb = 0; kb < kL2KBlocks; kb++) all &= gg::ld_relaxed_gpu(f + kb) == epoch;
    if (all) {
      gg::fence_acq_rel_gpu();
      gg::fence_proxy_async_global();
    }
    return all;
  }
  __device__ __forceinline__ bool wait(int mt, int kb) const {
    const u32* f = flag(mt, kb);
    u32 v = gg::ld_acquire_gpu(f);
    if (v != epoch) {
      const u64 t0 = gg::globaltimer_ns();
      for (u32 i = 0; (v = gg::ld_acquire_gpu(f)) != epoch; i++) {
        if ((i & 255u) == 255u) {
          if (aborted(ctl)) return false;
          if (gg::globaltimer_ns() - t0 > timeout_ns) {
            report(ctl, kErrFlagTimeout, kPhaseL2Wait, (u32)(mt * kL2KBlocks + kb), v, epoch);
            return false;
          }
        }
      }
    }
    gg::fence_proxy_async_global();  // the TMA loads that follow read what the flag published
    return true;
  }
  // Every consumer thread calls it after its epilogue stores of (row tile mt, activation block nt).
  __device__ __forceinline__ void publish(int mt, int nt, int ctid, int nthreads) const {
    gg::fence_proxy_async_global();  // our generic stores, read next by another CTA's TMA
    gg::named_barrier_sync(7, nthreads);
    if (ctid == 0 && !(fault == kFaultSkipPublish && mt == 0 && nt == 0)) {
      __threadfence();
      gg::st_release_gpu(flag(mt, nt), epoch);
    }
  }
  // Every consumer thread calls it after its bf16 epilogue stores of unit (mt, wb): kCols output columns.
  template <int kCols>
  __device__ __forceinline__ void complete(int /*mt*/, int wb, int ctid, int nthreads) const {
    // Only the 128-row units take part (tail_combine); no code for the 256-row body (its registers).
    if constexpr (kCols != 128) return;
    const MegaParams& p = *params;
    if (!tail_combine(p)) return;
    __shared__ int s_last;
    gg::named_barrier_sync(7, nthreads);  // every consumer's stores of the unit are issued
    if (ctid == 0) {
      __threadfence();  // release them (with the barrier), then count
      // After the flags of every 16-row tile of the buffer (m_cap / 16 of them, whatever this launch's max_tiles),
      // 8-byte aligned: mega-moe-layout.ts's flags region.
      auto* counters = reinterpret_cast<unsigned long long*>(flags + (((size_t)(p.m_cap / 16) * kL2KBlocks + 1) & ~(size_t)1));
      // Every tile below num_m_tiles has an expert (dsp::scan), so each has exactly one unit of this range.
      const int needed = gg::live_row_tiles(p.num_m_tiles, p.m_cap, kBlockM);
      const bool last = arrive_last(counters + wb, epoch, (u32)needed);
      if (last) __threadfence();  // acquire every other unit's rows of this range
      s_last = last;
    }
    gg::named_barrier_sync(7, nthreads);
    if (s_last) combine_vectors<2>(p, wb * (kCols / 8), kCols / 8, ctid, nthreads);  // a few tokens: 2 in flight
  }
};

// A grouped row's row in the pools' row data (A rows, activations), which keep each group's rows without padding:
// row m of group g (its tile's) moves down by the padding before g. Their scales keep the grouped row: a scale box
// starts at a tile's first grouped row (with scale boxes starting at any row, d3deeab stopped on an illegal
// instruction: docs/MEGA_MOE.md, session 15).
struct PoolRow {
  const MegaParams* p;
  __device__ __forceinline__ int operator()(int m) const {
    const int g = p->tile_group[m / kBlockM];
    return m - p->group_offset[g] + p->group_compact[g];
  }
};

// Dispatch for T <= kSmallT on CTA 0 alone: stage, count, scan, rank, gather, with CTA-local barriers only. The
// single chunk's counts / base rows, the group offsets and the rank cursors stay in shared memory (the dsp::
// functions take any address), so no step reads back through L2 what an earlier one wrote: on one SM each such
// read is a round trip on the layer's critical path (docs/MEGA_MOE.md). The outputs are those of the grid path.
constexpr int kSmallScratchInts = dsp::kExperts + (2 * dsp::kGroups + 1) + dsp::kExperts;
template <class Stamp>
__device__ __forceinline__ void dispatch_small(const MegaParams& p, int* scratch, int tid, int warp, int lane,
                                               const Stamp& stamp) {
  int* counts = scratch;                            // [E]: the chunk's histogram, then its base rows
  int* offsets = counts + dsp::kExperts;            // [2 G + 1]: the scan's scratch = group offsets + total
  int* cursors = offsets + 2 * dsp::kGroups + 1;    // [E]: count's histogram, then rank's cursors
  const int T = p.num_tokens;
  for (int row = warp; row < T; row += kWarps)
    stg::stage_row(p.x, p.ids, p.weights, p.x_fp8, p.x_sf, p.ids_staged, p.w_staged, row, lane);
  if (tid == 0) stamp(8);
  dsp::count_chunk(p.ids, T, 0, counts, cursors, tid, kThreads);  // begins and ends with __syncthreads
  if (tid == 0) stamp(9);
  dsp::scan(counts, 1, T, kBlockM, p.max_tiles, p.group_offset, p.group_count, p.tile_group, p.num_m_tiles,
            p.row_weight, p.row_dest, offsets, tid, kThreads, p.group_compact);
  __syncthreads();
  if (tid == 0) stamp(10);
  if (warp == 0)
    dsp::rank_chunk<true>(p.ids, p.weights, T, 0, counts, offsets, p.slot_row, p.row_weight, p.row_dest, cursors,
                          lane, 0, 0, true, T * MM_TOPK);
  __syncthreads();  // the staged rows (all warps) and slot_row (warp 0) are ready for the gather
  if (tid == 0) stamp(11);
  for (int t = warp; t < T; t += kWarps)
    dsp::gather_token(p.x_fp8, p.x_sf, t, p.slot_row, offsets, p.a, p.sfa, 1, p.m_cap, lane, true, PoolRow{&p});
}

// Decode path, T <= kSmallT on one rank: the dispatch without count, scan, rank or gather. Every touched expert
// (ascending) and then the shared expert gets one 16-row tile whose rows are ALL T tokens: row r of tile i is token
// r, with its routing weight for that tile's expert (0 where it does not route there: its SwiGLU output is 0, and no
// slot points at it), so every L1 tile reads the same A rows, tile 0's, which the staging writes directly (MN-major
// scales; MegaSync::a_tile). Each (token, expert) row computes exactly what the packed layout computes (the GEMMs
// are row-independent), so the result is bit-identical; it only costs wgmma columns, which a 16-token tile has
// anyway. slot_row[t, k] = 16 tile(e) + t; the shared rows are tile n - 1's. CTA 0 alone, shared memory only.
// Returns false (nothing but staging done) when a token names one expert in two slots: two weights for one row;
// dispatch_small then runs instead.
template <class Stamp>
__device__ __forceinline__ bool dispatch_small_direct(const MegaParams& p, int* scratch, int tid, int warp, int lane,
                                                      const Stamp& stamp) {
  constexpr int E = dsp::kExperts, K = MM_TOPK, R = kBlockM;
  static_assert(kSmallT <= R, "the small-T dispatch puts all T tokens into one row tile");
  int* tile_of = scratch;  // [E]: touched, then its tile (-1: untouched)
  int* tiles = scratch + E;  // [E + 1]: group of each tile
  __shared__ int s_dup, s_tiles;
  const int T = p.num_tokens;
  for (int e = tid; e < E; e += kThreads) tile_of[e] = 0;
  if (tid == 0) s_dup = 0;
  __syncthreads();
  for (int row = warp; row < T; row += kWarps)
    stg::stage_row(p.x, p.ids, p.weights, reinterpret_cast<uint4*>(p.a), p.sfa, p.ids_staged, p.w_staged, row, lane, 1, p.m_cap);
  for (int s = tid; s < T * K; s += kThreads) {
    const int e = dsp::expert_of(p.ids[s]);
    if (e < 0) continue;
    for (int k = 0; k < s % K; k++)
      if (dsp::expert_of(p.ids[s - s % K + k]) == e) s_dup = 1;
    tile_of[e] = 1;
  }
  __syncthreads();
  if (tid == 0) stamp(8);
  if (s_dup) return false;
  if (warp == 0) {
    int carry = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const bool hit = e < E && tile_of[e] != 0;
      const unsigned bal = __ballot_sync(0xffffffffu, hit);
      if (hit) {
        const int idx = carry + __popc(bal & ((1u << lane) - 1u));
        tile_of[e] = idx;
        tiles[idx] = e;
      } else if (e < E) {
        tile_of[e] = -1;
      }
      carry += __popc(bal);
    }
    if (lane == 0) {
      tiles[carry] = E;  // the shared expert
      s_tiles = carry + 1;
    }
  }
  __syncthreads();
  if (tid == 0) stamp(9);
  const int n = s_tiles;
  for (int i = tid; i < n * R; i += kThreads) {
    const int tile = i / R, r = i % R, g = tiles[tile];
    float w = 0.0f;
    int dest = -1;  // the row's place in the combine buffer (dsp::rank_chunk<true>), -1: read by no slot
    if (r < T) {
      if (g == E) {
        w = 1.0f;
        dest = T * K + r;
      } else {
        for (int k = 0; k < K; k++)
          if (dsp::expert_of(p.ids[r * K + k]) == g) {
            w = p.weights[r * K + k];
            dest = r * K + k;
          }
      }
    }
    p.row_weight[i] = w;
    p.row_dest[i] = dest;
    if (r == 0) p.tile_group[tile] = g;
  }
  for (int s = tid; s < T * K; s += kThreads) {
    const int e = dsp::expert_of(p.ids[s]);
    p.slot_row[s] = e >= 0 ? tile_of[e] * R + s / K : -1;
  }
  if (tid == 0) {
    p.num_m_tiles[0] = n;
    stamp(10);
  }
  return true;
}

// Dispatch for larger T (and any T under expert parallelism) over the whole grid, four phases apart. Under expert
// parallelism the count, rank and gather run over every source rank's tokens (chunks [s cps, (s + 1) cps) are rank
// s's), reading the staged ids, weights and rows of the other ranks from their buffers (peer loads) once they all
// have staged; this rank's own tokens add the shared expert's rows. One rank: s = 0 only, its own ids (the input).
// Returns the launch's epoch (s_epoch: thread 0 publishes old_epoch + 1 there at the first barrier).
template <class Stamp>
__device__ __forceinline__ u32 dispatch_grid(const MegaParams& p, int* scratch, int tid, int warp, int lane,
                                             u32 old_epoch, u32* s_epoch, const Stamp& stamp) {
  const int T = p.num_tokens;
  const int cps = dsp::num_chunks(T);  // chunks per source rank
  const int nc = cps * p.ranks;
  const long long id_base = (long long)p.rank * MM_EXPERTS;
  const int gwarp = blockIdx.x * kWarps + warp;
  const int nwarps = gridDim.x * kWarps;
  auto ids_of = [&](int s) -> const long long* { return s == p.rank ? p.ids : peer(p, p.ids_staged, s); };
  auto weights_of = [&](int s) -> const float* { return s == p.rank ? p.weights : peer(p, p.w_staged, s); };
  auto count = [&]() {
    for (int c = blockIdx.x; c < nc; c += gridDim.x)
      dsp::count_chunk(ids_of(c / cps), T, c % cps, p.chunk_counts + (size_t)(c / cps) * cps * dsp::kExperts, scratch,
                       tid, kThreads, id_base);
  };
  for (int row = gwarp; row < T; row += nwarps)
    stg::stage_row(p.x, p.ids, p.weights, p.x_fp8, p.x_sf, p.ids_staged, p.w_staged, row, lane);
  if (p.ranks == 1) count();  // its own ids: no need to wait for the staging
  if (tid == 0) {
    stamp(8);
    *s_epoch = old_epoch + 1;
  }
  grid_barrier(p.ctl, kPhaseDispatch, p.timeout_ns);
  const u32 epoch = *s_epoch;
  if (blockIdx.x == 0 && tid == 0) p.ctl->epoch = epoch;  // every CTA has read the old epoch by now
  if (p.ranks > 1) {
    rank_barrier(p, kRankStaged, epoch, kPhasePeersStaged);  // every rank's staged rows, ids and weights are readable
    count();
    grid_barrier(p.ctl, kPhaseDispatch, p.timeout_ns);
  }
  if (blockIdx.x == 0)
    dsp::scan<false>(p.chunk_counts, nc, T, kBlockM, p.max_tiles, p.group_offset, p.group_count, p.tile_group,
                     p.num_m_tiles, p.row_weight, p.row_dest, scratch, tid, kThreads, p.group_compact);
  grid_barrier(p.ctl, kPhaseScan, p.timeout_ns);
  if (tid == 0) stamp(9);
  for (int c = gwarp; c < nc; c += nwarps) {
    const int s = c / cps;
    dsp::rank_chunk<true>(ids_of(s), weights_of(s), T, c % cps, p.chunk_counts + (size_t)s * cps * dsp::kExperts,
                          p.group_offset, p.slot_row + (size_t)s * T * MM_TOPK, p.row_weight, p.row_dest,
                          scratch + warp * dsp::kExperts, lane, id_base, s * T, s == p.rank, p.ranks * T * MM_TOPK);
  }
  // The scan's per-group tiles and padding rows, a warp per group over the grid (after the ranks: the warps with
  // no chunk start at once).
  for (int g = nwarps - 1 - gwarp; g < dsp::kGroups; g += nwarps)
    dsp::fill_group(p.group_offset[g], p.group_count[g], kBlockM, g, p.tile_group, p.row_weight, p.row_dest, lane, 32);
  grid_barrier(p.ctl, kPhaseRank, p.timeout_ns);
  if (tid == 0) stamp(10);
  for (int g = gwarp; g < T * p.ranks; g += nwarps) {
    const int s = g / T;
    dsp::gather_token(s == p.rank ? p.x_fp8 : peer(p, p.x_fp8, s), s == p.rank ? p.x_sf : peer(p, p.x_sf, s), g % T,
                      p.slot_row + (size_t)s * T * MM_TOPK, p.group_offset, p.a, p.sfa, 1, p.m_cap, lane, s == p.rank,
                      PoolRow{&p});
  }
  return epoch;
}

// After the GEMMs: a grid barrier (every L2 row written), then the combine, 16-byte vectors of tokens over the
// consumer threads. kParticipants: 0 = the whole CTA reaches the barrier (decode), else the consumers alone.
template <int kParticipants, class Stamp>
__device__ __forceinline__ void finish(const MegaParams& p, int tid, u32 epoch, const Stamp& stamp) {
  if (tail_combine(p)) return;  // combined at L2's tail, no barrier (MegaSync::complete)
  grid_barrier<kParticipants>(p.ctl, kPhaseGemm, p.timeout_ns);
  // Expert parallelism: every rank's L2 rows are written before any rank reads them.
  rank_barrier<kParticipants>(p, kRankDone, epoch, kPhasePeersDone);
  if (tid == 0) stamp(4);
  if (tid < kConsumers) {
    if (p.ranks == 1) combine_vectors(p, 0, cmb::kVecPerRow, blockIdx.x * kConsumers + tid, gridDim.x * kConsumers);
    else combine_vectors_ep(p, blockIdx.x * kConsumers + tid, gridDim.x * kConsumers);
    if (tid == 0) stamp(5);
  }
}

}  // namespace mm

#if MM_MCAST && MM_PATH == 0
#define MM_CLUSTER_DIMS __cluster_dims__(2, 1, 1)
#else
#define MM_CLUSTER_DIMS
#endif
extern "C" __global__ void MM_CLUSTER_DIMS __launch_bounds__(mm::kThreads, 1)
mega_moe_fused(const __grid_constant__ gg::TmaDesc tmap_a1, const __grid_constant__ gg::TmaDesc tmap_w13,
               const __grid_constant__ gg::TmaDesc tmap_sfa1, const __grid_constant__ gg::TmaDesc tmap_a2,
               const __grid_constant__ gg::TmaDesc tmap_w2, const __grid_constant__ gg::TmaDesc tmap_sfa2,
               const __grid_constant__ mm::MegaParams p) {
  using namespace mm;
  extern __shared__ __align__(1024) unsigned char smem[];
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  // Dispatch scratch (before the GEMM ring takes the shared memory): histogram / scan / per-warp rank cursors.
  static_assert((size_t)kWarps * dsp::kExperts * 4 + 64 <= Plan::kSmemBytes && 2 * dsp::kGroups + 1 <= kWarps * dsp::kExperts &&
                    kSmallScratchInts <= kWarps * dsp::kExperts,
                "mega_moe: the dispatch scratch must fit in the GEMM's shared memory");
  int* scratch = reinterpret_cast<int*>(smem);
  __shared__ u32 s_epoch;
  // Phase timing (p.trace, tools and benchmarks only): consumer thread 0 stamps slots 0-5, the producer thread 6-7.
  auto stamp = [&](int slot) {
    if (p.trace != nullptr) p.trace[blockIdx.x * kTraceSlots + slot] = gg::globaltimer_ns();
  };
  if (tid == 0) stamp(0);
  // The last launch's epoch: loaded now, used only at the first grid barrier (thread 0 publishes old + 1 in s_epoch
  // there), so its latency overlaps the dispatch's first loads instead of preceding them.
  u32 old_epoch = 0;
  if (tid == 0) old_epoch = *reinterpret_cast<volatile u32*>(&p.ctl->epoch);
  // Every CTA's first L1 unit is its own index; grabs start after them (read only after the dispatch's barriers).
  if (kDynamicUnits && blockIdx.x == 0 && tid == 0) p.ctl->unit_next = gridDim.x;
  u32 epoch;

  // ---- stage + dispatch ----
  // (Pulling the first units' weights into L2 meanwhile was measured slower at every T: the prefetch traffic queues
  // ahead of the dispatch's dependent loads. docs/MEGA_MOE.md.)
  const bool small = p.num_tokens <= kSmallT && p.ranks == 1;
  if (small) {
    if (blockIdx.x == 0) {
      bool direct = false;
      if constexpr (kDecode) direct = dispatch_small_direct(p, scratch, tid, warp, lane, stamp);
      if (!direct) dispatch_small(p, scratch, tid, warp, lane, stamp);
      if (tid == 0) p.ctl->small_direct = direct;
    }
    if (tid == 0) s_epoch = old_epoch + 1;
    // One barrier: CTA 0's dispatch is complete and every CTA has read the old epoch.
    grid_barrier(p.ctl, kPhaseDispatch, p.timeout_ns);
    epoch = s_epoch;
    if (blockIdx.x == 0 && tid == 0) p.ctl->epoch = epoch;
  } else {
    epoch = dispatch_grid(p, scratch, tid, warp, lane, old_epoch, &s_epoch, stamp);
    grid_barrier(p.ctl, kPhaseGather, p.timeout_ns);
  }
  if (tid == 0) stamp(1);
  // Read after the barrier (CTA 0 wrote it before): whether L1's tiles all read A tile 0.
  const int a_tile0 = kDecode && small ? (int)*reinterpret_cast<volatile u32*>(&p.ctl->small_direct) : 0;

  // ---- L1 then L2 through one ring ----
  const u32 sbase = gg::smem_addr(smem);
  const gg::RingBars<kStages> bars{sbase + Plan::kOffBar};
  const gg::RingBars<kL1Stages> l1_bars{sbase + NormalL1P::kOffBar};  // normal path only
  if (tid == kConsumers) {
    gg::check_smem(Plan::kSmemBytes, smem);
    gg::prefetch_tmap(&tmap_a1);
    gg::prefetch_tmap(&tmap_w13);
    gg::prefetch_tmap(&tmap_sfa1);
    gg::prefetch_tmap(&tmap_a2);
    gg::prefetch_tmap(&tmap_w2);
    gg::prefetch_tmap(&tmap_sfa2);
    bars.init(kCluster * kConsumers / 32);  // empty: one arrive per consumer warp of every CTA of the cluster
    if (!kDecode) l1_bars.init(kCluster * kConsumers / 32);
  }
  // The peer's barriers must be initialised before any multicast or remote arrive.
  if constexpr (kCluster == 2) gg::cluster_sync(); else __syncthreads();
  // The GEMMs' arguments and hooks are built right before each body from the (grid-constant) parameters, so
  // nothing of L2's stays live in registers through L1 (measured: ~900 bytes of spills otherwise, ptxas -v).
  // L1 units per live row tile: 256 transformed rows = 128 activation columns each (both paths).
#define MM_L1_ARGS                                                                                                  \
  gg::GemmArgs{&tmap_a1, &tmap_w13, &tmap_sfa1, &tmap_a1, p.s13, p.tile_group, p.num_m_tiles, p.act, p.act_sf,      \
               p.row_weight, p.swiglu_limit, p.m_cap},                                                              \
      l1_ring, MegaSync<false, true>{p.flags, p.ctl, p.timeout_ns, epoch, 0, p.fault, &p, a_tile0, a_tile0}
#define MM_L2_ARGS                                                                                                  \
  gg::GemmArgs{&tmap_a2, &tmap_w2, &tmap_sfa2, nullptr, p.s2, p.tile_group, p.num_m_tiles, p.out, nullptr,          \
               nullptr, 0.0f, p.m_cap},                                                                             \
      ring,                                                                                                         \
      MegaSync<true, false>{p.flags, p.ctl, p.timeout_ns, epoch,                                                    \
                            l1_units(min(max(*p.num_m_tiles, 0), p.max_tiles)),                                    \
                            p.fault, &p, 0, a_tile0}
  gg::Ring ring, normal_l1_ring;
  ring.carry = normal_l1_ring.carry = blockIdx.x;  // dynamic scheduling: L1's first unit
  gg::Ring& l1_ring = kDecode ? ring : normal_l1_ring;  // decode: L1 and L2 through one ring
  if constexpr (kDecode && kDecodeCWG == 2) {
    // Two consumer warpgroups: the register split of the normal path (it must dominate each role's code).
    if (warp >= 8) {
      gg::regs_dealloc<40>();
      gg::decode_body<2 * kI, kH, 4, kStages, 1, MM_WTILED, Plan, MegaSync<false, true>, false>(MM_L1_ARGS);
      if (tid == kConsumers) stamp(6);
      if (p.num_tokens >= MM_DECODE_L2_WIDE_MIN_T)
        gg::decode_body<kH, kI, 4, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
      else
        gg::decode_body<kH, kI, 2, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
      if (tid == kConsumers) stamp(7);
    } else {
      gg::regs_alloc<232>();
      gg::decode_body<2 * kI, kH, 4, kStages, 1, MM_WTILED, Plan, MegaSync<false, true>, false>(MM_L1_ARGS);
      if (tid == 0) stamp(2);
      if (p.num_tokens >= MM_DECODE_L2_WIDE_MIN_T)
        gg::decode_body<kH, kI, 4, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
      else
        gg::decode_body<kH, kI, 2, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
      if (tid == 0) stamp(3);
      finish<kConsumers>(p, tid, epoch, stamp);
    }
  } else if constexpr (kDecode) {
    gg::decode_body<2 * kI, kH, 4, kStages, 1, MM_WTILED, Plan, MegaSync<false, true>, false>(MM_L1_ARGS);
    if (tid == 0 || tid == kConsumers) stamp(tid == 0 ? 2 : 6);
    if (p.num_tokens >= MM_DECODE_L2_WIDE_MIN_T)
      gg::decode_body<kH, kI, 4, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
    else
      gg::decode_body<kH, kI, 2, kStages, 0, MM_WTILED, Plan, MegaSync<true, false>, false>(MM_L2_ARGS);
    if (tid == 0 || tid == kConsumers) stamp(tid == 0 ? 3 : 7);
    finish<0>(p, tid, epoch, stamp);
  } else {
    // The register split must dominate each role's code (ptxas allocates per branch), so each branch runs both
    // bodies; the bodies' own role test folds away.
    if (warp >= 8) {
      gg::regs_dealloc<40>();
      gg::normal_body<2 * kI, kH, 2, kL1Stages, 1, kMcast, 0, MM_WTILED, NormalL1P, MegaSync<false, true>, false>(MM_L1_ARGS);
      if (tid == kConsumers) {
        stamp(6);
        ring.carry = normal_l1_ring.carry;  // dynamic scheduling: L2 starts at the unit L1's last grab returned
        // L2's stages overlay L1's: wait until the consumers released every L1 stage (fresh stages pass at once).
        for (int i = 0; i < kL1Stages; i++) {
          gg::mbar_wait(l1_bars.empty(l1_ring.stage), l1_ring.phase ^ 1);
          l1_ring.advance<kL1Stages>();
        }
      }
      gg::normal_body<kH, kI, 2, kStages, 0, kMcast, 1, MM_WTILED, NormalL2P, MegaSync<true, false>, false>(MM_L2_ARGS);
      if (tid == kConsumers) stamp(7);
    } else {
      gg::regs_alloc<232>();
      gg::normal_body<2 * kI, kH, 2, kL1Stages, 1, kMcast, 0, MM_WTILED, NormalL1P, MegaSync<false, true>, false>(MM_L1_ARGS);
      if (tid == 0) stamp(2);
      gg::normal_body<kH, kI, 2, kStages, 0, kMcast, 1, MM_WTILED, NormalL2P, MegaSync<true, false>, false>(MM_L2_ARGS);
      if (tid == 0) stamp(3);
      finish<kConsumers>(p, tid, epoch, stamp);  // inside the branch: it runs on the consumers' register budget
    }
  }
#undef MM_L1_ARGS
#undef MM_L2_ARGS
}
