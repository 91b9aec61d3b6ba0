// A rank program for test/gpu-ipc.test.ts (GPU host). ctx.args.mode:
//  'flag':      symmetric memory over CUDA IPC; rank r writes a flag straight into rank r+1's buffer (a driver memset
//               through the IPC mapping) and polls its OWN buffer until rank r-1's flag shows up, with no host
//               barrier in between: what one process writes, the other sees. Also the address table on the device.
//  'transport': the IPC transport's allToAllV (variable sizes), allGather and barrier, three rounds on the same
//               buffers (the rounds check that a round's writes never overrun a receiver still reading the last).
import type { RankContext } from '../../src/dist/rank-channel.js';
import { SymmetricMemory } from '../../src/dist/symmetric-memory.js';
import { IpcTransport } from '../../src/dist/ipc-transport.js';
import { DeviceBuffer, ensureContext, Stream, useDevice } from '../../src/cuda/index.js';
import { getDriver, check } from '../../src/cuda/driver.js';

function readU32(ptr: bigint, count: number): Uint32Array {
  const out = new Uint32Array(count);
  check('cuMemcpyDtoH_v2', getDriver().fn.cuMemcpyDtoH_v2(out, ptr, count * 4));
  return out;
}

async function flag(ctx: RankContext): Promise<unknown> {
  const W = ctx.worldSize, r = ctx.rank;
  ctx.phase('symmetric');
  const sm = await SymmetricMemory.create(ctx, 1 << 20, { key: 'flag-test' });
  await ctx.ready();
  ctx.phase('write-flag');
  const next = (r + 1) % W, prev = (r + W - 1) % W;
  const value = 0xC0DE0000 + r;
  check('cuMemsetD32_v2', getDriver().fn.cuMemsetD32_v2(sm.addresses[next] + BigInt(4 * r), value, 1));
  ctx.phase('poll-flag');
  const t0 = Date.now();
  let seen = 0;
  let polls = 0;
  while (Date.now() - t0 < 10_000) {
    polls++;
    seen = readU32(sm.local.ptr + BigInt(4 * prev), 1)[0];
    if (seen === 0xC0DE0000 + prev) break;
    await new Promise((res) => setTimeout(res, 1));
  }
  // The address table on the device, as the fused kernel's rankTable region would hold it.
  const table = DeviceBuffer.alloc(8 * W);
  sm.uploadAddressTable(table);
  const back = new BigUint64Array(W);
  table.copyToHost(back);
  table.dispose();
  await sm.close(ctx);
  return {
    rank: r, seen: seen.toString(16), polls, tableOk: back.every((a, p) => a === sm.addresses[p]),
    distinct: new Set(sm.addresses.map(String)).size, ownIsLocal: sm.addresses[r] === sm.local.ptr,
  };
}

async function transport(ctx: RankContext): Promise<unknown> {
  const W = ctx.worldSize, r = ctx.rank;
  ctx.phase('ipc-init');
  const t = await IpcTransport.create(ctx, { receiveBytes: 1 << 20 });
  const stream = Stream.create();
  const gathered = t.allocateReceive(16 * W);
  // Sizes may differ by rank: each collective carries the receiver's own heap offset to its senders.
  const a2aRecv = t.allocateReceive(W * (r + 1) * 4);
  await ctx.ready();
  ctx.phase('collectives');
  const sendCounts = Array.from({ length: W }, (_, p) => p + 1);
  const sendOffsets = sendCounts.map((_, p) => (p * (p + 1)) / 2);
  const totalSend = sendCounts.reduce((a, b) => a + b, 0);
  const send = DeviceBuffer.alloc(16);
  const a2aSend = DeviceBuffer.alloc(totalSend * 4);
  const rounds: Array<{ gathered: number[]; received: number[] }> = [];
  for (let round = 0; round < 3; round++) {
    send.copyFromHost(Int32Array.from({ length: 4 }, (_, i) => round * 10000 + r * 100 + i));
    const host = new Int32Array(totalSend);
    sendCounts.forEach((c, p) => host.fill(round * 10000 + r * 1000 + p, sendOffsets[p], sendOffsets[p] + c));
    a2aSend.copyFromHost(host);
    // A pageable host-to-device copy may still be in DMA when it returns; the transport's stream does not wait for
    // the legacy stream: drain the context before the collectives read the send buffers.
    ensureContext().synchronize();
    await t.allGather(send.ptr, gathered.ptr, 4, 'int32', stream);
    await t.allToAllV({
      send: a2aSend.ptr, recv: a2aRecv.ptr, dtype: 'int32', sendCounts, sendOffsets,
      recvCounts: Array(W).fill(r + 1), recvOffsets: Array.from({ length: W }, (_, p) => p * (r + 1)),
      sendCapacity: totalSend, recvCapacity: W * (r + 1),
    }, stream);
    const g = readU32(gathered.ptr, 4 * W);
    const a = readU32(a2aRecv.ptr, W * (r + 1));
    rounds.push({ gathered: [...new Int32Array(g.buffer)], received: [...new Int32Array(a.buffer)] });
    await t.barrier(stream);
  }
  send.dispose(); a2aSend.dispose();
  stream.dispose();
  await t.barrier(null);
  t.dispose();
  return { rank: r, rounds };
}

export default async function program(ctx: RankContext): Promise<unknown> {
  ctx.phase('cuda-init');
  useDevice(ctx.device);
  const { mode } = (ctx.args ?? {}) as { mode: 'flag' | 'transport' };
  return mode === 'flag' ? flag(ctx) : transport(ctx);
}
