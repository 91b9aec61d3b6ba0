// `megamoe info`: backend availability logic and the command's output on a machine without a usable GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { backendAvailability, formatInfo, type InfoReport } from '../src/cli/commands/info.js';

const mainJs = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

test('backend availability: reference always; unfused needs GPU and nvcc; mega_moe not built yet', () => {
  const none = backendAvailability({ available: false, reason: 'no driver here' }, true);
  assert.deepEqual(none.map((b) => [b.name, b.available]), [['reference', true], ['unfused', false], ['mega_moe', false]]);
  assert.match(none[1].reason, /sm_90 GPU.*no driver here/);
  assert.equal(none[2].reason, 'not built yet');
  const gpu = { available: true as const, driverVersion: 13000, driverCudaVersion: '13.0', devices: [] };
  assert.equal(backendAvailability(gpu, true)[1].available, true);
  const noNvcc = backendAvailability(gpu, false)[1];
  assert.equal(noNvcc.available, false);
  assert.match(noNvcc.reason, /nvcc/);
  assert.match(backendAvailability({ available: false, reason: 'x' }, false)[1].reason, /nvcc not found/);
});

test('formatInfo explains a missing GPU and lists every backend', () => {
  const r: InfoReport = {
    cuda: { available: false, reason: 'no NVIDIA GPU driver on this machine (libcuda.so.1: not found)' },
    nvcc: null, kernelCacheDir: '/tmp/k', node: 'v20', platform: 'linux-x64',
    backends: backendAvailability({ available: false, reason: 'no driver' }, false),
  };
  const text = formatInfo(r);
  assert.match(text, /GPU: +none usable: no NVIDIA GPU driver on this machine/);
  assert.match(text, /nvcc: +nvcc not found/);
  assert.match(text, /reference +yes/);
  assert.match(text, /unfused +no/);
  assert.match(text, /mega_moe +no +not built yet/);
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
