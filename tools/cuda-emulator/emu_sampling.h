// The extra device vocabulary of src/kernels/sampling.cu for the CPU emulator, on top of emu_shim.h and
// emu_model_ops.h: the unsigned / 64-bit atomicAdd overloads (fibers switch only at barriers, so a plain add is
// atomic), __dsub_rn, and __any_sync as 32 lane exchanges (every lane of the warp calls it, as on the GPU).
#pragma once

inline unsigned atomicAdd(unsigned* p, unsigned v) { const unsigned old = *p; *p = old + v; return old; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { const unsigned long long old = *p; *p = old + v; return old; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline int __any_sync(unsigned, int pred) {
  int any = 0;
  for (int l = 0; l < 32; l++) any |= (int)emu::exchange(pred ? 1u : 0u, l);
  return any;
}
