// SVG figures of the MoE benchmark: time per layer vs T (log-log) and the fraction of the roofline vs T, one
// line per backend, one row of panels per preset. Vega-Lite spec -> Vega -> headless SVG (no browser, no canvas).
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { MoeBenchRow } from './report.js';

interface PlotPoint {
  preset: string;
  backend: string;
  tokens: number;
  timeUs: number;
  rooflinePct: number;
}

/** The Vega-Lite spec of the figure (exported so tests can check what is plotted without rendering). */
export function moePlotSpec(rows: readonly MoeBenchRow[]): TopLevelSpec {
  const values: PlotPoint[] = rows
    .filter((r) => r.medianUs > 0 && Number.isFinite(r.medianUs))
    .map((r) => ({
      preset: r.preset,
      backend: r.backend,
      tokens: r.tokens,
      timeUs: r.medianUs,
      rooflinePct: 100 * r.rooflineFraction,
    }));
  const x = { field: 'tokens', type: 'quantitative', title: 'tokens T', scale: { type: 'log', base: 2 } } as const;
  const color = { field: 'backend', type: 'nominal', title: 'backend', legend: { labelLimit: 240 } } as const;
  const presets = [...new Set(values.map((v) => v.preset))];
  const panel = (preset: string, y: Record<string, unknown>) => ({
    width: 320,
    height: 220,
    title: preset,
    transform: [{ filter: { field: 'preset', equal: preset } }],
    mark: { type: 'line', point: true },
    encoding: { x, y, color },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: 'MoE layer: time and roofline fraction vs tokens',
    data: { values },
    vconcat: presets.map((preset) => ({
      hconcat: [
        panel(preset, { field: 'timeUs', type: 'quantitative', title: 'time per layer (us)', scale: { type: 'log' } }),
        panel(preset, { field: 'rooflinePct', type: 'quantitative', title: '% of roofline (max of FP8 compute, HBM)' }),
      ],
    })),
  } as unknown as TopLevelSpec;
}

/** Renders the figure to an SVG string. */
export async function renderMoePlotSvg(rows: readonly MoeBenchRow[]): Promise<string> {
  const { spec } = compile(moePlotSpec(rows));
  const view = new vega.View(vega.parse(spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
