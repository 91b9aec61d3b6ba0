// The rank program of `megamoe bench moe --ep N` (started by the supervisor, src/dist/supervisor.ts, one process per
// rank, one run per preset): builds this rank's share of a seeded random layer (its E/N experts + the shared expert,
// as verify-rank.ts does) and the backends asked for: the transport and the unfused EP pipeline, and / or the fused
// kernel over symmetric memory (mega_moe, on the same weights when both run). It then times its own forward at every
// T and returns the samples. The benchmarking process takes the max over ranks (ep-report.ts).
//
// Timing of one sample (WHY this way):
//  * Every rank first passes a control-channel exchange that also carries the device time each rank has spent so far:
//    the ranks start each sample together (a rank that starts late would show up as wait time in its peers' figures),
//    and they all take the same decision to stop a series (each forward is collective: a rank that stopped on its own
//    budget while the others went on would hang them; the fused kernel's cross-rank barriers spin inside the kernel).
//    Every rank runs the same forwards in the same order: per T, rounds of one forward of each backend (interleaved,
//    so a drifting clock, e.g. at the power cap, moves both alike), the budget counting the whole round.
//  * Then a memset of >= 256 MiB evicts the L2 (weights stream from HBM, as after the previous layer), and CUDA events
//    on the backend's stream bracket the forward.
//    - unfused: staging + shared expert, send buffer, count all-gather (the one host sync), all-to-alls, the owner's
//      GEMMs, the all-to-all back, the combine. No spin kernel: the forward syncs the host inside, so its launch
//      latency is part of what this eager baseline costs and is timed.
//    - mega_moe: its one launch (dispatch from every rank's buffer, L1, L2, combine over the ranks, shared expert);
//      the launch is queued behind the flush, so its latency hides behind it. Its waits for the peers' launches are
//      inside the figure. Nothing is downloaded in the timed loop; the kernel's error block is checked after it.
//  * x and the routing weights are uploaded once per T before the warm-up (unfused: by one untimed forward); the timed
//    forwards reuse that upload (a model's x is already on the device) and leave y on the device.
//
// Phases (named in any failure message): cuda-init, weights, transport, build (unfused), build, symmetric-memory
// (mega_moe), then bench:T<n> per T, teardown.
import type { RankContext } from '../dist/rank-channel.js';
import type { TransportName } from '../dist/transport.js';
import type { RowTilePolicy } from '../backends/unfused-gemm.js';
import type { MoePresetLayer } from '../kernels/presets.js';
import type { StreamLike } from '../cuda/index.js';
import type { EpBenchBackend } from './ep-report.js';

export interface EpBenchRankArgs {
  shape: MoePresetLayer;
  seed: number;
  /** every T the run times, in order */
  tokens: number[];
  /** the backends, in the order each round runs them, each with the T (of `tokens`) it runs */
  backends: Array<{ name: EpBenchBackend; tokens: number[] }>;
  /** the unfused baseline's */
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
  backend: EpBenchBackend;
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
  /** mega_moe: this rank's symmetric buffer (MegaMoe.layout.totalBytes) and the tokens per rank it holds */
  megaBuffer?: { bytes: number; maxTokens: number };
}

/** The seed of rank r's routing and x at T: the benchmarking process regenerates the routing from it (bytes). */
export function epBenchInputSeed(seed: number, rank: number, tokens: number): number {
  return ((seed * 1_000_003 + rank * 7919 + tokens * 31) >>> 0) || 1;
}

/** One backend at one T: a timed forward (microseconds), and what to record once its series is done. */
interface Sampler {
  backend: EpBenchBackend;
  sample(): Promise<number>;
  finish(): Omit<EpBenchRankStepResult, 'backend' | 'tokens' | 'samplesUs'>;
}

/**
 * The agreed series of one T (see the header): warm-up rounds, then timed rounds until runs or the slowest rank's
 * budget; a round is one forward of each sampler, in order. Returns each sampler's samples.
 */
async function series(ctx: RankContext, a: EpBenchRankArgs, T: number, samplers: readonly Sampler[]): Promise<number[][]> {
  // Every exchange key of the run is distinct: n counts the forwards of this T.
  let n = 0;
  const agree = async (key: string, spentUs: number): Promise<number> => {
    const all = await ctx.exchange(key, new Uint8Array(Float64Array.of(spentUs).buffer));
    return Math.max(...all.map((b) => new Float64Array(b.buffer.slice(b.byteOffset, b.byteOffset + 8))[0]));
  };
  const once = async (s: Sampler) => {
    await agree(`epb:${T}:f${n++}`, 0);
    return s.sample();
  };
  for (let i = 0; i < a.warmup; i++) for (const s of samplers) await once(s);
  const samplesUs = samplers.map((): number[] => []);
  let spent = 0;
  for (let round = 0; ; round++) {
    const slowest = await agree(`epb:${T}:s${round}`, spent);
    if (round >= a.runs || (round >= 3 && slowest >= a.seriesBudgetMs * 1e3)) break;
    for (const [i, s] of samplers.entries()) {
      const us = await once(s);
      samplesUs[i].push(us);
      spent += us;
    }
  }
  return samplesUs;
}

/** Runs every T's series over the samplers of the backends that run it; the steps in the order they ran. */
async function runSeries(ctx: RankContext, a: EpBenchRankArgs, samplersAt: (T: number, backends: EpBenchBackend[]) => Promise<Sampler[]>):
  Promise<EpBenchRankStepResult[]> {
  const steps: EpBenchRankStepResult[] = [];
  for (const T of a.tokens) {
    ctx.phase(`bench:T${T}`);
    const samplers = await samplersAt(T, a.backends.filter((b) => b.tokens.includes(T)).map((b) => b.name));
    const samples = await series(ctx, a, T, samplers);
    samplers.forEach((s, i) => steps.push({ backend: s.backend, tokens: T, samplesUs: samples[i], ...s.finish() }));
  }
  return steps;
}

async function fakeRank(ctx: RankContext, a: EpBenchRankArgs): Promise<EpBenchRankResult> {
  ctx.phase('build');
  await ctx.ready();
  // A made-up time: rank r is r + 1 times the step (unfused), half that for mega_moe.
  const scale: Record<EpBenchBackend, number> = { unfused: 1000, mega_moe: 500 };
  const steps = await runSeries(ctx, a, async (T, backends) => backends.map((backend) => ({
    backend,
    async sample() {
      await new Promise((r) => setTimeout(r, a.fake!.stepMs));
      return (ctx.rank + 1) * scale[backend] * a.fake!.stepMs;
    },
    finish: () => ({ rowsSent: T * a.shape.topK, rowsReceived: T * a.shape.topK, path: 'fake' }),
  })));
  const mega = a.backends.find((b) => b.name === 'mega_moe');
  let megaBuffer: EpBenchRankResult['megaBuffer'];
  if (mega) {
    // The layout is pure host arithmetic: the fake reports the size the real rank would allocate.
    const { megaBufferLayout } = await import('../kernels/mega-moe-layout.js');
    const { hidden, inter, experts, topK } = a.shape;
    const maxTokens = Math.max(1, ...mega.tokens);
    megaBuffer = { bytes: megaBufferLayout({ hidden, inter, experts: experts / ctx.worldSize, topK }, maxTokens, ctx.worldSize).totalBytes, maxTokens };
  }
  ctx.phase('teardown');
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, gpu: 'fake', steps, ...(megaBuffer ? { megaBuffer } : {}) };
}

export default async function epBenchRank(ctx: RankContext): Promise<EpBenchRankResult> {
  const a = ctx.args as EpBenchRankArgs;
  if (a.fake) return fakeRank(ctx, a);
  const { ensureContext, CudaEvent, DeviceBuffer } = await import('../cuda/index.js');
  const { startUnfusedEpRank } = await import('../backends/unfused-ep-rank.js');
  const { startMegaMoeEpRank } = await import('../backends/mega-moe-ep-rank.js');
  const { chooseRowTile } = await import('../backends/unfused-gemm.js');
  const { randomHiddenStates } = await import('../moe/synthetic.js');
  const { HostTensor } = await import('../tensor/host.js');
  const { randomRouting } = await import('./moe.js');

  const { shape } = a;
  const tokensOf = (name: EpBenchBackend) => a.backends.find((b) => b.name === name)?.tokens;
  const unfusedTokens = tokensOf('unfused');
  const megaTokens = tokensOf('mega_moe');
  // The unfused rank first (its weights serve the fused kernel too); the mega_moe rank only when asked: its
  // symmetric buffer is large.
  const unfused = unfusedTokens ? await startUnfusedEpRank(ctx, { ...a, tokens: unfusedTokens }) : undefined;
  const mega = megaTokens ? await startMegaMoeEpRank(ctx, { ...a, tokens: megaTokens, weights: unfused?.weights }) : undefined;
  if (!unfused && !mega) throw new Error('bench moe --ep: no backend to time');
  const props = ensureContext().properties();
  const flush = DeviceBuffer.alloc(Math.max(256 << 20, Math.ceil((4 * props.l2CacheBytes) / (1 << 20)) << 20));
  const start = CudaEvent.create();
  const end = CudaEvent.create();
  await ctx.ready();
  const timed = async (stream: StreamLike, forward: () => Promise<void> | void): Promise<number> => {
    flush.memset8(0x5a, { stream });
    start.record(stream);
    await forward();
    end.record(stream);
    end.synchronize();
    return end.elapsedMsSince(start) * 1e3;
  };
  const steps = await runSeries(ctx, a, async (T, backends) => {
    const s = epBenchInputSeed(a.seed, ctx.rank, T);
    const routing = randomRouting(s, T, shape.experts, shape.topK);
    const x = randomHiddenStates(s ^ 0x2545f491, T, shape.hidden);
    const samplers: Sampler[] = [];
    for (const backend of backends) {
      if (backend === 'unfused') {
        const { ep, localShape } = unfused!;
        const idsT = new HostTensor('I64', [T, shape.topK], routing.ids);
        const w = new HostTensor('F32', [T, shape.topK], routing.weights);
        await ep.enqueue(x, idsT, w); // uploads x and the routing weights once (untimed); collective
        ep.stream.synchronize();
        samplers.push({
          backend,
          sample: () => timed(ep.stream, () => ep.enqueue(x, idsT, w, { reuseUpload: true })),
          finish() {
            const rows = ep.lastReceive?.rows ?? 0;
            return {
              rowsSent: ep.lastSend ? ep.lastSend.sendRows.reduce((p, q) => p + q, 0) : 0, rowsReceived: rows,
              path: rows > 0 ? chooseRowTile(rows, { topK: 1, experts: localShape.experts }, a.rowTile).mode : '-',
            };
          },
        });
        continue;
      }
      const { moe } = mega!;
      moe.uploadInputs(x, routing.ids, routing.weights); // global ids: the kernel finds each slot's rank
      moe.stream.synchronize();
      samplers.push({
        backend,
        sample: () => timed(moe.stream, () => moe.enqueue(T)),
        finish() {
          moe.stream.synchronize();
          moe.checkErrors(); // a spin that gave up in any launch of the series fails the run here
          return { rowsSent: routing.ids.reduce((n, id) => n + (id >= 0n ? 1 : 0), 0), rowsReceived: moe.routedRows(), path: moe.path(T) };
        },
      });
    }
    return samplers;
  });
  const megaBuffer = mega ? { bytes: mega.moe.layout.totalBytes, maxTokens: mega.maxTokens } : undefined;
  ctx.phase('teardown');
  // Collective, in the same order on every rank: the fused kernel's buffer first (the unfused rank owns the weights).
  await mega?.close();
  await unfused?.close(); // waits for the peers, then frees the layer, the transport and the weights
  start.dispose();
  end.dispose();
  flush.dispose();
  return {
    rank: ctx.rank, device: ctx.device, pid: process.pid, gpu: props.name, steps, ...(megaBuffer ? { megaBuffer } : {}),
  };
}
