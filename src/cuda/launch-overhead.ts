// How much host time one kernel launch costs through this layer (koffi + cuLaunchKernel), and one graph launch.
// Figures for docs/BENCHMARKS.md; run on a GPU machine: `measureLaunchOverhead()`.
import { arg, type KernelArgLike } from './args.js';
import { ensureContext } from './device.js';
import { CudaGraph } from './graph.js';
import { loadKernel } from './kernel-loader.js';
import { DeviceBuffer } from './memory.js';
import { CudaEvent, Stream } from './stream.js';

const EMPTY_KERNELS = `
extern "C" __global__ void megamoe_empty() {}
extern "C" __global__ void megamoe_empty_args(const float* __restrict__ a, float* __restrict__ b, unsigned n, float s,
                                              long long k) {
  if (n == 0xffffffffu && k == -1) b[0] = a[0] * s;  // never true: keeps the parameters alive
}
`;

export interface LaunchOverheadOptions {
  /** Launches timed per variant (default 10,000). */
  launches?: number;
  /** Launches per timed batch; the stream is drained between batches so the launch queue never fills (default 100). */
  batch?: number;
  /** Kernels per captured graph for the graph figure (default 1; 10 shows the per-node cost). */
  graphNodes?: number;
}

export interface LaunchOverheadResult {
  device: string;
  launches: number;
  /** Median host microseconds per cuLaunchKernel of an argument-less empty kernel. */
  emptyLaunchUs: number;
  /** The same with 5 mixed arguments (2 pointers, u32, f32, i64) packed per launch. */
  argsLaunchUs: number;
  /** Median host microseconds per cuGraphLaunch of a graph of `graphNodes` empty kernels. */
  graphLaunchUs: number;
  graphNodes: number;
  /**
   * Microseconds per empty kernel between two events around 1,000 back-to-back launches. When the host launch cost is
   * above the GPU's per-kernel time (the usual case for empty kernels) this is the host launch rate, not GPU time.
   */
  deviceUsPerEmptyKernel: number;
  p10: { emptyLaunchUs: number; argsLaunchUs: number; graphLaunchUs: number };
  p90: { emptyLaunchUs: number; argsLaunchUs: number; graphLaunchUs: number };
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

/** Per-launch microseconds of each batch, sorted. */
function timeBatches(launch: () => void, total: number, batch: number, drain: () => void): number[] {
  const perLaunch: number[] = [];
  for (let done = 0; done < total; done += batch) {
    const n = Math.min(batch, total - done);
    drain();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) launch();
    const t1 = process.hrtime.bigint();
    perLaunch.push(Number(t1 - t0) / 1e3 / n);
  }
  drain();
  return perLaunch.sort((a, b) => a - b);
}

/** Measures host launch cost on the current device (compiles a tiny kernel on first use). */
export async function measureLaunchOverhead(options: LaunchOverheadOptions = {}): Promise<LaunchOverheadResult> {
  const launches = options.launches ?? 10_000;
  const batch = options.batch ?? 100;
  const graphNodes = options.graphNodes ?? 1;
  const ctx = ensureContext();
  const empty = await loadKernel({ source: 'megamoe_empty.cu', sourceText: EMPTY_KERNELS, entry: 'megamoe_empty' });
  const withArgs = await loadKernel({ source: 'megamoe_empty.cu', sourceText: EMPTY_KERNELS, entry: 'megamoe_empty_args' });
  using stream = Stream.create();
  using a = DeviceBuffer.alloc(256);
  using b = DeviceBuffer.alloc(256);
  const cfg = { grid: 1, block: 32, stream };
  const noArgs: KernelArgLike[] = [];
  const mixed: KernelArgLike[] = [a, b, arg.u32(7), arg.f32(0.5), arg.i64(3n)];
  const drain = (): void => stream.synchronize();

  // Warm-up: first launches load the module onto the GPU and fill caches.
  for (let i = 0; i < 200; i++) { empty.launch(cfg, noArgs); withArgs.launch(cfg, mixed); }
  drain();

  const emptyT = timeBatches(() => empty.launch(cfg, noArgs), launches, batch, drain);
  const argsT = timeBatches(() => withArgs.launch(cfg, mixed), launches, batch, drain);

  using graph = CudaGraph.capture(stream, () => {
    for (let i = 0; i < graphNodes; i++) empty.launch(cfg, noArgs);
  });
  for (let i = 0; i < 50; i++) graph.launch(stream);
  const graphT = timeBatches(() => graph.launch(stream), launches, batch, drain);

  // Device-side: back-to-back empty kernels between two events.
  using start = CudaEvent.create();
  using end = CudaEvent.create();
  start.record(stream);
  for (let i = 0; i < 1000; i++) empty.launch(cfg, noArgs);
  end.record(stream);
  end.synchronize();
  const deviceUs = (end.elapsedMsSince(start) * 1e3) / 1000;

  return {
    device: ctx.properties().name,
    launches,
    emptyLaunchUs: quantile(emptyT, 0.5),
    argsLaunchUs: quantile(argsT, 0.5),
    graphLaunchUs: quantile(graphT, 0.5),
    graphNodes,
    deviceUsPerEmptyKernel: deviceUs,
    p10: { emptyLaunchUs: quantile(emptyT, 0.1), argsLaunchUs: quantile(argsT, 0.1), graphLaunchUs: quantile(graphT, 0.1) },
    p90: { emptyLaunchUs: quantile(emptyT, 0.9), argsLaunchUs: quantile(argsT, 0.9), graphLaunchUs: quantile(graphT, 0.9) },
  };
}
