// `megamoe bench moe --ep N`'s report without a GPU: the per-rank bytes of the touched local experts, the max over
// ranks per backend, the roofline of the slowest rank, the tokens the combine bound leaves out, the argument refusals,
// the Markdown (mega_moe and unfused rows labelled, their comparison, the symmetric buffer, the shared-GPU warning)
// and the figure's points.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  aggregateRanks, describeMegaBuffer, epMaxTokensPerRank, hbmBoundUs, localTouched, MEGA_EP_TRANSPORT, rankStep, rankWeightBytes,
  renderEpMarkdown, SHARED_GPU_WARNING, writeEpReport, type EpBenchReport, type EpRankStep,
} from '../src/bench/ep-report.js';
import { epBenchRefusal, EXIT_UNSUPPORTED, splitTokens } from '../src/bench/moe-ep.js';
import { epBenchInputSeed } from '../src/bench/moe-ep-rank.js';
import { randomRouting } from '../src/bench/moe.js';
import { epLayerSeries, epPlotPoints, epPlotSpec, epRankSeries, epRooflineSeries } from '../src/bench/plot.js';
import { deriveCeilings, expertWeightBytes } from '../src/bench/report.js';

const H200 = deriveCeilings({ name: 'NVIDIA H200', smCount: 132, clockRateKHz: 1_980_000, memoryClockRateKHz: 2_619_000, memoryBusWidthBits: 6144,
  computeCapability: { major: 9, minor: 0 } });
const flash = { hidden: 4096, inter: 2048, experts: 256 };

test('localTouched counts distinct experts of one rank\'s range over every rank\'s routing, masked slots ignored', () => {
  const r0 = BigInt64Array.from([0n, 1n, 5n, -1n]);
  const r1 = BigInt64Array.from([1n, 4n, 7n, 7n]);
  assert.equal(localTouched([r0, r1], 0, 4), 2); // 0, 1
  assert.equal(localTouched([r0, r1], 4, 8), 3); // 4, 5, 7
  assert.equal(localTouched([Int32Array.from([-1, -1])], 0, 4), 0);
});

test('rankWeightBytes: touched local experts + the shared expert, per rank', () => {
  const per = expertWeightBytes(flash.hidden, flash.inter);
  const routings = [BigInt64Array.from([0n, 1n, 200n]), BigInt64Array.from([1n, 130n, 131n])];
  const b = rankWeightBytes(routings, 1, flash, 2);
  assert.deepEqual(b, [{ touched: 2, bytes: 3 * per }, { touched: 3, bytes: 4 * per }]);
  // No tokens: no shared expert either.
  assert.deepEqual(rankWeightBytes([new BigInt64Array(0), new BigInt64Array(0)], 0, flash, 2), [{ touched: 0, bytes: 0 }, { touched: 0, bytes: 0 }]);
  assert.throws(() => rankWeightBytes(routings, 1, flash, 3), /256 experts do not split over 3 ranks/);
});

test('rankWeightBytes over the bench\'s own seeded routing: the ranks\' touched experts sum to the distinct experts of the world', () => {
  const T = 64;
  const routings = [0, 1].map((r) => randomRouting(epBenchInputSeed(1, r, T), T, 256, 6).ids);
  const b = rankWeightBytes(routings, T, flash, 2);
  assert.equal(b[0].touched + b[1].touched, localTouched(routings, 0, 256));
  assert.ok(b[0].touched > 0 && b[0].touched <= 128);
});

test('hbmBoundUs: bytes / HBM peak (2 x 2619 MHz x 6144 bits / 8 = 4.02 TB/s from H200 attributes), NaN without a peak', () => {
  assert.ok(Math.abs(H200.hbmPeakTBs - (2 * 2.619e9 * 768) / 1e12) < 1e-12);
  assert.ok(Math.abs(hbmBoundUs(4.8e9, 4.8) - 1000) < 1e-9);
  assert.ok(Number.isNaN(hbmBoundUs(1e9, Number.NaN)));
});

function step(rank: number, tokens: number, samplesUs: number[], bytes: number, backend = 'unfused'): EpRankStep {
  return rankStep({ preset: 'flash', backend, tokens, rank, device: 0, samplesUs, rowsSent: 6 * tokens, rowsReceived: 6 * tokens + rank, path: 'decode',
    localExpertsTouched: bytes / 1e6, localWeightBytes: bytes }, 4.8);
}

test('aggregateRanks: the layer time is the max over ranks of the medians, the roofline that of the slowest rank\'s bytes', () => {
  const steps = [
    step(0, 8, [100, 300, 200], 48e6), // median 200
    step(1, 8, [250, 260, 900], 24e6), // median 260: the slowest, fewer bytes than rank 0
    step(1, 1, [50, 50, 50], 10e6),
    step(0, 1, [70, 60, 80], 20e6),
  ];
  assert.equal(steps[0].medianUs, 200);
  assert.equal(steps[0].rooflineUs, 10);
  const rows = aggregateRanks(steps, { ep: 2, transport: 'ipc', hbmPeakTBs: 4.8 });
  assert.deepEqual(rows.map((r) => r.tokens), [1, 8]);
  assert.ok(rows.every((r) => r.backend === 'unfused' && r.transport === 'ipc'));
  const r8 = rows[1];
  assert.equal(r8.maxOverRanksUs, 260);
  assert.equal(r8.slowestRank, 1);
  assert.deepEqual(r8.perRankMedianUs, [200, 260]);
  assert.equal(r8.rooflineBytes, 24e6);
  assert.equal(r8.rooflineUs, 5);
  assert.equal(r8.rooflineFraction, 5 / 260);
  assert.equal(r8.maxRowsReceived, 49);
  assert.equal(rows[0].slowestRank, 0);
  assert.equal(rows[0].maxOverRanksUs, 70);
  assert.throws(() => aggregateRanks(steps.slice(0, 1), { ep: 2, transport: 'ipc', hbmPeakTBs: 4.8 }),
    /unfused flash T = 8 has steps of ranks 0, expected 0\.\.1 once each/);
});

test('aggregateRanks: one row per (backend, T), each the max over ITS ranks; mega_moe rows travel over symmetric memory', () => {
  const steps = [
    step(0, 8, [200], 48e6), step(1, 8, [260], 24e6),
    step(0, 8, [90], 48e6, 'mega_moe'), step(1, 8, [70], 24e6, 'mega_moe'),
    step(0, 1, [60], 20e6, 'mega_moe'), step(1, 1, [50], 10e6, 'mega_moe'),
  ];
  const rows = aggregateRanks(steps, { ep: 2, transport: 'nccl', hbmPeakTBs: 4.8 });
  assert.deepEqual(rows.map((r) => `${r.backend}@${r.tokens}`), ['mega_moe@1', 'mega_moe@8', 'unfused@8']);
  const m8 = rows[1];
  assert.equal(m8.maxOverRanksUs, 90);
  assert.equal(m8.slowestRank, 0);
  assert.equal(m8.rooflineBytes, 48e6); // the slowest rank of mega_moe is rank 0: its bytes, not unfused's rank 1
  assert.equal(m8.transport, MEGA_EP_TRANSPORT);
  assert.equal(rows[2].maxOverRanksUs, 260);
  assert.equal(rows[2].transport, 'nccl');
  // A backend missing a rank's step is refused, naming the backend.
  assert.throws(() => aggregateRanks(steps.slice(0, 3), { ep: 2, transport: 'ipc', hbmPeakTBs: 4.8 }), /mega_moe flash T = 8 has steps of ranks 0,/);
});

test('splitTokens leaves out the T whose received rows pass the combine\'s 65535, saying the limit', () => {
  assert.equal(epMaxTokensPerRank(2, 6), 5461);
  assert.equal(epMaxTokensPerRank(8, 6), 1365);
  const s = splitTokens([1, 8, 4096, 8192], 2, 'flash', 6);
  assert.deepEqual(s.run, [1, 8, 4096]);
  assert.equal(s.skipped.length, 1);
  assert.match(s.skipped[0].what, /unfused flash T = 8192 per rank at --ep 2/);
  assert.match(s.skipped[0].reason, /at most 5461 tokens per rank/);
  assert.deepEqual(splitTokens([1, 8], 2, 'tiny', 4).skipped, []);
});

test('epBenchRefusal: mega_moe, unfused or both are accepted; other backends, presets, splits exit 1', () => {
  assert.equal(epBenchRefusal({ ep: 2, presets: ['tiny'], backends: ['mega_moe'] }), null);
  assert.equal(epBenchRefusal({ ep: 4, presets: ['flash'], backends: ['unfused', 'mega_moe'] }), null);
  const r = epBenchRefusal({ ep: 2, presets: ['tiny'], backends: ['mega_moe', 'reference'] });
  assert.equal(r?.[0], 1);
  assert.notEqual(r?.[0], EXIT_UNSUPPORTED);
  assert.match(r![1], /--backend reference with --ep 2: the EP benchmark times mega_moe, unfused only .*pass --backend mega_moe,unfused or one of them/);
  assert.match(epBenchRefusal({ ep: 2, presets: ['tiny'], backends: [] })![1], /--backend: name mega_moe, unfused or both/);
  assert.match(epBenchRefusal({ ep: 3, presets: ['flash'], backends: ['unfused'] })![1], /--ep 3 does not divide the 256 experts of preset flash; use one of 2, 4, 8, 16, 32/);
  assert.match(epBenchRefusal({ ep: 2, presets: ['huge'], backends: ['unfused'] })![1], /--preset huge: expected one of tiny, flash, pro/);
  assert.equal(epBenchRefusal({ ep: 2, presets: ['tiny', 'flash', 'pro'], backends: ['unfused'] }), null);
});

function report(sharedGpu: boolean, backends: string[] = ['unfused']): EpBenchReport {
  const unfused = [step(0, 1, [40], 30e6), step(1, 1, [50], 20e6), step(0, 8, [90], 60e6), step(1, 8, [80], 50e6)];
  const mega = [step(0, 1, [25], 30e6, 'mega_moe'), step(1, 1, [20], 20e6, 'mega_moe'), step(0, 8, [30], 60e6, 'mega_moe'), step(1, 8, [45], 50e6, 'mega_moe')];
  const ranks = [...(backends.includes('mega_moe') ? mega : []), ...(backends.includes('unfused') ? unfused : [])];
  const withMega = backends.includes('mega_moe') ? { megaBufferBytes: [1.5e9, 1.5e9], megaBufferMaxTokens: 8 } : {};
  return {
    meta: {
      gpu: 'NVIDIA H200', smCount: 132, driver: '12.8', commit: 'abc1234', command: 'megamoe bench moe --ep 2', date: '2026-12-01',
      warmup: 2, runs: 5, ep: 2, transport: 'ipc', backends, devices: sharedGpu ? [0, 0] : [0, 1], rankGpus: ['NVIDIA H200', 'NVIDIA H200'],
      sharedGpu, ...(sharedGpu ? { warning: `all 2 ranks on device 0: ${SHARED_GPU_WARNING}` } : {}), ceilings: H200,
      shapes: [{ preset: 'flash', hidden: 4096, inter: 2048, experts: 256, topK: 6, sharedExperts: 1, expertsPerRank: 128, ...withMega }], notes: ['a note'],
    },
    rows: aggregateRanks(ranks, { ep: 2, transport: 'ipc', hbmPeakTBs: H200.hbmPeakTBs }),
    ranks,
    skipped: [{ what: 'flash T = 8192 per rank at --ep 2', reason: 'combine bound' }],
  };
}

test('renderEpMarkdown: header, the warning when ranks share a GPU, the max-over-ranks and per-rank tables', () => {
  const md = renderEpMarkdown(report(true));
  assert.match(md, /commit `abc1234`/);
  assert.match(md, /Command: `megamoe bench moe --ep 2`/);
  assert.match(md, /timings in this mode mean nothing/);
  assert.match(md, /EP 2, backend unfused \(over ipc\); ranks on devices 0,0\./);
  assert.match(md, /\| T per rank \| backend \| max over ranks \| slowest rank \| rank 0 \| rank 1 \| roofline \|/);
  assert.match(md, /\| 1 \| unfused \| 50\.0 us \| 1 \| 40\.0 us \| 50\.0 us \|/);
  assert.match(md, /\| 8 \| unfused \| 90\.0 us \| 0 \| 90\.0 us \| 80\.0 us \|/);
  assert.match(md, /\| 8 \| unfused \| 1 \| 0 \| 80\.0 us \| 80\.0 us \| 80\.0 us \| 1 \| 48 \| 49 \| decode \|/);
  assert.match(md, /- Not measured: flash T = 8192 per rank at --ep 2: combine bound/);
  assert.doesNotMatch(md, /mega_moe/); // one backend: no comparison, no buffer line
  assert.doesNotMatch(renderEpMarkdown(report(false)), /mean nothing/);
});

test('renderEpMarkdown with both backends: labelled rows, the symmetric buffer per rank, mega_moe against unfused, the warning kept', () => {
  const md = renderEpMarkdown(report(true, ['mega_moe', 'unfused']));
  assert.match(md, /timings in this mode mean nothing/);
  assert.match(md, /EP 2, backends mega_moe \(over symmetric memory\), unfused \(over ipc\);/);
  assert.match(md, /the backends interleaved: one run of each per round/);
  assert.match(md, /mega_moe symmetric buffer: 1\.50 GB per rank \(for 8 tokens per rank\)\./);
  assert.match(md, /\| 8 \| mega_moe \| 45\.0 us \| 1 \| 30\.0 us \| 45\.0 us \|/);
  assert.match(md, /\| 8 \| unfused \| 90\.0 us \| 0 \| 90\.0 us \| 80\.0 us \|/);
  assert.match(md, /\| T per rank \| mega_moe \| unfused \| unfused \/ mega_moe \|/);
  assert.match(md, /\| 1 \| 25\.0 us \| 50\.0 us \| 2\.00x \|/);
  assert.match(md, /\| 8 \| 45\.0 us \| 90\.0 us \| 2\.00x \|/);
  assert.match(md, /\| 8 \| mega_moe \| 1 \| 0 \| 45\.0 us \|/);
  // mega_moe alone: its rows and buffer, no comparison table.
  const alone = renderEpMarkdown(report(false, ['mega_moe']));
  assert.match(alone, /backend mega_moe \(over symmetric memory\)/);
  assert.match(alone, /\| 1 \| mega_moe \| 25\.0 us \|/);
  assert.doesNotMatch(alone, /unfused \/ mega_moe|\| unfused \|/);
});

test('describeMegaBuffer: one size when the ranks agree, else each rank\'s', () => {
  assert.equal(describeMegaBuffer([2.5e9, 2.5e9]), '2.50 GB per rank');
  assert.equal(describeMegaBuffer([2.5e9, 3e8]), 'rank 0 2.50 GB, rank 1 300.0 MB');
});

test('epPlotPoints: per backend the layer, each rank and the roofline per T; writeEpReport writes moe-ep2.json/.md/.svg', async () => {
  const rep = report(false, ['mega_moe', 'unfused']);
  const pts = epPlotPoints(rep);
  for (const b of ['mega_moe', 'unfused']) {
    assert.equal(pts.filter((p) => p.series === epLayerSeries(b)).length, 2);
    assert.equal(pts.filter((p) => p.series === epRankSeries(b, 1)).length, 2);
    const roof = pts.filter((p) => p.series === epRooflineSeries(b));
    assert.equal(roof.length, 2);
    assert.ok(roof.every((p) => p.kind === 'bound'));
  }
  assert.deepEqual(pts.filter((p) => p.series === epLayerSeries('mega_moe')).map((p) => p.timeUs), [25, 45]);
  assert.match(String(epPlotSpec(rep).title), /EP 2: mega_moe over symmetric memory, unfused over ipc/);
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-ep-report-'));
  try {
    const paths = await writeEpReport(rep, dir);
    assert.equal(paths.json, join(dir, 'moe-ep2.json'));
    const back = JSON.parse(readFileSync(paths.json, 'utf8')) as EpBenchReport;
    assert.equal(back.rows.length, 4);
    assert.deepEqual(back.meta.backends, ['mega_moe', 'unfused']);
    assert.ok(back.rows.every((r) => Number.isFinite(r.maxOverRanksUs)));
    assert.match(readFileSync(paths.svg, 'utf8'), /^<svg/);
    assert.match(readFileSync(paths.markdown, 'utf8'), /max over ranks/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
