// The IPC transport and symmetric memory without a GPU: N ranks simulated in one process (test/support/ipc-sim.ts),
// a fake device address space where peer copies are real byte copies. Checks what lands where for a variable
// all-to-all and an all-gather, the order of host syncs and exchanges (the cross-rank ordering the transport
// promises), the errors for mismatched counts / collectives / buffers outside the heap, and symmetric memory's
// handle exchange (address table, own rank local, peer-access checks skipped on the same device, size mismatch).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IpcTransport, RECEIVE_ALIGN } from '../src/dist/ipc-transport.js';
import { SymmetricMemory, type SymmetricDeps } from '../src/dist/symmetric-memory.js';
import { transportRefusal, parseTransportName } from '../src/dist/transports.js';
import { CU_IPC_HANDLE_BYTES, type IpcExport } from '../src/cuda/ipc.js';
import { megaBufferLayout } from '../src/kernels/mega-moe-layout.js';
import { SimExchange, SimMemory, simTransportDeps } from './support/ipc-sim.js';

function world(W: number, heapBytes = 1 << 16) {
  const sim = simTransportDeps(W, heapBytes);
  return { ...sim, transports: sim.deps.map((d) => new IpcTransport(d)) };
}

test('IPC allToAllV: variable counts land at each receiver\'s offsets, self included, for worlds of 1..4', async () => {
  for (const W of [1, 2, 3, 4]) {
    const { mem, transports, ex } = world(W);
    // rank r sends (p + 1) int32 of value r * 1000 + p to peer p, packed; receives (r + 1) from each peer, packed.
    const sends = transports.map((_, r) => {
      const counts = Array.from({ length: W }, (_, p) => p + 1);
      const offsets = counts.map((_, p) => (p * (p + 1)) / 2);
      const total = counts.reduce((a, b) => a + b, 0);
      const host = new Int32Array(total);
      counts.forEach((c, p) => host.fill(r * 1000 + p, offsets[p], offsets[p] + c));
      const buf = mem.alloc(total * 4);
      mem.write(buf.ptr, host);
      return { buf, counts, offsets, total };
    });
    const recvs = transports.map((t, r) => t.allocateReceive(W * (r + 1) * 4));
    await Promise.all(transports.map((t, r) => t.allToAllV({
      send: sends[r].buf.ptr, recv: recvs[r].ptr, dtype: 'int32',
      sendCounts: sends[r].counts, sendOffsets: sends[r].offsets,
      recvCounts: Array(W).fill(r + 1), recvOffsets: Array.from({ length: W }, (_, p) => p * (r + 1)),
    }, null)));
    transports.forEach((_, r) => {
      const got = new Int32Array(mem.read(recvs[r].ptr, W * (r + 1) * 4).buffer);
      assert.deepEqual([...got], Array.from({ length: W * (r + 1) }, (_, i) => Math.floor(i / (r + 1)) * 1000 + r), `world ${W} rank ${r}`);
    });
    assert.deepEqual(ex.open, [], 'no exchange left waiting');
  }
});

test('IPC allToAllV: zero counts copy nothing, and T = 0 on every rank needs no receive buffer at all', async () => {
  const { mem, transports } = world(3);
  const before = mem.copies.length;
  await Promise.all(transports.map((t) => t.allToAllV({
    send: 0n, recv: 0n, dtype: 'uint8', sendCounts: [0, 0, 0], sendOffsets: [0, 0, 0], recvCounts: [0, 0, 0], recvOffsets: [0, 0, 0],
  }, null)));
  assert.equal(mem.copies.length, before);
});

test('IPC collectives order the ranks on the host: sync, layout exchange, copies, sync, done exchange', async () => {
  const { transports, ex, syncs, mem } = world(2);
  const send = [mem.alloc(8), mem.alloc(8)];
  const recv = transports.map((t) => t.allocateReceive(16));
  await Promise.all(transports.map((t, r) => t.allGather(send[r].ptr, recv[r].ptr, 2, 'float32', null)));
  assert.deepEqual(syncs, [2, 2], 'a stream sync before the exchange (reads done) and after the copies (writes landed)');
  assert.deepEqual(ex.log, ['0:ipc:0:layout', '1:ipc:0:layout', '0:ipc:0:done', '1:ipc:0:done']);
  await Promise.all(transports.map((t) => t.barrier(null)));
  assert.deepEqual(ex.log.slice(4), ['0:ipc:1:layout', '1:ipc:1:layout']);
  assert.deepEqual(syncs, [3, 3]);
});

test('IPC allGather: rank r\'s elements at r * count on every rank', async () => {
  const W = 4;
  const { mem, transports } = world(W);
  const sends = transports.map((_, r) => { const b = mem.alloc(12); mem.write(b.ptr, Float32Array.of(r, r + 0.5, -r)); return b; });
  const recvs = transports.map((t) => t.allocateReceive(W * 12));
  await Promise.all(transports.map((t, r) => t.allGather(sends[r].ptr, recvs[r].ptr, 3, 'float32', null)));
  for (const rv of recvs) {
    assert.deepEqual([...new Float32Array(mem.read(rv.ptr, W * 12).buffer)], [0, 0.5, -0, 1, 1.5, -1, 2, 2.5, -2, 3, 3.5, -3]);
  }
});

test('IPC errors: count mismatch names both ranks; other collective; receive outside the heap; heap exhausted', async () => {
  {
    const { mem, transports } = world(2);
    const s = mem.alloc(64);
    const rv = transports.map((t) => t.allocateReceive(64));
    // Rank 1 is left waiting for rank 0's "done" (the supervisor would abort it when rank 0 fails): not awaited.
    const results = transports.map((t, r) => t.allToAllV({
      send: s.ptr, recv: rv[r].ptr, dtype: 'uint8', sendCounts: [4, r === 0 ? 5 : 4], sendOffsets: [0, 8],
      recvCounts: [4, 4], recvOffsets: [0, 8],
    }, null));
    await assert.rejects(results[0], /rank 0 sends 5 elements to rank 1, which expects 4 from it/);
  }
  {
    const { mem, transports } = world(2);
    const s = mem.alloc(64);
    const rv = transports.map((t) => t.allocateReceive(64));
    const p0 = transports[0].barrier(null);
    const p1 = transports[1].allGather(s.ptr, rv[1].ptr, 4, 'uint8', null);
    await assert.rejects(p0, /collective #0 is barrier on rank 0 but allGather on rank 1: every rank must call the same collectives/);
    await assert.rejects(p1, /collective #0 is allGather on rank 1 but barrier on rank 0/);
  }
  {
    const { mem, transports } = world(2);
    const outside = mem.alloc(64);
    await assert.rejects(transports[0].allGather(outside.ptr, outside.ptr, 4, 'uint8', null),
      /not inside this rank's symmetric heap: peers write receive buffers directly, so they must come from transport.allocateReceive\(\)/);
    assert.throws(() => transports[0].allocateReceive(1 << 20), /do not fit the IPC transport's symmetric heap .*larger receiveBytes/);
    const a = transports[0].allocateReceive(1);
    const b = transports[0].allocateReceive(1);
    assert.equal(b.ptr - a.ptr, BigInt(RECEIVE_ALIGN), 'regions are aligned');
    transports[0].dispose();
    assert.throws(() => transports[0].allocateReceive(1), /was disposed/);
  }
});

// --- symmetric memory's exchange, with fake CUDA deps
function fakeDeps(mem: SimMemory, opened: Array<{ rank: number; from: number }>, rank: number,
  p2p: (a: number, b: number) => boolean, peerChecks: Array<[number, number]>): SymmetricDeps {
  return {
    alloc: (n) => mem.alloc(n),
    exportHandle: (ptr, bytes, device): IpcExport => {
      const handle = new Uint8Array(CU_IPC_HANDLE_BYTES);
      new DataView(handle.buffer).setBigUint64(0, ptr, true);
      return { handle, offset: 0, bytes, device, pid: 1000 + rank };
    },
    open: (e) => {
      opened.push({ rank, from: e.pid - 1000 });
      // A different process maps the same memory at another address: here the same one (one address space).
      return { ptr: new DataView(e.handle.buffer).getBigUint64(0, true), close: () => {} };
    },
    canAccessPeer: (a, b) => { peerChecks.push([a, b]); return p2p(a, b); },
    zero: () => {},
  };
}

test('symmetric memory: handles exchanged once, own rank local, address table in rank order as the mega layout\'s table', async () => {
  const W = 4;
  const mem = new SimMemory();
  const ex = new SimExchange(W);
  const opened: Array<{ rank: number; from: number }> = [];
  const checks: Array<[number, number]> = [];
  const sms = await Promise.all(Array.from({ length: W }, (_, r) =>
    SymmetricMemory.create(ex.context(r, 0), 4096, { deps: fakeDeps(mem, opened, r, () => true, checks) })));
  const bases = sms.map((s) => s.local.ptr);
  for (const s of sms) {
    assert.deepEqual([...s.addresses], bases);
    assert.deepEqual([...s.addressTable()], bases);
    assert.deepEqual([...s.devices], [0, 0, 0, 0]);
  }
  assert.equal(opened.length, W * (W - 1), 'every rank opens every PEER handle, never its own');
  assert.ok(opened.every((o) => o.rank !== o.from));
  assert.deepEqual(checks, [], 'all ranks on one device: no peer-access query at all');
  const layout = megaBufferLayout({ hidden: 256, inter: 128, experts: 4, topK: 4 }, 8, W);
  assert.equal(layout.regions.rankTable.bytes, sms[0].addressTable().byteLength, 'u64 per rank: the rankTable region holds it exactly');
  assert.equal(sms[1].peerAddress(2, 100), bases[2] + 100n);
  assert.throws(() => sms[1].peerAddress(2, 4000, 200), /outside the 4096-byte symmetric buffer/);
  assert.equal(sms[0].offsetOf(bases[0] + 10n, 5), 10);
  assert.equal(sms[0].offsetOf(bases[1]), -1);
  await Promise.all(sms.map((s, r) => s.close(ex.context(r))));
  assert.equal(mem.liveAllocations, 0);
  assert.deepEqual(ex.open, []);
});

test('symmetric memory: different devices are checked for P2P (clear error), sizes must agree', async () => {
  {
    const mem = new SimMemory();
    const ex = new SimExchange(2);
    const checks: Array<[number, number]> = [];
    const res = await Promise.allSettled([0, 1].map((r) =>
      SymmetricMemory.create(ex.context(r, r), 1024, { deps: fakeDeps(mem, [], r, () => false, checks) })));
    for (const x of res) assert.equal(x.status, 'rejected');
    assert.match(String((res[0] as PromiseRejectedResult).reason), /rank 0 on device 0 cannot access rank 1's device 1 \(no P2P path between them\).*--transport nccl/);
    assert.deepEqual(checks.sort(), [[0, 1], [1, 0]]);
    assert.equal(mem.liveAllocations, 0, 'a failed create frees its buffer');
  }
  {
    const mem = new SimMemory();
    const ex = new SimExchange(2);
    const res = await Promise.allSettled([0, 1].map((r) =>
      SymmetricMemory.create(ex.context(r), r === 0 ? 1024 : 2048, { deps: fakeDeps(mem, [], r, () => true, []) })));
    assert.match(String((res[0] as PromiseRejectedResult).reason), /rank 1 allocated 2048 bytes, rank 0 1024: every rank must ask for the same size/);
  }
  await assert.rejects(SymmetricMemory.create(new SimExchange(1).context(0), 0), /bytes must be a positive integer/);
});

test('--transport: names, and NCCL refused up front for two ranks on one GPU with a message naming ipc', () => {
  assert.equal(parseTransportName('ipc'), 'ipc');
  assert.equal(parseTransportName('nccl'), 'nccl');
  assert.throws(() => parseTransportName('tcp'), /--transport must be one of ipc, nccl, got "tcp"/);
  assert.equal(transportRefusal('nccl', [0, 1, 2, 3]), null);
  assert.equal(transportRefusal('ipc', [0, 0]), null);
  assert.match(transportRefusal('nccl', [0, 0]) ?? '', /ranks 0 and 1 are both on device 0 \(NCCL refuses this as "duplicate GPU"\); with several ranks on one GPU use --transport ipc/);
});
