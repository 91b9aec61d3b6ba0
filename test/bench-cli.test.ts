// `megamoe bench ...` option parsing: bad numbers are refused by name before anything runs; good ones get as far as
// the GPU check (no GPU needed: MEGAMOE_DISABLE_CUDA=1).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const mainJs = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

function megamoe(...args: string[]): { status: number | null; output: string } {
  const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: 'utf8', env: { ...process.env, MEGAMOE_DISABLE_CUDA: '1' } });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

test('bench options: non-integers and values below the minimum are refused with the option named', () => {
  for (const [args, message] of [
    [['bench', 'moe', '--runs', '0'], /--runs must be an integer in \[1, /],
    [['bench', 'moe', '--seed', '1.5'], /--seed must be an integer in \[0, 4294967295\]/],
    [['bench', 'moe', '--reference-max-tokens', 'x'], /--reference-max-tokens must be an integer/],
    [['bench', 'staging', '--warmup', '-1'], /--warmup must be an integer in \[0, /],
    [['bench', 'routing', '--shapes', 'huge'], /--shapes: unknown "huge" \(known: tiny, flash, pro\)/],
  ] as const) {
    const r = megamoe(...args);
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.output, message, args.join(' '));
  }
});

test('bench moe with valid options gets as far as the GPU check', () => {
  const r = megamoe('bench', 'moe', '--preset', 'tiny', '--tokens', '1,8', '--warmup', '0', '--runs', '2', '--seed', '7', '--no-anchor');
  assert.notEqual(r.status, 0);
  assert.match(r.output, /bench moe needs a Hopper GPU: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/);
});
