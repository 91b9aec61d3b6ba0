// `megamoe bench staging` and `megamoe bench routing`: time of the staging and routing kernels against T, achieved
// GB/s next to the device's measured copy bandwidth (a large device-to-device copy, in the same run), and the host
// cost of one launch. Writes <name>.json and <name>.md into --out.
//
// How a kernel is timed (WHY this way): each run first overwrites a 256 MiB scratch buffer (evicting the 50 MB L2,
// so the kernel reads its inputs from DRAM as it would after the previous layer's work), then queues a short spin
// kernel so the GPU waits while the host queues [start event, kernel, end event] back to back: the events then
// bracket the kernel alone, not the host's launch latency. Reported: the median over --runs runs after --warmup.
import type { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  arg, CudaEvent, DeviceBuffer, DeviceTensor, driverVersion, ensureContext, formatCudaVersion, measureLaunchOverhead,
  Stream, type Kernel, type LaunchOverheadResult,
} from '../cuda/index.js';
import { Router, planRouterLogits, ROUTER_TILES, ROUTER_VARIANTS, routingFlops, routingTrafficBytes, type RouterShape, type RouterTile } from '../kernels/routing.js';
import { Stager, STAGING_VARIANTS, stagingTrafficBytes, type StagingShape } from '../kernels/staging.js';
import { intArg } from '../cli/args.js';
import { HostTensor } from '../tensor/host.js';
import { Rng } from '../util/rng.js';
import { loadEmptyKernel, loadSpinKernel } from './bench-kernels.js';
import { randomBf16, randomBf16Rows } from './random-bf16.js';

export interface KernelBenchOptions {
  out: string;
  shapes: string;
  tokens: string;
  warmup: number;
  runs: number;
  commit?: string;
  compareTiles?: boolean;
}

export interface BenchMeta {
  gpu: string;
  smCount: number;
  driver: string;
  commit: string;
  command: string;
  date: string;
  warmup: number;
  runs: number;
  /** Median GB/s of a 1 GiB device-to-device copy, counting bytes read + written. */
  copyGBs: number;
  /** The datasheet-style peak from memory clock x bus width, for reference. */
  peakGBs: number;
  /** An empty kernel timed the same way (median us): the floor under every figure below. */
  floorUs: { cold: number; warm: number };
  method: string;
}

export interface StagingRow {
  shape: string;
  tokens: number;
  /** cold (L2 and TLBs flushed) median / p90 microseconds: the primary figure */
  medianUs: number;
  p90Us: number;
  /** warm (inputs possibly L2-resident from the previous run) median microseconds */
  warmUs: number;
  bytes: number;
  /** bytes / cold median */
  gbps: number;
  /** gbps / copyGBs: the fraction of the measured device copy bandwidth */
  copyFraction: number;
  /** cold median of a device-to-device copy that moves the same bytes (same timing method) */
  sameBytesCopyUs: number;
}

export interface RoutingRow {
  shape: string;
  tokens: number;
  tile: RouterTile;
  splits: number;
  /** true for the planner's own choice, false for a --compare-tiles alternative */
  chosen: boolean;
  medianUs: number;
  p90Us: number;
  warmUs: number;
  bytes: number;
  gbps: number;
  copyFraction: number;
  tflops: number;
}

export interface HostCostRow {
  what: string;
  /** median host microseconds per call */
  us: number;
}

/** The commit to record: --commit, else $MEGAMOE_COMMIT, else `git rev-parse --short HEAD`, else 'unknown'. */
export function resolveCommit(flag?: string): string {
  if (flag) return flag;
  if (process.env.MEGAMOE_COMMIT) return process.env.MEGAMOE_COMMIT;
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || 'unknown';
  } catch {
    return 'unknown';
  }
}

/** A comma list of flag values ("a, b,c"), at least one, each among `known` when given. */
export function parseList(flag: string, text: string, known?: readonly string[]): string[] {
  const list = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new Error(`--${flag}: give at least one value`);
  if (known) for (const v of list) if (!known.includes(v)) throw new Error(`--${flag}: unknown "${v}" (known: ${known.join(', ')})`);
  return list;
}

/** "1,2,4" or "lo..hi" (lo, 2 lo, 4 lo ... up to hi, and hi itself) into a sorted list of positive integers. */
export function parseTokenList(text: string): number[] {
  const out = new Set<number>();
  for (const part of parseList('tokens', text)) {
    const range = /^(\d+)\.\.(\d+)$/.exec(part);
    if (range) {
      const lo = Number(range[1]);
      const hi = Number(range[2]);
      if (!(lo >= 1 && hi >= lo)) throw new Error(`--tokens: bad range "${part}" (use e.g. 1..16384)`);
      for (let t = lo; t <= hi; t *= 2) out.add(t);
      out.add(hi);
    } else {
      const t = Number(part);
      if (!Number.isInteger(t) || t < 1) throw new Error(`--tokens: "${part}" is not a positive integer`);
      out.add(t);
    }
  }
  return [...out].sort((a, b) => a - b);
}

function pickShapes<S>(variants: ReadonlyArray<{ label: string; shape: S }>, text: string): Array<{ label: string; shape: S }> {
  const names = parseList('shapes', text, variants.map((x) => x.label));
  return names.map((n) => variants.find((x) => x.label === n)!);
}

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))];
}

export interface Timing {
  /** sorted microseconds per run */
  us: number[];
  median: number;
  p90: number;
}

function timing(us: number[]): Timing {
  return { us, median: quantile(us, 0.5), p90: quantile(us, 0.9) };
}

/**
 * Times kernels one at a time with the launch latency hidden behind a spin kernel; `cold` first overwrites a
 * 256 MiB buffer so L2 (50 MB) and the TLBs hold none of the kernel's data, `warm` does not.
 */
class KernelTimer implements Disposable {
  private constructor(
    readonly stream: Stream,
    private readonly spin: Kernel,
    readonly empty: Kernel,
    private readonly flush: DeviceBuffer,
    private readonly start: CudaEvent,
    private readonly end: CudaEvent,
  ) {}

  static async create(): Promise<KernelTimer> {
    return new KernelTimer(Stream.create(), await loadSpinKernel(), await loadEmptyKernel(),
      DeviceBuffer.alloc(256 << 20), CudaEvent.create(), CudaEvent.create());
  }

  time(launch: () => void, warmup: number, runs: number, cold: boolean): Timing {
    const samples: number[] = [];
    for (let i = 0; i < warmup + runs; i++) {
      if (cold) this.flush.memset8(i & 0xff, { stream: this.stream });
      this.spin.launch({ grid: 1, block: 1, stream: this.stream }, [arg.u64(20_000n)]);
      this.start.record(this.stream);
      launch();
      this.end.record(this.stream);
      this.end.synchronize();
      if (i >= warmup) samples.push(this.end.elapsedMsSince(this.start) * 1e3);
    }
    return timing(samples.sort((a, b) => a - b));
  }

  /** An empty kernel timed the same way: the floor under every figure. */
  floor(warmup: number, runs: number, cold: boolean): Timing {
    return this.time(() => this.empty.launch({ grid: 1, block: 32, stream: this.stream }, []), warmup, runs, cold);
  }

  /** A device-to-device copy that moves `movedBytes` (half read, half written), timed cold like the kernels. */
  copyTime(movedBytes: number, warmup: number, runs: number, scratch: { a: DeviceBuffer; b: DeviceBuffer }): Timing {
    const bytes = Math.max(16, Math.round(movedBytes / 2 / 16) * 16);
    return this.time(() => scratch.b.copyFromDevice(scratch.a, { stream: this.stream, bytes }), warmup, runs, true);
  }

  /** Median GB/s (read + written) of a device-to-device copy of `bytes`. */
  copyBandwidth(bytes: number, runs: number): number {
    using a = DeviceBuffer.alloc(bytes);
    using b = DeviceBuffer.alloc(bytes);
    a.memset8(1, { stream: this.stream });
    const t = this.time(() => b.copyFromDevice(a, { stream: this.stream }), 3, runs, true);
    return (2 * bytes) / (t.median * 1e-6) / 1e9;
  }

  dispose(): void {
    this.stream.synchronize();
    this.flush.dispose();
    this.start.dispose();
    this.end.dispose();
    this.stream.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** Host microseconds per call of `launch`, median over batches (the stream drained between batches). */
function hostCost(launch: () => void, stream: Stream, calls = 2000, batch = 100): number {
  for (let i = 0; i < 100; i++) launch();
  stream.synchronize();
  const per: number[] = [];
  for (let done = 0; done < calls; done += batch) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < batch; i++) launch();
    per.push(Number(process.hrtime.bigint() - t0) / 1e3 / batch);
    stream.synchronize();
  }
  return quantile(per.sort((a, b) => a - b), 0.5);
}

function makeMeta(timer: KernelTimer, opts: KernelBenchOptions, warmup: number, runs: number, command: string): BenchMeta {
  const props = ensureContext().properties();
  return {
    gpu: props.name,
    smCount: props.smCount,
    driver: formatCudaVersion(driverVersion()),
    commit: resolveCommit(opts.commit),
    command,
    date: new Date().toISOString(),
    warmup,
    runs,
    copyGBs: timer.copyBandwidth(1 << 30, 20),
    peakGBs: props.peakMemoryBandwidthGBs,
    floorUs: { cold: timer.floor(warmup, runs, true).median, warm: timer.floor(warmup, runs, false).median },
    method: 'CUDA events around one launch, with the host launch latency hidden behind a 20 us spin kernel queued first; '
      + 'cold = a 256 MiB memset before each run evicts L2 and the TLBs; median of the timed runs after warm-up',
  };
}

const fmt = (v: number, d = 1): string => (Number.isFinite(v) ? v.toFixed(d) : '-');

function metaMarkdown(title: string, m: BenchMeta): string[] {
  return [
    `### ${title}`,
    '',
    `GPU ${m.gpu} (${m.smCount} SMs, driver CUDA ${m.driver}), commit ${m.commit}, ${m.date}.`,
    `Command: \`${m.command}\`.`,
    `Device copy bandwidth (1 GiB device-to-device, read + written): **${fmt(m.copyGBs, 0)} GB/s** (peak from clocks: ${fmt(m.peakGBs, 0)} GB/s).`,
    `An empty kernel timed the same way: ${fmt(m.floorUs.cold, 2)} us cold, ${fmt(m.floorUs.warm, 2)} us warm (the floor under every time below).`,
    `Method: ${m.method}; ${m.warmup} warm-up, ${m.runs} timed runs.`,
    '',
  ];
}

function hostMarkdown(host: HostCostRow[], overhead: LaunchOverheadResult | undefined): string[] {
  const lines = ['| host cost | us per call |', '| --- | ---: |'];
  for (const h of host) lines.push(`| ${h.what} | ${fmt(h.us, 2)} |`);
  if (overhead) {
    lines.push(`| measureLaunchOverhead: empty kernel | ${fmt(overhead.emptyLaunchUs, 2)} |`);
    lines.push(`| measureLaunchOverhead: 5 mixed args | ${fmt(overhead.argsLaunchUs, 2)} |`);
    lines.push(`| measureLaunchOverhead: graph launch (${overhead.graphNodes} node) | ${fmt(overhead.graphLaunchUs, 2)} |`);
  }
  return lines;
}

export function stagingMarkdown(meta: BenchMeta, rows: StagingRow[], host: HostCostRow[], overhead?: LaunchOverheadResult): string {
  const lines = metaMarkdown('Staging (bf16 -> e4m3 + f32 scales, ids/weights copied)', meta);
  lines.push('"copy, same bytes": a device-to-device copy moving the same bytes, timed the same way (cold).', '');
  lines.push('| shape | T | cold us | p90 us | warm us | MB moved | GB/s (cold) | % of copy BW | copy, same bytes, us |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    lines.push(`| ${r.shape} | ${r.tokens} | ${fmt(r.medianUs, 2)} | ${fmt(r.p90Us, 2)} | ${fmt(r.warmUs, 2)} | ${fmt(r.bytes / 1e6, 2)} | ${fmt(r.gbps, 0)} | ${fmt(100 * r.copyFraction, 1)} | ${fmt(r.sameBytesCopyUs, 2)} |`);
  }
  lines.push('', ...hostMarkdown(host, overhead), '');
  return lines.join('\n');
}

export function routingMarkdown(meta: BenchMeta, rows: RoutingRow[], host: HostCostRow[], overhead?: LaunchOverheadResult): string {
  const lines = metaMarkdown('Routing (logits GEMM + sqrtsoftplus + biased top-K + weights)', meta);
  lines.push('Bytes are the compulsory traffic (x and the gate read once, ids and weights written); the logits round trip and split-K partials are extra. "(alt)": a tile the planner did not choose, timed for comparison.', '');
  lines.push('| shape | T | tile | splits | cold us | p90 us | warm us | MB moved | GB/s (cold) | % of copy BW | TFLOPS (cold) |',
    '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const r of rows) {
    lines.push(`| ${r.shape} | ${r.tokens} | ${r.tile}${r.chosen ? '' : ' (alt)'} | ${r.splits} | ${fmt(r.medianUs, 2)} | ${fmt(r.p90Us, 2)} | ${fmt(r.warmUs, 2)} | ${fmt(r.bytes / 1e6, 2)} | ${fmt(r.gbps, 0)} | ${fmt(100 * r.copyFraction, 1)} | ${fmt(r.tflops, 1)} |`);
  }
  lines.push('', ...hostMarkdown(host, overhead), '');
  return lines.join('\n');
}

function writeReport(out: string, name: string, json: unknown, markdown: string): void {
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, `${name}.json`), `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(join(out, `${name}.md`), markdown);
  console.log(`wrote ${join(out, `${name}.json`)} and ${name}.md`);
}

function commandLine(): string {
  return ['megamoe', ...process.argv.slice(2)].join(' ');
}

async function launchOverhead(): Promise<LaunchOverheadResult | undefined> {
  try {
    return await measureLaunchOverhead({ launches: 5000 });
  } catch (err) {
    console.error(`measureLaunchOverhead failed: ${err instanceof Error ? err.message : String(err)}`);
    return undefined;
  }
}

/** `megamoe bench staging`. */
export async function runStagingBench(opts: KernelBenchOptions): Promise<{ meta: BenchMeta; rows: StagingRow[] }> {
  const { warmup, runs } = opts;
  const tokens = parseTokenList(opts.tokens);
  const shapes = pickShapes<StagingShape>(STAGING_VARIANTS, opts.shapes);
  using timer = await KernelTimer.create();
  const meta = makeMeta(timer, opts, warmup, runs, commandLine());
  console.log(`${meta.gpu}: device copy ${fmt(meta.copyGBs, 0)} GB/s`);
  const rows: StagingRow[] = [];
  const host: HostCostRow[] = [];
  const rng = new Rng(1);
  const capacity = tokens[tokens.length - 1];
  for (const { label, shape } of shapes) {
    const { hiddenSize: H, topk: K } = shape;
    using stager = await Stager.create(shape, capacity);
    using x = DeviceTensor.fromHost(new HostTensor('BF16', [capacity, H], randomBf16Rows(rng, capacity, H, 110, 130)));
    const ids = new BigInt64Array(capacity * K).map(() => BigInt(rng.int(256)));
    using dIds = DeviceTensor.fromHost(new HostTensor('I64', [capacity, K], ids));
    using dW = DeviceTensor.fromHost(new HostTensor('F32', [capacity, K], new Float32Array(capacity * K).fill(0.25)));
    using scratchA = DeviceBuffer.alloc(stagingTrafficBytes(capacity, shape).total);
    using scratchB = DeviceBuffer.alloc(stagingTrafficBytes(capacity, shape).total);
    for (const T of tokens) {
      const launch = () => stager.stage(x, dIds, dW, { tokens: T, stream: timer.stream });
      const cold = timer.time(launch, warmup, runs, true);
      const warm = timer.time(launch, warmup, runs, false);
      const bytes = stagingTrafficBytes(T, shape).total;
      const copy = timer.copyTime(bytes, warmup, runs, { a: scratchA, b: scratchB });
      const gbps = bytes / (cold.median * 1e-6) / 1e9;
      rows.push({
        shape: label, tokens: T, medianUs: cold.median, p90Us: cold.p90, warmUs: warm.median, bytes, gbps,
        copyFraction: gbps / meta.copyGBs, sameBytesCopyUs: copy.median,
      });
      console.log(`staging ${label} T=${T}: ${fmt(cold.median, 2)} us cold (${fmt(warm.median, 2)} warm), ${fmt(gbps, 0)} GB/s = ${fmt((100 * gbps) / meta.copyGBs, 1)}% of copy; same-bytes copy ${fmt(copy.median, 2)} us`);
    }
    host.push({ what: `Stager.stage() ${label}, T=1 (checks + arg packing + cuLaunchKernel)`, us: hostCost(() => stager.stage(x, dIds, dW, { tokens: 1, stream: timer.stream }), timer.stream) });
  }
  const overhead = await launchOverhead();
  writeReport(opts.out, 'staging', { meta, rows, host, launchOverhead: overhead }, stagingMarkdown(meta, rows, host, overhead));
  return { meta, rows };
}

/** `megamoe bench routing`. */
export async function runRoutingBench(opts: KernelBenchOptions): Promise<{ meta: BenchMeta; rows: RoutingRow[] }> {
  const { warmup, runs } = opts;
  const tokens = parseTokenList(opts.tokens);
  const shapes = pickShapes<RouterShape>(ROUTER_VARIANTS, opts.shapes);
  using timer = await KernelTimer.create();
  const meta = makeMeta(timer, opts, warmup, runs, commandLine());
  console.log(`${meta.gpu}: device copy ${fmt(meta.copyGBs, 0)} GB/s`);
  const rows: RoutingRow[] = [];
  const host: HostCostRow[] = [];
  const rng = new Rng(2);
  const capacity = tokens[tokens.length - 1];
  for (const { label, shape } of shapes) {
    const { hiddenSize: H, experts: E } = shape;
    using gate = DeviceTensor.fromHost(new HostTensor('BF16', [E, H], randomBf16(rng, E * H, 113, 122)));
    const bias = new Float32Array(E).map(() => rng.normal() * 0.05);
    using dBias = DeviceTensor.fromHost(new HostTensor('F32', [E], bias));
    using router = await Router.create(shape, capacity, gate, { bias: dBias, normTopkProb: true, routedScalingFactor: 1.5 });
    using x = DeviceTensor.fromHost(new HostTensor('BF16', [capacity, H], randomBf16Rows(rng, capacity, H, 118, 127)));
    for (const T of tokens) {
      const chosen = planRouterLogits(T, shape, router.smCount).tile;
      const tiles: RouterTile[] = opts.compareTiles ? (Object.keys(ROUTER_TILES) as RouterTile[]) : [chosen];
      for (const tile of tiles) {
        const launch = () => router.route(x, { tokens: T, tile, stream: timer.stream });
        const cold = timer.time(launch, warmup, runs, true);
        const warm = timer.time(launch, warmup, runs, false);
        const plan = router.lastPlan!;
        const bytes = routingTrafficBytes(T, shape).total;
        const gbps = bytes / (cold.median * 1e-6) / 1e9;
        const tflops = routingFlops(T, shape) / (cold.median * 1e-6) / 1e12;
        rows.push({
          shape: label, tokens: T, tile, splits: plan.splits, chosen: tile === chosen, medianUs: cold.median, p90Us: cold.p90,
          warmUs: warm.median, bytes, gbps, copyFraction: gbps / meta.copyGBs, tflops,
        });
        console.log(`routing ${label} T=${T} ${tile}x${plan.splits}${tile === chosen ? '' : ' (alt)'}: ${fmt(cold.median, 2)} us cold (${fmt(warm.median, 2)} warm), ${fmt(gbps, 0)} GB/s, ${fmt(tflops, 1)} TFLOPS`);
      }
    }
    host.push({ what: `Router.route() ${label}, T=1 (checks + 2 launches)`, us: hostCost(() => router.route(x, { tokens: 1, stream: timer.stream }), timer.stream) });
  }
  const overhead = await launchOverhead();
  writeReport(opts.out, 'routing', { meta, rows, host, launchOverhead: overhead }, routingMarkdown(meta, rows, host, overhead));
  return { meta, rows };
}

function addCommonOptions(cmd: Command, defaultOut: string, defaultShapes: string): Command {
  return cmd
    .option('--out <dir>', 'folder for the JSON and Markdown results', defaultOut)
    .option('--shapes <list>', 'comma-separated shape presets (tiny, flash, pro)', defaultShapes)
    .option('--tokens <list>', 'token counts: "1,7,64" or a power-of-two range "1..16384"', '1..16384')
    .option('--warmup <n>', 'untimed runs per point', intArg('--warmup', 0), 10)
    .option('--runs <n>', 'timed runs per point (the median is reported)', intArg('--runs', 1), 50)
    .option('--commit <sha>', 'commit to record (default: $MEGAMOE_COMMIT, else git rev-parse --short HEAD)');
}

/** Adds `bench staging` to the `bench` command. */
export function registerStagingBench(bench: Command): void {
  addCommonOptions(bench.command('staging').description('time the FP8 staging kernel vs T; GB/s against the measured device copy bandwidth'),
    'bench-results', 'flash,pro')
    .action(async (opts: KernelBenchOptions) => { await runStagingBench(opts); });
}

/** Adds `bench routing` to the `bench` command. */
export function registerRoutingBench(bench: Command): void {
  addCommonOptions(bench.command('routing').description('time the routing kernels (logits + top-K) vs T; GB/s and TFLOPS'),
    'bench-results', 'flash,pro')
    .option('--compare-tiles', 'also time every logits tile at every T (to check the tile heuristic)')
    .action(async (opts: KernelBenchOptions) => { await runRoutingBench(opts); });
}
