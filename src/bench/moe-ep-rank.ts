// The rank program of `megamoe bench moe --ep N` (started by the supervisor, src/dist/supervisor.ts, one process per
// rank, one run per preset): builds this rank's share of a seeded random layer (its E/N experts + the shared expert,
// as verify-rank.ts does), the transport and the unfused EP pipeline, then times its own forward at every T and
// returns the samples. The benchmarking process takes the max over ranks (ep-report.ts).
//
// Timing of one sample (WHY this way):
//  * Every rank first passes a control-channel exchange that also carries the device time each rank has spent so far:
//    the ranks start each sample together (a rank that starts late would show up as wait time in its peers' figures),
//    and they all take the same decision to stop a series (each forward is collective: a rank that stopped on its own
//    budget while the others went on would hang them).
//  * Then a memset of >= 256 MiB evicts the L2 (weights stream from HBM, as after the previous layer), and CUDA events
//    on the rank's stream bracket the forward: staging + shared expert, send buffer, count all-gather (the one host
//    sync), all-to-alls, the owner's GEMMs, the all-to-all back, the combine. No spin kernel: the forward syncs the
//    host inside, so its launch latency is part of what this eager baseline costs and is timed.
//  * x and the routing weights are uploaded by one untimed forward before the warm-up; the timed ones reuse that
//    upload (a model's x is already on the device) and leave y on the device (UnfusedEpRank.enqueue).
//
// Phases (named in any failure message): cuda-init, weights, transport, build, then bench:T<n> per T, teardown.
import type { RankContext } from '../dist/rank-channel.js';
import type { TransportName } from '../dist/transport.js';
import type { RowTilePolicy } from '../backends/unfused-gemm.js';
import type { MoePresetLayer } from '../kernels/presets.js';


export interface EpBenchRankArgs {
  shape: MoePresetLayer;
  seed: number;
  tokens: number[];
  transport: TransportName;
  rowTile: RowTilePolicy;
  warmup: number;
  runs: number;
  /** device time (of the slowest rank) after which a series stops early, at least 3 runs */
  seriesBudgetMs: number;
  /** MEGAMOE_BENCH_EP_FAKE=1 (tests only, no GPU): the same exchanges and series logic, each "forward" a sleep */
  fake?: { stepMs: number };
}

export interface EpBenchRankStepResult {
  tokens: number;
  samplesUs: number[];
  rowsSent: number;
  rowsReceived: number;
  path: string;
}

export interface EpBenchRankResult {
  rank: number;
  device: number;
  pid: number;
  gpu: string;
  steps: EpBenchRankStepResult[];
}

/** The seed of rank r's routing and x at T: the benchmarking process regenerates the routing from it (bytes). */
export function epBenchInputSeed(seed: number, rank: number, tokens: number): number {
  return ((seed * 1_000_003 + rank * 7919 + tokens * 31) >>> 0) || 1;
}

/** The agreed series of one T (see the header): warm-ups, then samples until runs or the slowest rank's budget. */
async function series(ctx: RankContext, a: EpBenchRankArgs, T: number, sample: () => Promise<number>): Promise<number[]> {
  // Every exchange key of the run is distinct: n counts the forwards of this T.
  let n = 0;
  const agree = async (key: string, spentUs: number): Promise<number> => {
    const all = await ctx.exchange(key, new Uint8Array(Float64Array.of(spentUs).buffer));
    return Math.max(...all.map((b) => new Float64Array(b.buffer.slice(b.byteOffset, b.byteOffset + 8))[0]));
  };
  const once = async () => {
    await agree(`epb:${T}:f${n++}`, 0);
    return sample();
  };
  for (let i = 0; i < a.warmup; i++) await once();
  const samplesUs: number[] = [];
  let spent = 0;
  for (;;) {
    const slowest = await agree(`epb:${T}:s${samplesUs.length}`, spent);
    if (samplesUs.length >= a.runs || (samplesUs.length >= 3 && slowest >= a.seriesBudgetMs * 1e3)) break;
    const us = await once();
    samplesUs.push(us);
    spent += us;
  }
  return samplesUs;
}

async function fakeRank(ctx: RankContext, a: EpBenchRankArgs): Promise<EpBenchRankResult> {
  ctx.phase('build');
  await ctx.ready();
  const steps: EpBenchRankStepResult[] = [];
  for (const T of a.tokens) {
    ctx.phase(`bench:T${T}`);
    const samplesUs = await series(ctx, a, T, async () => {
      await new Promise((r) => setTimeout(r, a.fake!.stepMs));
      return (ctx.rank + 1) * 1000 * a.fake!.stepMs; // a made-up time: rank r is r + 1 times the step
    });
    steps.push({ tokens: T, samplesUs, rowsSent: T * a.shape.topK, rowsReceived: T * a.shape.topK, path: 'fake' });
  }
  ctx.phase('teardown');
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, gpu: 'fake', steps };
}

export default async function epBenchRank(ctx: RankContext): Promise<EpBenchRankResult> {
  const a = ctx.args as EpBenchRankArgs;
  if (a.fake) return fakeRank(ctx, a);
  const { ensureContext, CudaEvent, DeviceBuffer } = await import('../cuda/index.js');
  const { startUnfusedEpRank } = await import('../backends/unfused-ep-rank.js');
  const { chooseRowTile } = await import('../backends/unfused-gemm.js');
  const { randomHiddenStates } = await import('../moe/synthetic.js');
  const { HostTensor } = await import('../tensor/host.js');
  const { randomRouting } = await import('./moe.js');

  const { shape } = a;
  const { ep, localShape, close } = await startUnfusedEpRank(ctx, a);
  const props = ensureContext().properties();
  const flush = DeviceBuffer.alloc(Math.max(256 << 20, Math.ceil((4 * props.l2CacheBytes) / (1 << 20)) << 20));
  const start = CudaEvent.create();
  const end = CudaEvent.create();
  await ctx.ready();
  const steps: EpBenchRankStepResult[] = [];
  const stream = ep.stream;
  for (const T of a.tokens) {
    ctx.phase(`bench:T${T}`);
    const s = epBenchInputSeed(a.seed, ctx.rank, T);
    const routing = randomRouting(s, T, shape.experts, shape.topK);
    const x = randomHiddenStates(s ^ 0x2545f491, T, shape.hidden);
    const idsT = new HostTensor('I64', [T, shape.topK], routing.ids);
    const w = new HostTensor('F32', [T, shape.topK], routing.weights);
    await ep.enqueue(x, idsT, w); // uploads x and the routing weights once (untimed)
    stream.synchronize();
    const samplesUs = await series(ctx, a, T, async () => {
      flush.memset8(0x5a, { stream });
      start.record(stream);
      await ep.enqueue(x, idsT, w, { reuseUpload: true });
      end.record(stream);
      end.synchronize();
      return end.elapsedMsSince(start) * 1e3;
    });
    const rows = ep.lastReceive?.rows ?? 0;
    steps.push({
      tokens: T, samplesUs, rowsSent: ep.lastSend ? ep.lastSend.sendRows.reduce((p, q) => p + q, 0) : 0, rowsReceived: rows,
      path: rows > 0 ? chooseRowTile(rows, { topK: 1, experts: localShape.experts }, a.rowTile).mode : '-',
    });
  }
  ctx.phase('teardown');
  await close(); // waits for the peers, then frees the layer and the transport
  start.dispose();
  end.dispose();
  flush.dispose();
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, gpu: props.name, steps };
}
