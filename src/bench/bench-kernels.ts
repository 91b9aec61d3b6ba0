// The benchmarks' helper kernels, compiled from inline source on first use: a spin kernel that holds the GPU for a
// given time (queued before the timed work, so the host's launch latency hides behind it and the CUDA events bracket
// the GPU work alone), an empty kernel (the floor under every timing) and a read kernel (the read floor of a MoE
// layer: read the given byte ranges once, nothing else).
import { loadKernel, type Kernel } from '../cuda/index.js';

const SOURCE = `
extern "C" __global__ void megamoe_bench_empty() {}
extern "C" __global__ void megamoe_bench_spin(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
// Reads every 16-byte word of nsegs ranges { u64 address (16-aligned), u64 bytes (multiple of 16) } exactly once:
// grid-stride over all SMs, 16-byte streaming loads, 4 in flight per thread. The words are folded (xor) into one
// value per block, and each block xors its value into *sink once, so the loads cannot be optimised away.
struct MegamoeReadSeg { unsigned long long ptr; unsigned long long bytes; };
__device__ __forceinline__ unsigned int megamoe_fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }
extern "C" __global__ void __launch_bounds__(512) megamoe_bench_read(const MegamoeReadSeg* __restrict__ segs, int nsegs,
                                                                      unsigned int* __restrict__ sink) {
  unsigned int acc = 0;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (int s = 0; s < nsegs; ++s) {
    const uint4* __restrict__ p = reinterpret_cast<const uint4*>(segs[s].ptr);
    const unsigned long long n = segs[s].bytes >> 4;
    unsigned long long i = tid;
    for (; i + 3 * stride < n; i += 4 * stride) {
      const uint4 a = __ldcs(p + i);
      const uint4 b = __ldcs(p + i + stride);
      const uint4 c = __ldcs(p + i + 2 * stride);
      const uint4 d = __ldcs(p + i + 3 * stride);
      acc ^= megamoe_fold(a) ^ megamoe_fold(b) ^ megamoe_fold(c) ^ megamoe_fold(d);
    }
    for (; i < n; i += stride) acc ^= megamoe_fold(__ldcs(p + i));
  }
  for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(0xffffffffu, acc, o);
  __shared__ unsigned int warps[16];
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned int v = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) v ^= warps[w];
    atomicXor(sink, v);
  }
}
`;

/** Threads per block of megamoe_bench_read (its __launch_bounds__). */
export const READ_KERNEL_THREADS = 512;

function load(entry: string): Promise<Kernel> {
  return loadKernel({ source: 'megamoe_bench_spin.cu', sourceText: SOURCE, entry });
}

/** megamoe_bench_spin(u64 ns): one thread busy-waits `ns` nanoseconds of the global timer (grid 1, block 1). */
export function loadSpinKernel(): Promise<Kernel> {
  return load('megamoe_bench_spin');
}

/**
 * megamoe_bench_read(const {u64 ptr, u64 bytes}* segs, i32 nsegs, u32* sink): reads each range once (16-byte loads,
 * grid-stride; launch READ_KERNEL_THREADS threads per block, a few blocks per SM).
 */
export function loadReadKernel(): Promise<Kernel> {
  return load('megamoe_bench_read');
}

/** megamoe_bench_empty(): no arguments, does nothing. */
export function loadEmptyKernel(): Promise<Kernel> {
  return load('megamoe_bench_empty');
}
