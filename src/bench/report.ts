// The MoE benchmark's results as data (JSON), as a Markdown table, and as figures: what `megamoe bench moe` writes
// into --out. Pure functions: no GPU, no I/O except writeMoeReport.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Hopper's dense FP8 tensor-core rate per SM per clock: 1979 TFLOPS dense FP8 at 132 SMs x 1830 MHz
 * (NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: "FP8 Tensor Core 3,958 teraFLOPS with sparsity", i.e. 1,979 dense;
 * 1979e12 / (132 * 1.83e9) = 8192 FLOP/clk/SM). The same SM is in H100, H200, H800 and H20.
 */
export const HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM = 8192;

/** What the ceilings are derived from: CUDA device attributes of the GPU the benchmark runs on. */
export interface DeviceAttributes {
  name: string;
  smCount: number;
  /** CU_DEVICE_ATTRIBUTE_CLOCK_RATE, kHz (0: not reported) */
  clockRateKHz: number;
  /** CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, kHz (0: not reported) */
  memoryClockRateKHz: number;
  /** CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, bits */
  memoryBusWidthBits: number;
  computeCapability?: { major: number; minor: number };
}

/**
 * The ceilings every figure of the report is a fraction of, all of the GPU the run used (SPEC 6): peaks derived from
 * its attributes, a device-to-device copy and the best cuBLASLt FP8 anchor measured in the same run. A figure that
 * could not be derived is NaN (null in the JSON) and its fractions print as "-": never another GPU's constant.
 */
export interface DeviceCeilings {
  gpu: string;
  smCount: number;
  smClockKHz: number;
  memoryClockKHz: number;
  memoryBusWidthBits: number;
  /** 2 * memory clock * bus width / 8 (DDR), TB/s (1e12 B/s) */
  hbmPeakTBs: number;
  /** SM count * SM clock * 8192 FLOP/clk/SM (Hopper dense FP8), TFLOPS */
  fp8DensePeakTflops: number;
  /** measured device-to-device copy, bytes read + written per second, TB/s (undefined: not measured) */
  copyTBs?: number;
  /** bytes of that copy's buffer (each run reads and writes it once) */
  copyBytes?: number;
  copyRuns?: number;
  /** the best TFLOPS a cuBLASLt FP8 anchor reached in this run: the compute term of the floor */
  measuredFp8Tflops?: number;
  /** how each figure was obtained */
  sources: string[];
}

/** Peaks from the device attributes (pure; the measured entries are added by the benchmark). */
export function deriveCeilings(a: DeviceAttributes): DeviceCeilings {
  const known = (v: number) => Number.isFinite(v) && v > 0;
  const hbmPeakTBs = known(a.memoryClockRateKHz) && known(a.memoryBusWidthBits)
    ? (2 * a.memoryClockRateKHz * 1e3 * (a.memoryBusWidthBits / 8)) / 1e12 : Number.NaN;
  const hopper = a.computeCapability === undefined || a.computeCapability.major === 9;
  const fp8DensePeakTflops = hopper && known(a.smCount) && known(a.clockRateKHz)
    ? (a.smCount * a.clockRateKHz * 1e3 * HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM) / 1e12 : Number.NaN;
  const sources = [
    `HBM peak = 2 x memory clock ${(a.memoryClockRateKHz / 1e3).toFixed(0)} MHz x bus ${a.memoryBusWidthBits} bits / 8` +
      ` = ${Number.isFinite(hbmPeakTBs) ? hbmPeakTBs.toFixed(2) : '-'} TB/s (device attributes)`,
    `FP8 dense peak = ${a.smCount} SMs x SM clock ${(a.clockRateKHz / 1e3).toFixed(0)} MHz x ${HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM} FLOP/clk/SM` +
      ` = ${Number.isFinite(fp8DensePeakTflops) ? fp8DensePeakTflops.toFixed(0) : '-'} TFLOPS (device attributes; Hopper rate per SM from the H100 datasheet)`,
  ];
  // H20 is a Hopper with its tensor-core rate cut by the product (296 TFLOPS FP8 dense at 78 SMs): the per-SM rate
  // above over-states it; the measured cuBLASLt anchor is the honest compute ceiling there.
  if (/\bH20\b/.test(a.name)) sources.push(`${a.name}: the product limits the tensor-core rate below ${HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM} FLOP/clk/SM; use the measured FP8 rate`);
  return {
    gpu: a.name, smCount: a.smCount, smClockKHz: a.clockRateKHz, memoryClockKHz: a.memoryClockRateKHz,
    memoryBusWidthBits: a.memoryBusWidthBits, hbmPeakTBs, fp8DensePeakTflops, sources,
  };
}

/** Adds the measured device-to-device copy (`bytes` read and `bytes` written per run, median `medianUs`). */
export function withCopyBandwidth(c: DeviceCeilings, bytes: number, medianUs: number, runs: number): DeviceCeilings {
  const copyTBs = medianUs > 0 ? (2 * bytes) / (medianUs * 1e-6) / 1e12 : Number.NaN;
  return {
    ...c, copyTBs, copyBytes: bytes, copyRuns: runs,
    sources: [...c.sources, `copy = ${(bytes / 2 ** 30).toFixed(2)} GiB device-to-device, read + written, median of ${runs}: ${copyTBs.toFixed(2)} TB/s (measured, this run)`],
  };
}

/** The layer shape a bench report's preset ran (its JSON "shapes" entries). */
export interface BenchShapeSummary {
  preset: string;
  hidden: number;
  inter: number;
  experts: number;
  topK: number;
  sharedExperts: number;
}

export interface MoeShapeSummary extends BenchShapeSummary {
  /** mega_moe's symmetric buffer (one rank, EP1) as this run allocated it: bytes and the tokens it holds */
  symmetricBufferBytes?: number;
  symmetricBufferMaxTokens?: number;
  /** the same buffer sized for 8192 tokens per rank (megaBufferLayout; the issue's yardstick) */
  symmetricBufferBytesAt8192?: number;
}

/** One measured configuration: a backend (or an anchor, or the read floor) at one token count. */
export interface MoeBenchRow {
  preset: string;
  /**
   * 'mega_moe', 'mega_moe+graph', 'unfused', 'unfused+graph', 'reference', 'read-floor' or 'cublaslt-fp8 (anchor)'
   * (the GEMM alone is in gemmAlone)
   */
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
  /** tflops / this GPU's derived FP8 dense peak */
  computeFraction: number;
  /** gbps / this GPU's derived HBM peak */
  bandwidthFraction: number;
  /** max(flops / FP8 peak, bytes / HBM peak) of this GPU, microseconds: the datasheet roofline */
  rooflineUs: number;
  /** rooflineUs / measured time: 1 = at the roofline */
  rooflineFraction: number;
  /** the kernel path the fused / unfused layer took at this T ('normal' | 'decode') */
  path?: string;
  /** SPEC 6's practical floor: max(the read floor of this (preset, T), flops / the measured FP8 rate), microseconds */
  floorUs?: number;
  /** medianUs / floorUs: 1 = at the floor */
  vsFloor?: number;
  /** calc_diff of this backend's y against the reference backend's, where both ran */
  calcDiffVsReference?: number;
  /** calc_diff of this backend's y against the unfused backend's (mega_moe rows), same inputs, same run */
  calcDiffVsUnfused?: number;
  note?: string;
}

export interface HostOverheadRow {
  preset: string;
  /** 'unfused' or 'mega_moe' (absent in reports older than the fused backend: unfused) */
  backend?: string;
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
  /** tflops / this GPU's derived FP8 dense peak */
  computeFraction: number;
}

/** What every benchmark report records of its run: the GPU, the commit and command, the timing protocol. */
export interface BenchRunMeta {
  gpu: string;
  smCount?: number;
  driver?: string;
  commit: string;
  command: string;
  date: string;
  warmup: number;
  runs: number;
  /** the ceilings of the GPU this run used (derived and measured in the run) */
  ceilings: DeviceCeilings;
  notes: string[];
}

export interface MoeBenchReport {
  meta: BenchRunMeta & { shapes: MoeShapeSummary[] };
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

/** The columns deriveRates fills. */
type DerivedColumns = 'tflops' | 'gbps' | 'computeFraction' | 'bandwidthFraction' | 'rooflineUs' | 'rooflineFraction';

/** The datasheet-style roofline of this GPU: max(flops / FP8 peak, bytes / HBM peak), microseconds (NaN when unknown). */
export function rooflineUs(flops: number, bytes: number, c: Pick<DeviceCeilings, 'fp8DensePeakTflops' | 'hbmPeakTBs'>): number {
  return Math.max(flops / (c.fp8DensePeakTflops * 1e12), bytes / (c.hbmPeakTBs * 1e12)) * 1e6;
}

/** Fills the derived columns of a row from its measured time, FLOPs and bytes, against THIS GPU's ceilings. */
export function deriveRates(row: Omit<MoeBenchRow, DerivedColumns>, ceilings: Pick<DeviceCeilings, 'fp8DensePeakTflops' | 'hbmPeakTBs'>): MoeBenchRow {
  const seconds = row.medianUs * 1e-6;
  const tflops = seconds > 0 ? row.flops / seconds / 1e12 : 0;
  const gbps = seconds > 0 ? row.weightBytes / seconds / 1e9 : 0;
  const bound = rooflineUs(row.flops, row.weightBytes, ceilings);
  return {
    ...row,
    tflops,
    gbps,
    computeFraction: tflops / ceilings.fp8DensePeakTflops,
    bandwidthFraction: gbps / (ceilings.hbmPeakTBs * 1e3),
    rooflineUs: bound,
    rooflineFraction: seconds > 0 ? bound / row.medianUs : 0,
  };
}

/** Backend name of the read-floor rows. */
export const READ_FLOOR = 'read-floor';
/** Backend name of the cuBLASLt anchor rows. */
export const CUBLASLT_ANCHOR = 'cublaslt-fp8 (anchor)';

/** The best TFLOPS of the run's cuBLASLt anchors (undefined when none ran): the measured compute ceiling. */
export function bestAnchorTflops(rows: readonly MoeBenchRow[]): number | undefined {
  const t = rows.filter((r) => r.backend === CUBLASLT_ANCHOR && Number.isFinite(r.tflops) && r.tflops > 0).map((r) => r.tflops);
  return t.length > 0 ? Math.max(...t) : undefined;
}

/**
 * SPEC 6's floor of each (preset, T): max(the read-floor row's time, flops / the measured FP8 rate); fills floorUs
 * and vsFloor (time / floor) of every GPU row of that (preset, T). The compute term uses `computeTflops` (the best
 * anchor of the run), else the derived FP8 peak. Rows without a read floor of their (preset, T), and the CPU
 * reference, get none. Returns new rows.
 */
export function applyFloors(rows: readonly MoeBenchRow[], computeTflops: number): MoeBenchRow[] {
  const readUs = new Map<string, number>();
  for (const r of rows) if (r.backend === READ_FLOOR) readUs.set(`${r.preset}/${r.tokens}`, r.medianUs);
  return rows.map((r) => {
    const read = readUs.get(`${r.preset}/${r.tokens}`);
    if (read === undefined || r.backend === 'reference') return { ...r };
    const compute = Number.isFinite(computeTflops) && computeTflops > 0 ? (r.flops / (computeTflops * 1e12)) * 1e6 : 0;
    const floorUs = Math.max(read, compute);
    return { ...r, floorUs, vsFloor: r.medianUs / floorUs };
  });
}

function fmt(v: number | null | undefined, digits: number): string {
  if (typeof v !== 'number' || !Number.isFinite(v)) return '-';
  return v.toFixed(digits);
}

function pct(v: number | null | undefined): string {
  return typeof v === 'number' && Number.isFinite(v) ? `${(v * 100).toFixed(1)}%` : '-';
}

function timeCell(us: number | null | undefined): string {
  if (typeof us !== 'number' || !Number.isFinite(us)) return '-';
  return us >= 10000 ? `${(us / 1000).toFixed(2)} ms` : `${us.toFixed(1)} us`;
}

function ratio(v: number | undefined): string {
  return typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(2)}x` : '';
}

function diff(v: number | undefined): string {
  return v === undefined ? '' : v.toExponential(2);
}

function bytesCell(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return '-';
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${(bytes / 1e3).toFixed(1)} KB`;
}

/** Display order of the backends within one T. */
const BACKEND_ORDER = ['mega_moe+graph', 'mega_moe', 'unfused+graph', 'unfused', READ_FLOOR, CUBLASLT_ANCHOR, 'reference'];
function backendRank(b: string): number {
  const i = BACKEND_ORDER.indexOf(b);
  return i < 0 ? BACKEND_ORDER.length : i;
}

/** The ceilings, as the header of the Markdown (every figure in it is of the GPU that ran). */
export function renderCeilings(c: DeviceCeilings): string[] {
  const lines = [
    `Ceilings of this GPU (${c.gpu}, ${c.smCount} SMs), derived from its device attributes and measured in this run:`,
    `HBM peak ${fmt(c.hbmPeakTBs, 2)} TB/s (2 x ${fmt(c.memoryClockKHz / 1e3, 0)} MHz x ${c.memoryBusWidthBits} bits / 8); ` +
      `FP8 dense peak ${fmt(c.fp8DensePeakTflops, 0)} TFLOPS (${c.smCount} SMs x ${fmt(c.smClockKHz / 1e3, 0)} MHz x ${HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM} FLOP/clk); ` +
      `measured copy ${c.copyTBs === undefined ? 'not measured' : `${fmt(c.copyTBs, 2)} TB/s (${fmt((c.copyBytes ?? 0) / 2 ** 30, 2)} GiB device-to-device, read + written, median of ${c.copyRuns ?? '-'})`}; ` +
      `measured FP8 ${c.measuredFp8Tflops === undefined ? 'no cuBLASLt anchor ran (the floor\'s compute term uses the derived peak)' : `${fmt(c.measuredFp8Tflops, 0)} TFLOPS (best cuBLASLt anchor of this run)`}.`,
  ];
  return lines;
}

/** The first lines of every bench report: GPU, driver, commit, date, then the command. */
export function renderRunHeader(meta: BenchRunMeta): string[] {
  return [
    `GPU: ${meta.gpu}${meta.smCount ? ` (${meta.smCount} SMs)` : ''}${meta.driver ? `, driver ${meta.driver}` : ''}; ` +
      `commit \`${meta.commit}\`; ${meta.date}.`,
    `Command: \`${meta.command}\``,
  ];
}

/** The Markdown section: a header line with GPU/commit/command and ceilings, one table per preset, host overheads, skips. */
export function renderMoeMarkdown(report: MoeBenchReport): string {
  const { meta } = report;
  const c = meta.ceilings;
  const lines: string[] = [];
  lines.push(...renderRunHeader(meta));
  lines.push(`Timing: CUDA events around each forward, L2 flushed before each run, ${meta.warmup} warm-up runs, median of up to ${meta.runs}.`);
  lines.push(...renderCeilings(c));
  lines.push('"x floor" = time / floor, where floor = max(read-floor: a kernel that only reads this (preset, T)\'s touched experts once, ' +
    'FLOPs / measured FP8); "% roofline" = max(FLOPs / FP8 peak, bytes / HBM peak) / time, both peaks of this GPU.');
  lines.push('');
  const buffers = meta.shapes.filter((s) => s.symmetricBufferBytes !== undefined || s.symmetricBufferBytesAt8192 !== undefined);
  if (buffers.length > 0) {
    lines.push('#### mega_moe symmetric buffer (one rank, EP1)');
    lines.push('');
    lines.push('| preset | this run | tokens per rank | at 8192 tokens per rank |');
    lines.push('| --- | ---: | ---: | ---: |');
    for (const s of buffers) {
      lines.push(`| ${s.preset} | ${bytesCell(s.symmetricBufferBytes)} | ${s.symmetricBufferMaxTokens ?? '-'} | ${bytesCell(s.symmetricBufferBytesAt8192)} |`);
    }
    lines.push('');
  }
  for (const shape of meta.shapes) {
    const rows = report.rows.filter((r) => r.preset === shape.preset)
      .sort((a, b) => a.tokens - b.tokens || backendRank(a.backend) - backendRank(b.backend) || a.backend.localeCompare(b.backend));
    if (rows.length === 0) continue;
    lines.push(`#### ${shape.preset}: H ${shape.hidden}, I ${shape.inter}, ${shape.experts} experts, top-${shape.topK}, ${shape.sharedExperts} shared`);
    lines.push('');
    lines.push('| T | backend | median | floor | x floor | roofline | % roofline | TFLOPS | % FP8 peak | weight GB/s | % HBM peak | experts touched | calc_diff vs unfused | calc_diff vs ref |');
    lines.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
    for (const r of rows) {
      const label = `${r.backend}${r.path ? ` [${r.path}]` : ''}${r.note ? ` (${r.note})` : ''}`;
      lines.push(`| ${r.tokens} | ${label} | ${timeCell(r.medianUs)} | ${r.floorUs === undefined ? '' : timeCell(r.floorUs)} | ${ratio(r.vsFloor)} | ` +
        `${timeCell(r.rooflineUs)} | ${pct(r.rooflineFraction)} | ${fmt(r.tflops, 1)} | ${pct(r.computeFraction)} | ` +
        `${fmt(r.gbps, 0)} | ${pct(r.bandwidthFraction)} | ${r.expertsTouched} | ${diff(r.calcDiffVsUnfused)} | ${diff(r.calcDiffVsReference)} |`);
    }
    lines.push('');
  }
  if (report.hostOverhead.length > 0) {
    lines.push('#### Host time per layer, eager launches vs one CUDA graph');
    lines.push('');
    lines.push('| preset | backend | T | host us (eager) | host us (graph) | GPU us (eager) | GPU us (graph) |');
    lines.push('| --- | --- | ---: | ---: | ---: | ---: | ---: |');
    for (const h of report.hostOverhead) {
      lines.push(`| ${h.preset} | ${h.backend ?? 'unfused'} | ${h.tokens} | ${fmt(h.eagerHostUs, 1)} | ${fmt(h.graphHostUs, 1)} | ${fmt(h.eagerGpuUs, 1)} | ${fmt(h.graphGpuUs, 1)} |`);
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
  for (const source of c.sources) lines.push(`- Ceiling: ${source}`);
  for (const s of report.skipped) lines.push(`- Not measured: ${s.what}: ${s.reason}`);
  return `${lines.join('\n').trimEnd()}\n`;
}

/** The three files of a benchmark report. */
export interface ReportFiles { json: string; markdown: string; svg: string }

/**
 * Writes STEM.json (the report; non-finite numbers become null), STEM.md and STEM.svg into `dir`; returns their paths.
 * `svg` gets the plot module: vega / vega-lite load only here, so every other CLI command (which imports the report
 * modules through bench/*.ts) starts without them, and runs with a pack that leaves them out.
 */
export async function writeReportFiles(dir: string, stem: string, report: unknown, markdown: string,
  svg: (plot: typeof import('./plot.js')) => Promise<string>): Promise<ReportFiles> {
  mkdirSync(dir, { recursive: true });
  const files = { json: join(dir, `${stem}.json`), markdown: join(dir, `${stem}.md`), svg: join(dir, `${stem}.svg`) };
  writeFileSync(files.json, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(files.markdown, markdown);
  writeFileSync(files.svg, await svg(await import('./plot.js')));
  return files;
}

/** Writes moe.json, moe.md and moe.svg into `dir`; returns their paths. */
export function writeMoeReport(report: MoeBenchReport, dir: string): Promise<ReportFiles> {
  return writeReportFiles(dir, 'moe', report, renderMoeMarkdown(report), (plot) => plot.renderMoePlotSvg(report.rows));
}
