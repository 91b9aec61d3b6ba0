// `megamoe bench model`: the whole GPU model step (GpuModel, src/gpu-model/) at flash / pro shapes with L decoder
// layers of synthetic random weights: decode step time per batch and context, prefill time per prompt length, a
// per-layer breakdown (attention, the q renorm, MoE, the rest of the step), each next to its roofline on the GPU
// that runs (src/bench/model-plan.ts counts bytes and FLOPs). Writes model.json, model.md and model.svg into --out.
//
// How (WHY this way):
//  * Weights: the dense weights come from the same tensor plan and seeds as `make-checkpoint --whole-model` would
//    write, generated in memory on read (virtualModelCheckpoint) and loaded by the real loader; the MoE experts are
//    random on the GPU (DeviceMoeWeights.random, GpuModelOptions.moeWeights): a flash layer's 6.4 GB of experts never
//    touch the host or the disk. The MoE runs on the auto backend by default (the fused kernel for prefill-sized calls, unfused for decode steps), or --moe-backend unfused | mega_moe.
//  * Decode contexts: by default the sequences' positions are advanced without computing them ("--kv-fill skip":
//    GpuSequence.length set, the caches grow to it on the first step and read zeros, which the caches are cleared to
//    after the build), because prefilling 256 x 32K tokens would take hours here; the attention reads as many rows
//    as it would with real contents. "--kv-fill prefill" prefills every sequence instead.
//  * Timing: CUDA events on the model's stream around each call (GpuModel.sample: the step and device sampling,
//    tokens downloaded), median of --runs after --warmup steps; the model syncs the host once per layer (the q
//    renorm runs on the host), so the events bracket host gaps too: that is the step's time as it runs today. The
//    host wall time of the same calls is reported next to it. The L2 is not flushed: consecutive steps are the
//    workload. Per-layer parts come from separate profiled steps (LayerProfiler: CUDA events at each layer's points).
//  * Ceilings: derived from this GPU's attributes and a device-to-device copy measured at the start (report.ts,
//    timing.ts, as bench moe). No cuBLASLt anchor: the compute term uses the derived peaks.
import type { Command } from 'commander';
import { performance } from 'node:perf_hooks';
import { cudaStatus, CudaEvent, driverVersion, ensureContext, formatCudaVersion, Stream } from '../cuda/index.js';
import { DeviceMoeWeights } from '../backends/unfused.js';
import { GpuModel, type GpuSequence } from '../gpu-model/model.js';
import { GPU_MOE_BACKENDS, type GpuMoeBackend, type LayerMark, type LayerProfiler } from '../gpu-model/layer.js';
import { virtualModelCheckpoint } from '../model/checkpoint-writer.js';
import { loadModelWeightsFrom } from '../model/loader.js';
import { Rng } from '../util/rng.js';
import { intArg, oneOf } from '../cli/args.js';
import { deriveCeilings, median, withCopyBandwidth, type DeviceCeilings } from './report.js';
import { COPY_BYTES, LayerTimer, measureCopy } from './timing.js';
import { touchedGroups } from './read-floor.js';
import { resolveCommit } from './staging-routing.js';
import {
  benchModelConfig, decodeFillRefusal, decodeStepCost, KV_FILLS, MODEL_BENCH_DEFAULTS, MODEL_BENCH_PRESETS, parseSize, parseSizeList, planCapacity,
  prefillCost, residentWeightBytes, validateModelBenchOptions, type KvFill, type ModelBenchOptions, type ModelBenchPreset,
} from './model-plan.js';
import { layerParts, notRunRow, timedRow, writeModelReport, type DecodeRow, type ModelBenchReport, type PrefillRow } from './model-report.js';

/** CUDA events at every LAYER_MARKS point of one step (reused across steps). */
class EventProfiler implements LayerProfiler {
  private readonly pool: CudaEvent[] = [];
  private marks: Array<{ layer: number; at: LayerMark; ev: CudaEvent }> = [];

  mark(layer: number, at: LayerMark, stream: Stream): void {
    let ev = this.pool[this.marks.length];
    if (!ev) { ev = CudaEvent.create(); this.pool.push(ev); }
    ev.record(stream);
    this.marks.push({ layer, at, ev });
  }

  start(): void { this.marks = []; }

  /** After the step's stream finished: per layer, each point's ms since the step's first mark. */
  read(layers: number): Array<Record<LayerMark, number>> {
    if (this.marks.length === 0) throw new Error('internal: the profiled step recorded no marks');
    const first = this.marks[0].ev;
    const out = Array.from({ length: layers }, () => ({}) as Record<LayerMark, number>);
    for (const m of this.marks) out[m.layer][m.at] = m.ev.elapsedMsSince(first);
    return out;
  }

  dispose(): void { for (const e of this.pool) e.dispose(); }
}

const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Runs the benchmark and writes the report; returns it. */
export async function runModelBench(o: ModelBenchOptions, log: (line: string) => void = () => {}): Promise<ModelBenchReport> {
  validateModelBenchOptions(o);
  const st = cudaStatus();
  if (!st.available) throw new Error(`bench model needs a Hopper GPU: ${st.reason}`);
  const cfg = benchModelConfig(o.preset, o.layers, o.seed);
  const cap = planCapacity(o, cfg);
  const cuda = ensureContext();
  const props = cuda.properties();
  const resident = residentWeightBytes(cfg);
  if (resident > 0.9 * props.totalMemoryBytes) {
    throw new Error(`bench model: ${o.layers} ${o.preset} layers hold ${(resident / 1e9).toFixed(1)} GB of weights, more than 90% of this GPU's ` +
      `${(props.totalMemoryBytes / 1e9).toFixed(1)} GB; use fewer --layers`);
  }
  let ceilings: DeviceCeilings = deriveCeilings({
    name: props.name, smCount: props.smCount, clockRateKHz: props.clockRateKHz, memoryClockRateKHz: props.memoryClockRateKHz,
    memoryBusWidthBits: props.memoryBusWidthBits, computeCapability: props.computeCapability,
  });
  {
    const timer = await LayerTimer.create(props.l2CacheBytes);
    const s = Stream.create();
    try {
      const copy = measureCopy(timer, s, COPY_BYTES, 3, 10);
      ceilings = withCopyBandwidth(ceilings, COPY_BYTES, copy.medianUs, copy.runs);
    } finally {
      s.synchronize(); s.dispose(); timer.dispose();
    }
  }
  log(`bench model: ${props.name}: HBM peak ${ceilings.hbmPeakTBs.toFixed(2)} TB/s, FP8 peak ${ceilings.fp8DensePeakTflops.toFixed(0)} TFLOPS, ` +
    `measured copy ${ceilings.copyTBs?.toFixed(2)} TB/s`);

  const t0 = performance.now();
  const { checkpoint, config } = virtualModelCheckpoint({ preset: o.preset, layers: o.layers, mtpLayers: 0, expertDtype: 'fp8', seed: o.seed });
  const weights = loadModelWeightsFrom(checkpoint, config, { mtp: false });
  log(`bench model: ${o.preset} x ${o.layers} layers: dense weights generated on the host in ${((performance.now() - t0) / 1e3).toFixed(1)} s; building on the GPU ` +
    `(${(resident / 1e9).toFixed(1)} GB of weights, experts random on the GPU; capacity ${cap.maxSequences} sequences, ${cap.maxRows} rows a call, context ${cap.maxContext})`);
  let model: GpuModel;
  try {
    model = await GpuModel.create(weights, {
      maxSequences: cap.maxSequences, maxItems: cap.maxSequences, maxLogitRows: cap.maxSequences, maxRows: cap.maxRows, maxContext: cap.maxContext,
      moeBackend: o.moeBackend, decodeGraphs: o.decodeGraphs,
      ...(o.kvCacheGib !== undefined ? { cacheBytes: Math.floor(o.kvCacheGib * 2 ** 30) } : {}),
      moeWeights: (bw) => {
        const s = bw.moe.shape;
        return DeviceMoeWeights.random({ hidden: s.hiddenSize, inter: s.moeIntermediateSize, experts: s.nRoutedExperts, topK: s.numExpertsPerTok, swigluLimit: s.swigluLimit },
          o.seed * 1000 + bw.index);
      },
    });
  } finally {
    weights.close();
  }
  const decode: DecodeRow[] = [];
  const prefill: PrefillRow[] = [];
  const skipped: ModelBenchReport['skipped'] = [];
  const profiler = new EventProfiler();
  const ev0 = CudaEvent.create();
  const ev1 = CudaEvent.create();
  try {
    // fresh cache memory is not cleared by the allocator: zeros, so skipped positions read finite values
    for (const p of model.cache.pools) p.memset8(0);
    model.cache.state.memset8(0);
    cuda.synchronize();
    log(`bench model: built in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
    const rng = new Rng(o.seed);
    const V = cfg.vocabSize;
    const tokens = (n: number) => Array.from({ length: n }, () => rng.int(V));
    const st = model.ctx.stream;
    const timed = async (f: () => Promise<unknown>): Promise<{ deviceUs: number; hostUs: number }> => {
      ev0.record(st);
      const h0 = performance.now();
      await f();
      const hostUs = (performance.now() - h0) * 1e3;
      ev1.record(st);
      ev1.synchronize();
      return { deviceUs: ev1.elapsedMsSince(ev0) * 1e3, hostUs };
    };
    const prefillSeq = async (seq: GpuSequence, n: number) => {
      for (let p = 0; p < n; p += o.prefillChunk) await model.sample([{ seq, tokens: tokens(Math.min(o.prefillChunk, n - p)) }]);
    };
    const layerInfo = model.layers.map((l) => ({ ratio: l.ratio, hashRouted: l.hashRouted }));

    for (const P of o.prefill) {
      const cost = prefillCost(cfg, P, o.prefillChunk);
      try {
        // warm-up: one call of the chunk's row count (kernel compiles, cuBLASLt plans per row count)
        for (let w = 0; w < Math.min(o.warmup, 1); w++) {
          const seq = model.createSequence();
          try { await prefillSeq(seq, Math.min(P, o.prefillChunk)); } finally { model.releaseSequence(seq); }
        }
        const dev: number[] = []; const host: number[] = [];
        for (let r = 0; r < o.prefillRuns; r++) {
          const seq = model.createSequence();
          try {
            const t = await timed(() => prefillSeq(seq, P));
            dev.push(t.deviceUs); host.push(t.hostUs);
          } finally {
            model.releaseSequence(seq);
          }
        }
        const row: PrefillRow = { tokens: P, chunk: o.prefillChunk, ...timedRow(dev, host, P, cost, ceilings) };
        prefill.push(row);
        log(`bench model: prefill ${P}: ${(row.medianUs / 1e3).toFixed(1)} ms, ${row.tokensPerS.toFixed(0)} tokens/s (roofline ${(row.rooflineUs / 1e3).toFixed(1)} ms)`);
      } catch (err) {
        prefill.push({ tokens: P, chunk: o.prefillChunk, ...notRunRow(message(err), cost, ceilings) });
        log(`bench model: prefill ${P}: not run: ${message(err)}`);
      }
    }

    for (const C of o.contexts) {
      for (const B of o.batches) {
        const seqs: GpuSequence[] = [];
        try {
          const refusal = decodeFillRefusal(o.kvFill, B, C);
          if (refusal) throw new Error(refusal);
          for (let i = 0; i < B; i++) seqs.push(model.createSequence());
          if (o.kvFill === 'skip') for (const s of seqs) s.length = C;
          else for (const s of seqs) await prefillSeq(s, C);
          const step = () => model.sample(seqs.map((seq) => ({ seq, tokens: tokens(1) })));
          for (let w = 0; w < o.warmup; w++) await step();
          const dev: number[] = []; const host: number[] = [];
          for (let r = 0; r < o.runs; r++) {
            const t = await timed(step);
            dev.push(t.deviceUs); host.push(t.hostUs);
          }
          // the routing of the last step: distinct routed experts per layer, for the roofline's bytes
          const touched = model.layers.map((l) => {
            const K = l.moe.shape.topK;
            const ids = new BigInt64Array(B * K);
            l.router.out.topkIds.buffer.copyToHost(ids, { bytes: ids.byteLength });
            return touchedGroups(ids, l.moe.shape.experts).length - 1; // less the shared group
          });
          const row: DecodeRow = { batch: B, context: C, ...timedRow(dev, host, B, decodeStepCost(cfg, B, C, touched), ceilings) };
          if (o.profileRuns > 0) {
            const steps: Array<Array<Record<LayerMark, number>>> = []; const stepUs: number[] = [];
            model.ctx.profiler = profiler;
            try {
              for (let r = 0; r < o.profileRuns; r++) {
                profiler.start();
                stepUs.push((await timed(step)).deviceUs);
                steps.push(profiler.read(model.layers.length));
              }
            } finally {
              model.ctx.profiler = undefined;
            }
            row.layers = layerParts(steps, layerInfo);
            row.profiledStepUs = median(stepUs);
            row.restUs = row.profiledStepUs - row.layers.reduce((a, l) => a + l.attentionUs + l.qRenormUs + l.moeUs, 0);
          }
          decode.push(row);
          log(`bench model: decode batch ${B} context ${C}: ${(row.medianUs / 1e3).toFixed(2)} ms a step, ${row.tokensPerS.toFixed(0)} tokens/s ` +
            `(roofline ${(row.rooflineUs / 1e3).toFixed(2)} ms, ${row.bound})`);
        } catch (err) {
          decode.push({ batch: B, context: C, ...notRunRow(message(err), decodeStepCost(cfg, B, C), ceilings) });
          log(`bench model: decode batch ${B} context ${C}: not run: ${message(err)}`);
        } finally {
          for (const s of seqs) model.releaseSequence(s);
        }
      }
    }
  } finally {
    profiler.dispose(); ev0.dispose(); ev1.dispose();
    model.dispose();
  }
  const notes = [
    `The MoE block is the ${o.moeBackend ?? 'unfused'} backend; expert weights random on the GPU (seeded per layer), dense weights the synthetic checkpoint's (seed ${o.seed}); token ids random.`,
    ...(o.decodeGraphs ? ['Decode steps replay one CUDA graph per (batch, context bucket), as the server runs them; the profiled steps (per-layer parts) run eagerly.'] : ['Decode steps run eagerly (--enforce-eager): one launch per kernel.']),
    'Decode "experts touched / layer" is the last timed step\'s routing (distinct routed experts, mean over layers); prefill rows use the uniform-routing expectation per call.',
  ];
  if (o.kvFill === 'skip') notes.push('Decode contexts: positions advanced without computing them (--kv-fill skip), cache rows zero: timing only, the outputs are not a model\'s.');
  const report: ModelBenchReport = {
    meta: {
      gpu: props.name, smCount: props.smCount, driver: formatCudaVersion(driverVersion()), commit: resolveCommit(o.commit),
      command: o.command ?? 'megamoe bench model', date: new Date().toISOString().slice(0, 10), warmup: o.warmup, runs: o.runs, ceilings, notes,
      preset: o.preset, layers: o.layers, ratios: cfg.compressRatios.slice(0, cfg.nLayers), kvFill: o.kvFill, prefillChunk: o.prefillChunk,
      moeBackend: o.moeBackend ?? 'unfused',
      shape: {
        dim: cfg.dim, heads: cfg.nHeads, headDim: cfg.headDim, experts: cfg.base.nRoutedExperts, topK: cfg.base.numExpertsPerTok,
        inter: cfg.base.moeIntermediateSize, vocab: cfg.vocabSize, window: cfg.windowSize, indexTopk: cfg.indexTopk,
      },
    },
    decode, prefill, skipped,
  };
  const paths = await writeModelReport(report, o.out);
  log(`bench model: wrote ${paths.json}, ${paths.markdown}, ${paths.svg}`);
  return report;
}

/** The CLI's options as commander hands them over. */
export interface ModelBenchCliOptions {
  preset: string; layers: number; batches: string; contexts: string; prefill: string; prefillChunk: string; kvFill: string;
  warmup: number; runs: number; prefillRuns: number; profileRuns: number; seed: number; out: string; commit?: string; moeBackend: string; enforceEager?: boolean; kvCacheGib?: string;
}

/** The CLI's options into checked ModelBenchOptions (errors name the flag and the fix). */
export function modelBenchOptionsFromCli(c: ModelBenchCliOptions, command: string): ModelBenchOptions {
  return validateModelBenchOptions({
    preset: c.preset as ModelBenchPreset, layers: c.layers, batches: parseSizeList('batches', c.batches), contexts: parseSizeList('contexts', c.contexts),
    prefill: parseSizeList('prefill', c.prefill), prefillChunk: parseSize('prefill-chunk', c.prefillChunk), kvFill: c.kvFill as KvFill,
    warmup: c.warmup, runs: c.runs, prefillRuns: c.prefillRuns, profileRuns: c.profileRuns, seed: c.seed, out: c.out, commit: c.commit, command,
    moeBackend: c.moeBackend as GpuMoeBackend, decodeGraphs: c.enforceEager !== true,
    ...(c.kvCacheGib !== undefined ? { kvCacheGib: Number(c.kvCacheGib) } : {}),
  });
}

/** `megamoe bench model` (added to src/cli/commands/bench.ts's list). */
export function registerModelBench(bench: Command): void {
  const d = MODEL_BENCH_DEFAULTS;
  bench
    .command('model')
    .description('the whole GPU model step (GpuModel) at flash / pro shapes, L layers of synthetic weights: decode step time per batch and context, ' +
      'prefill tokens/s, per-layer parts; each against this GPU\'s roofline; JSON + Markdown + SVG')
    .option('--preset <name>', MODEL_BENCH_PRESETS.join(' | '), oneOf('--preset', MODEL_BENCH_PRESETS), 'flash')
    .option('--layers <n>', 'decoder layers (the preset\'s ratio pattern: 0, 0, 4, 128, 4, ... for flash)', intArg('--layers', 1, 61), d.layers)
    .option('--batches <list>', 'decode batches (sequences per step), or none', d.batches)
    .option('--contexts <list>', 'decode contexts (positions cached per sequence), e.g. 1k,32k, or none', d.contexts)
    .option('--prefill <list>', 'prefill prompt lengths, e.g. 4k,32k, or none', d.prefill)
    .option('--prefill-chunk <n>', 'tokens per prefill call (the model\'s maxRows; at least the largest batch)', String(d.prefillChunk))
    .option('--kv-fill <how>', `decode contexts: ${KV_FILLS.join(' | ')} (skip: positions advanced without computing them)`, oneOf('--kv-fill', KV_FILLS), 'skip')
    .option('--warmup <n>', 'untimed decode steps per row', intArg('--warmup', 0), d.warmup)
    .option('--runs <n>', 'timed decode steps per row', intArg('--runs', 1), d.runs)
    .option('--prefill-runs <n>', 'timed prefills per length', intArg('--prefill-runs', 1), d.prefillRuns)
    .option('--profile-runs <n>', 'profiled decode steps per row for the per-layer parts (0: none)', intArg('--profile-runs', 0), d.profileRuns)
    .option('--moe-backend <name>', `every layer's MoE block: ${GPU_MOE_BACKENDS.join(' | ')} (mega_moe: the fused kernel; auto: fused for calls of >= MEGAMOE_MODEL_MEGA_MIN_ROWS rows, default 512, unfused below)`, oneOf('--moe-backend', GPU_MOE_BACKENDS), 'auto')
    .option('--enforce-eager', 'launch each kernel of a decode step instead of replaying a CUDA graph per (batch, context bucket) (as serve --enforce-eager)')
    .option('--kv-cache-gib <n>', 'plan the caches from this many GiB instead of the free memory (e.g. under ncu, which saves and restores every allocation per replay pass)')
    .option('--seed <n>', 'seed of the weights and token ids', intArg('--seed', 0, 0xffff), 1)
    .option('--out <dir>', 'output directory', 'bench-out')
    .option('--commit <sha>', 'commit to record (default: $MEGAMOE_COMMIT, else git rev-parse --short HEAD)')
    .action(async (opts: ModelBenchCliOptions) => {
      const o = modelBenchOptionsFromCli(opts, `megamoe ${process.argv.slice(2).join(' ')}`);
      const report = await runModelBench(o, (l) => process.stderr.write(`${l}\n`));
      process.stdout.write(`${report.decode.length} decode and ${report.prefill.length} prefill rows written to ${o.out}\n`);
    });
}
