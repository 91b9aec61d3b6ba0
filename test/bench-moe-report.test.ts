// The MoE benchmark's report: ceilings derived from device attributes, derived rates, floors, the Markdown table and
// the SVG plot, on hand-made rows (no GPU needed).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Command } from 'commander';
import { moePlotPoints, moePlotSpec, renderMoePlotSvg, ROOFLINE_SERIES } from '../src/bench/plot.js';
import {
  applyFloors, bestAnchorTflops, CUBLASLT_ANCHOR, deriveCeilings, deriveRates, expertWeightBytes, HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM,
  median, moeFlops, READ_FLOOR, renderMoeMarkdown, rooflineUs, withCopyBandwidth, writeMoeReport,
  type DeviceCeilings, type MoeBenchReport, type MoeBenchRow,
} from '../src/bench/report.js';
import { MOE_BENCH_DEFAULT_TOKENS, registerMoeBench } from '../src/bench/moe.js';
import { parseTokenList } from '../src/bench/staging-routing.js';

const H = 4096;
const I = 2048;
/** H200 SXM attributes as the driver reports them (SM clock 1980 MHz, HBM3e 2619 MHz x 6144 bits). */
const H200_ATTRS = { name: 'NVIDIA H200', smCount: 132, clockRateKHz: 1_980_000, memoryClockRateKHz: 2_619_000, memoryBusWidthBits: 6144,
  computeCapability: { major: 9, minor: 0 } };
const ceilings: DeviceCeilings = withCopyBandwidth(deriveCeilings(H200_ATTRS), 1 << 30, 500, 20);

function row(backend: string, tokens: number, medianUs: number, touched: number, extra: Partial<MoeBenchRow> = {}): MoeBenchRow {
  return deriveRates({
    preset: 'flash', backend, tokens, medianUs, minUs: medianUs, maxUs: medianUs, runs: 10,
    flops: moeFlops(tokens, 6, H, I), expertsTouched: touched, weightBytes: (touched + 1) * expertWeightBytes(H, I), ...extra,
  }, ceilings);
}

test('median of odd and even counts, refuses an empty list', () => {
  assert.equal(median([5, 1, 3]), 3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), /empty/);
});

test('SPEC 6 FLOPs and the flash expert size (25.2 MB)', () => {
  assert.equal(moeFlops(1, 6, 4096, 2048), 2 * 6 * 3 * 4096 * 2048);
  const bytes = expertWeightBytes(4096, 2048);
  assert.equal(bytes, 3 * 4096 * 2048 + 3 * 32 * 16 * 4);
  assert.ok(Math.abs(bytes / 1e6 - 25.2) < 0.1, `flash expert ${bytes} bytes`);
});

test('ceilings come from the device attributes: 2 x memory clock x bus / 8 and SMs x clock x 8192', () => {
  const c = deriveCeilings(H200_ATTRS);
  assert.ok(Math.abs(c.hbmPeakTBs - (2 * 2.619e9 * 768) / 1e12) < 1e-9, `HBM ${c.hbmPeakTBs}`);
  assert.ok(Math.abs(c.hbmPeakTBs - 4.023) < 0.001);
  assert.ok(Math.abs(c.fp8DensePeakTflops - (132 * 1.98e9 * 8192) / 1e12) < 1e-9, `FP8 ${c.fp8DensePeakTflops}`);
  // The per-SM rate reproduces the H100 SXM datasheet: 1979 TFLOPS at 132 SMs x 1830 MHz.
  const h100 = deriveCeilings({ ...H200_ATTRS, name: 'NVIDIA H100 80GB HBM3', clockRateKHz: 1_830_000, memoryClockRateKHz: 2_619_000, memoryBusWidthBits: 5120 });
  assert.equal(HOPPER_FP8_DENSE_FLOP_PER_CLK_PER_SM, 8192);
  assert.ok(Math.abs(h100.fp8DensePeakTflops - 1979) < 1, `H100 ${h100.fp8DensePeakTflops}`);
  assert.ok(Math.abs(h100.hbmPeakTBs - 3.352) < 0.001, `H100 HBM ${h100.hbmPeakTBs}`);
  // A different GPU gives different ceilings (nothing is a constant of another GPU).
  const small = deriveCeilings({ ...H200_ATTRS, smCount: 78 });
  assert.ok(Math.abs(small.fp8DensePeakTflops / c.fp8DensePeakTflops - 78 / 132) < 1e-12);
  assert.equal(small.hbmPeakTBs, c.hbmPeakTBs);
  assert.equal(c.sources.length, 2);
  assert.match(c.sources[0], /2619 MHz x bus 6144 bits/);
});

test('unknown attributes or a non-Hopper GPU give NaN peaks, never a borrowed constant', () => {
  const c = deriveCeilings({ ...H200_ATTRS, memoryClockRateKHz: 0, clockRateKHz: 0 });
  assert.ok(Number.isNaN(c.hbmPeakTBs));
  assert.ok(Number.isNaN(c.fp8DensePeakTflops));
  const blackwell = deriveCeilings({ ...H200_ATTRS, computeCapability: { major: 10, minor: 0 } });
  assert.ok(Number.isNaN(blackwell.fp8DensePeakTflops));
  assert.ok(Number.isFinite(blackwell.hbmPeakTBs));
  const r = deriveRates({
    preset: 'flash', backend: 'unfused', tokens: 1, medianUs: 80, minUs: 80, maxUs: 80, runs: 3,
    flops: moeFlops(1, 6, H, I), expertsTouched: 6, weightBytes: 7 * expertWeightBytes(H, I),
  }, c);
  assert.ok(Number.isNaN(r.bandwidthFraction));
  assert.ok(Number.isNaN(r.rooflineFraction));
  const md = renderMoeMarkdown({ ...report, meta: { ...report.meta, ceilings: c }, rows: [r] });
  const line = md.split('\n').find((l) => l.startsWith('| 1 | unfused'));
  assert.ok(line, md);
  assert.doesNotMatch(line, /%/, `no fraction against unknown peaks: ${line}`);
  assert.match(md, /HBM peak - TB\/s/);
});

test('the measured copy counts read + written bytes', () => {
  // 1 GiB read and 1 GiB written in 500 us.
  assert.ok(Math.abs((ceilings.copyTBs ?? 0) - (2 * 2 ** 30) / 500e-6 / 1e12) < 1e-9);
  assert.equal(ceilings.copyRuns, 20);
  assert.match(ceilings.sources[2], /1\.00 GiB device-to-device, read \+ written, median of 20/);
});

test('rates and roofline fractions follow from time, FLOPs, bytes and THIS GPU\'s peaks', () => {
  // 7 experts (6 routed + shared) streamed in exactly bytes / HBM peak: bandwidth fraction 1, roofline fraction 1.
  const bytes = 7 * expertWeightBytes(H, I);
  const us = (bytes / (ceilings.hbmPeakTBs * 1e12)) * 1e6;
  const r = row('unfused', 1, us, 6);
  assert.ok(Math.abs(r.bandwidthFraction - 1) < 1e-9, `bandwidth fraction ${r.bandwidthFraction}`);
  assert.ok(Math.abs(r.rooflineFraction - 1) < 1e-9, `roofline fraction ${r.rooflineFraction}`);
  assert.ok(Math.abs(r.rooflineUs - us) < 1e-9);
  assert.ok(r.computeFraction < 0.01);
  // Flash T = 1 on this H200: 176 MB / 4.02 TB/s = 43.8 us (SPEC 6's 36.7 us is at the 4.8 TB/s datasheet figure).
  assert.ok(Math.abs(r.rooflineUs - 43.8) < 0.1, `roofline ${r.rooflineUs}`);
  // Compute-bound: at T = 16384 the FLOPs term dominates the roofline.
  const big = row('unfused', 16384, 10000, 256);
  const flopsSeconds = big.flops / (ceilings.fp8DensePeakTflops * 1e12);
  assert.ok(Math.abs(big.rooflineFraction - flopsSeconds / 0.01) < 1e-12);
  assert.ok(Math.abs(big.rooflineUs - rooflineUs(big.flops, big.weightBytes, ceilings)) < 1e-9);
  assert.ok(Math.abs(big.tflops - big.flops / 0.01 / 1e12) < 1e-9);
});

test('floors: max(read floor of the same (preset, T), FLOPs at the measured rate); time / floor', () => {
  const anchorBig = row(CUBLASLT_ANCHOR, 16384, 9000, 1);
  const anchorSmall = row(CUBLASLT_ANCHOR, 1, 40, 1);
  const rows = [
    row(READ_FLOOR, 1, 50, 6), row('mega_moe+graph', 1, 55, 6, { path: 'decode' }), row('reference', 1, 2e6, 6),
    row(READ_FLOOR, 16384, 1500, 256), row('mega_moe+graph', 16384, 4600, 256), anchorBig, anchorSmall,
    row('unfused+graph', 8, 330, 40), // no read floor at T = 8: no floor
  ];
  const best = bestAnchorTflops(rows);
  assert.equal(best, anchorBig.tflops);
  assert.equal(bestAnchorTflops([row('unfused', 1, 80, 6)]), undefined);
  const out = applyFloors(rows, 1400);
  const get = (b: string, t: number) => out.find((r) => r.backend === b && r.tokens === t)!;
  assert.equal(get('mega_moe+graph', 1).floorUs, 50);
  assert.ok(Math.abs(get('mega_moe+graph', 1).vsFloor! - 1.1) < 1e-12);
  assert.equal(get(READ_FLOOR, 1).vsFloor, 1);
  assert.equal(get('reference', 1).floorUs, undefined);
  assert.equal(get('unfused+graph', 8).floorUs, undefined);
  // T = 16384: 2 * 16384 * 6 * 3 * H * I FLOPs at 1400 TFLOPS = 3534 us > 1500 us read (the flash floor).
  const compute = (moeFlops(16384, 6, H, I) / 1400e12) * 1e6;
  assert.ok(Math.abs(compute - 3534) < 1, `compute ${compute}`);
  assert.ok(Math.abs(get('mega_moe+graph', 16384).floorUs! - compute) < 1e-9);
  assert.ok(Math.abs(get('mega_moe+graph', 16384).vsFloor! - 4600 / compute) < 1e-12);
  assert.equal(rows[1].floorUs, undefined, 'applyFloors returns new rows');
});

const report: MoeBenchReport = {
  meta: {
    gpu: 'NVIDIA H200', smCount: 132, driver: '13.0', commit: 'abc1234', command: 'megamoe bench moe --preset flash',
    date: '2026-12-01', warmup: 3, runs: 10, ceilings: { ...ceilings, measuredFp8Tflops: 1400 },
    shapes: [{ preset: 'flash', hidden: H, inter: I, experts: 256, topK: 6, sharedExperts: 1,
      symmetricBufferBytes: 2.21e9, symmetricBufferMaxTokens: 16384, symmetricBufferBytesAt8192: 1.34e9 }],
    notes: ['reference capped at T <= 8'],
  },
  rows: applyFloors([
    row(READ_FLOOR, 1, 50, 6), row('mega_moe', 1, 60, 6, { path: 'decode', calcDiffVsUnfused: 1.5e-6 }),
    row('mega_moe+graph', 1, 55, 6, { path: 'decode', calcDiffVsUnfused: 1.5e-6, calcDiffVsReference: 2e-6 }),
    row('unfused', 1, 120, 6, { path: 'decode' }), row('unfused+graph', 1, 78.4, 6, { path: 'decode' }),
    row('unfused', 64, 900, 200), row('reference', 1, 2.5e6, 6, { note: 'CPU, one run' }),
  ], 1400),
  hostOverhead: [{ preset: 'flash', backend: 'mega_moe', tokens: 1, eagerHostUs: 6, graphHostUs: 4, eagerGpuUs: 70, graphGpuUs: 60 },
    { preset: 'flash', tokens: 1, eagerHostUs: 60, graphHostUs: 8, eagerGpuUs: 130, graphGpuUs: 118 }],
  gemmAlone: [{ label: '4 groups x 8192 rows, N 4096, K 4096', groups: 4, rowsPerGroup: 8192, n: 4096, k: 4096, medianUs: 800, runs: 10, tflops: 1374.4, computeFraction: 0.7 }],
  skipped: [{ what: 'cuBLASLt anchor', reason: 'libcublasLt.so not found' }],
};

test('Markdown: ceilings of this GPU, floor columns, calc_diff vs unfused, symmetric buffer, host overhead, skips', () => {
  const md = renderMoeMarkdown(report);
  assert.match(md, /GPU: NVIDIA H200 \(132 SMs\)/);
  assert.match(md, /commit `abc1234`/);
  assert.doesNotMatch(md, /3\.35 TB\/s|1979 TFLOPS|H100 SXM datasheet\)/, 'no constant of another GPU');
  assert.match(md, /HBM peak 4\.02 TB\/s \(2 x 2619 MHz x 6144 bits \/ 8\)/);
  assert.match(md, /FP8 dense peak 2141 TFLOPS \(132 SMs x 1980 MHz x 8192 FLOP\/clk\)/);
  assert.match(md, /measured copy 4\.29 TB\/s/);
  assert.match(md, /measured FP8 1400 TFLOPS \(best cuBLASLt anchor of this run\)/);
  assert.match(md, /\| T \| backend \| median \| floor \| x floor \| roofline \| % roofline \|/);
  const tableLines = md.split('\n').filter((l) => /^\| \d+ \| /.test(l));
  assert.equal(tableLines.length, 7, md);
  // Within one T: fused graph first, then eager, unfused, the read floor, the reference.
  assert.deepEqual(tableLines.filter((l) => l.startsWith('| 1 |')).map((l) => l.split(' | ')[1]),
    ['mega_moe+graph [decode]', 'mega_moe [decode]', 'unfused+graph [decode]', 'unfused [decode]', READ_FLOOR, 'reference (CPU, one run)']);
  const fused = tableLines.find((l) => l.startsWith('| 1 | mega_moe+graph'))!;
  assert.match(fused, /^\| 1 \| mega_moe\+graph \[decode\] \| 55\.0 us \| 50\.0 us \| 1\.10x \| 43\.8 us \| 79\.6% \|/);
  assert.match(fused, /\| 1\.50e-6 \| 2\.00e-6 \|$/);
  assert.match(tableLines.find((l) => l.startsWith('| 1 | unfused+graph'))!, /\| 78\.4 us \| 50\.0 us \| 1\.57x \|/);
  // No read floor at T = 64: the floor cells stay empty.
  assert.match(tableLines.find((l) => l.startsWith('| 64 |'))!, /\| 900\.0 us \|  \|  \|/);
  assert.match(md, /\| 1 \| reference \(CPU, one run\) \| 2500\.00 ms \|  \|  \|/);
  assert.match(md, /\| flash \| 2\.21 GB \| 16384 \| 1\.34 GB \|/);
  assert.match(md, /\| flash \| mega_moe \| 1 \| 6\.0 \| 4\.0 \|/);
  assert.match(md, /\| flash \| unfused \| 1 \| 60\.0 \| 8\.0 \|/);
  assert.match(md, /Not measured: cuBLASLt anchor: libcublasLt\.so not found/);
  assert.match(md, /Ceiling: copy = 1\.00 GiB device-to-device/);
  assert.match(md, /\| 4 groups x 8192 rows, N 4096, K 4096 \| 800\.0 us \| 1374\.4 \| 70\.0% \|/);
});

test('plot: mega_moe+graph, unfused+graph, the read floor and the roofline; not the eager rows or the reference', () => {
  const points = moePlotPoints(report.rows);
  const series = [...new Set(points.map((p) => p.series))].sort();
  assert.deepEqual(series, ['mega_moe+graph', READ_FLOOR, ROOFLINE_SERIES, 'unfused+graph'].sort());
  const roof = points.filter((p) => p.series === ROOFLINE_SERIES);
  assert.deepEqual(roof.map((p) => p.tokens), [1, 64]);
  assert.ok(Math.abs(roof[0].timeUs - 43.8) < 0.1);
  assert.equal(points.find((p) => p.series === 'mega_moe+graph')!.vsFloor, 1.1);
  const spec = moePlotSpec(report.rows) as unknown as { vconcat: Array<{ hconcat: unknown[] }> };
  assert.equal(spec.vconcat.length, 1);
  assert.equal(spec.vconcat[0].hconcat.length, 2);
});

test('plot renders to SVG with the time and time / floor panels', async () => {
  const svg = await renderMoePlotSvg(report.rows);
  assert.match(svg, /^<svg/);
  assert.match(svg, /time per layer/);
  assert.match(svg, /time \/ floor/);
  assert.match(svg, /mega_moe\+graph/);
  assert.match(svg, /read-floor/);
});

test('writeMoeReport writes JSON (with the ceilings and the new fields), Markdown and SVG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-bench-'));
  try {
    const paths = await writeMoeReport(report, dir);
    const back = JSON.parse(readFileSync(paths.json, 'utf8')) as MoeBenchReport;
    assert.equal(back.rows.length, 7);
    assert.ok(Math.abs(back.meta.ceilings.hbmPeakTBs - 4.023) < 0.001);
    assert.equal(back.meta.ceilings.measuredFp8Tflops, 1400);
    assert.equal(back.meta.shapes[0].symmetricBufferBytesAt8192, 1.34e9);
    const fused = back.rows.find((r) => r.backend === 'mega_moe+graph')!;
    assert.equal(fused.calcDiffVsUnfused, 1.5e-6);
    assert.equal(fused.floorUs, 50);
    assert.match(readFileSync(paths.markdown, 'utf8'), /\| T \| backend \|/);
    assert.match(readFileSync(paths.svg, 'utf8'), /<svg/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bench moe CLI defaults: both GPU backends and the reference, flash and pro, T = 1 .. 16384', () => {
  const bench = new Command('bench');
  registerMoeBench(bench);
  const moe = bench.commands.find((c) => c.name() === 'moe')!;
  const def = (flag: string) => moe.options.find((o) => o.long === flag)?.defaultValue as unknown;
  assert.equal(def('--backend'), 'mega_moe,unfused,reference');
  assert.equal(def('--preset'), 'flash,pro');
  assert.equal(def('--tokens'), MOE_BENCH_DEFAULT_TOKENS);
  const powers = Array.from({ length: 15 }, (_, i) => 2 ** i);
  assert.deepEqual(parseTokenList(MOE_BENCH_DEFAULT_TOKENS), powers);
  assert.deepEqual(parseTokenList('1..16384'), powers);
});
