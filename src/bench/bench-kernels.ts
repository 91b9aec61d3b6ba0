// The benchmarks' helper kernels, compiled from inline source on first use: a spin kernel that holds the GPU for a
// given time (queued before the timed work, so the host's launch latency hides behind it and the CUDA events bracket
// the GPU work alone) and an empty kernel (the floor under every timing).
import { loadKernel, type Kernel } from '../cuda/index.js';

const SOURCE = `
extern "C" __global__ void megamoe_bench_empty() {}
extern "C" __global__ void megamoe_bench_spin(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
`;

function load(entry: string): Promise<Kernel> {
  return loadKernel({ source: 'megamoe_bench_spin.cu', sourceText: SOURCE, entry });
}

/** megamoe_bench_spin(u64 ns): one thread busy-waits `ns` nanoseconds of the global timer (grid 1, block 1). */
export function loadSpinKernel(): Promise<Kernel> {
  return load('megamoe_bench_spin');
}

/** megamoe_bench_empty(): no arguments, does nothing. */
export function loadEmptyKernel(): Promise<Kernel> {
  return load('megamoe_bench_empty');
}
