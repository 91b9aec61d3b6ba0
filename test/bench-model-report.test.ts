// `megamoe bench model`'s report (src/bench/model-report.ts, plot.ts): rows from samples, rows that did not run,
// per-layer parts from event marks, the Markdown and the SVG, on hand-made data (no GPU).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { modelPlotPoints, modelPlotSpec } from '../src/bench/plot.js';
import { benchModelConfig, decodeStepCost, prefillCost } from '../src/bench/model-plan.js';
import {
  layerParts, notRunRow, renderModelMarkdown, timedRow, writeModelReport, type DecodeRow, type ModelBenchReport,
} from '../src/bench/model-report.js';
import { deriveCeilings, withCopyBandwidth } from '../src/bench/report.js';

const ceilings = withCopyBandwidth(deriveCeilings({
  name: 'NVIDIA H200', smCount: 132, clockRateKHz: 1_980_000, memoryClockRateKHz: 2_619_000, memoryBusWidthBits: 6144, computeCapability: { major: 9, minor: 0 },
}), 1 << 30, 600, 10);
const cfg = benchModelConfig('flash', 4);

function report(): ModelBenchReport {
  const decodeCost = decodeStepCost(cfg, 8, 1024);
  const measured: DecodeRow = { batch: 8, context: 1024, ...timedRow([3000, 2000, 2500], [3100, 2100, 2600], 8, decodeCost, ceilings) };
  measured.layers = layerParts([[
    { attention: 0, 'q-renorm': 0.1, 'attention-rest': 0.3, moe: 0.5, end: 1.0 },
    { attention: 1.0, 'q-renorm': 1.1, 'attention-rest': 1.2, moe: 1.4, end: 2.0 },
  ]], [{ ratio: 0, hashRouted: true }, { ratio: 4, hashRouted: false }]);
  measured.profiledStepUs = 2500; measured.restUs = 500;
  return {
    meta: {
      gpu: 'NVIDIA H200', smCount: 132, commit: 'abc1234', command: 'megamoe bench model --layers 2', date: '2026-12-01', warmup: 2, runs: 3,
      ceilings, notes: ['a note'], preset: 'flash', layers: 4, ratios: cfg.compressRatios, kvFill: 'skip', prefillChunk: 2048,
      shape: { dim: 4096, heads: 64, headDim: 512, experts: 256, topK: 6, inter: 2048, vocab: 129280, window: 128, indexTopk: 512 },
    },
    decode: [measured, { batch: 256, context: 32768, ...notRunRow('KvCacheCapacityError: no room', decodeStepCost(cfg, 256, 32768), ceilings) }],
    prefill: [{ tokens: 4096, chunk: 2048, ...timedRow([2e5, 2.2e5], [2e5, 2.2e5], 4096, prefillCost(cfg, 4096, 2048), ceilings) }],
    skipped: [{ what: 'x', reason: 'y' }],
  };
}

test('a timed row: median, tokens/s, roofline fraction on this GPU', () => {
  const r = report().decode[0];
  assert.equal(r.status, 'measured');
  assert.equal(r.medianUs, 2500);
  assert.equal(r.minUs, 2000);
  assert.equal(r.hostMedianUs, 2600);
  assert.equal(r.tokensPerS, 8 / 2500e-6);
  assert.equal(r.rooflineFraction, r.rooflineUs / 2500);
  assert.equal(r.bound, 'HBM');
  assert.ok(r.copyBoundUs! > r.rooflineUs); // the measured copy is slower than the derived peak
  const n = report().decode[1];
  assert.equal(n.status, 'not run');
  assert.match(n.reason!, /no room/);
  assert.ok(Number.isFinite(n.rooflineUs));
});

test('per-layer parts from the marks: attention without the renorm, the renorm, the MoE', () => {
  const [a, b] = report().decode[0].layers!;
  assert.ok(Math.abs(a.attentionUs - (100 + 200)) < 1e-9);
  assert.ok(Math.abs(a.qRenormUs - 200) < 1e-9);
  assert.ok(Math.abs(a.moeUs - 500) < 1e-9);
  assert.ok(Math.abs(b.attentionUs - 300) < 1e-9);
  assert.equal(b.ratio, 4);
  assert.equal(a.hashRouted, true);
});

test('markdown: header, decode / prefill / per-layer tables, rows that did not run with their reason', () => {
  const md = renderModelMarkdown(report());
  assert.match(md, /^GPU: NVIDIA H200 \(132 SMs\); commit `abc1234`; 2026-12-01\./);
  assert.match(md, /Command: `megamoe bench model --layers 2`/);
  assert.match(md, /#### Decode step/);
  assert.match(md, /\| 8 \| 1K \| 2500\.0 us \| 2000\.0 us \|/);
  assert.match(md, /\| 256 \| 32K \| not run: KvCacheCapacityError: no room \|/);
  assert.match(md, /#### Prefill/);
  assert.match(md, /\| 4K \| 2048 \| 210\.00 ms \|/);
  assert.match(md, /#### Per layer, decode batch 8, context 1K/);
  assert.match(md, /\| 0 \(hash\) \| 0 \| 300\.0 us \| 200\.0 us \| 500\.0 us \| 1000\.0 us \|/);
  assert.match(md, /Not measured: x: y/);
  assert.match(md, /Ceiling: HBM peak/);
});

test('plot points: measured and roofline per row; a row that did not run has only its roofline', () => {
  const pts = modelPlotPoints(report());
  assert.equal(pts.filter((p) => p.kind === 'measured').length, 2);
  assert.equal(pts.filter((p) => p.kind === 'bound').length, 3);
  assert.ok(pts.some((p) => p.panel === 'decode' && p.x === 256 && p.kind === 'bound'));
  const spec = modelPlotSpec(report()) as unknown as { hconcat: unknown[] };
  assert.equal(spec.hconcat.length, 2);
});

test('writeModelReport writes model.json (NaN as null), model.md and an SVG', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-model-report-'));
  try {
    const paths = await writeModelReport(report(), dir);
    const json = JSON.parse(readFileSync(paths.json, 'utf8')) as ModelBenchReport;
    assert.equal(json.decode[1].medianUs, null);
    assert.equal(json.decode[0].medianUs, 2500);
    assert.match(readFileSync(paths.markdown, 'utf8'), /#### Decode step/);
    assert.match(readFileSync(paths.svg, 'utf8'), /^<svg/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
