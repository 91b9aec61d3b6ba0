// CUDA IPC for real (GPU host): ranks are separate processes, all on device 0 when the machine has one GPU (the
// single-GPU test mode; on a multi-GPU host the last test spreads them). Symmetric memory: a flag one process writes
// through its IPC mapping is seen by the other without any host barrier; the address table reaches the device.
// The IPC transport: variable all-to-all, all-gather and barrier over three rounds. Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceCount, gpuSkipReason } from '../src/cuda/index.js';
import { runRanks } from '../src/dist/index.js';

const skip = gpuSkipReason();
const program = new URL('./support/gpu-ipc-rank.js', import.meta.url);

function expectedTransport(W: number) {
  return Array.from({ length: W }, (_, r) => ({
    rank: r,
    rounds: [0, 1, 2].map((round) => ({
      gathered: Array.from({ length: W * 4 }, (_, i) => round * 10000 + Math.floor(i / 4) * 100 + (i % 4)),
      received: Array.from({ length: W * (r + 1) }, (_, i) => round * 10000 + Math.floor(i / (r + 1)) * 1000 + r),
    })),
  }));
}

for (const W of [2, 4]) {
  test(`IPC on one GPU, ${W} processes: a flag written through the mapping is seen by the owner; the address table`, { skip }, async () => {
    const { results } = await runRanks({ worldSize: W, program, args: { mode: 'flag' }, devices: [0], timeoutMs: 60_000, barrierTimeoutMs: 30_000 });
    results.forEach((res, r) => {
      const o = res as { rank: number; seen: string; tableOk: boolean; distinct: number; ownIsLocal: boolean };
      assert.equal(o.rank, r);
      assert.equal(o.seen, (0xC0DE0000 + (r + W - 1) % W).toString(16), `rank ${r} sees rank ${(r + W - 1) % W}'s flag`);
      assert.ok(o.tableOk, 'the device copy of the address table matches');
      assert.equal(o.distinct, W, 'every rank\'s buffer has its own address here');
      assert.ok(o.ownIsLocal);
    });
  });

  test(`IPC transport on one GPU, ${W} processes: allToAllV, allGather, barrier, three rounds`, { skip }, async () => {
    const { results } = await runRanks({ worldSize: W, program, args: { mode: 'transport' }, devices: [0], timeoutMs: 60_000, barrierTimeoutMs: 30_000 });
    assert.deepEqual(results, expectedTransport(W));
  });
}

test('IPC transport across GPUs: one rank per device', { skip: skip ?? (deviceCount() < 2 ? 'fewer than 2 GPUs' : undefined) }, async () => {
  const W = Math.min(deviceCount(), 8);
  const { results } = await runRanks({ worldSize: W, program, args: { mode: 'transport' }, timeoutMs: 120_000 });
  assert.deepEqual(results, expectedTransport(W));
});
