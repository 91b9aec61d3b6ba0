// `megamoe bench serve` against a server on loopback (the test doubles as the model, so the figures are the
// server's own overhead, not a model's speed): every request completes, token counts are the server's, the
// report has vLLM's figures and renders.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { percentiles, renderServeMarkdown, runServeBench, writeServeReport } from '../src/bench/serve.js';
import { startTestServer } from './server-fixture.js';

test('percentiles interpolate like numpy', () => {
  const p = percentiles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(p.mean, 5.5);
  assert.equal(p.median, 5.5);
  assert.ok(Math.abs(p.p90 - 9.1) < 1e-12);
  assert.ok(Math.abs(p.p99 - 9.91) < 1e-12);
  assert.ok(Number.isNaN(percentiles([]).median));
});

test('bench serve: 32 requests at concurrency 8, chat and completions, all complete with the asked lengths', async () => {
  const s = await startTestServer({ maxNumSeqs: 8, maxQueue: 8 });
  try {
    for (const endpoint of ['completions', 'chat'] as const) {
      const { report, records } = await runServeBench({
        url: s.url, endpoint, numPrompts: 32, concurrency: 8, requestRate: Infinity, inputLen: 32, outputLen: 16, rangeRatio: 0.5, seed: 1,
      });
      assert.equal(report.completed, 32, JSON.stringify(report.failures));
      assert.equal(report.meta.model, 'toy');
      assert.equal(report.totalOutputTokens, records.reduce((a, r) => a + r.outputTokens, 0));
      assert.ok(records.every((r) => r.outputTokens >= 8 && r.outputTokens <= 24));
      assert.ok(report.totalInputTokens > 32 * 16);
      for (const p of [report.ttftMs, report.tpotMs, report.itlMs, report.e2eMs]) assert.ok(Number.isFinite(p.p99) && p.p99 >= p.median);
      const md = renderServeMarkdown(report);
      assert.match(md, /\| TTFT \| [\d.]+ \|/);
      console.log(md);
    }
    const { report } = await runServeBench({
      url: s.url, endpoint: 'completions', numPrompts: 8, concurrency: 1, requestRate: 200, inputLen: 32, outputLen: 8, rangeRatio: 0, seed: 2,
    });
    assert.equal(report.completed, 8);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-bench-serve-'));
    try {
      const w = writeServeReport(report, dir);
      assert.equal(JSON.parse(fs.readFileSync(w.json, 'utf8')).completed, 8);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    await s.close();
  }
});
