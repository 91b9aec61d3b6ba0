// The kernel registry and the compile loop behind `megamoe kernels --check`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearKernelRegistry, normalizeVariant, registerKernel, registeredKernels } from '../src/cuda/kernel-registry.js';
import { checkVariants, listVariants } from '../src/cli/commands/kernels.js';
import { findNvcc } from '../src/cuda/compile.js';

test('registerKernel lists kernels by name, replaces on re-registration, and labels variants', () => {
  clearKernelRegistry();
  registerKernel({ name: 'zeta', source: 'zeta.cu', variants: [{ H: 256, I: 128 }] });
  registerKernel({ name: 'alpha', source: 'alpha.cu', variants: [{ label: 'flash', defines: { H: 4096 } }, {}] });
  registerKernel({ name: 'zeta', source: 'zeta.cu', variants: [{ H: 512 }] });
  assert.deepEqual(registeredKernels().map((k) => k.name), ['alpha', 'zeta']);
  assert.deepEqual(listVariants().map((v) => `${v.kernel.name}[${v.variant.label}]`), ['alpha[flash]', 'alpha[default]', 'zeta[H=512]']);
  assert.deepEqual(listVariants('flash').map((v) => v.variant.label), ['flash']);
  assert.deepEqual(normalizeVariant({ B: 2, A: 1 }), { label: 'A=1,B=2', defines: { B: 2, A: 1 } });
  assert.throws(() => registerKernel({ name: 'x', source: 'x.cu', variants: [] }), /at least one variant/);
  clearKernelRegistry();
});

test('checkVariants compiles each variant and reports failures without stopping', { skip: findNvcc() ? undefined : 'nvcc not found' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-registry-test-'));
  const saved = process.env.MEGAMOE_CACHE_DIR;
  process.env.MEGAMOE_CACHE_DIR = join(dir, 'cache');
  try {
    const src = join(dir, 'scale.cu');
    writeFileSync(src, 'extern "C" __global__ void scale(float* x) { x[threadIdx.x] *= FACTOR; }\n');
    clearKernelRegistry();
    registerKernel({ name: 'scale', source: src, entry: 'scale', variants: [{ FACTOR: 2 }, { FACTOR: 3 }, { label: 'broken', defines: { FACTOR: '(' } }] });
    const seen: string[] = [];
    const results = await checkVariants(listVariants(), 2, (r) => seen.push(r.id));
    assert.equal(results.length, 3);
    assert.deepEqual(results.map((r) => r.ok), [true, true, false]);
    assert.match(results[2].error ?? '', /nvcc failed to compile/);
    assert.equal(seen.length, 3);
    const again = await checkVariants(listVariants('FACTOR=2'), 1, () => undefined);
    assert.equal(again[0].cached, true);
    // A registered entry that the cubin lacks is a failure.
    registerKernel({ name: 'scale', source: src, entry: 'scale, scale_typo', variants: [{ FACTOR: 2 }] });
    const typo = await checkVariants(listVariants(), 1, () => undefined);
    assert.equal(typo[0].ok, false);
    assert.match(typo[0].error ?? '', /no kernel named scale_typo/);
  } finally {
    clearKernelRegistry();
    if (saved === undefined) delete process.env.MEGAMOE_CACHE_DIR;
    else process.env.MEGAMOE_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  }
});
