// Timing shared by the benchmarks (bench moe, bench model): CUDA events around a piece of device work, the L2 flushed
// before each sample and the host's launch latency hidden behind a spin kernel; medians; the device-to-device copy that
// measures this GPU's copy bandwidth (SPEC 6). Moved here from moe.ts unchanged.
import { performance } from 'node:perf_hooks';
import { arg, CudaEvent, DeviceBuffer, type Kernel, type Stream } from '../cuda/index.js';
import { loadSpinKernel } from './bench-kernels.js';
import { median } from './report.js';

/** Bytes of the device-to-device copy that measures this GPU's copy bandwidth (>= 1 GiB, SPEC 6). */
export const COPY_BYTES = 1 << 30;

/** Device-time sampler: L2 flush + spin-hidden launch latency (see the header). */
export class LayerTimer {
  private constructor(private readonly spin: Kernel, private readonly flush: DeviceBuffer,
    private readonly start: CudaEvent, private readonly end: CudaEvent) {}

  /** `l2Bytes`: the GPU's L2 size; the flush buffer is 4x that, at least 256 MiB. */
  static async create(l2Bytes: number): Promise<LayerTimer> {
    const spin = await loadSpinKernel();
    const flushBytes = Math.max(256 << 20, Math.ceil((4 * l2Bytes) / (1 << 20)) << 20);
    return new LayerTimer(spin, DeviceBuffer.alloc(flushBytes), CudaEvent.create(), CudaEvent.create());
  }

  /** One sample in microseconds; `spinUs` 0 = no spin (host launch latency included). Also the host enqueue time. */
  sample(stream: Stream, work: () => void, spinUs: number, flushL2 = true): { deviceUs: number; hostUs: number } {
    if (flushL2) this.flush.memset8(0x5a, { stream });
    if (spinUs > 0) this.spin.launch({ grid: 1, block: 1, stream }, [arg.u64(BigInt(Math.round(spinUs * 1000)))]);
    this.start.record(stream);
    const t0 = performance.now();
    work();
    const hostUs = (performance.now() - t0) * 1e3;
    this.end.record(stream);
    this.end.synchronize();
    return { deviceUs: this.end.elapsedMsSince(this.start) * 1e3, hostUs };
  }

  /** Warm-up, then samples until `runs` or ~budgetMs of device time, whichever first (at least 3). */
  series(stream: Stream, work: () => void, warmup: number, runs: number, spinUs: number, budgetMs = 1500, flushL2 = true): { device: number[]; host: number[] } {
    for (let i = 0; i < warmup; i++) this.sample(stream, work, spinUs, flushL2);
    const device: number[] = [];
    const host: number[] = [];
    let spent = 0;
    while (device.length < runs && (device.length < 3 || spent < budgetMs * 1e3)) {
      const s = this.sample(stream, work, spinUs, flushL2);
      device.push(s.deviceUs);
      host.push(s.hostUs);
      spent += s.deviceUs;
    }
    return { device, host };
  }

  /**
   * Like series, for several works at once: each round samples every work in turn, so a drift of the GPU's clock
   * over the series (power capping at large T) affects all of them alike. Each timed sample follows an untimed one
   * of the same work, as in a model, where the previous MoE layer ran the same backend: a layer right after another
   * backend's measured up to 5 us slower at T = 1 (its buffers' translations and caches cold; docs/MEGA_MOE.md).
   * Stops at `runs` rounds or ~budgetMs of timed device time per work.
   */
  interleaved(works: ReadonlyArray<{ stream: Stream; work: () => void }>, warmup: number, runs: number, spinUs: number,
    budgetMs = 1500): Array<{ device: number[]; host: number[] }> {
    for (let i = 0; i < warmup; i++) for (const w of works) this.sample(w.stream, w.work, spinUs);
    const out = works.map(() => ({ device: [] as number[], host: [] as number[] }));
    let spent = 0;
    for (let r = 0; r < runs && (r < 3 || spent < budgetMs * 1e3 * works.length); r++) {
      for (const [i, w] of works.entries()) {
        if (works.length > 1) this.sample(w.stream, w.work, spinUs);
        const s = this.sample(w.stream, w.work, spinUs);
        out[i].device.push(s.deviceUs);
        out[i].host.push(s.hostUs);
        spent += s.deviceUs;
      }
    }
    return out;
  }

  dispose(): void {
    this.flush.dispose(); this.start.dispose(); this.end.dispose();
  }
}

export function summarise(samples: number[]): { medianUs: number; minUs: number; maxUs: number; runs: number } {
  return { medianUs: median(samples), minUs: Math.min(...samples), maxUs: Math.max(...samples), runs: samples.length };
}

/** This GPU's device-to-device copy: `bytes` read and `bytes` written per run, L2 flushed before each, median. */
export function measureCopy(timer: LayerTimer, stream: Stream, bytes: number, warmup: number, runs: number): { medianUs: number; runs: number } {
  const a = DeviceBuffer.alloc(bytes);
  try {
    const b = DeviceBuffer.alloc(bytes);
    try {
      a.memset8(1, { stream });
      const s = timer.series(stream, () => b.copyFromDevice(a, { stream, bytes }), warmup, runs, 20, 60_000);
      return { medianUs: median(s.device), runs: s.device.length };
    } finally {
      stream.synchronize();
      b.dispose();
    }
  } finally {
    a.dispose();
  }
}
