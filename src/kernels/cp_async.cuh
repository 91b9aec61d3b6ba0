// 16-byte asynchronous global -> shared copies (cp.async, sm_80+), shared by the kernels that stage loads this way.
// WHY cp.async and not plain loads into registers: ptxas sinks plain loads next to their first use (routing.cu
// measured one load round trip per k-chunk), and a register-staged load holds registers for as long as it is in
// flight; cp.async writes no register, so several stages can be in flight at once. A thread that reads back only
// the bytes it copied itself needs no more synchronisation than its own cp.async.wait_group.
// The CPU emulator (MEGAMOE_EMU) copies at once and waits for nothing.
#pragma once

// Copies 16 bytes, or zero-fills them when !pred (src-size 0 reads nothing; pass a valid address anyway).
// kCacheL1: .ca (keep in L1, for data other CTAs of the SM re-read) else .cg (L2 only).
template <bool kCacheL1>
__device__ __forceinline__ void cp_async16(uint4* smem, const uint4* gmem, bool pred) {
#ifdef MEGAMOE_EMU
  *smem = pred ? *gmem : uint4{0u, 0u, 0u, 0u};
#else
  const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
  const int src_size = pred ? 16 : 0;
  if constexpr (kCacheL1) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_size) : "memory");
  } else {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(src_size) : "memory");
  }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifndef MEGAMOE_EMU
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifndef MEGAMOE_EMU
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
