// Thin wrappers over the sm_90a PTX that the grouped FP8 GEMM is built from: mbarriers, TMA bulk tensor copies,
// wgmma fences / commits / waits, the wgmma shared-memory matrix descriptor, setmaxnreg and named barriers.
//
// Self-contained (no CUDA headers), like ../common.cuh, so the kernel compiles the same way under nvcc and NVRTC.
// Included by grouped_gemm_fp8.cu and mega_moe.cu (headers under gemm/ include nothing themselves: the .cu files include them
// in order, so include paths never matter).
//
// Facts relied on (PTX ISA 8.x, "Asynchronous warpgroup level matrix multiply" and "Tensor copy" chapters; the bit
// layout of the descriptor matches CUTLASS's cute/arch/mma_sm90_desc.hpp GmmaDescriptor):
//   descriptor bits [0,14) start address >> 4, [16,30) leading byte offset >> 4 (unused by swizzled K-major
//   layouts, conventionally 1), [32,46) stride byte offset >> 4 (the distance between two 8-row core-matrix groups:
//   8 rows x 128 B = 1024 for a 128B-swizzled K-major tile), [49,52) base offset (0: tiles are 1024-aligned),
//   [62,64) layout: 1 = 128-byte swizzle.
//   The 128B swizzle that TMA applies (CU_TENSOR_MAP_SWIZZLE_128B) is a function of the shared-memory address bits
//   [4,7) ^ [7,10), so a K step of 32 fp8 inside the 128-byte row is taken by adding 32 bytes to the start address.
#pragma once

namespace gg {

typedef unsigned int u32;
typedef unsigned long long u64;

// The 128-byte CUtensorMap (cuda.h) as an opaque blob: the kernel only passes its address to TMA instructions.
struct __align__(64) TmaDesc {
  u64 raw[16];
};

__device__ __forceinline__ u32 smem_addr(const void* p) {
  u32 r;
  asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
  return r;
}

__device__ __forceinline__ u32 dynamic_smem_bytes() {
  u32 r;
  asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
  return r;
}

// ---- mbarrier -------------------------------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the async proxy (TMA complete_tx) before anyone uses them.
__device__ __forceinline__ void fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
  u32 done;
  asm volatile(
      "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}
__device__ __forceinline__ u64 globaltimer_ns() {
  u64 t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Waits until the phase of parity `parity` has completed. A fresh barrier counts its (virtual) previous phase,
// parity 1, as complete: that is what lets the producer's first pass over the empty barriers go straight through.
// No deadline here (the fused kernel's cross-CTA spins have theirs): a try counter in this loop cost the 128-row
// GEMM about a third of its speed (docs/BENCHMARKS.md, fused-kernel notes).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// ---- TMA ------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void prefetch_tmap(const TmaDesc* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(map)) : "memory");
}
// L2 eviction policies for the cache_hint operand. Decode streams each weight tile once (evict_first) and keeps the
// few token rows (evict_last); prefill re-reads both operands from L2 (every weight tile by all row tiles of its
// expert, every activation tile by all N tiles), so it leaves the default priority (evict_normal).
__device__ __forceinline__ u64 policy_evict_first() {
  u64 p;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
  return p;
}
__device__ __forceinline__ u64 policy_evict_normal() {
  u64 p;
  asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(p));
  return p;
}
__device__ __forceinline__ u64 policy_evict_last() {
  u64 p;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p));
  return p;
}
// 2D tile load global -> shared, completing `bytes` of the mbarrier's transaction count. c0 is the inner
// (contiguous) coordinate in elements, c1 the row.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaDesc* map, u32 bar, int c0, int c1, u64 policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint"
      " [%0], [%1, {%3, %4}], [%2], %5;" ::"r"(dst),
      "l"(reinterpret_cast<u64>(map)), "r"(bar), "r"(c0), "r"(c1), "l"(policy)
      : "memory");
}

// Multicast variant: the same tile lands at the same shared-memory offset in every CTA of `cta_mask` (a cluster), and
// each destination CTA's mbarrier at `bar`'s offset receives the complete_tx of its copy.
__device__ __forceinline__ void tma_load_2d_multicast(u32 dst, const TmaDesc* map, u32 bar, int c0, int c1,
                                                      unsigned short cta_mask, u64 policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster.L2::cache_hint"
      " [%0], [%1, {%3, %4}], [%2], %5, %6;" ::"r"(dst),
      "l"(reinterpret_cast<u64>(map)), "r"(bar), "r"(c0), "r"(c1), "h"(cta_mask), "l"(policy)
      : "memory");
}
// Prefetches a 2D box into L2 (no shared memory, no barrier): the fused kernel warms the weights of a unit whose
// activations are not ready yet.
__device__ __forceinline__ void tma_prefetch_2d(const TmaDesc* map, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global [%0, {%1, %2}];" ::"l"(reinterpret_cast<u64>(map)),
               "r"(c0), "r"(c1)
               : "memory");
}
// 1D bulk copy global -> shared (both 16-byte aligned, a multiple of 16 bytes) that completes on mbarrier `bar`'s
// transaction count.
__device__ __forceinline__ void bulk_load_1d(u32 dst, const void* src, u32 bytes, u32 bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(reinterpret_cast<u64>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// 2D tile store shared -> global (bulk group). Shared memory written by ordinary stores must be fenced with
// fence_proxy_async() by each writer (and the writers synchronised) before this reads it.
__device__ __forceinline__ void tma_store_2d(const TmaDesc* map, u32 src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(
                   reinterpret_cast<u64>(map)),
               "r"(c0), "r"(c1), "r"(src)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }
// Waits until the committed stores have finished READING shared memory (the staging buffer may be rewritten).
__device__ __forceinline__ void bulk_wait_read0() { asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); }
// Waits until the committed stores are complete.
__device__ __forceinline__ void bulk_wait0() { asm volatile("cp.async.bulk.wait_group 0;" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Orders this thread's generic-proxy global accesses with its async-proxy (TMA) ones: a writer fences after its
// ordinary stores that another CTA's TMA will read; a reader fences after acquiring the flag, before its TMA loads.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;" ::: "memory");
}

// ---- cross-CTA flags (device scope) ----------------------------------------------------------------------------
__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// Relaxed (not acquire) load: several can be in flight at once; a fence_acq_rel_gpu after them makes the group an
// acquire (the PTX memory model's fence-based acquire pattern).
__device__ __forceinline__ u32 ld_relaxed_gpu(const u32* p) {
  u32 v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }
__device__ __forceinline__ void st_release_gpu(u32* p, u32 v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// System scope (expert parallelism: flags another rank's process sets, in its memory or ours over NVLink / the same
// GPU's memory through a CUDA IPC mapping).
__device__ __forceinline__ u32 ld_acquire_sys(const u32* p) {
  u32 v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_sys(u32* p, u32 v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// ---- clusters -------------------------------------------------------------------------------------------------
__device__ __forceinline__ u32 cluster_rank() {
  u32 r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ u32 cluster_id() {
  u32 r;
  asm volatile("mov.u32 %0, %%clusterid.x;" : "=r"(r));
  return r;
}
__device__ __forceinline__ u32 num_clusters() {
  u32 r;
  asm volatile("mov.u32 %0, %%nclusterid.x;" : "=r"(r));
  return r;
}
// Every thread of every CTA of the cluster (warp-converged) arrives and waits.
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Arrives on the mbarrier at the same shared-memory offset in cluster CTA `cta` (possibly this one). Default
// semantics (.release.cta), as CUTLASS's ClusterBarrier::arrive(cta_id): the stage being released was only READ (by
// wgmma, already waited for), so no cluster-scope release of this thread's writes is needed (an explicit
// .release.cluster would also order every earlier write of the thread, epilogue stores included).
__device__ __forceinline__ void mbar_arrive_cluster(u32 bar, u32 cta) {
  asm volatile(
      "{ .reg .b32 ra; mapa.shared::cluster.u32 ra, %0, %1; mbarrier.arrive.shared::cluster.b64 _, [ra]; }" ::"r"(bar),
      "r"(cta)
      : "memory");
}

// ---- wgmma ----------------------------------------------------------------------------------------------------
// Shared-memory matrix descriptor for a K-major tile with rows of 128 bytes (128 fp8 along K), 128B-swizzled by TMA.
__device__ __forceinline__ u64 make_desc_sw128(u32 saddr) {
  return (u64)((saddr & 0x3FFFFu) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}
// One k32 step of fp8 = 32 bytes = 2 units of the descriptor's start-address field.
constexpr u64 kDescK32Step = 2;

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma window.
__device__ __forceinline__ void fence_reg(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// ---- warpgroup register budget and named barriers ------------------------------------------------------------
template <int R>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
}
template <int R>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
}
__device__ __forceinline__ void named_barrier_sync(u32 id, u32 threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- small numeric helpers ------------------------------------------------------------------------------------
__device__ __forceinline__ float ld_shared_f32(u32 addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ uint4 ld_shared_v4(u32 addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr) : "memory");
  return v;
}
// Two f32 -> packed bf16x2, round to nearest even; `lo` lands at the lower address.
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
__device__ __forceinline__ unsigned short f32_to_bf16(float x) {
  unsigned short r;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
  return r;
}

// The down projection's activation scale (SPEC 3, "ue8m0"): 2^ceil(log2(max(amax, 1e-4) / 448)), computing
// r = amax / 448 in f32 (IEEE division) and rounding r up to a power of two by its bits. Returns the scale and,
// through `inv`, its exact reciprocal (a power of two too), so x * inv == x / s.
__device__ __forceinline__ float pow2_scale(float amax, float& inv) {
  const float r = __fdiv_rn(fmaxf(amax, 1e-4f), 448.0f);
  u32 bits = __float_as_uint(r);
  if (bits & 0x7FFFFFu) bits = (bits & 0x7F800000u) + 0x00800000u;
  const u32 biased = bits >> 23;  // r >= 1e-4/448: a normal number, so 1 <= biased <= 254
  inv = __uint_as_float((254u - biased) << 23);
  return __uint_as_float(bits);
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

}  // namespace gg
