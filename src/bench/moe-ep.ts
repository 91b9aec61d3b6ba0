// `megamoe bench moe --ep N` (N > 1): the per-layer time of the fused mega_moe kernel across ranks
// (src/backends/mega-moe-ep-rank.ts) and of the unfused expert-parallel baseline (src/backends/unfused-ep.ts), either
// or both (--backend), for each preset and tokens per rank T. Starts N rank processes through the supervisor
// (src/dist/supervisor.ts; one run per preset, one rank per GPU, all on device 0 when the machine has fewer GPUs
// than N: then "timings in this mode mean nothing"); each rank times its own forward of each backend
// (moe-ep-rank.ts) and this process takes the max over ranks, adds the roofline of the slowest rank's touched local
// experts and writes moe-ep<N>.json, .md and .svg into --out (ep-report.ts), every row labelled with its backend.
//
// Exit codes (as `megamoe verify`): 0 written; 1 a bad argument or a failed run (the supervisor's one message names the
// rank and the phase); 2 a request this build cannot serve (--transport nccl with several ranks on one GPU).
import { MOE_PRESET_SHAPES } from '../kernels/presets.js';
import { MAX_WORLD_SIZE } from '../dist/rank.js';
import { transportRefusal } from '../dist/transports.js';
import type { TransportName } from '../dist/transport.js';
import type { RowTilePolicy } from '../backends/unfused-gemm.js';
import type { DeviceProperties } from '../cuda/device.js';
import {
  aggregateRanks, describeMegaBuffer, epMaxTokensPerRank, epRowTransport, EP_BENCH_BACKENDS, rankStep, rankWeightBytes, SHARED_GPU_WARNING,
  writeEpReport, type EpBenchBackend, type EpBenchReport, type EpRankStep, type EpShapeSummary,
} from './ep-report.js';
import { deriveCeilings } from './report.js';
import { resolveCommit } from './staging-routing.js';
import type { EpBenchRankArgs, EpBenchRankResult } from './moe-ep-rank.js';

/** Exit code of a request this build cannot serve (not a failure of the run). */
export const EXIT_UNSUPPORTED = 2;

export interface EpBenchOptions {
  ep: number;
  presets: string[];
  tokens: number[];
  /** any of EP_BENCH_BACKENDS, in the order each round times them */
  backends: string[];
  /** the unfused baseline's */
  transport: TransportName;
  out: string;
  warmup: number;
  runs: number;
  seriesBudgetMs: number;
  seed: number;
  rowTile: RowTilePolicy;
  /** deadline of each preset's rank run, seconds */
  timeoutS?: number;
  commit?: string;
  command?: string;
  log?: (line: string) => void;
}

/** The checks that need no GPU: [exit code, message] of the first problem, or null. */
export function epBenchRefusal(o: Pick<EpBenchOptions, 'ep' | 'presets' | 'backends'>): [number, string] | null {
  if (!(Number.isInteger(o.ep) && o.ep >= 2 && o.ep <= MAX_WORLD_SIZE)) return [1, `the EP benchmark needs --ep in [2, ${MAX_WORLD_SIZE}], got ${o.ep} (--ep 1 is the single-GPU bench moe)`];
  const other = o.backends.filter((b) => !isEpBenchBackend(b));
  if (other.length > 0) {
    return [1, `--backend ${other.join(',')} with --ep ${o.ep}: the EP benchmark times ${EP_BENCH_BACKENDS.join(', ')} only ` +
      `(the CPU reference checks EP outputs in \`megamoe verify --ep N\`); pass --backend ${EP_BENCH_BACKENDS.join(',')} or one of them`];
  }
  if (o.backends.length === 0) return [1, `--backend: name ${EP_BENCH_BACKENDS.join(', ')} or both`];
  for (const name of o.presets) {
    const p = MOE_PRESET_SHAPES.find((s) => s.label === name);
    if (!p) return [1, `--preset ${name}: expected one of ${MOE_PRESET_SHAPES.map((s) => s.label).join(', ')}`];
    if (p.experts % o.ep !== 0) {
      const ok = [2, 4, 8, 16, 32].filter((n) => p.experts % n === 0).join(', ');
      return [1, `--ep ${o.ep} does not divide the ${p.experts} experts of preset ${name}; use one of ${ok}`];
    }
  }
  return null;
}

function isEpBenchBackend(b: string): b is EpBenchBackend {
  return (EP_BENCH_BACKENDS as readonly string[]).includes(b);
}

/** The T of `tokens` the unfused EP layer takes at N ranks and top-K, and a skip entry for the others (mega_moe runs every T). */
export function splitTokens(tokens: readonly number[], ep: number, preset: string, topK: number): {
  run: number[]; skipped: Array<{ what: string; reason: string }>;
} {
  const limit = epMaxTokensPerRank(ep, topK);
  const run = tokens.filter((t) => t <= limit);
  const over = tokens.filter((t) => t > limit);
  return {
    run,
    skipped: over.length === 0 ? [] : [{
      what: `unfused ${preset} T = ${over.join(',')} per rank at --ep ${ep}`,
      reason: `a rank may receive ${ep} ranks x T x top-${topK} rows and the unfused EP combine takes at most 65535 (one grid row ` +
        `per received row, src/kernels/moe-combine.ts); at most ${limit} tokens per rank here`,
    }],
  };
}

/** Runs the EP benchmark; returns the exit code (the report is written on 0). */
export async function runMoeEpBench(o: EpBenchOptions): Promise<number> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const fail = (code: number, message: string) => {
    process.stderr.write(`megamoe bench moe: ${message}\n`);
    return code;
  };
  const refusal = epBenchRefusal(o);
  if (refusal) return fail(...refusal);
  // MEGAMOE_BENCH_EP_FAKE=1 (tests only, no GPU): fake ranks that sleep instead of running the layer, on a made-up
  // one-GPU machine with H200 attributes: a test of the rank layer, the series agreement and the report only.
  const fake = process.env.MEGAMOE_BENCH_EP_FAKE === '1';
  let gpus: DeviceProperties[];
  let driver: string;
  if (fake) {
    gpus = [{ name: 'fake GPU (MEGAMOE_BENCH_EP_FAKE=1)', smCount: 132, clockRateKHz: 1_980_000, memoryClockRateKHz: 2_619_000,
      memoryBusWidthBits: 6144, computeCapability: { major: 9, minor: 0 } } as DeviceProperties];
    driver = 'fake';
  } else {
    const { cudaStatus, formatCudaVersion, driverVersion } = await import('../cuda/index.js');
    const st = cudaStatus();
    if (!st.available) return fail(1, `bench moe --ep ${o.ep} needs a Hopper GPU: ${st.reason}`);
    gpus = st.devices;
    driver = formatCudaVersion(driverVersion());
  }
  const N = o.ep;
  const G = gpus.length;
  const devices = G >= N ? Array.from({ length: N }, (_, i) => i) : new Array<number>(N).fill(0);
  const sharedGpu = new Set(devices).size < N;
  const backends = [...new Set(o.backends.filter(isEpBenchBackend))];
  const wantUnfused = backends.includes('unfused');
  const refuseNccl = wantUnfused ? transportRefusal(o.transport, devices) : null;
  if (refuseNccl) return fail(EXIT_UNSUPPORTED, refuseNccl);
  const warning = sharedGpu
    ? `all ${N} ranks on device 0 (this machine has ${G} GPU${G === 1 ? '' : 's'}): they share its SMs and HBM, ${SHARED_GPU_WARNING}`
    : undefined;
  if (warning) log(`bench moe --ep ${N}: note: ${warning}`);
  const props = gpus[devices[0]];
  const ceilings = deriveCeilings({
    name: props.name, smCount: props.smCount, clockRateKHz: props.clockRateKHz, memoryClockRateKHz: props.memoryClockRateKHz,
    memoryBusWidthBits: props.memoryBusWidthBits, computeCapability: props.computeCapability,
  });
  const { runRanks, RankFailureError } = await import('../dist/supervisor.js');
  const { randomRouting } = await import('./moe.js');
  const { epBenchInputSeed } = await import('./moe-ep-rank.js');
  const skipped: EpBenchReport['skipped'] = [];
  const shapes: EpShapeSummary[] = [];
  const steps: EpRankStep[] = [];
  const rankGpus: string[] = devices.map((d) => gpus[d]?.name ?? '?');
  for (const preset of o.presets) {
    const p = MOE_PRESET_SHAPES.find((s) => s.label === preset)!;
    const summary: EpShapeSummary = { preset, hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, sharedExperts: 1, expertsPerRank: p.experts / N };
    shapes.push(summary);
    const split = splitTokens(o.tokens, N, preset, p.topK);
    if (wantUnfused) {
      skipped.push(...split.skipped);
      for (const s of split.skipped) log(`bench moe --ep ${N}: not measured: ${s.what}: ${s.reason}`);
    }
    const runs = backends.map((name) => ({ name, tokens: name === 'unfused' ? split.run : [...o.tokens] })).filter((b) => b.tokens.length > 0);
    if (runs.length === 0) continue;
    const tokens = o.tokens.filter((t) => runs.some((b) => b.tokens.includes(t)));
    const args: EpBenchRankArgs = {
      shape: { label: preset, hidden: p.hidden, inter: p.inter, experts: p.experts, topK: p.topK, swigluLimit: 10 },
      seed: o.seed, tokens, backends: runs, transport: o.transport, rowTile: o.rowTile, warmup: o.warmup, runs: o.runs,
      seriesBudgetMs: o.seriesBudgetMs,
      ...(fake ? { fake: { stepMs: Number(process.env.MEGAMOE_BENCH_EP_FAKE_STEP_MS ?? 2) } } : {}),
    };
    for (const b of runs) {
      log(`bench moe --ep ${N}: ${preset}: ${b.name} on ${N} ranks over ${epRowTransport(b.name, o.transport)}, ` +
        `T per rank ${b.tokens.join(',')}`);
    }
    let results: EpBenchRankResult[];
    try {
      const r = await runRanks({
        worldSize: N, program: new URL('./moe-ep-rank.js', import.meta.url), args, devices,
        timeoutMs: (o.timeoutS ?? 1800) * 1000, barrierTimeoutMs: 300_000,
        onSpawn: (rank, pid) => log(`bench moe --ep ${N}: rank ${rank} started: pid ${pid}, device ${devices[rank]}`),
        onBarrier: (name) => { if (name === 'ready') log(`bench moe --ep ${N}: ${preset}: all ${N} ranks ready (weights, transport and kernels loaded)`); },
      });
      results = r.results as EpBenchRankResult[];
    } catch (err) {
      if (err instanceof RankFailureError) return fail(1, err.message);
      throw err;
    }
    for (const res of results) rankGpus[res.rank] = res.gpu;
    if (runs.some((b) => b.name === 'mega_moe')) {
      const bytes = results.map((res) => res.megaBuffer?.bytes ?? Number.NaN);
      summary.megaBufferBytes = bytes;
      summary.megaBufferMaxTokens = results[0].megaBuffer?.maxTokens;
      log(`bench moe --ep ${N}: ${preset}: mega_moe symmetric buffer ${describeMegaBuffer(bytes)} (for ${summary.megaBufferMaxTokens} tokens per rank)`);
    }
    for (const T of tokens) {
      // Every rank's routing, regenerated from the seeds the ranks used: the bytes of each rank's touched experts.
      const routings = Array.from({ length: N }, (_, r) => randomRouting(epBenchInputSeed(o.seed, r, T), T, p.experts, p.topK).ids);
      const bytes = rankWeightBytes(routings, T, p, N);
      for (const b of runs.filter((x) => x.tokens.includes(T))) {
        for (const res of results) {
          const s = res.steps.find((x) => x.backend === b.name && x.tokens === T);
          if (!s) return fail(1, `rank ${res.rank} returned no ${b.name} timings for ${preset} T = ${T}`);
          steps.push(rankStep({
            preset, backend: b.name, tokens: T, rank: res.rank, device: res.device, samplesUs: s.samplesUs, rowsSent: s.rowsSent,
            rowsReceived: s.rowsReceived, path: s.path, localExpertsTouched: bytes[res.rank].touched, localWeightBytes: bytes[res.rank].bytes,
          }, ceilings.hbmPeakTBs));
        }
      }
    }
    const rows = aggregateRanks(steps.filter((s) => s.preset === preset), { ep: N, transport: o.transport, hbmPeakTBs: ceilings.hbmPeakTBs });
    for (const r of rows) {
      log(`bench moe --ep ${N}: ${preset} ${r.backend} T=${r.tokens}: ${r.maxOverRanksUs.toFixed(1)} us (max over ranks, rank ${r.slowestRank}; ` +
        `per rank ${r.perRankMedianUs.map((u) => u.toFixed(1)).join(' / ')}), roofline ${r.rooflineUs.toFixed(1)} us`);
    }
  }
  if (steps.length === 0) {
    return fail(1, `no --tokens value fits --ep ${N} (${skipped.map((s) => s.reason).join('; ')}); pass fewer tokens per rank`);
  }
  const rows = aggregateRanks(steps, { ep: N, transport: o.transport, hbmPeakTBs: ceilings.hbmPeakTBs });
  const wantMega = backends.includes('mega_moe');
  const notes = [
    'Each rank holds E/N routed experts + the shared expert; routing uniform random top-K (distinct experts, none masked), seeded ' +
      `per (rank, T), the same for every backend; x ~ N(0, 1) in bf16.${backends.length > 1 ? ' Both backends run on the same weights.' : ''}`,
    'A sample: control-channel barrier of all ranks, L2 flush (>= 256 MiB memset), then CUDA events on the rank\'s stream around its ' +
      `whole forward${backends.length > 1 ? '; per T the backends take turns, one sample of each per round' : ''}. ` +
      'x and the routing weights are uploaded once per T before the warm-up; y stays on the device.',
    ...(wantUnfused ? ['unfused: staging + shared expert, send buffer, count all-gather with its host sync, all-to-alls of FP8 rows + ' +
      'scales + ids + weights, the owner\'s grouped GEMMs, all-to-all of bf16 rows back, combine. Launch latency and the host sync are ' +
      'included (this baseline cannot be one CUDA graph).'] : []),
    ...(wantMega ? ['mega_moe: its one launch (dispatch pulling each rank\'s tokens from their ranks\' symmetric buffers over CUDA IPC, ' +
      'L1 + SwiGLU, L2, combine pulling the rows back, shared expert), queued behind the flush so its launch latency is hidden; the ' +
      'waits of its cross-rank barriers on the peers\' launches (host skew included) are in the figure. Its error block is checked after ' +
      'each series, nothing is downloaded in between; rows received = routed rows this rank\'s experts got (the shared expert\'s not counted).'] : []),
    'roofline: bytes of the local experts the whole world\'s routing touched on the slowest rank, + its shared expert (FP8 codes + ' +
      'f32 block scales, each once), over this GPU\'s HBM peak; each rank\'s own bound is in the per-rank table.',
    ...(wantUnfused && o.transport === 'ipc' ? ['--transport ipc orders the ranks on the host: every collective of the forward (1 all-gather, 5 all-to-alls) ' +
      'syncs the rank\'s stream and waits on a control-channel exchange through the supervisor process, and that host time is in the unfused figures ' +
      '(src/dist/ipc-transport.ts); --transport nccl enqueues its collectives on the stream.'] : []),
    ...(warning ? [`${warning}.`] : []),
  ];
  const report: EpBenchReport = {
    meta: {
      gpu: props.name, smCount: props.smCount, driver, commit: resolveCommit(o.commit),
      command: o.command ?? `megamoe bench moe --ep ${N}`, date: new Date().toISOString().slice(0, 10), warmup: o.warmup, runs: o.runs,
      ep: N, transport: o.transport, backends, devices, rankGpus, sharedGpu, ...(warning ? { warning } : {}),
      ceilings, shapes, notes,
    },
    rows,
    ranks: steps,
    skipped,
  };
  const paths = await writeEpReport(report, o.out);
  log(`bench moe --ep ${N}: wrote ${paths.json}, ${paths.markdown}, ${paths.svg}`);
  process.stdout.write(`${rows.length} rows written to ${o.out}${sharedGpu ? ` (ranks shared one GPU: ${SHARED_GPU_WARNING})` : ''}\n`);
  return 0;
}
