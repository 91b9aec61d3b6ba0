// NCCL for real (GPU host): a world of 1 through the supervisor (one rank per process) runs the NCCL transport's
// all-gather, all-to-all and barrier on device memory; a world of 2 on ONE GPU is refused by NCCL ("duplicate GPU")
// and must come back as one clear message naming the IPC transport. Skipped without a Hopper GPU or without NCCL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceCount, gpuSkipReason, NcclUnavailableError, tryLoadNccl } from '../src/cuda/index.js';
import { runRanks, RankFailureError } from '../src/dist/index.js';

const nccl = tryLoadNccl();
const skip = gpuSkipReason() ?? (nccl instanceof NcclUnavailableError ? nccl.message : undefined);
const program = new URL('./support/gpu-nccl-rank.js', import.meta.url);

function expected(W: number) {
  return Array.from({ length: W }, (_, r) => ({
    rank: r,
    gathered: Array.from({ length: W * 4 }, (_, i) => Math.floor(i / 4) * 100 + (i % 4)),
    received: Array.from({ length: W * (r + 1) }, (_, i) => Math.floor(i / (r + 1)) * 1000 + r),
  }));
}

test('NCCL world of 1: all-gather, variable all-to-all, barrier through the supervisor', { skip }, async () => {
  const { results } = await runRanks({ worldSize: 1, program, devices: [0], timeoutMs: 60_000 });
  assert.deepEqual(results, expected(1));
});

test('NCCL on one GPU with two ranks: the duplicate-GPU refusal is one clear message', { skip }, async () => {
  await assert.rejects(runRanks({ worldSize: 2, program, devices: [0], timeoutMs: 60_000, barrierTimeoutMs: 30_000 }), (err: unknown) => {
    assert.ok(err instanceof RankFailureError);
    assert.equal(err.phase, 'nccl-init');
    assert.match(err.message, /ncclCommInitRank failed: ncclInvalidUsage.*--transport ipc/);
    return true;
  });
});

test('NCCL across GPUs: one rank per device', { skip: skip ?? (deviceCount() < 2 ? 'fewer than 2 GPUs' : undefined) }, async () => {
  const W = Math.min(deviceCount(), 8);
  const { results } = await runRanks({ worldSize: W, program, timeoutMs: 120_000 });
  assert.deepEqual(results, expected(W));
});
