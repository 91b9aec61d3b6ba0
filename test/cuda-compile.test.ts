// Kernel builds: cache key, defines, local headers, nvcc compile + cache hit, compile errors (nvcc, no GPU).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cacheKey, collectSources, compileFlags, compileKernel, compileKernelSync, defineFlags, findNvcc, kernelCacheDir,
  KernelCompileError, packageRoot,
} from '../src/cuda/compile.js';

const noNvcc = findNvcc() ? undefined : 'nvcc not found (set CUDA_HOME or PATH)';

const TRIVIAL = `
extern "C" __global__ void add_one(float* x, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += ADDEND;
}
`;

function withTempDir<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-cuda-test-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function withCacheDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-cache-test-'));
  const saved = process.env.MEGAMOE_CACHE_DIR;
  process.env.MEGAMOE_CACHE_DIR = dir;
  try {
    return await fn(dir);
  } finally {
    if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR;
    else process.env.MEGAMOE_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  }
}

test('the package root holds megamoe\'s package.json', () => {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { name: string };
  assert.equal(pkg.name, 'megamoe');
});

test('defines become sorted -D flags; true gives a bare flag, false none; bad names are refused', () => {
  assert.deepEqual(defineFlags({ Z: 1, A: 'x', ON: true, OFF: false }), ['-DA=x', '-DON', '-DZ=1']);
  assert.throws(() => defineFlags({ 'BAD-NAME': 1 }), /invalid define name "BAD-NAME"/);
  const flags = compileFlags({ source: 'x.cu', defines: { N: 4 }, extraFlags: ['-Xptxas', '-v'] });
  assert.ok(flags.includes('-gencode=arch=compute_90a,code=sm_90a'));
  assert.ok(flags.includes('-cubin') && flags.includes('-O3') && flags.includes('-std=c++17') && flags.includes('-lineinfo'));
  assert.deepEqual(flags.slice(-3), ['-DN=4', '-Xptxas', '-v']);
});

test('the cache key changes with source text, defines, flags, headers and nvcc version, not with define order', () => {
  withTempDir((dir) => {
    const src = join(dir, 'k.cu');
    writeFileSync(join(dir, 'helper.cuh'), '#pragma once\n#define HELPER 1\n');
    writeFileSync(src, '#include "helper.cuh"\n#include <cuda.h>\n__global__ void k() {}\n');
    const base = cacheKey({ source: src, defines: { A: 1, B: 2 } }, 'nvcc X');
    assert.match(base, /^[0-9a-f]{64}$/);
    assert.equal(cacheKey({ source: src, defines: { B: 2, A: 1 } }, 'nvcc X'), base, 'define order must not matter');
    assert.notEqual(cacheKey({ source: src, defines: { A: 1, B: 3 } }, 'nvcc X'), base, 'define value');
    assert.notEqual(cacheKey({ source: src, defines: { A: 1 } }, 'nvcc X'), base, 'define removed');
    assert.notEqual(cacheKey({ source: src, defines: { A: 1, B: 2 }, extraFlags: ['-G'] }, 'nvcc X'), base, 'flags');
    assert.notEqual(cacheKey({ source: src, defines: { A: 1, B: 2 } }, 'nvcc Y'), base, 'nvcc version');
    writeFileSync(join(dir, 'helper.cuh'), '#pragma once\n#define HELPER 2\n');
    const afterHeader = cacheKey({ source: src, defines: { A: 1, B: 2 } }, 'nvcc X');
    assert.notEqual(afterHeader, base, 'a local header edit must change the key');
    writeFileSync(src, '#include "helper.cuh"\n#include <cuda.h>\n__global__ void k() { }\n');
    assert.notEqual(cacheKey({ source: src, defines: { A: 1, B: 2 } }, 'nvcc X'), afterHeader, 'a source edit must change the key');
    assert.notEqual(cacheKey({ source: src, sourceText: 'other' }, 'nvcc X'), cacheKey({ source: src, sourceText: 'other2' }, 'nvcc X'));
  });
});

test('collectSources follows local includes recursively, once each, and skips toolkit headers', () => {
  withTempDir((dir) => {
    writeFileSync(join(dir, 'a.cuh'), '#include "b.cuh"\n#include "a.cuh"\n');
    writeFileSync(join(dir, 'b.cuh'), '// b\n#include <cuda_fp8.h>\n');
    writeFileSync(join(dir, 'main.cu'), '#include "a.cuh"\n#include "missing_toolkit_header.h"\n');
    const names = collectSources(join(dir, 'main.cu')).map(([n]) => n);
    assert.deepEqual(names, ['main.cu', 'a.cuh', 'b.cuh']);
  });
});

test('a missing source is a clear error naming the file', () => {
  assert.throws(() => cacheKey({ source: 'no_such_kernel.cu' }, 'v'), /kernel source no_such_kernel\.cu not found .*src\/kernels/);
});

test('nvcc compiles a trivial kernel; the second call is a cache hit', { skip: noNvcc }, async () => {
  await withCacheDir(async (dir) => {
    assert.equal(kernelCacheDir(), join(dir, 'kernels'));
    const opts = { source: 'trivial_add.cu', sourceText: TRIVIAL, defines: { ADDEND: '1.0f' }, entry: 'add_one' };
    const first = await compileKernel(opts);
    assert.equal(first.cached, false);
    assert.ok(existsSync(first.cubinPath) && statSync(first.cubinPath).size > 0);
    const bytes = readFileSync(first.cubinPath);
    assert.equal(bytes.readUInt32BE(0), 0x7f454c46, 'a cubin is an ELF file');
    const second = await compileKernel(opts);
    assert.equal(second.cached, true);
    assert.equal(second.cubinPath, first.cubinPath);
    assert.equal(second.entry, 'add_one');
    const sync = compileKernelSync(opts);
    assert.equal(sync.cached, true);
    // Another define is another cubin.
    const other = compileKernelSync({ ...opts, defines: { ADDEND: '2.0f' } });
    assert.equal(other.cached, false);
    assert.notEqual(other.cubinPath, first.cubinPath);
    // No temp files left behind.
    assert.deepEqual(readdirSync(join(dir, 'kernels')).filter((f) => f.startsWith('.tmp')), []);
  });
});

test('concurrent compiles of one key all succeed with one intact cubin', { skip: noNvcc }, async () => {
  await withCacheDir(async (dir) => {
    const opts = { source: 'trivial_add.cu', sourceText: TRIVIAL, defines: { ADDEND: '3.0f' } };
    const results = await Promise.all([compileKernel(opts), compileKernel(opts), compileKernel(opts)]);
    assert.equal(new Set(results.map((r) => r.cubinPath)).size, 1);
    assert.equal(readFileSync(results[0].cubinPath).readUInt32BE(0), 0x7f454c46);
    assert.deepEqual(readdirSync(join(dir, 'kernels')).filter((f) => f.endsWith('.cubin')).length, 1);
  });
});

test('a compile error throws KernelCompileError carrying nvcc\'s message', { skip: noNvcc }, async () => {
  await withCacheDir(async (dir) => {
    const bad = { source: 'broken.cu', sourceText: 'extern "C" __global__ void k() { this_is_not_defined(); }\n' };
    await assert.rejects(compileKernel(bad), (err: unknown) => {
      assert.ok(err instanceof KernelCompileError);
      assert.match(err.message, /nvcc failed to compile broken\.cu/);
      assert.match(err.nvccOutput, /this_is_not_defined/);
      return true;
    });
    assert.throws(() => compileKernelSync(bad), /this_is_not_defined/);
    const files = existsSync(join(dir, 'kernels')) ? readdirSync(join(dir, 'kernels')) : [];
    assert.deepEqual(files, [], 'a failed compile leaves nothing in the cache');
  });
});
