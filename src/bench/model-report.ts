// `megamoe bench model`'s results as data (model.json), a Markdown table (model.md) and a figure (model.svg; plot.ts).
// Pure except writeModelReport.
import { median, renderCeilings, renderRunHeader, writeReportFiles, type BenchRunMeta, type ReportFiles } from './report.js';
import { stepRoofline, type KvFill, type StepCost } from './model-plan.js';
import type { LayerMark } from '../gpu-model/layer.js';

/** Medians of one layer's parts over the profiled steps, microseconds (CUDA events at the LAYER_MARKS points). */
export interface LayerPartsRow {
  layer: number;
  ratio: number;
  hashRouted: boolean;
  /** the attention sub-block without the q renorm */
  attentionUs: number;
  /** the q renorm (one kernel, mo_q_renorm) */
  qRenormUs: number;
  /** hc_pre + ffn_norm, router, unfused MoE, hc_post */
  moeUs: number;
}

/** What every timed row carries: time, its cost, the roofline on this GPU. */
export interface TimedRow {
  /** 'measured' or the reason it did not run */
  status: 'measured' | 'not run';
  reason?: string;
  /** median over runs of the CUDA-event time of the call(s), microseconds */
  medianUs: number;
  minUs: number;
  maxUs: number;
  runs: number;
  /** host wall time of the same calls, median, microseconds */
  hostMedianUs: number;
  tokensPerS: number;
  cost: StepCost;
  rooflineUs: number;
  bound: 'HBM' | 'compute';
  /** rooflineUs / medianUs (1 = at the roofline) */
  rooflineFraction: number;
  /** the same bytes at the measured copy bandwidth, microseconds */
  copyBoundUs?: number;
}

export interface DecodeRow extends TimedRow {
  batch: number;
  context: number;
  /** per-layer parts (profiled steps), and the rest of the step = profiled step median - sum of the layers' parts */
  layers?: LayerPartsRow[];
  profiledStepUs?: number;
  restUs?: number;
}

export interface PrefillRow extends TimedRow {
  tokens: number;
  chunk: number;
}

export interface ModelBenchReport {
  meta: BenchRunMeta & {
    preset: string; layers: number; ratios: number[]; kvFill: KvFill; prefillChunk: number;
    /** the layers' MoE backend (absent in reports before it was an option: unfused) */
    moeBackend?: string;
    shape: { dim: number; heads: number; headDim: number; experts: number; topK: number; inter: number; vocab: number; window: number; indexTopk: number };
  };
  decode: DecodeRow[];
  prefill: PrefillRow[];
  skipped: Array<{ what: string; reason: string }>;
}

/** A measured row from its samples and cost (tokens: new tokens of the calls). */
export function timedRow(deviceUs: readonly number[], hostUs: readonly number[], tokens: number, cost: StepCost,
  ceilings: BenchRunMeta['ceilings']): TimedRow {
  const medianUs = median(deviceUs);
  const r = stepRoofline(cost, ceilings);
  return {
    status: 'measured', medianUs, minUs: Math.min(...deviceUs), maxUs: Math.max(...deviceUs), runs: deviceUs.length,
    hostMedianUs: median(hostUs), tokensPerS: tokens / (medianUs * 1e-6), cost, rooflineUs: r.rooflineUs, bound: r.bound,
    rooflineFraction: r.rooflineUs / medianUs, ...(r.copyUs === undefined ? {} : { copyBoundUs: r.copyUs }),
  };
}

/** A row that did not run, with its reason and the roofline it would be held to. */
export function notRunRow(reason: string, cost: StepCost, ceilings: BenchRunMeta['ceilings']): TimedRow {
  const r = stepRoofline(cost, ceilings);
  return {
    status: 'not run', reason, medianUs: NaN, minUs: NaN, maxUs: NaN, runs: 0, hostMedianUs: NaN, tokensPerS: NaN, cost,
    rooflineUs: r.rooflineUs, bound: r.bound, rooflineFraction: NaN, ...(r.copyUs === undefined ? {} : { copyBoundUs: r.copyUs }),
  };
}

/**
 * Per-layer medians from profiled steps: marks[step] holds, per layer, the elapsed ms of each LAYER_MARKS point since
 * the step's first mark. Parts: attention = (q-renorm - attention) + (moe - attention-rest), q renorm =
 * attention-rest - q-renorm, MoE = end - moe.
 */
export function layerParts(steps: ReadonlyArray<ReadonlyArray<Readonly<Record<LayerMark, number>>>>,
  layers: ReadonlyArray<{ ratio: number; hashRouted: boolean }>): LayerPartsRow[] {
  return layers.map((l, i) => {
    const at = (f: (m: Readonly<Record<LayerMark, number>>) => number) => median(steps.map((s) => f(s[i]) * 1e3));
    return {
      layer: i, ratio: l.ratio, hashRouted: l.hashRouted,
      attentionUs: at((m) => (m['q-renorm'] - m.attention) + (m.moe - m['attention-rest'])),
      qRenormUs: at((m) => m['attention-rest'] - m['q-renorm']),
      moeUs: at((m) => m.end - m.moe),
    };
  });
}

const fmt = (v: number | undefined, d: number) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '-');
const pct = (v: number | undefined) => (typeof v === 'number' && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : '-');
function time(us: number | undefined): string {
  if (typeof us !== 'number' || !Number.isFinite(us)) return '-';
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  return us >= 10000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(1)} us`;
}
const gb = (b: number) => `${(b / 1e9).toFixed(2)}`;
const tf = (f: number) => `${(f / 1e12).toFixed(2)}`;
const ctxLabel = (n: number) => (n % 1024 === 0 ? `${n / 1024}K` : String(n));

/** A row's timing cells (median, min, host wall, tokens/s, % roofline), or why it did not run. */
function timingCells(r: TimedRow): string {
  return r.status === 'measured'
    ? `${time(r.medianUs)} | ${time(r.minUs)} | ${time(r.hostMedianUs)} | ${fmt(r.tokensPerS, 0)} | ${pct(r.rooflineFraction)}`
    : `not run: ${r.reason} | | | | `;
}

function costCells(r: TimedRow): string {
  return `${gb(r.cost.weightBytes)} | ${gb(r.cost.cacheBytes)} | ${tf(r.cost.fp8Flops)} | ${tf(r.cost.otherFlops)} | ${time(r.rooflineUs)} (${r.bound}) | ${time(r.copyBoundUs)}`;
}

export function renderModelMarkdown(report: ModelBenchReport): string {
  const { meta } = report; const s = meta.shape;
  const lines: string[] = [...renderRunHeader(meta)];
  lines.push(`Model: ${meta.preset} shape (D ${s.dim}, ${s.heads} heads x ${s.headDim}, ${s.experts} experts top-${s.topK}, I ${s.inter}, vocab ${s.vocab}, ` +
    `window ${s.window}, indexer top-${s.indexTopk}), ${meta.layers} layers (compress ratios ${meta.ratios.join(', ')}), synthetic random weights ` +
    `(dense weights generated on the host, experts on the GPU), the ${meta.moeBackend ?? 'unfused'} MoE backend, no MTP.`);
  lines.push(`Timing: CUDA events on the model's stream around each call (one host sync per call, at its end), ` +
    `${meta.warmup} warm-up steps, median of ${meta.runs}; decode contexts filled by "${meta.kvFill}"` +
    `${meta.kvFill === 'skip' ? ' (positions advanced without computing them: the cache rows hold zeros; the attention reads as many rows as with real contents)' : ''}; ` +
    `prefill in calls of ${meta.prefillChunk} tokens.`);
  lines.push(...renderCeilings(meta.ceilings));
  lines.push('Roofline = max((weights + cache bytes) / HBM peak, FP8 FLOPs / FP8 peak + other FLOPs / (FP8 peak / 2)), this GPU\'s peaks; ' +
    '"copy bound" = the same bytes at the measured copy bandwidth. Bytes and FLOPs: src/bench/model-plan.ts (docs/BENCHMARKS.md).');
  lines.push('');
  if (report.decode.length > 0) {
    lines.push('#### Decode step (one new token per sequence)');
    lines.push('');
    lines.push('| batch | context | step (median) | min | host wall | tokens/s | % roofline | weights GB | cache GB | FP8 TFLOP | other TFLOP | roofline | copy bound | experts touched / layer |');
    lines.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of report.decode) {
      const touched = r.cost.expertsTouched.length ? fmt(r.cost.expertsTouched.reduce((a, b) => a + b, 0) / r.cost.expertsTouched.length, 1) : '-';
      lines.push(`| ${r.batch} | ${ctxLabel(r.context)} | ${timingCells(r)} | ${costCells(r)} | ${touched} |`);
    }
    lines.push('');
  }
  if (report.prefill.length > 0) {
    lines.push('#### Prefill (one sequence from position 0)');
    lines.push('');
    lines.push('| tokens | calls of | time (median) | min | host wall | tokens/s | % roofline | weights GB | cache GB | FP8 TFLOP | other TFLOP | roofline | copy bound |');
    lines.push('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of report.prefill) {
      lines.push(`| ${ctxLabel(r.tokens)} | ${r.chunk} | ${timingCells(r)} | ${costCells(r)} |`);
    }
    lines.push('');
  }
  for (const r of report.decode.filter((d) => d.layers && d.layers.length > 0)) {
    lines.push(`#### Per layer, decode batch ${r.batch}, context ${ctxLabel(r.context)} (profiled step ${time(r.profiledStepUs)}; rest of the step ${time(r.restUs)})`);
    lines.push('');
    lines.push('| layer | ratio | attention | q renorm | MoE | layer total |');
    lines.push('| ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const l of r.layers!) {
      lines.push(`| ${l.layer}${l.hashRouted ? ' (hash)' : ''} | ${l.ratio} | ${time(l.attentionUs)} | ${time(l.qRenormUs)} | ${time(l.moeUs)} | ${time(l.attentionUs + l.qRenormUs + l.moeUs)} |`);
    }
    lines.push('');
  }
  lines.push('- Per layer: CUDA events at the attention sub-block\'s start, around the q renorm kernel, at the MoE sub-block\'s start and the layer\'s end, ' +
    'on separate profiled steps (the events cost a little host time each); "rest" = the profiled step - the layers: call set-up (cache growth, ' +
    'table and metadata uploads), embedding, hc_head, logits, device sampling, the token download.');
  for (const note of meta.notes) lines.push(`- ${note}`);
  for (const source of meta.ceilings.sources) lines.push(`- Ceiling: ${source}`);
  for (const sk of report.skipped) lines.push(`- Not measured: ${sk.what}: ${sk.reason}`);
  return `${lines.join('\n').trimEnd()}\n`;
}

/** Writes model.json, model.md and model.svg into `dir`; returns their paths. */
export function writeModelReport(report: ModelBenchReport, dir: string): Promise<ReportFiles> {
  return writeReportFiles(dir, 'model', report, renderModelMarkdown(report), (plot) => plot.renderModelPlotSvg(report));
}
