// `megamoe bench moe`: one MoE layer (flash / pro shapes) per token count T, for the unfused backend (eager launches
// and one CUDA graph), the CPU reference at small T, and cuBLASLt's dense FP8 GEMM at the same FLOPs as an anchor.
// Writes moe.json, moe.md and moe.svg into --out (src/bench/report.ts).
//
// What is timed (WHY this way):
//  * Weights are generated on the GPU (seeded random e4m3 codes and scales: random_fill.cu), the whole layer
//    resident, as vLLM holds it; the routing is uniform random top-K (distinct experts per token), seeded.
//  * Before each timed run a 256 MiB memset evicts the L2 (50 MB) so weights stream from HBM as they would after the
//    previous layer, then a spin kernel holds the GPU while the host queues [start, layer, end]: the events bracket
//    the layer's device time, not the host's launch latency. The host cost per layer (eager launches vs one graph
//    launch) is reported separately, as is the device time without the spin (what a host-bound decode loop sees).
//  * Median of --runs after --warmup (fewer runs at large T, so one T stays within ~1.5 s).
//  * FLOPs count the routed experts only (SPEC 6: 2 T K 3 H I); bytes count the distinct routed experts the routing
//    touched plus the shared expert, codes + f32 scales (each byte once: the roofline for weight streaming).
import type { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import {
  arg, cudaStatus, CudaEvent, DeviceBuffer, driverVersion, ensureContext, formatCudaVersion, Stream, type CudaGraph, type Kernel,
} from '../cuda/index.js';
import { CublasLtFp8Gemm, cublasLtStatus } from '../cuda/cublaslt.js';
import { DeviceMoeWeights, layerFromDeviceWeights, UnfusedMoe, type UnfusedShape } from '../backends/unfused.js';
import { ROW_TILE_POLICIES, type RowTilePolicy } from '../backends/unfused-gemm.js';
import { ReferenceBackend } from '../backends/reference.js';
import { calcDiff } from '../numerics/calc-diff.js';
import { decodeBF16Array } from '../numerics/bf16.js';
import { GroupedGemm } from '../kernels/grouped-gemm.js';
import { MOE_PRESET_SHAPES } from '../kernels/presets.js';
import { RandomFill } from '../kernels/random-fill.js';
import { HostTensor } from '../tensor/host.js';
import { intArg } from '../cli/args.js';
import { Rng } from '../util/rng.js';
import {
  deriveRates, expertWeightBytes, H100_ROOFLINE, median, moeFlops, writeMoeReport, type GemmAloneRow, type HostOverheadRow, type MoeBenchReport,
  type MoeBenchRow, type MoeShapeSummary,
} from './report.js';
import { loadSpinKernel } from './bench-kernels.js';
import { parseList, parseTokenList, resolveCommit } from './staging-routing.js';

/** The preset MoE shapes (src/kernels/presets.ts) the benchmark knows, with V4's swiglu_limit 10 (SPEC 1). */
export const MOE_BENCH_PRESETS: Readonly<Record<string, { hidden: number; inter: number; experts: number; topK: number; swigluLimit: number }>> =
  Object.fromEntries(MOE_PRESET_SHAPES.map(({ label, hidden, inter, experts, topK }) => [label, { hidden, inter, experts, topK, swigluLimit: 10 }]));

export interface MoeBenchOptions {
  presets: string[];
  tokens: number[];
  backends: string[];
  out: string;
  warmup: number;
  runs: number;
  seed: number;
  /** the CPU reference runs only for T <= this (it takes seconds per token at flash size) */
  referenceMaxTokens: number;
  anchor: boolean;
  /** also time the grouped GEMM alone at the bar shapes */
  gemmAlone: boolean;
  /** GEMM path of the unfused layer: 'auto' (the backend's heuristic) or one pinned path, to tune that heuristic */
  rowTile?: RowTilePolicy;
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

/** Device-time sampler: L2 flush + spin-hidden launch latency (see the header). */
class LayerTimer {
  private constructor(private readonly spin: Kernel, private readonly flush: DeviceBuffer,
    private readonly start: CudaEvent, private readonly end: CudaEvent) {}

  static async create(): Promise<LayerTimer> {
    const spin = await loadSpinKernel();
    return new LayerTimer(spin, DeviceBuffer.alloc(256 << 20), CudaEvent.create(), CudaEvent.create());
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

  dispose(): void {
    this.flush.dispose(); this.start.dispose(); this.end.dispose();
  }
}

function summarise(samples: number[]): { medianUs: number; minUs: number; maxUs: number; runs: number } {
  return { medianUs: median(samples), minUs: Math.min(...samples), maxUs: Math.max(...samples), runs: samples.length };
}

/** The bar shapes for the grouped GEMM alone: groups x rows, N = K = 4096 (DeepGEMM anchors in SPEC 6). */
export const GEMM_BAR_SHAPES: ReadonlyArray<{ groups: number; rows: number }> = [
  { groups: 4, rows: 8192 }, { groups: 8, rows: 512 }, { groups: 32, rows: 128 },
];

/** Times the bf16-out grouped GEMM (128-row path) on random codes and scales at GEMM_BAR_SHAPES. */
async function benchGemmAlone(timer: LayerTimer, stream: Stream, warmup: number, runs: number): Promise<GemmAloneRow[]> {
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
        runs: s.device.length, tflops, computeFraction: tflops / H100_ROOFLINE.fp8DenseTflops });
    } finally {
      stream.synchronize();
      for (const b of bufs) b.dispose();
    }
  }
  return out;
}

/** Runs the benchmark and writes the report; returns it. */
export async function runMoeBench(o: MoeBenchOptions): Promise<MoeBenchReport> {
  const log = o.log ?? (() => {});
  const st = cudaStatus();
  if (!st.available) throw new Error(`bench moe needs a Hopper GPU: ${st.reason}`);
  const ctx = ensureContext();
  const props = ctx.properties();
  const rows: MoeBenchRow[] = [];
  const hostOverhead: HostOverheadRow[] = [];
  const skipped: MoeBenchReport['skipped'] = [];
  const notes: string[] = [
    'FLOPs count the routed experts only (SPEC 6: 2 T K 3 H I); the shared expert runs too but is not counted. ' +
    'Bytes = distinct routed experts touched + the shared expert (FP8 codes + f32 block scales).',
    `"% roofline" = max(FLOPs / ${H100_ROOFLINE.fp8DenseTflops} TFLOPS, bytes / ${H100_ROOFLINE.hbmTBs} TB/s) / time.`,
    'unfused: device time of the eager launches (launch latency hidden behind a spin kernel, L2 flushed before each run); ' +
    'unfused+graph: the same layer replayed as one CUDA graph.',
  ];
  const shapes: MoeShapeSummary[] = [];
  const timer = await LayerTimer.create();
  const lt = o.anchor ? cublasLtStatus() : undefined;
  if (o.anchor && lt && !lt.available) skipped.push({ what: 'cuBLASLt FP8 anchor', reason: lt.reason });
  const maxT = Math.max(...o.tokens);
  let gemmAlone: GemmAloneRow[] = [];
  try {
    for (const preset of o.presets) {
      const p = MOE_BENCH_PRESETS[preset];
      const shape: UnfusedShape = { hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, swigluLimit: p.swigluLimit };
      shapes.push({ preset, hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, sharedExperts: 1 });
      log(`bench moe: ${preset}: generating ${(p.experts + 1)} experts on the GPU`);
      const weights = await DeviceMoeWeights.random(shape, o.seed);
      const moe = await UnfusedMoe.create(weights, maxT, { ownsWeights: true });
      moe.rowTilePolicy = o.rowTile ?? 'auto';
      const fill = await RandomFill.create();
      const reference = o.backends.includes('reference') ? new ReferenceBackend() : undefined;
      const refLayer = reference ? layerFromDeviceWeights(weights) : undefined;
      if (reference && refLayer) reference.prepare(refLayer, { maxTokens: o.referenceMaxTokens });
      const perExpert = expertWeightBytes(p.hidden, p.inter);
      try {
        for (const T of o.tokens) {
          const routing = randomRouting(o.seed * 1000 + T, T, p.experts, p.topK);
          fill.bf16Normal(moe.io.x.buffer, o.seed * 7 + T, T * p.hidden, moe.stream);
          moe.io.ids.buffer.copyFromHost(routing.ids, { stream: moe.stream, bytes: routing.ids.byteLength });
          moe.io.weights.buffer.copyFromHost(routing.weights, { stream: moe.stream, bytes: routing.weights.byteLength });
          moe.stream.synchronize();
          const flops = moeFlops(T, p.topK, p.hidden, p.inter);
          const bytes = (routing.touched + 1) * perExpert;
          const base = { preset, tokens: T, flops, expertsTouched: routing.touched, weightBytes: bytes };
          let yUnfused: Float32Array | undefined;
          if (o.backends.includes('unfused')) {
            const enqueue = () => moe.enqueue(T);
            // Host enqueue time decides how long the spin must hold the GPU.
            const probe = timer.series(moe.stream, enqueue, 2, 3, 0, 1000, false);
            const spinUs = Math.min(20_000, 2 * median(probe.host) + 30);
            const eager = timer.series(moe.stream, enqueue, o.warmup, o.runs, spinUs);
            rows.push(deriveRates({ ...base, backend: 'unfused', ...summarise(eager.device) }));
            const eagerHostBound = timer.series(moe.stream, enqueue, 1, Math.min(o.runs, 10), 0);
            let graph: CudaGraph | undefined;
            try {
              graph = moe.captureGraph(T);
              const g = graph;
              const launch = () => g.launch(moe.stream);
              const viaGraph = timer.series(moe.stream, launch, o.warmup, o.runs, 50);
              rows.push(deriveRates({ ...base, backend: 'unfused+graph', ...summarise(viaGraph.device) }));
              const graphHostBound = timer.series(moe.stream, launch, 1, Math.min(o.runs, 10), 0);
              hostOverhead.push({
                preset, tokens: T, eagerHostUs: median(eager.host), graphHostUs: median(viaGraph.host),
                eagerGpuUs: median(eagerHostBound.device), graphGpuUs: median(graphHostBound.device),
              });
            } finally {
              graph?.dispose();
            }
            const out = moe.downloadOutputs(T);
            yUnfused = decodeBF16Array(out.y.data);
            log(`bench moe: ${preset} T=${T}: unfused ${median(eager.device).toFixed(1)} us`);
          }
          if (reference && T <= o.referenceMaxTokens) {
            const x = moe.io.x.toHost(moe.stream);
            const xs = new HostTensor('BF16', [T, p.hidden], x.data.slice(0, T * p.hidden));
            const ids = new HostTensor('I64', [T, p.topK], routing.ids);
            const w = new HostTensor('F32', [T, p.topK], routing.weights);
            // Download the touched experts first, so the timing is the reference's arithmetic only.
            for (const id of new Set(Array.from(routing.ids, Number))) refLayer!.experts.get(id);
            const t0 = performance.now();
            const r = await reference.forward(xs, ids, w);
            const us = (performance.now() - t0) * 1e3;
            const yRef = decodeBF16Array(r.y.data);
            rows.push(deriveRates({ ...base, backend: 'reference', medianUs: us, minUs: us, maxUs: us, runs: 1, note: 'CPU, one run' }));
            if (yUnfused) {
              const diff = calcDiff(yUnfused, yRef);
              for (const row of rows) {
                if (row.preset === preset && row.tokens === T && row.backend.startsWith('unfused')) row.calcDiffVsReference = diff;
              }
              log(`bench moe: ${preset} T=${T}: reference ${(us / 1e3).toFixed(0)} ms, calc_diff(unfused, reference) = ${diff.toExponential(2)}`);
            }
          } else if (reference && !skipped.some((s) => s.what === `reference ${preset} T > ${o.referenceMaxTokens}`)) {
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
                scratchA.memset8(0x38, { stream: moe.stream }); // e4m3 1.0
                const run = () => {
                  g1.run(scratchA, weights.w13, scratchD, moe.stream);
                  g2.run(scratchA, weights.w2, scratchD, moe.stream);
                };
                const s = timer.series(moe.stream, run, o.warmup, o.runs, 100);
                rows.push(deriveRates({
                  ...base, backend: 'cublaslt-fp8 (anchor)', weightBytes: perExpert, expertsTouched: 1, ...summarise(s.device),
                  note: `dense, M=${M}, one weight`,
                }));
              } finally {
                scratchA.dispose(); scratchD.dispose();
              }
            } finally {
              g1.dispose(); g2.dispose();
            }
          }
        }
      } finally {
        reference?.dispose();
        moe.dispose();
      }
    }
    if (o.gemmAlone) {
      const stream = Stream.create();
      try {
        gemmAlone = await benchGemmAlone(timer, stream, o.warmup, o.runs);
        for (const g of gemmAlone) log(`bench moe: grouped GEMM ${g.label}: ${g.tflops.toFixed(0)} TFLOPS`);
      } finally {
        stream.dispose();
      }
    }
  } finally {
    timer.dispose();
  }
  if (o.anchor && lt?.available) {
    notes.push('cublaslt-fp8 (anchor): cuBLASLt dense FP8 (per-tensor scaling, f32 accumulation, bf16 out) on M = T*K rows ' +
      'through one [2I, H] and one [H, I] weight: the layer\'s FLOPs without routing or block scales; its bytes column is one expert.');
  }
  const report: MoeBenchReport = {
    meta: {
      gpu: props.name, smCount: props.smCount, driver: formatCudaVersion(driverVersion()), commit: resolveCommit(o.commit),
      command: o.command ?? 'megamoe bench moe', date: new Date().toISOString().slice(0, 10), warmup: o.warmup, runs: o.runs,
      roofline: H100_ROOFLINE, shapes, notes,
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
    .description('one MoE layer per T: unfused backend (eager and CUDA graph), CPU reference at small T, cuBLASLt FP8 anchor; JSON + Markdown + SVG')
    .option('--preset <list>', `comma list of ${Object.keys(MOE_BENCH_PRESETS).join(', ')}`, 'flash')
    .option('--tokens <list>', 'token counts, e.g. 1,8,64,512,4096,16384 or 1..16384', '1,8,64,512,4096,16384')
    .option('--backend <list>', 'comma list of unfused, reference', 'unfused,reference')
    .option('--out <dir>', 'output directory', 'bench-out')
    .option('--warmup <n>', 'untimed runs per configuration', intArg('--warmup', 0), 3)
    .option('--runs <n>', 'timed runs per configuration (fewer at large T: ~1.5 s each)', intArg('--runs', 1), 20)
    .option('--seed <n>', 'seed of the weights, hidden states and routing', intArg('--seed', 0, 0xffffffff), 1)
    .option('--reference-max-tokens <n>', 'run the CPU reference only up to this T (it is slow)', intArg('--reference-max-tokens', 0), 8)
    .option('--no-anchor', 'skip the cuBLASLt FP8 anchor')
    .option('--no-gemm-alone', 'skip timing the grouped GEMM alone at the bar shapes (4 x 8192, 8 x 512, 32 x 128 rows; N = K = 4096)')
    .option('--row-tile <path>', `GEMM path of the unfused layer: ${ROW_TILE_POLICIES.join(', ')} (auto: by rows per expert)`, 'auto')
    .option('--commit <sha>', 'commit to record (default: $MEGAMOE_COMMIT, else git rev-parse --short HEAD)')
    .action(async (opts: {
      preset: string; tokens: string; backend: string; out: string; warmup: number; runs: number; seed: number;
      referenceMaxTokens: number; anchor: boolean; gemmAlone: boolean; rowTile: string; commit?: string;
    }) => {
      const rowTile = ROW_TILE_POLICIES.find((p) => p === opts.rowTile);
      if (!rowTile) throw new Error(`--row-tile ${opts.rowTile}: expected one of ${ROW_TILE_POLICIES.join(', ')}`);
      const report = await runMoeBench({
        presets: parseList('preset', opts.preset, Object.keys(MOE_BENCH_PRESETS)),
        tokens: parseTokenList(opts.tokens),
        backends: parseList('backend', opts.backend, ['unfused', 'reference']),
        out: opts.out,
        warmup: opts.warmup,
        runs: opts.runs,
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
