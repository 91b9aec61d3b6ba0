// The MoE benchmark's report: derived rates, Markdown table and SVG plot, on hand-made rows (no GPU needed).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { moePlotSpec, renderMoePlotSvg } from '../src/bench/plot.js';
import {
  deriveRates, expertWeightBytes, median, moeFlops, renderMoeMarkdown, writeMoeReport, H100_ROOFLINE,
  type MoeBenchReport, type MoeBenchRow,
} from '../src/bench/report.js';

function row(backend: string, tokens: number, medianUs: number, touched: number): MoeBenchRow {
  const H = 4096; const I = 2048;
  return deriveRates({
    preset: 'flash', backend, tokens, medianUs, minUs: medianUs, maxUs: medianUs, runs: 10,
    flops: moeFlops(tokens, 6, H, I), expertsTouched: touched, weightBytes: (touched + 1) * expertWeightBytes(H, I),
  });
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

test('rates and roofline fractions follow from time, FLOPs and bytes', () => {
  // 7 experts (6 routed + shared) streamed in exactly bytes / 3.35 TB/s: bandwidth fraction 1, roofline fraction 1.
  const bytes = 7 * expertWeightBytes(4096, 2048);
  const us = (bytes / (H100_ROOFLINE.hbmTBs * 1e12)) * 1e6;
  const r = row('unfused', 1, us, 6);
  assert.ok(Math.abs(r.bandwidthFraction - 1) < 1e-9, `bandwidth fraction ${r.bandwidthFraction}`);
  assert.ok(Math.abs(r.rooflineFraction - 1) < 1e-9, `roofline fraction ${r.rooflineFraction}`);
  assert.ok(r.computeFraction < 0.01);
  // Compute-bound: at T = 16384 the FLOPs term dominates the roofline.
  const big = row('unfused', 16384, 10000, 256);
  const flopsSeconds = big.flops / (H100_ROOFLINE.fp8DenseTflops * 1e12);
  assert.ok(Math.abs(big.rooflineFraction - flopsSeconds / 0.01) < 1e-12);
  assert.ok(Math.abs(big.tflops - big.flops / 0.01 / 1e12) < 1e-9);
});

const report: MoeBenchReport = {
  meta: {
    gpu: 'NVIDIA H100 80GB HBM3', smCount: 132, driver: '13.0', commit: 'abc1234', command: 'megamoe bench moe --preset flash',
    date: '2026-11-27', warmup: 3, runs: 10, roofline: H100_ROOFLINE,
    shapes: [{ preset: 'flash', hidden: 4096, inter: 2048, experts: 256, topK: 6, sharedExperts: 1 }],
    notes: ['reference capped at T <= 8'],
  },
  rows: [row('unfused', 1, 120, 6), row('unfused', 64, 900, 200), row('reference', 1, 2.5e6, 6)],
  hostOverhead: [{ preset: 'flash', tokens: 1, eagerHostUs: 60, graphHostUs: 8, eagerGpuUs: 130, graphGpuUs: 118 }],
  gemmAlone: [{ label: '4 groups x 8192 rows, N 4096, K 4096', groups: 4, rowsPerGroup: 8192, n: 4096, k: 4096, medianUs: 800, runs: 10, tflops: 1374.4, computeFraction: 0.7 }],
  skipped: [{ what: 'cuBLASLt anchor', reason: 'libcublasLt.so not found' }],
};

test('Markdown: header, one line per row, host overhead, skips', () => {
  const md = renderMoeMarkdown(report);
  assert.match(md, /GPU: NVIDIA H100 80GB HBM3 \(132 SMs\)/);
  assert.match(md, /commit `abc1234`/);
  const tableLines = md.split('\n').filter((l) => /^\| \d+ \| /.test(l));
  assert.equal(tableLines.length, 3, md); // three bench rows (the host table's rows start with the preset name)
  assert.match(md, /\| 1 \| reference \| 2500\.00 ms \|/);
  assert.match(md, /\| flash \| 1 \| 60\.0 \| 8\.0 \|/);
  assert.match(md, /Not measured: cuBLASLt anchor: libcublasLt\.so not found/);
  assert.match(md, /\| 4 groups x 8192 rows, N 4096, K 4096 \| 800\.0 us \| 1374\.4 \| 70\.0% \|/);
});

test('plot spec holds every row and renders to SVG with both panels', async () => {
  const spec = moePlotSpec(report.rows) as unknown as { data: { values: unknown[] }; vconcat: unknown[] };
  assert.equal(spec.data.values.length, 3);
  assert.equal(spec.vconcat.length, 1);
  const svg = await renderMoePlotSvg(report.rows);
  assert.match(svg, /^<svg/);
  assert.match(svg, /time per layer/);
  assert.match(svg, /% of roofline/);
  assert.match(svg, /reference/);
});

test('writeMoeReport writes JSON, Markdown and SVG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-bench-'));
  try {
    const paths = await writeMoeReport(report, dir);
    const back = JSON.parse(readFileSync(paths.json, 'utf8')) as MoeBenchReport;
    assert.equal(back.rows.length, 3);
    assert.match(readFileSync(paths.markdown, 'utf8'), /\| T \| backend \|/);
    assert.match(readFileSync(paths.svg, 'utf8'), /<svg/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
