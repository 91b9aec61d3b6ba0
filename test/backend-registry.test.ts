import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AUTO_ORDER, BackendUnavailableError, createBackend, getProvider, listBackends, registerBackend, resolveBackendName,
  type BackendProvider,
} from '../src/backends/index.js';
import { ReferenceBackend } from '../src/backends/reference.js';
import {
  GuardError, makeRandomLayer, moeShape, randomHiddenStates, routeLayer, runExpertsReference, type MoeBackend,
} from '../src/moe/index.js';
import { HostTensor } from '../src/tensor/host.js';

test('names: canonical, case-insensitive, the vLLM alias, auto, and a clear refusal listing the choices', () => {
  assert.equal(resolveBackendName('reference'), 'reference');
  assert.equal(resolveBackendName('Unfused'), 'unfused');
  assert.equal(resolveBackendName('deep_gemm_mega_moe'), 'mega_moe');
  assert.equal(resolveBackendName('auto'), 'auto');
  assert.throws(() => resolveBackendName('cutlass'),
    /unknown backend 'cutlass': choose one of reference, unfused, mega_moe, auto \(aliases: deep_gemm_mega_moe = mega_moe\)/);
});

test('a GPU backend that cannot run here is refused with "needs a Hopper GPU / is not available: <reason>"', async () => {
  for (const name of ['unfused', 'mega_moe', 'deep_gemm_mega_moe']) {
    const canonical = resolveBackendName(name) as 'unfused' | 'mega_moe';
    const probe = await getProvider(canonical).probe();
    if (probe.ok) continue; // a machine that can run it (a GPU host with the module built)
    await assert.rejects(createBackend(name), (e: unknown) => e instanceof BackendUnavailableError
      && e.message === `backend ${canonical} needs a Hopper GPU / is not available: ${probe.reason}` && probe.reason.length > 0);
  }
});

test('auto picks the first backend in AUTO_ORDER that can run, and says what it passed over', async () => {
  const listed = await listBackends();
  assert.deepEqual(listed.map((b) => b.name), ['reference', 'unfused', 'mega_moe']);
  assert.equal(listed[0].ok, true);
  const expected = AUTO_ORDER.find((n) => listed.find((b) => b.name === n)!.ok)!;
  const created = await createBackend('auto');
  try {
    assert.equal(created.name, expected);
    assert.equal(created.backend.name, expected);
    assert.match(created.note!, new RegExp(`^auto chose ${expected}`));
    for (const n of AUTO_ORDER.slice(0, AUTO_ORDER.indexOf(expected))) assert.match(created.note!, new RegExp(`${n}: `));
  } finally {
    created.backend.dispose();
  }
});

test('registerBackend plugs in a provider (how the GPU modules join) and auto prefers it when it can run', async () => {
  const original = getProvider('unfused');
  const fake: BackendProvider = {
    name: 'unfused',
    description: 'test double',
    probe: async () => ({ ok: true, reason: 'test' }),
    create: (): MoeBackend => Object.assign(new ReferenceBackend(), { name: 'unfused' }),
  };
  registerBackend(fake);
  try {
    const { backend, name } = await createBackend('unfused');
    assert.equal(name, 'unfused');
    assert.equal(backend.name, 'unfused');
    const mega = await getProvider('mega_moe').probe();
    const auto = await createBackend('auto');
    assert.equal(auto.name, mega.ok ? 'mega_moe' : 'unfused');
    registerBackend({ ...fake, probe: async () => ({ ok: false, reason: 'no sm_90 GPU (test)' }) });
    await assert.rejects(createBackend('unfused'), /backend unfused needs a Hopper GPU \/ is not available: no sm_90 GPU \(test\)/);
  } finally {
    registerBackend(original);
  }
});

test('the reference backend: prepare checks the layer, forward equals the reference math, capacity and lifecycle guarded', async () => {
  const shape = moeShape({ hidden: 128, inter: 128, experts: 4, topk: 2 });
  const layer = makeRandomLayer({ seed: 8, shape });
  const { backend } = await createBackend('reference');
  const x = randomHiddenStates(9, 5, 128);
  const r = routeLayer(layer, x);
  await assert.rejects(backend.forward(x, r.topkIds, r.topkWeights), /forward\(\) before prepare\(\)/);
  assert.throws(() => backend.prepare({ ...layer, shape: { ...shape, hiddenSize: 100 } }), GuardError);
  await backend.prepare(layer, { maxTokens: 5 });
  const out = await backend.forward(x, r.topkIds, r.topkWeights);
  const direct = runExpertsReference(layer, x, r.topkIds, r.topkWeights);
  assert.deepEqual(out.y.data, direct.y.data);
  assert.deepEqual(out.yRouted.data, direct.yRouted.data);
  const x6 = randomHiddenStates(9, 6, 128);
  const r6 = routeLayer(layer, x6);
  await assert.rejects(backend.forward(x6, r6.topkIds, r6.topkWeights), (e: unknown) => e instanceof GuardError && e.code === 'TOKEN_CAPACITY');
  await assert.rejects(backend.forward(x, r.topkIds, new HostTensor('F32', [5, 3])), /topk_weights is F32\[5, 3\]/);
  backend.dispose();
  assert.throws(() => backend.prepare(layer), /disposed/);
});
