// cudaStatus() and the lazy driver: importing the cuda layer and asking about it never breaks a GPU-less machine.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cudaStatus, gpuSkipReason } from '../src/cuda/status.js';
import { CU_RESULT_NAMES, CudaError, cuResultName } from '../src/cuda/errors.js';

const indexUrl = new URL('../src/cuda/index.js', import.meta.url).href;

function runNode(code: string, env: Record<string, string> = {}): string {
  return execFileSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', env: { ...process.env, ...env } });
}

test('cudaStatus never throws and is self-consistent', () => {
  const s = cudaStatus();
  if (s.available) {
    assert.ok(s.devices.length > 0);
    assert.equal(s.devices[0].computeCapability.major, 9);
    assert.equal(gpuSkipReason(), undefined);
  } else {
    assert.ok(s.reason.length > 10, 'an unavailable status explains why');
    assert.match(gpuSkipReason() ?? '', /no usable Hopper GPU/);
  }
  assert.equal(cudaStatus(), s, 'the answer is computed once');
});

test('without a driver library the reason says so', { skip: existsSync('/dev/nvidia0') ? 'this machine has an NVIDIA device' : undefined }, () => {
  const s = cudaStatus();
  assert.equal(s.available, false);
  if (!s.available) assert.match(s.reason, /libcuda\.so\.1|driver/);
});

test('MEGAMOE_DISABLE_CUDA=1 makes the layer report unavailable, and GPU calls fail with a clear error', () => {
  const out = runNode(`
    const c = await import(${JSON.stringify(indexUrl)});
    const s = c.cudaStatus();
    let err = null;
    try { c.DeviceBuffer.alloc(16); } catch (e) { err = e; }
    console.log(JSON.stringify({ s, name: err && err.name, message: err && err.message }));
  `, { MEGAMOE_DISABLE_CUDA: '1' });
  const r = JSON.parse(out) as { s: { available: boolean; reason: string }; name: string; message: string };
  assert.equal(r.s.available, false);
  assert.match(r.s.reason, /MEGAMOE_DISABLE_CUDA=1/);
  assert.equal(r.name, 'CudaUnavailableError');
  assert.match(r.message, /CUDA is not available here/);
});

test('a missing driver library (MEGAMOE_LIBCUDA pointing nowhere) is reported, not thrown', () => {
  const out = runNode(`
    const c = await import(${JSON.stringify(indexUrl)});
    console.log(JSON.stringify(c.cudaStatus()));
  `, { MEGAMOE_LIBCUDA: '/nonexistent/libcuda.so.1' });
  const s = JSON.parse(out) as { available: boolean; reason: string };
  assert.equal(s.available, false);
  assert.match(s.reason, /no NVIDIA GPU driver on this machine \(\/nonexistent\/libcuda\.so\.1/);
});

test('CudaError names the call and the CUresult', () => {
  const e = new CudaError('cuMemAlloc_v2', 2, '1024 bytes');
  assert.equal(e.codeName, 'CUDA_ERROR_OUT_OF_MEMORY');
  assert.equal(e.code, 2);
  assert.equal(e.call, 'cuMemAlloc_v2');
  assert.match(e.message, /^cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY \(2\) \[1024 bytes\]/);
  assert.equal(cuResultName(700), 'CUDA_ERROR_ILLEGAL_ADDRESS');
  assert.equal(cuResultName(12345), 'CUDA_ERROR_12345');
  assert.equal(CU_RESULT_NAMES[0], 'CUDA_SUCCESS');
  assert.ok(Object.keys(CU_RESULT_NAMES).length > 90);
});

test('the module file path resolves (test runs from dist)', () => {
  assert.ok(existsSync(fileURLToPath(indexUrl)));
});
