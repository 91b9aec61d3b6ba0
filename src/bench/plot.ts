// SVG figures of the MoE benchmark, one row of panels per preset: time per layer vs T (log-log) for the fused and
// unfused layers as CUDA graphs, the read floor (a kernel that only reads the touched experts once) and this GPU's
// datasheet roofline; next to it each layer's time / floor. Vega-Lite spec -> Vega -> headless SVG (no browser).
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { READ_FLOOR, type MoeBenchRow } from './report.js';
import { epRowTransport, SHARED_GPU_WARNING, type EpBenchReport } from './ep-report.js';
import type { ModelBenchReport, TimedRow } from './model-report.js';

/** The measured series the figure draws (others, eager launches, the CPU reference and the anchor, stay in the table). */
export const PLOTTED_BACKENDS: readonly string[] = ['mega_moe+graph', 'unfused+graph', READ_FLOOR];
/** The series name of the roofline line (max(FLOPs / FP8 peak, bytes / HBM peak) of the GPU that ran). */
export const ROOFLINE_SERIES = 'roofline (this GPU\'s peaks)';

interface PlotPoint {
  preset: string;
  series: string;
  /** 'measured' (solid) or 'bound' (dashed) */
  kind: 'measured' | 'bound';
  tokens: number;
  timeUs: number;
  vsFloor?: number;
}

/** The points of the figure: the plotted backends' medians and one roofline point per (preset, T). */
export function moePlotPoints(rows: readonly MoeBenchRow[]): PlotPoint[] {
  const ok = (v: number | undefined): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;
  const points: PlotPoint[] = [];
  const roof = new Map<string, PlotPoint>();
  for (const r of rows) {
    if (PLOTTED_BACKENDS.includes(r.backend) && ok(r.medianUs)) {
      points.push({
        preset: r.preset, series: r.backend, kind: r.backend === READ_FLOOR ? 'bound' : 'measured', tokens: r.tokens, timeUs: r.medianUs,
        ...(r.backend !== READ_FLOOR && ok(r.vsFloor) ? { vsFloor: r.vsFloor } : {}),
      });
    }
    // The roofline of the layer: from any row that counts the layer's bytes (the anchor counts one expert).
    const key = `${r.preset}/${r.tokens}`;
    if (r.backend !== 'cublaslt-fp8 (anchor)' && ok(r.rooflineUs) && !roof.has(key)) {
      roof.set(key, { preset: r.preset, series: ROOFLINE_SERIES, kind: 'bound', tokens: r.tokens, timeUs: r.rooflineUs });
    }
  }
  return [...points, ...roof.values()].sort((a, b) => a.preset.localeCompare(b.preset) || a.series.localeCompare(b.series) || a.tokens - b.tokens);
}

/** The Vega-Lite spec of the figure (exported so tests can check what is plotted without rendering). */
export function moePlotSpec(rows: readonly MoeBenchRow[]): TopLevelSpec {
  const values = moePlotPoints(rows);
  const x = { field: 'tokens', type: 'quantitative', title: 'tokens T', scale: { type: 'log', base: 2 } } as const;
  const color = { field: 'series', type: 'nominal', title: 'series', legend: { labelLimit: 240 } } as const;
  const strokeDash = { field: 'kind', type: 'nominal', title: 'kind' } as const;
  const presets = [...new Set(values.map((v) => v.preset))];
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'MoE layer time vs tokens, against the read floor and the roofline of this GPU',
    data: { values },
    vconcat: presets.map((preset) => ({
      hconcat: [
        {
          width: 360, height: 240, title: `${preset}: time per layer`,
          transform: [{ filter: { field: 'preset', equal: preset } }],
          mark: { type: 'line', point: true },
          encoding: { x, y: { field: 'timeUs', type: 'quantitative', title: 'time per layer (us)', scale: { type: 'log' } }, color, strokeDash },
        },
        {
          width: 360, height: 240, title: `${preset}: time / floor`,
          transform: [{ filter: { field: 'preset', equal: preset } }, { filter: 'isValid(datum.vsFloor)' }],
          mark: { type: 'line', point: true },
          encoding: { x, y: { field: 'vsFloor', type: 'quantitative', title: 'time / floor (1 = at the floor)', scale: { zero: false } }, color },
        },
      ],
    })),
  } as unknown as TopLevelSpec;
}

/** A Vega-Lite spec rendered headless to an SVG string. */
async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Renders the figure to an SVG string. */
export function renderMoePlotSvg(rows: readonly MoeBenchRow[]): Promise<string> {
  return renderSvg(moePlotSpec(rows));
}

/** The EP figure's series of one backend: its layer time (max over ranks), each rank's median, its slowest rank's bound. */
export const epLayerSeries = (backend: string): string => `${backend} (max over ranks)`;
export const epRankSeries = (backend: string, rank: number): string => `${backend} rank ${rank}`;
export const epRooflineSeries = (backend: string): string => `${backend} roofline (slowest rank's local experts / HBM peak)`;

/** The points of the EP figure (`bench moe --ep N`): one per (preset, series, T) with a finite positive time. */
export function epPlotPoints(report: Pick<EpBenchReport, 'rows'>): PlotPoint[] {
  const ok = (v: number | undefined): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;
  const points: PlotPoint[] = [];
  for (const r of report.rows) {
    if (ok(r.maxOverRanksUs)) points.push({ preset: r.preset, series: epLayerSeries(r.backend), kind: 'measured', tokens: r.tokens, timeUs: r.maxOverRanksUs });
    r.perRankMedianUs.forEach((us, rank) => {
      if (ok(us)) points.push({ preset: r.preset, series: epRankSeries(r.backend, rank), kind: 'measured', tokens: r.tokens, timeUs: us });
    });
    if (ok(r.rooflineUs)) points.push({ preset: r.preset, series: epRooflineSeries(r.backend), kind: 'bound', tokens: r.tokens, timeUs: r.rooflineUs });
  }
  return points.sort((a, b) => a.preset.localeCompare(b.preset) || a.series.localeCompare(b.series) || a.tokens - b.tokens);
}

/** The Vega-Lite spec of the EP figure: time per layer vs tokens per rank (log-log), one panel per preset. */
export function epPlotSpec(report: Pick<EpBenchReport, 'rows' | 'meta'>): TopLevelSpec {
  const values = epPlotPoints(report);
  const presets = [...new Set(values.map((v) => v.preset))];
  const { ep, transport, sharedGpu, backends } = report.meta;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `MoE layer time, EP ${ep}: ${backends.map((b) => `${b} over ${epRowTransport(b, transport)}`).join(', ')}, against the roofline of this GPU` +
      `${sharedGpu ? ` (ranks share one GPU: ${SHARED_GPU_WARNING})` : ''}`,
    data: { values },
    vconcat: presets.map((preset) => ({
      width: 420, height: 260, title: `${preset}: time per layer`,
      transform: [{ filter: { field: 'preset', equal: preset } }],
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'tokens', type: 'quantitative', title: 'tokens per rank', scale: { type: 'log', base: 2 } },
        y: { field: 'timeUs', type: 'quantitative', title: 'time per layer (us)', scale: { type: 'log' } },
        color: { field: 'series', type: 'nominal', title: 'series', legend: { labelLimit: 320 } },
        strokeDash: { field: 'kind', type: 'nominal', title: 'kind' },
      },
    })),
  } as unknown as TopLevelSpec;
}

/** Renders the EP figure to an SVG string. */
export function renderEpPlotSvg(report: Pick<EpBenchReport, 'rows' | 'meta'>): Promise<string> {
  return renderSvg(epPlotSpec(report));
}

/** One point of the model figure: a decode step (x = batch) or a prefill (x = tokens), measured or its roofline. */
interface ModelPlotPoint {
  panel: 'decode' | 'prefill';
  series: string;
  kind: 'measured' | 'bound';
  x: number;
  timeUs: number;
}

/** The points of the model figure: measured rows and every row's roofline (rows that did not run have only that). */
export function modelPlotPoints(report: Pick<ModelBenchReport, 'decode' | 'prefill'>): ModelPlotPoint[] {
  const ok = (v: number) => Number.isFinite(v) && v > 0;
  const out: ModelPlotPoint[] = [];
  const add = (panel: ModelPlotPoint['panel'], label: string, x: number, r: TimedRow) => {
    if (r.status === 'measured' && ok(r.medianUs)) out.push({ panel, series: label, kind: 'measured', x, timeUs: r.medianUs });
    if (ok(r.rooflineUs)) out.push({ panel, series: `${label}, roofline`, kind: 'bound', x, timeUs: r.rooflineUs });
  };
  for (const r of report.decode) add('decode', `context ${r.context}`, r.batch, r);
  for (const r of report.prefill) add('prefill', 'prefill', r.tokens, r);
  return out.sort((a, b) => a.panel.localeCompare(b.panel) || a.series.localeCompare(b.series) || a.x - b.x);
}

/** The Vega-Lite spec of the model figure: decode step time vs batch, prefill time vs tokens (log-log), with rooflines. */
export function modelPlotSpec(report: Pick<ModelBenchReport, 'decode' | 'prefill' | 'meta'>): TopLevelSpec {
  const values = modelPlotPoints(report);
  const panel = (p: ModelPlotPoint['panel'], title: string, xTitle: string, yTitle: string) => ({
    width: 360, height: 240, title,
    transform: [{ filter: { field: 'panel', equal: p } }],
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'x', type: 'quantitative', title: xTitle, scale: { type: 'log', base: 2 } },
      y: { field: 'timeUs', type: 'quantitative', title: yTitle, scale: { type: 'log' } },
      color: { field: 'series', type: 'nominal', title: 'series', legend: { labelLimit: 240 } },
      strokeDash: { field: 'kind', type: 'nominal', title: 'kind' },
    },
  });
  const panels = [];
  if (values.some((v) => v.panel === 'decode')) panels.push(panel('decode', 'decode step', 'batch (sequences)', 'step time (us)'));
  if (values.some((v) => v.panel === 'prefill')) panels.push(panel('prefill', 'prefill', 'prompt tokens', 'prefill time (us)'));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: `${report.meta.preset}, ${report.meta.layers} layers: model step time against the roofline of this GPU`,
    data: { values },
    hconcat: panels,
  } as unknown as TopLevelSpec;
}

/** Renders the model figure to an SVG string. */
export function renderModelPlotSvg(report: Pick<ModelBenchReport, 'decode' | 'prefill' | 'meta'>): Promise<string> {
  return renderSvg(modelPlotSpec(report));
}
