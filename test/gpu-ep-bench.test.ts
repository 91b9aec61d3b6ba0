// `megamoe bench moe --ep 2` for real (GPU host): the unfused EP baseline over the IPC transport and the fused
// mega_moe kernel across ranks (symmetric memory), two rank processes (both on device 0 on a one-GPU machine: the run
// must then say its timings mean nothing), few runs: unfused tiny at T = 1, 8 and flash at T = 8 per rank; both
// backends in one run on tiny at T = 1, 8; mega_moe alone on flash at T = 8. Checks the report, not the figures: one
// row per (backend, T) with finite max-over-ranks times, every rank's median, the roofline of the slowest rank, the
// rows sent = received over the ranks, the symmetric buffer per rank, and the three files. Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { deviceCount, gpuSkipReason } from '../src/cuda/index.js';
import type { EpBenchReport } from '../src/bench/ep-report.js';
import { runMegamoe } from './support/cli.js';

const skip = gpuSkipReason();

const bench = (args: string[], timeoutMs: number) => runMegamoe(['bench', 'moe', ...args], timeoutMs);

async function runAndCheck(preset: string, tokens: number[], backends: string[]): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'megamoe-ep-bench-'));
  try {
    const r = await bench(['--ep', '2', '--preset', preset, '--tokens', tokens.join(','), '--backend', backends.join(','),
      ...(backends.includes('unfused') ? ['--transport', 'ipc'] : []), '--warmup', '1', '--runs', '5', '--out', dir],
      // The first mega_moe run compiles the fused kernel's variants (rank 0, then the others load them).
      backends.includes('mega_moe') ? 280_000 : 80_000);
    const where = `\n--- stdout\n${r.out}\n--- stderr\n${r.err}`;
    assert.equal(r.code, 0, `bench exited ${r.code}${where}`);
    const shared = deviceCount() < 2;
    if (shared) assert.match(r.err, /timings in this mode mean nothing/, where);
    const json = path.join(dir, 'moe-ep2.json');
    assert.ok(existsSync(json) && existsSync(path.join(dir, 'moe-ep2.md')) && existsSync(path.join(dir, 'moe-ep2.svg')), where);
    const rep = JSON.parse(readFileSync(json, 'utf8')) as EpBenchReport;
    assert.equal(rep.meta.ep, 2);
    assert.equal(rep.meta.transport, 'ipc');
    assert.equal(rep.meta.sharedGpu, shared);
    assert.deepEqual(rep.meta.backends, backends);
    assert.ok(Number.isFinite(rep.meta.ceilings.hbmPeakTBs) && rep.meta.ceilings.hbmPeakTBs > 0);
    // Rows sorted by T, then backend.
    assert.deepEqual(rep.rows.map((x) => `${x.backend}@${x.tokens}`), tokens.flatMap((t) => [...backends].sort().map((b) => `${b}@${t}`)), where);
    const shape = rep.meta.shapes[0];
    if (backends.includes('mega_moe')) {
      assert.match(r.err, new RegExp(`${preset}: mega_moe symmetric buffer [\\d.]+ [KMG]B per rank`), where);
      assert.equal(shape.megaBufferBytes?.length, 2);
      assert.ok(shape.megaBufferBytes!.every((b) => Number.isFinite(b) && b > 0), String(shape.megaBufferBytes));
      assert.equal(shape.megaBufferMaxTokens, Math.max(...tokens));
    } else {
      assert.equal(shape.megaBufferBytes, undefined);
    }
    for (const row of rep.rows) {
      assert.equal(row.preset, preset);
      assert.equal(row.transport, row.backend === 'mega_moe' ? 'symmetric memory' : 'ipc');
      assert.ok(Number.isFinite(row.maxOverRanksUs) && row.maxOverRanksUs > 0, `T = ${row.tokens}: ${row.maxOverRanksUs}`);
      assert.equal(row.perRankMedianUs.length, 2);
      assert.ok(row.perRankMedianUs.every((u) => Number.isFinite(u) && u > 0 && u <= row.maxOverRanksUs));
      assert.equal(row.maxOverRanksUs, Math.max(...row.perRankMedianUs));
      assert.ok(Number.isFinite(row.rooflineUs) && row.rooflineUs > 0 && row.rooflineBytes > 0);
      const steps = rep.ranks.filter((s) => s.tokens === row.tokens && s.backend === row.backend);
      assert.deepEqual(steps.map((s) => s.rank).sort(), [0, 1]);
      // Every slot of the world's tokens went to some owner and came back: rows sent over ranks = rows received.
      const sent = steps.reduce((a, s) => a + s.rowsSent, 0);
      const recv = steps.reduce((a, s) => a + s.rowsReceived, 0);
      assert.equal(sent, recv);
      assert.equal(sent, 2 * row.tokens * (preset === 'tiny' ? 4 : 6));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('bench moe --ep 2 --backend unfused --preset tiny --tokens 1,8 --transport ipc: a row per T, finite max-over-ranks times', { skip, timeout: 90_000 }, async () => {
  await runAndCheck('tiny', [1, 8], ['unfused']);
});

test('bench moe --ep 2 --backend unfused --preset flash --tokens 8 --transport ipc', { skip, timeout: 90_000 }, async () => {
  await runAndCheck('flash', [8], ['unfused']);
});

test('bench moe --ep 2 --backend mega_moe,unfused --preset tiny --tokens 1,8: both backends in one run, a row per (backend, T)', { skip, timeout: 300_000 }, async () => {
  await runAndCheck('tiny', [1, 8], ['mega_moe', 'unfused']);
});

test('bench moe --ep 2 --backend mega_moe --preset flash --tokens 8: the fused kernel alone across ranks', { skip, timeout: 300_000 }, async () => {
  await runAndCheck('flash', [8], ['mega_moe']);
});
