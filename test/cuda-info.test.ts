// `megamoe info`: backend availability (from the registry) and the command's output on a machine without a usable GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { collectInfo, formatInfo, megaBufferRows, type InfoReport } from '../src/cli/commands/info.js';
import { listBackends } from '../src/backends/index.js';

const mainJs = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

test('backend availability comes from the backend registry: reference always; unfused and mega_moe say why not', async () => {
  const r = await collectInfo();
  const listed = await listBackends();
  assert.deepEqual(r.backends.map((b) => [b.name, b.available, b.reason]), listed.map((b) => [b.name, b.ok, b.reason]));
  assert.deepEqual(r.backends.map((b) => b.name), ['reference', 'unfused', 'mega_moe']);
  assert.equal(r.backends[0].available, true);
  if (!r.cuda.available) {
    assert.equal(r.backends[1].available, false);
    assert.ok(r.backends[1].reason.includes(r.cuda.reason), r.backends[1].reason);
  }
  if (!r.cuda.available) {
    assert.equal(r.backends[2].available, false);
    assert.ok(r.backends[2].reason.includes(r.cuda.reason), r.backends[2].reason);
  }
});

test('formatInfo explains a missing GPU and lists every backend', () => {
  const r: InfoReport = {
    cuda: { available: false, reason: 'no NVIDIA GPU driver on this machine (libcuda.so.1: not found)' },
    nvcc: null, kernelCacheDir: '/tmp/k', node: 'v20', platform: 'linux-x64',
    backends: [
      { name: 'reference', available: true, reason: 'runs anywhere', description: 'CPU reference' },
      { name: 'unfused', available: false, reason: 'no NVIDIA GPU driver on this machine', description: 'GPU' },
      { name: 'mega_moe', available: false, reason: 'not built in this checkout', description: 'GPU, fused' },
    ],
    megaBuffers: megaBufferRows(),
  };
  const text = formatInfo(r);
  assert.match(text, /GPU: +none usable: no NVIDIA GPU driver on this machine/);
  assert.match(text, /nvcc: +nvcc not found/);
  assert.match(text, /reference +yes +CPU reference; runs anywhere/);
  assert.match(text, /unfused +no/);
  assert.match(text, /mega_moe +no +not built in this checkout/);
  // The yardstick (flash, 8192 tokens per rank) and the EP worst case (every rank's tokens on one rank).
  assert.match(text, /flash +EP1 30\.0 MB \/ 876\.0 MB, EP2 [\d.]+ MB \/ 1\.59 GB, EP4 .*EP8 .* \/ 5\.87 GB/);
});

test('`megamoe info` and `info --json` run and explain the missing GPU', () => {
  const env = { ...process.env, MEGAMOE_DISABLE_CUDA: '1' };
  const text = execFileSync(process.execPath, [mainJs, 'info'], { encoding: 'utf8', env });
  assert.match(text, /none usable: CUDA disabled by MEGAMOE_DISABLE_CUDA=1/);
  assert.match(text, /MoE backends:/);
  const json = JSON.parse(execFileSync(process.execPath, [mainJs, 'info', '--json'], { encoding: 'utf8', env })) as InfoReport;
  assert.equal(json.cuda.available, false);
  assert.deepEqual(json.backends.map((b) => b.name), ['reference', 'unfused', 'mega_moe']);
  assert.equal(json.backends[0].available, true);
});
