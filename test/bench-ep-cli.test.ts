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

test('bench moe --ep 2 --backend mega_moe, unfused or both gets as far as the GPU check', () => {
  for (const backend of ['mega_moe', 'mega_moe,unfused', 'unfused']) {
    const r = megamoe('bench', 'moe', '--ep', '2', '--preset', 'tiny', '--tokens', '1,8', '--backend', backend);
    assert.equal(r.status, 1, r.output);
    assert.match(r.output, /bench moe --ep 2 needs a Hopper GPU: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/, backend);
  }
});

test('bench moe --ep: bad values and options that do not apply are refused with the option named', () => {
  for (const [args, message] of [
    [['--ep', '0'], /--ep must be an integer in \[1, 128\], got "0"/],
    [['--ep', '2', '--transport', 'tcp'], /--transport must be one of ipc, nccl, got "tcp"/],
    [['--ep', '3', '--preset', 'tiny'], /--ep 3 does not divide the 16 experts of preset tiny/],
    [['--ep', '2', '--backend', 'reference'], /pass --backend mega_moe,unfused or one of them/],
    [['--ep', '2', '--backend', 'mega_moe', '--transport', 'nccl'], /--transport nccl picks the unfused baseline's transport, and --backend mega_moe does not run it/],
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

test('bench moe --ep N with fake ranks (MEGAMOE_BENCH_EP_FAKE=1): the ranks agree on each series, the report takes the max over ranks per backend', async () => {
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-ep-fake-'));
  try {
    const run = (...args: string[]) => spawnSync(process.execPath, [mainJs, 'bench', 'moe', ...args, '--out', dir],
      { encoding: 'utf8', env: { ...process.env, MEGAMOE_DISABLE_CUDA: '1', MEGAMOE_BENCH_EP_FAKE: '1', MEGAMOE_BENCH_EP_FAKE_STEP_MS: '2' } });
    // 20 runs asked, a 1 ms budget: every rank stops after 3 rounds, because the SLOWEST rank's time decides. Both
    // backends asked, in one run and one report (fake times: unfused (r + 1) x 2 ms, mega_moe half that).
    const r = run('--ep', '4', '--backend', 'mega_moe,unfused', '--preset', 'tiny', '--tokens', '1,8', '--warmup', '1', '--runs', '20',
      '--series-budget-ms', '1', '--commit', 'f00');
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /all 4 ranks on device 0 .*timings in this mode mean nothing/);
    assert.match(r.stderr, /tiny: mega_moe symmetric buffer [\d.]+ [KMG]B per rank \(for 8 tokens per rank\)/);
    const rep = JSON.parse(readFileSync(join(dir, 'moe-ep4.json'), 'utf8'));
    assert.equal(rep.meta.sharedGpu, true);
    assert.equal(rep.meta.commit, 'f00');
    assert.deepEqual(rep.meta.backends, ['mega_moe', 'unfused']);
    assert.deepEqual(rep.rows.map((x: { backend: string; tokens: number }) => `${x.backend}@${x.tokens}`), ['mega_moe@1', 'unfused@1', 'mega_moe@8', 'unfused@8']);
    for (const row of rep.rows) {
      const step = row.backend === 'mega_moe' ? 1000 : 2000;
      assert.deepEqual(row.perRankMedianUs, [1, 2, 3, 4].map((k) => k * step));
      assert.equal(row.maxOverRanksUs, 4 * step);
      assert.equal(row.slowestRank, 3);
      assert.equal(row.transport, row.backend === 'mega_moe' ? 'symmetric memory' : 'ipc');
      assert.ok(row.rooflineUs > 0);
    }
    assert.equal(rep.ranks.length, 16);
    assert.ok(rep.ranks.every((s: { runs: number }) => s.runs === 3));
    const buf = rep.meta.shapes[0].megaBufferBytes;
    assert.equal(buf.length, 4);
    assert.ok(buf.every((b: number) => b > 0 && b === buf[0]));
    assert.equal(rep.meta.shapes[0].megaBufferMaxTokens, 8);
    const md = readFileSync(join(dir, 'moe-ep4.md'), 'utf8');
    assert.match(md, /timings in this mode mean nothing/);
    assert.match(md, /\| 8 \| 4000\.0 us \| 8000\.0 us \| 2\.00x \|/);
    // T over the combine bound is left out for unfused with the reason; mega_moe runs it, the rest still runs.
    const big = run('--ep', '2', '--backend', 'mega_moe,unfused', '--preset', 'flash', '--tokens', '8,8192', '--warmup', '0', '--runs', '3');
    assert.equal(big.status, 0, `${big.stdout}${big.stderr}`);
    const rep2 = JSON.parse(readFileSync(join(dir, 'moe-ep2.json'), 'utf8'));
    assert.deepEqual(rep2.rows.map((x: { backend: string; tokens: number }) => `${x.backend}@${x.tokens}`), ['mega_moe@8', 'unfused@8', 'mega_moe@8192']);
    assert.match(rep2.skipped[0].what, /^unfused flash T = 8192/);
    assert.match(rep2.skipped[0].reason, /at most 5461 tokens per rank/);
    assert.equal(rep2.meta.shapes[0].megaBufferMaxTokens, 8192);
    const none = run('--ep', '2', '--preset', 'flash', '--tokens', '8192', '--backend', 'unfused');
    assert.equal(none.status, 1);
    assert.match(none.stderr, /no --tokens value fits --ep 2 .*pass fewer tokens per rank/);
    // The default: the fused kernel and the unfused baseline in one run.
    const dflt = run('--ep', '2', '--preset', 'tiny', '--tokens', '1', '--warmup', '0', '--runs', '3');
    assert.equal(dflt.status, 0, `${dflt.stdout}${dflt.stderr}`);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'moe-ep2.json'), 'utf8')).meta.backends, ['mega_moe', 'unfused']);
    // mega_moe alone: no transport, no skip; its rows only.
    const mega = run('--ep', '2', '--preset', 'tiny', '--tokens', '1', '--backend', 'mega_moe', '--warmup', '0', '--runs', '3');
    assert.equal(mega.status, 0, `${mega.stdout}${mega.stderr}`);
    const rep3 = JSON.parse(readFileSync(join(dir, 'moe-ep2.json'), 'utf8'));
    assert.deepEqual(rep3.rows.map((x: { backend: string }) => x.backend), ['mega_moe']);
    assert.deepEqual(rep3.skipped, []);
    assert.doesNotMatch(readFileSync(join(dir, 'moe-ep2.md'), 'utf8'), /--transport ipc orders the ranks/);
    // NCCL with ranks sharing a GPU: exit 2, naming --transport ipc (the unfused baseline's transport).
    const nccl = run('--ep', '2', '--preset', 'tiny', '--transport', 'nccl');
    assert.equal(nccl.status, 2);
    assert.match(nccl.stderr, /use --transport ipc/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
