// The MoE benchmark's results as data (JSON), as a Markdown table, and as figures: what `megamoe bench moe` writes
// into --out. Pure functions: no GPU, no I/O except writeMoeReport.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** H100 SXM datasheet figures (SPEC 6): the roofline every number is a fraction of. */
export const H100_ROOFLINE = Object.freeze({ fp8DenseTflops: 1979, hbmTBs: 3.35 });

export interface MoeShapeSummary {
  preset: string;
  hidden: number;
  inter: number;
  experts: number;
  topK: number;
  sharedExperts: number;
}

/** One measured configuration: a backend (or an anchor) at one token count. */
export interface MoeBenchRow {
  preset: string;
  /** 'unfused', 'unfused+graph', 'reference' or 'cublaslt-fp8 (anchor)' (the GEMM alone is in gemmAlone) */
  backend: string;
  tokens: number;
  /** median over `runs` timed runs, microseconds */
  medianUs: number;
  minUs: number;
  maxUs: number;
  runs: number;
  /** SPEC 6: 2 * T * K * 3 * H * I (routed experts only; the shared expert's FLOPs are extra work, not counted) */
  flops: number;
  /** distinct routed experts the routing touched */
  expertsTouched: number;
  /** bytes of expert weights those experts hold (codes + f32 block scales), plus the shared expert's */
  weightBytes: number;
  tflops: number;
  gbps: number;
  /** tflops / roofline FP8 dense */
  computeFraction: number;
  /** gbps / roofline HBM */
  bandwidthFraction: number;
  /** max(flops / peak, bytes / bandwidth) / measured time: 1 = at the roofline */
  rooflineFraction: number;
  /** calc_diff of this backend's y against the reference backend's, where both ran */
  calcDiffVsReference?: number;
  note?: string;
}

export interface HostOverheadRow {
  preset: string;
  tokens: number;
  /** host wall time to enqueue one layer (all launches), microseconds, median */
  eagerHostUs: number;
  /** host wall time of one cuGraphLaunch of the captured layer, microseconds, median */
  graphHostUs: number;
  /** GPU time per layer (events) without / with the graph */
  eagerGpuUs: number;
  graphGpuUs: number;
}

/** The grouped GEMM alone at the issue's bar shapes (through the TypeScript launcher). */
export interface GemmAloneRow {
  label: string;
  groups: number;
  rowsPerGroup: number;
  n: number;
  k: number;
  medianUs: number;
  runs: number;
  tflops: number;
  /** tflops / the FP8 dense peak */
  computeFraction: number;
}

export interface MoeBenchReport {
  meta: {
    gpu: string;
    smCount?: number;
    driver?: string;
    commit: string;
    command: string;
    date: string;
    warmup: number;
    runs: number;
    roofline: typeof H100_ROOFLINE;
    shapes: MoeShapeSummary[];
    notes: string[];
  };
  rows: MoeBenchRow[];
  hostOverhead: HostOverheadRow[];
  gemmAlone: GemmAloneRow[];
  /** what was not measured, and why (no cuBLASLt, reference capped ...) */
  skipped: Array<{ what: string; reason: string }>;
}

/** Median of a non-empty list (mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of an empty list');
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** SPEC 6: FLOPs of the routed experts of a MoE layer, 2 * T * K * 3 * H * I. */
export function moeFlops(tokens: number, topK: number, hidden: number, inter: number): number {
  return 2 * tokens * topK * 3 * hidden * inter;
}

/** Bytes of one expert's FP8 weights: 3 * H * I codes plus f32 128x128 block scales of W1, W3 and W2. */
export function expertWeightBytes(hidden: number, inter: number): number {
  const codes = 3 * hidden * inter;
  const scales = 3 * Math.ceil(hidden / 128) * Math.ceil(inter / 128) * 4;
  return codes + scales;
}

/** Fills the derived columns of a row from its measured time, FLOPs and bytes. */
export function deriveRates(row: Omit<MoeBenchRow, 'tflops' | 'gbps' | 'computeFraction' | 'bandwidthFraction' | 'rooflineFraction'>,
  roofline = H100_ROOFLINE): MoeBenchRow {
  const seconds = row.medianUs * 1e-6;
  const tflops = seconds > 0 ? row.flops / seconds / 1e12 : 0;
  const gbps = seconds > 0 ? row.weightBytes / seconds / 1e9 : 0;
  const bound = Math.max(row.flops / (roofline.fp8DenseTflops * 1e12), row.weightBytes / (roofline.hbmTBs * 1e12));
  return {
    ...row,
    tflops,
    gbps,
    computeFraction: tflops / roofline.fp8DenseTflops,
    bandwidthFraction: gbps / (roofline.hbmTBs * 1e3),
    rooflineFraction: seconds > 0 ? bound / seconds : 0,
  };
}

function fmt(v: number, digits: number): string {
  if (!Number.isFinite(v)) return '-';
  return v.toFixed(digits);
}

function pct(v: number): string {
  return Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : '-';
}

function timeCell(us: number): string {
  return us >= 10000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(1)} us`;
}

/** The Markdown section: a header line with GPU/commit/command, one table per preset, host overheads, skips. */
export function renderMoeMarkdown(report: MoeBenchReport): string {
  const { meta } = report;
  const lines: string[] = [];
  lines.push(`GPU: ${meta.gpu}${meta.smCount ? ` (${meta.smCount} SMs)` : ''}${meta.driver ? `, driver ${meta.driver}` : ''}; ` +
    `commit \`${meta.commit}\`; ${meta.date}.`);
  lines.push(`Command: \`${meta.command}\``);
  lines.push(`Timing: CUDA events around each forward, ${meta.warmup} warm-up runs, median of ${meta.runs}. ` +
    `Roofline: ${meta.roofline.fp8DenseTflops} TFLOPS FP8 dense, ${meta.roofline.hbmTBs} TB/s (H100 SXM datasheet).`);
  lines.push('');
  for (const shape of meta.shapes) {
    const rows = report.rows.filter((r) => r.preset === shape.preset).sort((a, b) => a.tokens - b.tokens || a.backend.localeCompare(b.backend));
    if (rows.length === 0) continue;
    lines.push(`#### ${shape.preset}: H ${shape.hidden}, I ${shape.inter}, ${shape.experts} experts, top-${shape.topK}, ${shape.sharedExperts} shared`);
    lines.push('');
    lines.push('| T | backend | median | TFLOPS | % FP8 peak | experts touched | weight GB/s | % HBM | % roofline | calc_diff vs ref |');
    lines.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of rows) {
      lines.push(`| ${r.tokens} | ${r.backend}${r.note ? ` (${r.note})` : ''} | ${timeCell(r.medianUs)} | ${fmt(r.tflops, 1)} | ${pct(r.computeFraction)} | ` +
        `${r.expertsTouched} | ${fmt(r.gbps, 0)} | ${pct(r.bandwidthFraction)} | ${pct(r.rooflineFraction)} | ` +
        `${r.calcDiffVsReference === undefined ? '' : r.calcDiffVsReference.toExponential(2)} |`);
    }
    lines.push('');
  }
  if (report.hostOverhead.length > 0) {
    lines.push('#### Host time per layer, eager launches vs one CUDA graph');
    lines.push('');
    lines.push('| preset | T | host us (eager) | host us (graph) | GPU us (eager) | GPU us (graph) |');
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: |');
    for (const h of report.hostOverhead) {
      lines.push(`| ${h.preset} | ${h.tokens} | ${fmt(h.eagerHostUs, 1)} | ${fmt(h.graphHostUs, 1)} | ${fmt(h.eagerGpuUs, 1)} | ${fmt(h.graphGpuUs, 1)} |`);
    }
    lines.push('');
  }
  if (report.gemmAlone.length > 0) {
    lines.push('#### The grouped FP8 GEMM alone (bf16 out, 128-row path, through src/kernels/grouped-gemm.ts)');
    lines.push('');
    lines.push('| shape | median | TFLOPS | % FP8 peak |');
    lines.push('| --- | ---: | ---: | ---: |');
    for (const g of report.gemmAlone) {
      lines.push(`| ${g.label} | ${timeCell(g.medianUs)} | ${fmt(g.tflops, 1)} | ${pct(g.computeFraction)} |`);
    }
    lines.push('');
  }
  for (const note of meta.notes) lines.push(`- ${note}`);
  for (const s of report.skipped) lines.push(`- Not measured: ${s.what}: ${s.reason}`);
  return `${lines.join('\n').trimEnd()}\n`;
}

/** Writes moe.json, moe.md and moe.svg into `dir`; returns their paths. */
export async function writeMoeReport(report: MoeBenchReport, dir: string): Promise<{ json: string; markdown: string; svg: string }> {
  mkdirSync(dir, { recursive: true });
  const json = join(dir, 'moe.json');
  const markdown = join(dir, 'moe.md');
  const svg = join(dir, 'moe.svg');
  writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(markdown, renderMoeMarkdown(report));
  // vega / vega-lite load only here: every other CLI command (which imports this module through bench/moe.ts) starts
  // without them, and runs with a pack that leaves them out.
  const { renderMoePlotSvg } = await import('./plot.js');
  writeFileSync(svg, await renderMoePlotSvg(report.rows));
  return { json, markdown, svg };
}
