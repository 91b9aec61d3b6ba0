// CPU checks of the unfused backend's planning: which GEMM path a batch takes, local expert ids under expert
// parallelism, and the provider's refusal on a machine without a GPU. No GPU needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cudaStatus } from '../src/cuda/index.js';
import { localIdMap, provider, toLocalIds } from '../src/backends/unfused.js';
import { chooseRowTile } from '../src/backends/unfused-gemm.js';
import { HostTensor } from '../src/tensor/host.js';

test('decode path while experts average <= 14 rows, 128-row tiles above; a pinned path wins', () => {
  const flash = { experts: 256, topK: 6 };
  assert.equal(chooseRowTile(1, flash).mode, 'decode');
  assert.equal(chooseRowTile(64, flash).rows, 16);
  assert.equal(chooseRowTile(597, flash).mode, 'decode'); // 13.99 rows per expert
  assert.equal(chooseRowTile(598, flash).mode, 'normal');
  assert.equal(chooseRowTile(4096, flash).rows, 128);
  assert.equal(chooseRowTile(4096, flash, 'decode').mode, 'decode');
  assert.equal(chooseRowTile(1, flash, 'normal').rows, 128);
  const tiny = { experts: 16, topK: 4 };
  assert.equal(chooseRowTile(7, tiny).mode, 'decode');
  assert.equal(chooseRowTile(56, tiny).mode, 'decode'); // 14 rows per expert
  assert.equal(chooseRowTile(128, tiny).mode, 'normal');
});

test('expert parallelism: global ids map to local groups, other ranks\' experts become masked', () => {
  const map = localIdMap([4, 5, 6, 7], 16);
  const ids = new HostTensor('I32', [2, 3], Int32Array.from([4, 0, 7, -1, 6, 15]));
  assert.deepEqual([...toLocalIds(ids, map)], [0n, -1n, 3n, -1n, 2n, -1n]);
  const ids64 = new HostTensor('I64', [1, 2], BigInt64Array.from([5n, 8n]));
  assert.deepEqual([...toLocalIds(ids64, map)], [1n, -1n]);
});

test('the provider says why it cannot run where there is no GPU', async () => {
  const st = cudaStatus();
  const a = await provider.probe();
  if (st.available) {
    assert.equal(typeof a.reason, 'string');
  } else {
    assert.equal(a.ok, false);
    assert.equal(a.reason, st.reason);
  }
});
