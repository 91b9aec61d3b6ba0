// `megamoe bench moe`: one MoE layer (flash / pro shapes) per token count T, for the fused mega_moe backend and the
// unfused backend (each as eager launches and as one CUDA graph) on the SAME device weights and inputs in the same
// run, the CPU reference at small T, the read floor of the touched experts and cuBLASLt's dense FP8 GEMM at the
// same FLOPs as an anchor. Writes moe.json, moe.md and moe.svg into --out (src/bench/report.ts).
//
// What is timed (WHY this way):
//  * Weights are generated on the GPU once per preset (seeded random e4m3 codes and scales: random_fill.cu, tiled
//    layout), the whole layer resident, as vLLM holds it; both pipelines read that one copy. The routing is uniform
//    random top-K (distinct experts per token), seeded; x is filled once and copied device-to-device to the other
//    pipeline, so both layers see bit-identical inputs and their outputs are compared (calc_diff) at every T.
//  * Before each timed run a memset of >= 256 MiB (4x the L2) evicts the L2 so weights stream from HBM as they would
//    after the previous layer, then a spin kernel holds the GPU while the host queues [start, layer, end]: the events
//    bracket the layer's device time, not the host's launch latency. The host cost per layer (eager launches vs one
//    graph launch) is reported separately, as is the device time without the spin (what a host-bound decode loop sees).
//  * Median of --runs after --warmup (fewer runs at large T, so one series stays within --series-budget-ms). The
//    backends' CUDA graphs (the compared figures) run interleaved, one run of each per round, so a drift of the
//    GPU's clock affects them alike; the eager series run one backend after the other.
//  * Ceilings are of the GPU that runs (SPEC 6): HBM and FP8 peaks derived from its device attributes, a 1 GiB
//    device-to-device copy measured at the start, and per (preset, T) the read floor: a kernel that only reads the
//    bytes of exactly the experts this T's routing touched (shared expert included, codes + scales), timed like the
//    layer. The floor of a layer = max(read floor, FLOPs at the best cuBLASLt anchor rate of the run).
//  * FLOPs count the routed experts only (SPEC 6: 2 T K 3 H I); bytes count the distinct routed experts the routing
//    touched plus the shared expert, codes + f32 scales (each byte once: the roofline for weight streaming).
import type { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import {
  arg, cudaStatus, DeviceBuffer, driverVersion, ensureContext, formatCudaVersion, Stream, type CudaGraph, type Kernel,
} from '../cuda/index.js';
import { CublasLtFp8Gemm, cublasLtStatus } from '../cuda/cublaslt.js';
import { DeviceMoeWeights, layerFromDeviceWeights, UnfusedMoe, type UnfusedIo, type UnfusedShape } from '../backends/unfused.js';
import { MegaMoe } from '../backends/mega-moe.js';
import { ROW_TILE_POLICIES, type RowTilePolicy } from '../backends/unfused-gemm.js';
import { ReferenceBackend } from '../backends/reference.js';
import type { MoeForwardResult } from '../moe/backend.js';
import { calcDiff } from '../numerics/calc-diff.js';
import { decodeBF16Array } from '../numerics/bf16.js';
import { GroupedGemm } from '../kernels/grouped-gemm.js';
import { formatBytes, megaBufferLayout } from '../kernels/mega-moe-layout.js';
import { MOE_PRESET_SHAPES } from '../kernels/presets.js';
import { RandomFill } from '../kernels/random-fill.js';
import { HostTensor } from '../tensor/host.js';
import { intArg, oneOf } from '../cli/args.js';
import { MAX_WORLD_SIZE } from '../dist/rank.js';
import { TRANSPORT_NAMES } from '../dist/transports.js';
import type { TransportName } from '../dist/transport.js';
import { EP_BENCH_DEFAULT_BACKENDS, EP_BENCH_DEFAULT_TOKENS } from './ep-report.js';
import { Rng } from '../util/rng.js';
import {
  applyFloors, bestAnchorTflops, CUBLASLT_ANCHOR, deriveCeilings, deriveRates, expertWeightBytes, median, moeFlops, READ_FLOOR,
  withCopyBandwidth, writeMoeReport, type DeviceCeilings, type GemmAloneRow, type HostOverheadRow, type MoeBenchReport,
  type MoeBenchRow, type MoeShapeSummary,
} from './report.js';
import { loadReadKernel, READ_KERNEL_THREADS } from './bench-kernels.js';
import { COPY_BYTES, LayerTimer, measureCopy, summarise } from './timing.js';
import { expertStrides, packReadSegments, readFloorSegments, touchedGroups } from './read-floor.js';
import { parseList, parseTokenList, resolveCommit } from './staging-routing.js';

/** The preset MoE shapes (src/kernels/presets.ts) the benchmark knows, with V4's swiglu_limit 10 (SPEC 1). */
export const MOE_BENCH_PRESETS: Readonly<Record<string, { hidden: number; inter: number; experts: number; topK: number; swigluLimit: number }>> =
  Object.fromEntries(MOE_PRESET_SHAPES.map(({ label, hidden, inter, experts, topK }) => [label, { hidden, inter, experts, topK, swigluLimit: 10 }]));

/** The backends `bench moe --backend` takes. */
export const MOE_BENCH_BACKENDS: readonly string[] = ['mega_moe', 'unfused', 'reference'];
/** Defaults of the CLI (issue 7: T = 1, 2, 4, ..., 16384 on flash and pro, both GPU backends and the reference). */
export const MOE_BENCH_DEFAULT_TOKENS = '1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192,16384';
export const MOE_BENCH_DEFAULT_PRESETS = 'flash,pro';
export const MOE_BENCH_DEFAULT_BACKENDS = 'mega_moe,unfused,reference';

export interface MoeBenchOptions {
  presets: string[];
  tokens: number[];
  /** any of MOE_BENCH_BACKENDS */
  backends: string[];
  out: string;
  warmup: number;
  runs: number;
  seed: number;
  /** the CPU reference runs only for T <= this (it takes seconds per token at flash size) */
  referenceMaxTokens: number;
  anchor: boolean;
  /** also time the grouped GEMM alone at the issue's bar shapes */
  gemmAlone: boolean;
  /** GEMM / kernel path of both layers: 'auto' (the backends' heuristic) or one pinned path, to tune that heuristic */
  rowTile?: RowTilePolicy;
  /** device time one timed series may take before it stops early (at least 3 runs); default 1500 ms */
  seriesBudgetMs?: number;
  commit?: string;
  command?: string;
  /** progress lines (stderr) */
  log?: (line: string) => void;
}

/** Uniform random routing: K distinct experts per token, weights positive and normalised to sum 1.5 (SPEC 2). */
export function randomRouting(seed: number, tokens: number, experts: number, topK: number): { ids: BigInt64Array; weights: Float32Array; touched: number } {
  const rng = new Rng(seed);
  const ids = new BigInt64Array(tokens * topK);
  const weights = new Float32Array(tokens * topK);
  const seen = new Uint8Array(experts);
  const perm = Int32Array.from({ length: experts }, (_, i) => i);
  for (let t = 0; t < tokens; t++) {
    let sum = 0;
    for (let k = 0; k < topK; k++) { // partial Fisher-Yates: distinct experts
      const p = k + rng.int(experts - k);
      const tmp = perm[k]; perm[k] = perm[p]; perm[p] = tmp;
      ids[t * topK + k] = BigInt(perm[k]);
      seen[perm[k]] = 1;
      const w = 0.2 + rng.uniform();
      weights[t * topK + k] = w;
      sum += w;
    }
    for (let k = 0; k < topK; k++) weights[t * topK + k] = Math.fround((weights[t * topK + k] / sum) * 1.5);
  }
  let touched = 0;
  for (const s of seen) touched += s;
  return { ids, weights, touched };
}

/**
 * The read floor of one routing: megamoe_bench_read over exactly the touched experts' regions of the four weight
 * buffers (shared expert included), launched over all SMs on `stream`.
 */
class ReadFloor {
  private constructor(private readonly kernel: Kernel, private readonly weights: DeviceMoeWeights,
    private readonly segs: DeviceBuffer, private readonly sink: DeviceBuffer, private readonly grid: number) {}

  static async create(weights: DeviceMoeWeights, smCount: number, maxThreadsPerSM: number): Promise<ReadFloor> {
    const { hidden: H, inter: I, experts: E } = weights.shape;
    const st = expertStrides(H, I);
    const G = E + 1;
    // The strides must be DeviceMoeWeights' (a drift would time the wrong bytes).
    for (const [name, buf] of [['w13', weights.w13], ['s13', weights.s13], ['w2', weights.w2], ['s2', weights.s2]] as const) {
      if (buf.byteLength !== st[name] * G) throw new Error(`read floor: ${name} holds ${buf.byteLength} bytes, expected ${G} x ${st[name]}`);
    }
    const kernel = await loadReadKernel();
    const segs = DeviceBuffer.alloc(4 * G * 16);
    const sink = DeviceBuffer.alloc(16);
    sink.memset8(0);
    const grid = smCount * Math.max(1, Math.floor(maxThreadsPerSM / READ_KERNEL_THREADS));
    return new ReadFloor(kernel, weights, segs, sink, grid);
  }

  /** Uploads the segments of `ids`' touched experts (synchronises `stream`); returns the launch and the bytes. */
  prepare(ids: BigInt64Array, stream: Stream): { launch: () => void; exactBytes: number; readBytes: number; segments: number } {
    const { hidden: H, inter: I, experts: E } = this.weights.shape;
    const { segments, exactBytes, readBytes } = readFloorSegments(touchedGroups(ids, E), expertStrides(H, I), E + 1);
    const packed = packReadSegments(segments, { w13: this.weights.w13.ptr, s13: this.weights.s13.ptr, w2: this.weights.w2.ptr, s2: this.weights.s2.ptr });
    this.segs.copyFromHost(packed, { stream, bytes: packed.byteLength });
    stream.synchronize();
    const n = segments.length;
    return {
      launch: () => this.kernel.launch({ grid: this.grid, block: READ_KERNEL_THREADS, stream }, [this.segs, arg.i32(n), this.sink]),
      exactBytes, readBytes, segments: n,
    };
  }

  dispose(): void {
    this.segs.dispose(); this.sink.dispose();
  }
}

/** The issue's bar shapes for the grouped GEMM alone: groups x rows, N = K = 4096 (DeepGEMM anchors in SPEC 6). */
export const GEMM_BAR_SHAPES: ReadonlyArray<{ groups: number; rows: number }> = [
  { groups: 4, rows: 8192 }, { groups: 8, rows: 512 }, { groups: 32, rows: 128 },
];

/** Times the bf16-out grouped GEMM (128-row path) on random codes and scales at GEMM_BAR_SHAPES. */
async function benchGemmAlone(timer: LayerTimer, stream: Stream, warmup: number, runs: number, ceilings: DeviceCeilings): Promise<GemmAloneRow[]> {
  const N = 4096; const K = 4096;
  const fill = await RandomFill.create();
  const gemm = await GroupedGemm.create({ path: 'normal', epilogue: 'bf16', n: N, k: K });
  const out: GemmAloneRow[] = [];
  for (const { groups, rows } of GEMM_BAR_SHAPES) {
    const M = groups * rows;
    const bufs = [
      DeviceBuffer.alloc(M * K), DeviceBuffer.alloc((K / 128) * M * 4), DeviceBuffer.alloc(groups * N * K),
      DeviceBuffer.alloc(groups * (N / 128) * (K / 128) * 4), DeviceBuffer.alloc((M / 128) * 4), DeviceBuffer.alloc(4),
      DeviceBuffer.alloc(M * N * 2),
    ];
    const [a, sfa, w, sfb, tileGroup, numMTiles, d] = bufs;
    try {
      fill.e4m3(a, 11, { stream });
      fill.e4m3(w, 12, { stream });
      fill.scales(sfa, 13, 1 / 448, { stream });
      fill.scales(sfb, 14, 1 / 448, { stream });
      tileGroup.copyFromHost(Int32Array.from({ length: M / 128 }, (_, t) => Math.floor((t * 128) / rows)));
      numMTiles.copyFromHost(Int32Array.of(M / 128));
      ensureContext().synchronize(); // the copies ran on the legacy stream, which `stream` does not wait for
      const bound = gemm.bind({ a, sfa, weights: w, sfb, groups, tileGroup, numMTiles, out: d, mCap: M });
      const s = timer.series(stream, () => bound.launch(stream), warmup, runs, 20);
      const us = median(s.device);
      const tflops = (2 * M * N * K) / (us * 1e-6) / 1e12;
      out.push({ label: `${groups} groups x ${rows} rows, N ${N}, K ${K}`, groups, rowsPerGroup: rows, n: N, k: K, medianUs: us,
        runs: s.device.length, tflops, computeFraction: tflops / ceilings.fp8DensePeakTflops });
    } finally {
      stream.synchronize();
      for (const b of bufs) b.dispose();
    }
  }
  return out;
}

/** What both device pipelines (UnfusedMoe, MegaMoe) offer the benchmark. */
interface LayerPipeline {
  readonly io: UnfusedIo;
  readonly stream: Stream;
  enqueue(tokens: number): void;
  captureGraph(tokens: number): CudaGraph;
  downloadOutputs(tokens: number): MoeForwardResult;
}

/** Runs the benchmark and writes the report; returns it. */
export async function runMoeBench(o: MoeBenchOptions): Promise<MoeBenchReport> {
  const log = o.log ?? (() => {});
  const st = cudaStatus();
  if (!st.available) throw new Error(`bench moe needs a Hopper GPU: ${st.reason}`);
  for (const b of o.backends) if (!MOE_BENCH_BACKENDS.includes(b)) throw new Error(`bench moe: unknown backend "${b}" (expected ${MOE_BENCH_BACKENDS.join(', ')})`);
  const ctx = ensureContext();
  const props = ctx.properties();
  const budgetMs = o.seriesBudgetMs ?? 1500;
  let rows: MoeBenchRow[] = [];
  const hostOverhead: HostOverheadRow[] = [];
  const skipped: MoeBenchReport['skipped'] = [];
  const wantMega = o.backends.includes('mega_moe');
  const wantUnfused = o.backends.includes('unfused');
  if (!wantMega && !wantUnfused) throw new Error('bench moe: --backend needs mega_moe or unfused (the reference runs on their inputs)');
  const notes: string[] = [
    'FLOPs count the routed experts only (SPEC 6: 2 T K 3 H I); the shared expert runs too but is not counted. ' +
    'Bytes = distinct routed experts touched + the shared expert (FP8 codes + f32 block scales).',
    'mega_moe / unfused: device time of the eager launches (launch latency hidden behind a spin kernel, L2 flushed before each run); ' +
    '+graph: the same layer replayed as one CUDA graph. Both layers run on the same device weights and the same inputs in this run; ' +
    'calc_diff vs unfused compares their y at every T. [path] is the kernel path the layer took (normal: 128-row tiles, decode: 16).',
    `read-floor: a kernel that only reads this routing's touched experts (shared expert included, codes + scales) once, 16-byte loads ` +
    `over all ${props.smCount} SMs, timed like the layers; its GB/s is the read bandwidth this GPU reached.`,
  ];
  const shapes: MoeShapeSummary[] = [];
  const timer = await LayerTimer.create(props.l2CacheBytes);
  const benchStream = Stream.create();
  const lt = o.anchor ? cublasLtStatus() : undefined;
  if (o.anchor && lt && !lt.available) skipped.push({ what: 'cuBLASLt FP8 anchor', reason: lt.reason });
  const maxT = Math.max(...o.tokens);
  let gemmAlone: GemmAloneRow[] = [];
  let ceilings: DeviceCeilings = deriveCeilings({
    name: props.name, smCount: props.smCount, clockRateKHz: props.clockRateKHz, memoryClockRateKHz: props.memoryClockRateKHz,
    memoryBusWidthBits: props.memoryBusWidthBits, computeCapability: props.computeCapability,
  });
  try {
    const copy = measureCopy(timer, benchStream, COPY_BYTES, 3, Math.max(o.runs, 10));
    ceilings = withCopyBandwidth(ceilings, COPY_BYTES, copy.medianUs, copy.runs);
    log(`bench moe: ${props.name}: HBM peak ${ceilings.hbmPeakTBs.toFixed(2)} TB/s, FP8 peak ${ceilings.fp8DensePeakTflops.toFixed(0)} TFLOPS ` +
      `(device attributes); measured copy ${ceilings.copyTBs?.toFixed(2)} TB/s`);
    for (const preset of o.presets) {
      const p = MOE_BENCH_PRESETS[preset];
      const shape: UnfusedShape = { hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, swigluLimit: p.swigluLimit };
      const summary: MoeShapeSummary = { preset, hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, sharedExperts: 1 };
      try {
        summary.symmetricBufferBytesAt8192 = megaBufferLayout({ hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK }, 8192, 1).totalBytes;
      } catch (err) {
        skipped.push({ what: `mega_moe symmetric buffer of ${preset}`, reason: (err as Error).message });
      }
      shapes.push(summary);
      log(`bench moe: ${preset}: generating ${(p.experts + 1)} experts on the GPU`);
      const weights = await DeviceMoeWeights.random(shape, o.seed);
      let unfused: UnfusedMoe | undefined;
      let mega: MegaMoe | undefined;
      let readFloor: ReadFloor | undefined;
      const reference = o.backends.includes('reference') ? new ReferenceBackend() : undefined;
      try {
        if (wantUnfused) {
          unfused = await UnfusedMoe.create(weights, maxT, { ownsWeights: false });
          unfused.rowTilePolicy = o.rowTile ?? 'auto';
        }
        if (wantMega) {
          try {
            mega = await MegaMoe.create(weights, maxT, { ownsWeights: false });
            mega.rowTilePolicy = o.rowTile ?? 'auto';
            summary.symmetricBufferBytes = mega.layout.totalBytes;
            summary.symmetricBufferMaxTokens = mega.maxTokens;
            log(`bench moe: ${preset}: mega_moe symmetric buffer ${formatBytes(mega.layout.totalBytes)} for ${mega.maxTokens} tokens` +
              `${summary.symmetricBufferBytesAt8192 === undefined ? '' : ` (${formatBytes(summary.symmetricBufferBytesAt8192)} at 8192)`}; ` +
              `normal path: 2-CTA weight multicast ${mega.multicast ? `from ${mega.normalPolicy.multicastMinRows} rows per expert (MEGAMOE_MCAST_MIN_ROWS)` : 'off (clusters not all resident, or MEGAMOE_MCAST=0)'}, ` +
              `below that dynamic units + padding skip ${mega.normalPolicy.dynamicMaxRows === Infinity ? 'at every row count' : `up to ${mega.normalPolicy.dynamicMaxRows} rows per expert (MEGAMOE_DYNAMIC_MAX_ROWS)`}`);
          } catch (err) {
            skipped.push({ what: `mega_moe ${preset}`, reason: (err as Error).message });
            log(`bench moe: ${preset}: mega_moe unavailable: ${(err as Error).message}`);
          }
        }
        readFloor = await ReadFloor.create(weights, props.smCount, props.maxThreadsPerSM);
        const fill = await RandomFill.create();
        const refLayer = reference ? layerFromDeviceWeights(weights) : undefined;
        if (reference && refLayer) reference.prepare(refLayer, { maxTokens: o.referenceMaxTokens });
        const perExpert = expertWeightBytes(p.hidden, p.inter);
        const pipes: Array<{ name: 'mega_moe' | 'unfused'; pipe: LayerPipeline; path: (T: number) => string; after: () => void }> = [];
        if (mega) {
          const m = mega;
          pipes.push({ name: 'mega_moe', pipe: m, path: (T) => m.path(T), after: () => { m.stream.synchronize(); m.checkErrors(); } });
        }
        if (unfused) {
          const u = unfused;
          pipes.push({ name: 'unfused', pipe: u, path: (T) => u.rowTile(T).mode, after: () => {} });
        }
        const broken = new Set<string>();
        for (const T of o.tokens) {
          const routing = randomRouting(o.seed * 1000 + T, T, p.experts, p.topK);
          const flops = moeFlops(T, p.topK, p.hidden, p.inter);
          const bytes = (routing.touched + 1) * perExpert;
          const base = { preset, tokens: T, flops, expertsTouched: routing.touched, weightBytes: bytes };
          // Inputs: x generated once into the first pipeline's io, copied device-to-device into the others'.
          const live = pipes.filter((q) => !broken.has(q.name));
          if (live.length > 0) {
            const first = live[0].pipe;
            fill.bf16Normal(first.io.x.buffer, o.seed * 7 + T, T * p.hidden, first.stream);
            first.stream.synchronize();
            for (const { pipe } of live) {
              if (pipe !== first) pipe.io.x.buffer.copyFromDevice(first.io.x.buffer, { stream: pipe.stream, bytes: T * p.hidden * 2 });
              pipe.io.ids.buffer.copyFromHost(routing.ids, { stream: pipe.stream, bytes: routing.ids.byteLength });
              pipe.io.weights.buffer.copyFromHost(routing.weights, { stream: pipe.stream, bytes: routing.weights.byteLength });
              pipe.stream.synchronize();
            }
          }
          // The read floor of exactly this routing's bytes.
          const rf = readFloor.prepare(routing.ids, benchStream);
          if (rf.exactBytes !== bytes) throw new Error(`read floor: ${rf.exactBytes} bytes of touched experts, the report counts ${bytes}`);
          const floorSeries = timer.series(benchStream, rf.launch, o.warmup, o.runs, 20, budgetMs);
          const floorRow = deriveRates({
            ...base, backend: READ_FLOOR, ...summarise(floorSeries.device),
            note: `${rf.segments} ranges${rf.readBytes !== rf.exactBytes ? `, ${rf.readBytes} bytes read (16-byte aligned)` : ''}`,
          }, ceilings);
          rows.push(floorRow);
          const ys = new Map<string, Float32Array>();
          // A fused-kernel failure (a spin that gave up, a compile error) is reported, and the rest still runs.
          const fail = (q: (typeof live)[number], err: unknown) => {
            if (q.name !== 'mega_moe') throw err;
            broken.add(q.name);
            rows = rows.filter((r) => !(r.preset === preset && r.tokens === T && r.backend.startsWith(q.name)));
            const h = hostOverhead.findIndex((r) => r.preset === preset && r.tokens === T && r.backend === q.name);
            if (h >= 0) hostOverhead.splice(h, 1);
            skipped.push({ what: `mega_moe ${preset} T >= ${T}`, reason: (err as Error).message });
            log(`bench moe: ${preset} T=${T}: mega_moe failed, skipped from here on: ${(err as Error).message}`);
          };
          // Eager launches, one backend after the other; then each backend's CUDA graph.
          const timed: Array<{ q: (typeof live)[number]; path: string; eager: { device: number[]; host: number[] }; eagerHostBound: number[]; graph: CudaGraph }> = [];
          for (const q of live) {
            try {
              const enqueue = () => q.pipe.enqueue(T);
              const path = q.path(T);
              // Host enqueue time decides how long the spin must hold the GPU.
              const probe = timer.series(q.pipe.stream, enqueue, 2, 3, 0, 1000, false);
              q.after();
              const spinUs = Math.min(20_000, 2 * median(probe.host) + 30);
              const eager = timer.series(q.pipe.stream, enqueue, o.warmup, o.runs, spinUs, budgetMs);
              q.after();
              rows.push(deriveRates({ ...base, backend: q.name, path, ...summarise(eager.device) }, ceilings));
              const eagerHostBound = timer.series(q.pipe.stream, enqueue, 1, Math.min(o.runs, 10), 0, budgetMs);
              q.after();
              timed.push({ q, path, eager, eagerHostBound: eagerHostBound.device, graph: q.pipe.captureGraph(T) });
            } catch (err) {
              fail(q, err);
            }
          }
          try {
            // The graphs (the figures the report compares) run interleaved, one timed run of each backend per round:
            // at large T the GPU's clock drifts with its power draw over a series (the power cap), which
            // one-after-the-other series turned into differences of up to 8% between two series of the same layer
            // (docs/MEGA_MOE.md).
            const viaGraph = timer.interleaved(timed.map((e) => ({ stream: e.q.pipe.stream, work: () => e.graph.launch(e.q.pipe.stream) })),
              o.warmup, o.runs, 50, budgetMs);
            for (const [i, e] of timed.entries()) {
              const { q, path, graph } = e;
              try {
                q.after();
                const graphUs = median(viaGraph[i].device);
                rows.push(deriveRates({ ...base, backend: `${q.name}+graph`, path, ...summarise(viaGraph[i].device) }, ceilings));
                const launch = () => graph.launch(q.pipe.stream);
                const graphHostBound = timer.series(q.pipe.stream, launch, 1, Math.min(o.runs, 10), 0, budgetMs);
                q.after();
                hostOverhead.push({
                  preset, backend: q.name, tokens: T, eagerHostUs: median(e.eager.host), graphHostUs: median(viaGraph[i].host),
                  eagerGpuUs: median(e.eagerHostBound), graphGpuUs: median(graphHostBound.device),
                });
                ys.set(q.name, decodeBF16Array(q.pipe.downloadOutputs(T).y.data));
                log(`bench moe: ${preset} T=${T} [${path}]: ${q.name} ${median(e.eager.device).toFixed(1)} us, +graph ${graphUs.toFixed(1)} us ` +
                  `(read floor ${floorRow.medianUs.toFixed(1)} us: ${(graphUs / floorRow.medianUs).toFixed(2)}x)`);
              } catch (err) {
                fail(q, err);
              }
            }
          } finally {
            for (const e of timed) e.graph.dispose();
          }
          const yMega = ys.get('mega_moe');
          const yUnfused = ys.get('unfused');
          const setOn = (prefix: string, field: 'calcDiffVsReference' | 'calcDiffVsUnfused', value: number) => {
            for (const row of rows) {
              if (row.preset === preset && row.tokens === T && (row.backend === prefix || row.backend === `${prefix}+graph`)) row[field] = value;
            }
          };
          if (yMega && yUnfused) {
            const d = calcDiff(yMega, yUnfused);
            setOn('mega_moe', 'calcDiffVsUnfused', d);
            log(`bench moe: ${preset} T=${T}: calc_diff(mega_moe, unfused) = ${d.toExponential(2)}`);
          }
          if (reference && T <= o.referenceMaxTokens && live.length > 0) {
            const src = live[0].pipe;
            const x = src.io.x.toHost(src.stream);
            const xs = new HostTensor('BF16', [T, p.hidden], x.data.slice(0, T * p.hidden));
            const ids = new HostTensor('I64', [T, p.topK], routing.ids);
            const w = new HostTensor('F32', [T, p.topK], routing.weights);
            // Download the touched experts first, so the timing is the reference's arithmetic only.
            for (const id of new Set(Array.from(routing.ids, Number))) refLayer!.experts.get(id);
            const t0 = performance.now();
            const r = await reference.forward(xs, ids, w);
            const us = (performance.now() - t0) * 1e3;
            const yRef = decodeBF16Array(r.y.data);
            rows.push(deriveRates({ ...base, backend: 'reference', medianUs: us, minUs: us, maxUs: us, runs: 1, note: 'CPU, one run' }, ceilings));
            const parts: string[] = [];
            for (const [name, y] of ys) {
              const d = calcDiff(y, yRef);
              setOn(name, 'calcDiffVsReference', d);
              parts.push(`calc_diff(${name}, reference) = ${d.toExponential(2)}`);
            }
            log(`bench moe: ${preset} T=${T}: reference ${(us / 1e3).toFixed(0)} ms${parts.length ? `, ${parts.join(', ')}` : ''}`);
          } else if (reference && T > o.referenceMaxTokens && !skipped.some((s) => s.what === `reference ${preset} T > ${o.referenceMaxTokens}`)) {
            skipped.push({ what: `reference ${preset} T > ${o.referenceMaxTokens}`, reason: 'the CPU reference takes seconds per token at this size; capped by --reference-max-tokens' });
          }
          if (lt?.available) {
            // Dense FP8 GEMMs with the layer's FLOPs: M = T*K rows through one [2I, H] and one [H, I] weight.
            const M = Math.ceil((T * p.topK) / 16) * 16;
            const g1 = new CublasLtFp8Gemm(M, 2 * p.inter, p.hidden);
            const g2 = new CublasLtFp8Gemm(M, p.hidden, p.inter);
            try {
              const scratchA = DeviceBuffer.alloc(M * Math.max(p.hidden, p.inter));
              const scratchD = DeviceBuffer.alloc(M * Math.max(2 * p.inter, p.hidden) * 2);
              try {
                scratchA.memset8(0x38, { stream: benchStream }); // e4m3 1.0
                const run = () => {
                  g1.run(scratchA, weights.w13, scratchD, benchStream);
                  g2.run(scratchA, weights.w2, scratchD, benchStream);
                };
                const s = timer.series(benchStream, run, o.warmup, o.runs, 100, budgetMs);
                rows.push(deriveRates({
                  ...base, backend: CUBLASLT_ANCHOR, weightBytes: perExpert, expertsTouched: 1, ...summarise(s.device),
                  note: `dense, M=${M}, one weight`,
                }, ceilings));
              } finally {
                benchStream.synchronize();
                scratchA.dispose(); scratchD.dispose();
              }
            } finally {
              g1.dispose(); g2.dispose();
            }
          }
        }
      } finally {
        reference?.dispose();
        mega?.dispose();
        unfused?.dispose();
        readFloor?.dispose();
        weights.dispose();
      }
    }
    if (o.gemmAlone) {
      gemmAlone = await benchGemmAlone(timer, benchStream, o.warmup, o.runs, ceilings);
      for (const g of gemmAlone) log(`bench moe: grouped GEMM ${g.label}: ${g.tflops.toFixed(0)} TFLOPS`);
    }
  } finally {
    benchStream.synchronize();
    benchStream.dispose();
    timer.dispose();
  }
  // The floor's compute term: the best FP8 rate a cuBLASLt anchor reached in this run (else the derived peak).
  const anchorTflops = bestAnchorTflops(rows);
  ceilings = anchorTflops === undefined ? ceilings : {
    ...ceilings, measuredFp8Tflops: anchorTflops,
    sources: [...ceilings.sources, `measured FP8 = ${anchorTflops.toFixed(0)} TFLOPS, the best cuBLASLt anchor of this run (the floor's compute term)`],
  };
  rows = applyFloors(rows, anchorTflops ?? ceilings.fp8DensePeakTflops);
  if (anchorTflops === undefined) {
    notes.push('No cuBLASLt anchor ran: the floor\'s compute term uses the FP8 peak derived from the device attributes.');
  }
  if (o.anchor && lt?.available) {
    notes.push('cublaslt-fp8 (anchor): cuBLASLt dense FP8 (per-tensor scaling, f32 accumulation, bf16 out) on M = T*K rows ' +
      'through one [2I, H] and one [H, I] weight: the layer\'s FLOPs without routing or block scales; its bytes column is one expert.');
  }
  const report: MoeBenchReport = {
    meta: {
      gpu: props.name, smCount: props.smCount, driver: formatCudaVersion(driverVersion()), commit: resolveCommit(o.commit),
      command: o.command ?? 'megamoe bench moe', date: new Date().toISOString().slice(0, 10), warmup: o.warmup, runs: o.runs,
      ceilings, shapes, notes,
    },
    rows,
    hostOverhead,
    gemmAlone,
    skipped,
  };
  const paths = await writeMoeReport(report, o.out);
  log(`bench moe: wrote ${paths.json}, ${paths.markdown}, ${paths.svg}`);
  return report;
}

/** `megamoe bench moe` (added to src/cli/commands/bench.ts's list). */
export function registerMoeBench(bench: Command): void {
  bench
    .command('moe')
    .description('one MoE layer per T: fused mega_moe and unfused backends (eager and CUDA graph, same weights and inputs), ' +
      'the read floor of the touched experts, CPU reference at small T, cuBLASLt FP8 anchor; ceilings of the GPU it runs on; JSON + Markdown + SVG')
    .option('--preset <list>', `comma list of ${Object.keys(MOE_BENCH_PRESETS).join(', ')}`, MOE_BENCH_DEFAULT_PRESETS)
    .option('--tokens <list>', 'token counts, e.g. 1,8,64,512 or 1..16384 (powers of two)', MOE_BENCH_DEFAULT_TOKENS)
    .option('--backend <list>', `comma list of ${MOE_BENCH_BACKENDS.join(', ')}`, MOE_BENCH_DEFAULT_BACKENDS)
    .option('--out <dir>', 'output directory', 'bench-out')
    .option('--warmup <n>', 'untimed runs per configuration', intArg('--warmup', 0), 3)
    .option('--runs <n>', 'timed runs per configuration (fewer at large T: see --series-budget-ms)', intArg('--runs', 1), 20)
    .option('--series-budget-ms <n>', 'device time after which a timed series stops early (at least 3 runs)', intArg('--series-budget-ms', 1), 1500)
    .option('--seed <n>', 'seed of the weights, hidden states and routing', intArg('--seed', 0, 0xffffffff), 1)
    .option('--reference-max-tokens <n>', 'run the CPU reference only up to this T (it is slow)', intArg('--reference-max-tokens', 0), 8)
    .option('--no-anchor', 'skip the cuBLASLt FP8 anchor (the floor\'s compute term then uses the derived FP8 peak)')
    .option('--no-gemm-alone', 'skip timing the grouped GEMM alone at the bar shapes (4 x 8192, 8 x 512, 32 x 128 rows; N = K = 4096)')
    .option('--row-tile <path>', `kernel path of both layers: ${ROW_TILE_POLICIES.join(', ')} (auto: by rows per expert)`, 'auto')
    .option('--commit <sha>', 'commit to record (default: $MEGAMOE_COMMIT, else git rev-parse --short HEAD)')
    .option('--ep <N>', `expert-parallel ranks (one process per rank, src/dist/): N > 1 times mega_moe across ranks and / or the unfused ` +
      `EP baseline (--backend, default ${EP_BENCH_DEFAULT_BACKENDS}), max over ranks; tokens are per rank (default ${EP_BENCH_DEFAULT_TOKENS})`,
      intArg('--ep', 1, MAX_WORLD_SIZE), 1)
    .option('--transport <name>', 'with --ep N > 1, the unfused baseline\'s: ipc (CUDA IPC peer copies, one host, ranks may share a GPU) | ' +
      'nccl (one GPU per rank); default ipc (mega_moe moves its rows over CUDA IPC symmetric memory)', oneOf('--transport', TRANSPORT_NAMES))
    .action(async (opts: {
      preset: string; tokens: string; backend: string; out: string; warmup: number; runs: number; seriesBudgetMs: number; seed: number;
      referenceMaxTokens: number; anchor: boolean; gemmAlone: boolean; rowTile: string; commit?: string; ep: number; transport?: TransportName;
    }, cmd: Command) => {
      const rowTile = ROW_TILE_POLICIES.find((p) => p === opts.rowTile);
      if (!rowTile) throw new Error(`--row-tile ${opts.rowTile}: expected one of ${ROW_TILE_POLICIES.join(', ')}`);
      if (opts.ep > 1) {
        // The EP run has its own defaults (tokens per rank, mega_moe and unfused); options of the EP1 run that do not
        // apply are refused when given, so nobody reads a figure as covering what it did not run.
        const given = (name: string) => cmd.getOptionValueSource(name) === 'cli';
        const notHere = ['referenceMaxTokens', 'anchor', 'gemmAlone'].filter(given);
        if (notHere.length > 0) {
          const flag: Record<string, string> = { referenceMaxTokens: '--reference-max-tokens', anchor: '--no-anchor', gemmAlone: '--no-gemm-alone' };
          throw new Error(`${notHere.map((n) => flag[n]).join(', ')} do${notHere.length === 1 ? 'es' : ''} not apply to --ep ${opts.ep} ` +
            '(the EP benchmark times mega_moe and the unfused EP layer only); drop it');
        }
        const backends = parseList('backend', given('backend') ? opts.backend : EP_BENCH_DEFAULT_BACKENDS, [...MOE_BENCH_BACKENDS]);
        if (opts.transport !== undefined && !backends.includes('unfused')) {
          throw new Error(`--transport ${opts.transport} picks the unfused baseline's transport, and --backend ${backends.join(',')} does not ` +
            'run it (mega_moe moves its rows over CUDA IPC symmetric memory); drop --transport or add unfused to --backend');
        }
        const { runMoeEpBench } = await import('./moe-ep.js');
        process.exitCode = await runMoeEpBench({
          ep: opts.ep,
          presets: parseList('preset', opts.preset, Object.keys(MOE_BENCH_PRESETS)),
          tokens: parseTokenList(given('tokens') ? opts.tokens : EP_BENCH_DEFAULT_TOKENS),
          backends,
          transport: opts.transport ?? 'ipc',
          out: opts.out,
          warmup: opts.warmup,
          runs: opts.runs,
          seriesBudgetMs: opts.seriesBudgetMs,
          seed: opts.seed,
          rowTile,
          commit: opts.commit,
          command: `megamoe ${process.argv.slice(2).join(' ')}`,
        });
        return;
      }
      if (opts.transport !== undefined) throw new Error(`--transport ${opts.transport} picks how EP ranks talk: it needs --ep N with N > 1`);
      const tokens = parseTokenList(opts.tokens);
      const report = await runMoeBench({
        presets: parseList('preset', opts.preset, Object.keys(MOE_BENCH_PRESETS)),
        tokens,
        backends: parseList('backend', opts.backend, [...MOE_BENCH_BACKENDS]),
        out: opts.out,
        warmup: opts.warmup,
        runs: opts.runs,
        seriesBudgetMs: opts.seriesBudgetMs,
        seed: opts.seed,
        referenceMaxTokens: opts.referenceMaxTokens,
        anchor: opts.anchor,
        gemmAlone: opts.gemmAlone,
        rowTile,
        commit: opts.commit,
        command: `megamoe ${process.argv.slice(2).join(' ')}`,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      process.stdout.write(`${report.rows.length} rows written to ${opts.out}\n`);
    });
}
