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
