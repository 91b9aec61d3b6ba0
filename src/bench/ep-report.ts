// The report of `megamoe bench moe --ep N` (the fused mega_moe kernel across ranks, src/backends/mega-moe-ep-rank.ts,
// and the unfused expert-parallel baseline, src/backends/unfused-ep.ts, each row labelled with its backend): the
// per-rank timings as data (JSON), Markdown tables and the figure's points. Pure functions: no GPU, no I/O except
// writeEpReport. What a row means (WHY these figures):
//  * A layer is done when its slowest rank is done, so the layer time of a (backend, T) is the MAX over ranks of each
//    rank's median (each rank times its own forward on its own stream with CUDA events); every rank's median is kept
//    too, so an imbalance shows.
//  * The roofline beside a figure is the weight-streaming bound of the rank that set it: the bytes of the LOCAL
//    experts the whole world's routing touched on the slowest rank (plus its shared expert: every rank runs it on its
//    own tokens), codes + f32 block scales, each byte read once, over this GPU's HBM peak (derived from its device
//    attributes, report.ts deriveCeilings). Each rank's own bound is listed beside its median. Both backends run the
//    same routing per (rank, T), so their bounds differ only by which rank was the slowest.
//  * With several ranks on one GPU they share its SMs and HBM: such a run checks the machinery, its timings mean
//    nothing, and the report says so in its meta, its Markdown and on stderr.
import { formatBytes } from '../kernels/mega-moe-layout.js';
import {
  expertWeightBytes, median, renderRunHeader, writeReportFiles, type BenchRunMeta, type BenchShapeSummary, type ReportFiles,
} from './report.js';

/** The line printed and recorded when ranks share a GPU. */
export const SHARED_GPU_WARNING = 'timings in this mode mean nothing';

/** Backends `bench moe --ep N` (N > 1) can time. */
export const EP_BENCH_BACKENDS = ['mega_moe', 'unfused'] as const;
export type EpBenchBackend = (typeof EP_BENCH_BACKENDS)[number];
/** --backend of `bench moe --ep N` when not given: the fused kernel and the baseline in one run and one report. */
export const EP_BENCH_DEFAULT_BACKENDS = 'mega_moe,unfused';
/** How the fused kernel's rows travel between ranks (--transport is the unfused baseline's). */
export const MEGA_EP_TRANSPORT = 'symmetric memory';
/** Tokens per rank the EP bench runs by default (issue 12, deliverable 6: 1..8192). */
export const EP_BENCH_DEFAULT_TOKENS = '1,8,64,128,512,1024,4096,8192';
/** The combine kernel takes one grid row per token; the owner's one-slot combine gets every row a rank receives. */
export const EP_COMBINE_MAX_ROWS = 65535;

/** What a backend's rows travel over: the fused kernel's symmetric memory, or the unfused baseline's --transport. */
export function epRowTransport(backend: string, transport: string): string {
  return backend === 'mega_moe' ? MEGA_EP_TRANSPORT : transport;
}

/** One rank's timed forward of one backend at one T. */
export interface EpRankStep {
  preset: string;
  backend: string;
  tokens: number;
  rank: number;
  device: number;
  /** every timed sample, microseconds (CUDA events on the rank's stream) */
  samplesUs: number[];
  medianUs: number;
  minUs: number;
  maxUs: number;
  runs: number;
  /** rows (token x slot) this rank sent to owners (its own included) / received as an owner (mega_moe: routed rows only) */
  rowsSent: number;
  rowsReceived: number;
  /** GEMM path of the owner's grouped GEMMs / the fused kernel ('decode' | 'normal') */
  path?: string;
  /** distinct LOCAL routed experts the whole world's routing touched on this rank */
  localExpertsTouched: number;
  /** their bytes plus the shared expert's (codes + f32 block scales) */
  localWeightBytes: number;
  /** localWeightBytes / HBM peak, microseconds */
  rooflineUs: number;
}

/** One (preset, backend, T): the layer time over all ranks. */
export interface EpBenchRow {
  preset: string;
  backend: string;
  /** what the rows travelled over (epRowTransport) */
  transport: string;
  ep: number;
  tokens: number;
  /** max over ranks of each rank's median, microseconds: the layer time */
  maxOverRanksUs: number;
  /** the rank whose median that is */
  slowestRank: number;
  /** each rank's median, by rank */
  perRankMedianUs: number[];
  /** bytes of the slowest rank's touched local experts + its shared expert */
  rooflineBytes: number;
  localExpertsTouched: number;
  /** rooflineBytes / this GPU's HBM peak, microseconds */
  rooflineUs: number;
  /** rooflineUs / maxOverRanksUs: 1 = at the roofline */
  rooflineFraction: number;
  /** the most rows any rank received */
  maxRowsReceived: number;
}

export interface EpShapeSummary extends BenchShapeSummary {
  expertsPerRank: number;
  /** mega_moe: each rank's symmetric buffer (MegaMoe.layout.totalBytes), by rank, sized for megaBufferMaxTokens per rank */
  megaBufferBytes?: number[];
  megaBufferMaxTokens?: number;
}

export interface EpBenchReport {
  meta: BenchRunMeta & {
    ep: number;
    /** the unfused baseline's --transport (mega_moe rows: MEGA_EP_TRANSPORT) */
    transport: string;
    /** the backends timed, in the order each round runs them */
    backends: string[];
    /** device of each rank */
    devices: number[];
    /** GPU name of each rank's device */
    rankGpus: string[];
    /** several ranks on one GPU: the timings mean nothing */
    sharedGpu: boolean;
    warning?: string;
    shapes: EpShapeSummary[];
  };
  rows: EpBenchRow[];
  ranks: EpRankStep[];
  skipped: Array<{ what: string; reason: string }>;
}

/** The most tokens per rank the unfused EP layer takes at N ranks and top-K (a rank may receive N T K rows). */
export function epMaxTokensPerRank(worldSize: number, topK: number): number {
  return Math.floor(EP_COMBINE_MAX_ROWS / (worldSize * topK));
}

/** Distinct experts in [first, end) that `ids` (global ids, -1 masked) name, over every rank's routing. */
export function localTouched(routings: ReadonlyArray<ArrayLike<bigint | number>>, first: number, end: number): number {
  const seen = new Uint8Array(end - first);
  for (const ids of routings) {
    for (let i = 0; i < ids.length; i++) {
      const e = Number(ids[i]);
      if (e >= first && e < end) seen[e - first] = 1;
    }
  }
  let n = 0;
  for (const s of seen) n += s;
  return n;
}

/**
 * Each rank's weight bytes at one T: its touched local experts (from every rank's routing) + its shared expert when
 * it has tokens. Rank r holds experts [r E/N, (r + 1) E/N) (src/moe/placement.ts).
 */
export function rankWeightBytes(routings: ReadonlyArray<ArrayLike<bigint | number>>, tokens: number,
  shape: { hidden: number; inter: number; experts: number }, worldSize: number): Array<{ touched: number; bytes: number }> {
  const per = shape.experts / worldSize;
  if (!Number.isInteger(per)) throw new RangeError(`${shape.experts} experts do not split over ${worldSize} ranks`);
  const perExpert = expertWeightBytes(shape.hidden, shape.inter);
  return Array.from({ length: worldSize }, (_, r) => {
    const touched = localTouched(routings, r * per, (r + 1) * per);
    return { touched, bytes: (touched + (tokens > 0 ? 1 : 0)) * perExpert };
  });
}

/** bytes / HBM peak in microseconds (NaN when the peak is unknown). */
export function hbmBoundUs(bytes: number, hbmPeakTBs: number): number {
  return Number.isFinite(hbmPeakTBs) && hbmPeakTBs > 0 ? (bytes / (hbmPeakTBs * 1e12)) * 1e6 : Number.NaN;
}

/** One rank's step from its samples (the median, min, max and the roofline of its bytes). */
export function rankStep(p: Omit<EpRankStep, 'medianUs' | 'minUs' | 'maxUs' | 'runs' | 'rooflineUs'>, hbmPeakTBs: number): EpRankStep {
  return {
    ...p, medianUs: median(p.samplesUs), minUs: Math.min(...p.samplesUs), maxUs: Math.max(...p.samplesUs), runs: p.samplesUs.length,
    rooflineUs: hbmBoundUs(p.localWeightBytes, hbmPeakTBs),
  };
}

/**
 * The rows of the report: per (preset, backend, T) the max over ranks of the per-rank medians, the slowest rank and
 * the roofline of ITS touched local bytes. Every rank must have a step for every (preset, backend, T) it lists.
 * `transport` is the unfused baseline's (epRowTransport).
 */
export function aggregateRanks(steps: readonly EpRankStep[], o: { ep: number; transport: string; hbmPeakTBs: number }): EpBenchRow[] {
  const groups = new Map<string, EpRankStep[]>();
  for (const s of steps) {
    const key = `${s.preset}/${s.backend}/${s.tokens}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(s);
  }
  const rows: EpBenchRow[] = [];
  for (const g of groups.values()) {
    const byRank = [...g].sort((a, b) => a.rank - b.rank);
    const ranks = byRank.map((s) => s.rank);
    if (byRank.length !== o.ep || ranks.some((r, i) => r !== i)) {
      throw new Error(`bench moe --ep ${o.ep}: ${g[0].backend} ${g[0].preset} T = ${g[0].tokens} has steps of ranks ${ranks.join(',')}, ` +
        `expected 0..${o.ep - 1} once each`);
    }
    let slowest = byRank[0];
    for (const s of byRank) if (s.medianUs > slowest.medianUs) slowest = s;
    const rooflineUs = hbmBoundUs(slowest.localWeightBytes, o.hbmPeakTBs);
    rows.push({
      preset: slowest.preset, backend: slowest.backend, transport: epRowTransport(slowest.backend, o.transport), ep: o.ep, tokens: slowest.tokens,
      maxOverRanksUs: slowest.medianUs, slowestRank: slowest.rank, perRankMedianUs: byRank.map((s) => s.medianUs),
      rooflineBytes: slowest.localWeightBytes, localExpertsTouched: slowest.localExpertsTouched, rooflineUs,
      rooflineFraction: slowest.medianUs > 0 ? rooflineUs / slowest.medianUs : 0,
      maxRowsReceived: Math.max(...byRank.map((s) => s.rowsReceived)),
    });
  }
  return rows.sort((a, b) => a.preset.localeCompare(b.preset) || a.tokens - b.tokens || a.backend.localeCompare(b.backend));
}

function timeCell(us: number | null | undefined): string {
  if (typeof us !== 'number' || !Number.isFinite(us)) return '-';
  return us >= 10000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(1)} us`;
}

function pct(v: number | null | undefined): string {
  return typeof v === 'number' && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : '-';
}

function bytesCell(bytes: number): string {
  return Number.isFinite(bytes) ? formatBytes(bytes) : '-';
}

/** "1.23 GB per rank" when every rank's buffer is the same size, else each rank's. */
export function describeMegaBuffer(bytes: readonly number[]): string {
  return bytes.every((b) => b === bytes[0]) ? `${formatBytes(bytes[0])} per rank` : bytes.map((b, r) => `rank ${r} ${formatBytes(b)}`).join(', ');
}

/** The Markdown: header (GPU, commit, command, timing, ceiling), the shared-GPU warning, per preset its tables. */
export function renderEpMarkdown(report: EpBenchReport): string {
  const { meta } = report;
  const c = meta.ceilings;
  const lines: string[] = [];
  lines.push(...renderRunHeader(meta));
  lines.push(`EP ${meta.ep}, backend${meta.backends.length === 1 ? '' : 's'} ` +
    `${meta.backends.map((b) => `${b} (over ${epRowTransport(b, meta.transport)})`).join(', ')}; ranks on devices ${meta.devices.join(',')}` +
    `${new Set(meta.rankGpus).size > 1 ? ` (GPUs: ${meta.rankGpus.join(', ')})` : ''}.`);
  if (meta.sharedGpu) lines.push(`**${meta.warning ?? `several ranks share one GPU: ${SHARED_GPU_WARNING}`}.**`);
  lines.push(`Timing: each rank times its own forward with CUDA events on its stream, L2 flushed before each run, ${meta.warmup} warm-up runs, ` +
    `median of up to ${meta.runs}${meta.backends.length > 1 ? ' (the backends interleaved: one run of each per round)' : ''}; ` +
    'the layer time of a T is the max over ranks of those medians.');
  lines.push(`HBM peak of this GPU (${c.gpu}): ${Number.isFinite(c.hbmPeakTBs) ? c.hbmPeakTBs.toFixed(2) : '-'} TB/s ` +
    `(2 x ${(c.memoryClockKHz / 1e3).toFixed(0)} MHz x ${c.memoryBusWidthBits} bits / 8, device attributes). ` +
    '"roofline" = bytes of the touched local experts (+ the shared expert) of the slowest rank / HBM peak.');
  lines.push('');
  for (const shape of meta.shapes) {
    const rows = report.rows.filter((r) => r.preset === shape.preset);
    if (rows.length === 0) continue;
    lines.push(`#### ${shape.preset}: H ${shape.hidden}, I ${shape.inter}, ${shape.experts} experts (${shape.expertsPerRank} per rank), ` +
      `top-${shape.topK}, ${shape.sharedExperts} shared; EP ${meta.ep}`);
    lines.push('');
    if (shape.megaBufferBytes) {
      lines.push(`mega_moe symmetric buffer: ${describeMegaBuffer(shape.megaBufferBytes)} (for ${shape.megaBufferMaxTokens} tokens per rank).`);
      lines.push('');
    }
    const rankCols = Array.from({ length: meta.ep }, (_, r) => `rank ${r}`);
    lines.push(`| T per rank | backend | max over ranks | slowest rank | ${rankCols.join(' | ')} | roofline | % roofline | local experts touched | weight bytes | max rows received |`);
    lines.push(`| ---: | --- | ---: | ---: | ${rankCols.map(() => '---:').join(' | ')} | ---: | ---: | ---: | ---: | ---: |`);
    for (const r of rows) {
      lines.push(`| ${r.tokens} | ${r.backend} | ${timeCell(r.maxOverRanksUs)} | ${r.slowestRank} | ${r.perRankMedianUs.map(timeCell).join(' | ')} | ` +
        `${timeCell(r.rooflineUs)} | ${pct(r.rooflineFraction)} | ${r.localExpertsTouched} | ${bytesCell(r.rooflineBytes)} | ${r.maxRowsReceived} |`);
    }
    lines.push('');
    const both = rows.filter((r) => r.backend === 'mega_moe')
      .map((m) => ({ m, u: rows.find((r) => r.backend === 'unfused' && r.tokens === m.tokens) }))
      .filter((x): x is { m: EpBenchRow; u: EpBenchRow } => x.u !== undefined);
    if (both.length > 0) {
      lines.push(`mega_moe against the unfused baseline over ${meta.transport} (${shape.preset}, max over ranks):`);
      lines.push('');
      lines.push('| T per rank | mega_moe | unfused | unfused / mega_moe |');
      lines.push('| ---: | ---: | ---: | ---: |');
      for (const { m, u } of both) {
        const ratio = m.maxOverRanksUs > 0 ? u.maxOverRanksUs / m.maxOverRanksUs : Number.NaN;
        lines.push(`| ${m.tokens} | ${timeCell(m.maxOverRanksUs)} | ${timeCell(u.maxOverRanksUs)} | ${Number.isFinite(ratio) ? `${ratio.toFixed(2)}x` : '-'} |`);
      }
      lines.push('');
    }
    lines.push(`Per rank (${shape.preset}):`);
    lines.push('');
    lines.push('| T per rank | backend | rank | device | median | min | max | runs | rows sent | rows received | path | local experts touched | weight bytes | roofline |');
    lines.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |');
    const steps = report.ranks.filter((s) => s.preset === shape.preset)
      .sort((a, b) => a.tokens - b.tokens || a.backend.localeCompare(b.backend) || a.rank - b.rank);
    for (const s of steps) {
      lines.push(`| ${s.tokens} | ${s.backend} | ${s.rank} | ${s.device} | ${timeCell(s.medianUs)} | ${timeCell(s.minUs)} | ${timeCell(s.maxUs)} | ${s.runs} | ` +
        `${s.rowsSent} | ${s.rowsReceived} | ${s.path ?? '-'} | ${s.localExpertsTouched} | ${bytesCell(s.localWeightBytes)} | ${timeCell(s.rooflineUs)} |`);
    }
    lines.push('');
  }
  for (const note of meta.notes) lines.push(`- ${note}`);
  for (const source of c.sources) lines.push(`- Ceiling: ${source}`);
  for (const s of report.skipped) lines.push(`- Not measured: ${s.what}: ${s.reason}`);
  return `${lines.join('\n').trimEnd()}\n`;
}

/** The file stem of an EP report in --out (EP1's `bench moe` writes moe.*; both can share a folder). */
export function epReportStem(ep: number): string {
  return `moe-ep${ep}`;
}

/** Writes moe-ep<N>.json, .md and .svg into `dir`; returns their paths. */
export function writeEpReport(report: EpBenchReport, dir: string): Promise<ReportFiles> {
  return writeReportFiles(dir, epReportStem(report.meta.ep), report, renderEpMarkdown(report), (plot) => plot.renderEpPlotSvg(report));
}
