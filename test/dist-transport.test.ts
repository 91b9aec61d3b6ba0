// The transport interface's argument checks (src/dist/transport.ts) and the NCCL transport's mapping onto NCCL
// calls (src/dist/nccl-transport.ts), with a recording communicator in place of NCCL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkAllToAllV, elementBytes, packedOffsets, type AllToAllV } from '../src/dist/transport.js';
import { NcclTransport, type NcclCommLike } from '../src/dist/nccl-transport.js';

const base: AllToAllV = {
  send: 0x1000n, recv: 0x8000n, dtype: 'bfloat16',
  sendCounts: [3, 0, 5], sendOffsets: [0, 3, 3], recvCounts: [2, 2, 0], recvOffsets: [0, 2, 4],
  sendCapacity: 8, recvCapacity: 4,
};

test('allToAllV arguments: one entry per rank, non-negative integers, ranges inside the buffers and disjoint', () => {
  assert.doesNotThrow(() => checkAllToAllV(base, 3));
  assert.throws(() => checkAllToAllV(base, 4), /sendCounts must have one entry per rank \(4\), got 3/);
  assert.throws(() => checkAllToAllV({ ...base, recvCounts: [2, 2.5, 0] }, 3), /recvCounts\[1\] must be a non-negative integer, got 2.5/);
  assert.throws(() => checkAllToAllV({ ...base, sendOffsets: [0, 3, -1] }, 3), /sendOffsets\[2\] must be a non-negative integer/);
  assert.throws(() => checkAllToAllV({ ...base, sendCapacity: 7 }, 3), /send range of peer 2 \[3, 8\) is past the buffer's 7 elements/);
  assert.throws(() => checkAllToAllV({ ...base, recvOffsets: [0, 1, 4] }, 3), /receive ranges of peers 0 and 1 overlap/);
  assert.throws(() => checkAllToAllV({ ...base, dtype: 'half' as never }, 3), /unknown element type 'half'/);
  assert.throws(() => checkAllToAllV({ ...base, send: 0n }, 3), /send is a null device address but sendCounts are not all 0/);
  assert.throws(() => checkAllToAllV({ ...base, recv: 5 as never }, 3), /recv must be a device address \(bigint\)/);
  // zero-count peers may share an offset (and a null buffer is fine when nothing moves)
  assert.doesNotThrow(() => checkAllToAllV({ ...base, send: 0n, sendCounts: [0, 0, 0] }, 3));
  assert.deepEqual(packedOffsets([3, 0, 5]), [0, 3, 3]);
  assert.equal(elementBytes('float8e4m3'), 1);
  assert.equal(elementBytes('float32'), 4);
});

function recorder(rank: number, nranks: number) {
  const calls: string[] = [];
  const comm: NcclCommLike = {
    rank, nranks,
    send: (b, n, t, p, s) => { calls.push(`send 0x${b.toString(16)} ${n} ${t} ->${p} s${s}`); },
    recv: (b, n, t, p, s) => { calls.push(`recv 0x${b.toString(16)} ${n} ${t} <-${p} s${s}`); },
    allGather: (a, b, n, t, s) => { calls.push(`allGather 0x${a.toString(16)} 0x${b.toString(16)} ${n} ${t} s${s}`); },
    allReduce: (a, b, n, t, op, s) => { calls.push(`allReduce 0x${a.toString(16)} 0x${b.toString(16)} ${n} ${t} ${op} s${s}`); },
    destroy: () => { calls.push('destroy'); },
  };
  const transport = new NcclTransport({
    comm,
    group: (body) => { calls.push('groupStart'); body(); calls.push('groupEnd'); },
    barrierScratch: 0x40n,
    synchronize: (s) => { calls.push(`sync ${s === null ? 'default' : 'stream'}`); },
    release: () => { calls.push('release'); },
  });
  return { calls, transport };
}

test('NCCL transport: allToAllV is one group of send/recv per peer with data, at byte addresses', () => {
  const { calls, transport } = recorder(1, 3);
  assert.equal(transport.name, 'nccl');
  assert.equal(transport.rank, 1);
  assert.equal(transport.worldSize, 3);
  transport.allToAllV(base, null);
  assert.deepEqual(calls, [
    'groupStart',
    'send 0x1000 3 bfloat16 ->0 s0', 'recv 0x8000 2 bfloat16 <-0 s0',
    'recv 0x8004 2 bfloat16 <-1 s0',
    'send 0x1006 5 bfloat16 ->2 s0',
    'groupEnd',
  ]);
});

test('NCCL transport: a bad all-to-all is refused before any NCCL call', () => {
  const { calls, transport } = recorder(0, 3);
  assert.throws(() => transport.allToAllV({ ...base, recvCounts: [1, 1] }, null), /recvCounts must have one entry per rank/);
  assert.deepEqual(calls, []);
});

test('NCCL transport: allGather, barrier (all-reduce then host wait), dispose once', () => {
  const { calls, transport } = recorder(0, 2);
  transport.allGather(0x100n, 0x200n, 16, 'float32', null);
  transport.barrier(null);
  transport.dispose();
  transport.dispose();
  assert.deepEqual(calls, ['allGather 0x100 0x200 16 float32 s0', 'allReduce 0x40 0x40 1 int32 sum s0', 'sync default', 'destroy', 'release']);
  assert.throws(() => transport.barrier(null), /the NCCL transport of rank 0 was disposed/);
});
