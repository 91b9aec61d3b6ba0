// `megamoe bench moe --ep N` argument errors, without a GPU (MEGAMOE_DISABLE_CUDA=1): each refused by name with the
// fix, before anything runs; valid ones get as far as the GPU check.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const mainJs = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function megamoe(...args: string[]): { status: number | null; output: string } {
  const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: 'utf8', env: { ...process.env, MEGAMOE_DISABLE_CUDA: '1' } });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test('bench moe --ep 2 --backend mega_moe: exit 2, the fused kernel does not dispatch across ranks yet', () => {
  for (const backend of ['mega_moe', 'mega_moe,unfused']) {
    const r = megamoe('bench', 'moe', '--ep', '2', '--preset', 'tiny', '--backend', backend);
    assert.equal(r.status, 2, r.output);
    assert.match(r.output, /the fused kernel does not dispatch across ranks yet/);
  }
});

test('bench moe --ep: bad values and options that do not apply are refused with the option named', () => {
  for (const [args, message] of [
    [['--ep', '0'], /--ep must be an integer in \[1, 128\], got "0"/],
    [['--ep', '2', '--transport', 'tcp'], /--transport must be one of ipc, nccl, got "tcp"/],
    [['--ep', '3', '--preset', 'tiny'], /--ep 3 does not divide the 16 experts of preset tiny/],
    [['--ep', '2', '--backend', 'reference'], /pass --backend unfused/],
    [['--ep', '2', '--no-anchor'], /--no-anchor does not apply to --ep 2/],
    [['--ep', '2', '--reference-max-tokens', '4'], /--reference-max-tokens does not apply to --ep 2/],
    [['--transport', 'ipc'], /--transport ipc picks how EP ranks talk: it needs --ep N with N > 1/],
    [['--ep', '2', '--tokens', '0'], /--tokens: "0" is not a positive integer/],
  ] as const) {
    const r = megamoe('bench', 'moe', ...args);
    assert.equal(r.status, 1, `${args.join(' ')}\n${r.output}`);
    assert.match(r.output, message, args.join(' '));
  }
});

test('bench moe --ep 2 with valid options gets as far as the GPU check; --ep 1 is the single-GPU bench', () => {
  const r = megamoe('bench', 'moe', '--ep', '2', '--preset', 'tiny', '--tokens', '1,8', '--transport', 'ipc', '--runs', '3');
  assert.equal(r.status, 1);
  assert.match(r.output, /bench moe --ep 2 needs a Hopper GPU: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/);
  const one = megamoe('bench', 'moe', '--ep', '1', '--preset', 'tiny', '--tokens', '1', '--no-anchor');
  assert.notEqual(one.status, 0);
  assert.match(one.output, /bench moe needs a Hopper GPU: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/);
});

test('bench moe --ep N with fake ranks (MEGAMOE_BENCH_EP_FAKE=1): the ranks agree on each series, the report takes the max over ranks', async () => {
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-ep-fake-'));
  try {
    const run = (...args: string[]) => spawnSync(process.execPath, [mainJs, 'bench', 'moe', ...args, '--out', dir],
      { encoding: 'utf8', env: { ...process.env, MEGAMOE_DISABLE_CUDA: '1', MEGAMOE_BENCH_EP_FAKE: '1', MEGAMOE_BENCH_EP_FAKE_STEP_MS: '2' } });
    // 20 runs asked, a 1 ms budget: every rank stops after 3 samples, because the SLOWEST rank's time decides.
    const r = run('--ep', '4', '--preset', 'tiny', '--tokens', '1,8', '--warmup', '1', '--runs', '20', '--series-budget-ms', '1', '--commit', 'f00');
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /all 4 ranks on device 0 .*timings in this mode mean nothing/);
    const rep = JSON.parse(readFileSync(join(dir, 'moe-ep4.json'), 'utf8'));
    assert.equal(rep.meta.sharedGpu, true);
    assert.equal(rep.meta.commit, 'f00');
    assert.deepEqual(rep.rows.map((x: { tokens: number }) => x.tokens), [1, 8]);
    for (const row of rep.rows) {
      assert.deepEqual(row.perRankMedianUs, [2000, 4000, 6000, 8000]);
      assert.equal(row.maxOverRanksUs, 8000);
      assert.equal(row.slowestRank, 3);
      assert.ok(row.rooflineUs > 0);
    }
    assert.equal(rep.ranks.length, 8);
    assert.ok(rep.ranks.every((s: { runs: number }) => s.runs === 3));
    assert.match(readFileSync(join(dir, 'moe-ep4.md'), 'utf8'), /timings in this mode mean nothing/);
    // T over the combine bound is left out with the reason; the rest still runs.
    const big = run('--ep', '2', '--preset', 'flash', '--tokens', '8,8192', '--warmup', '0', '--runs', '3');
    assert.equal(big.status, 0, `${big.stdout}${big.stderr}`);
    const rep2 = JSON.parse(readFileSync(join(dir, 'moe-ep2.json'), 'utf8'));
    assert.deepEqual(rep2.rows.map((x: { tokens: number }) => x.tokens), [8]);
    assert.match(rep2.skipped[0].reason, /at most 5461 tokens per rank/);
    const none = run('--ep', '2', '--preset', 'flash', '--tokens', '8192');
    assert.equal(none.status, 1);
    assert.match(none.stderr, /no --tokens value fits --ep 2 .*pass fewer tokens per rank/);
    // NCCL with ranks sharing a GPU: exit 2, naming --transport ipc.
    const nccl = run('--ep', '2', '--preset', 'tiny', '--transport', 'nccl');
    assert.equal(nccl.status, 2);
    assert.match(nccl.stderr, /use --transport ipc/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
