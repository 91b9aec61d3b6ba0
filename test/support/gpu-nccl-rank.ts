// A rank program for test/gpu-nccl.test.ts: joins the NCCL world through the control channel, then all-gathers,
// all-to-alls (variable sizes) and barriers on real device memory and checks what arrived.
import type { RankContext } from '../../src/dist/rank-channel.js';
import { NcclTransport } from '../../src/dist/nccl-transport.js';
import { DeviceBuffer, Stream, useDevice } from '../../src/cuda/index.js';

export default async function program(ctx: RankContext): Promise<unknown> {
  const { library } = (ctx.args ?? {}) as { library?: string };
  ctx.phase('cuda-init');
  useDevice(ctx.device);
  ctx.phase('nccl-init');
  const transport = await NcclTransport.create(ctx, library ? { library } : {});
  await ctx.ready();
  ctx.phase('collectives');
  const W = ctx.worldSize, r = ctx.rank;
  const stream = Stream.create();
  // all-gather of 4 int32 per rank
  const mine = Int32Array.from({ length: 4 }, (_, i) => r * 100 + i);
  const send = DeviceBuffer.alloc(16);
  const gathered = DeviceBuffer.alloc(16 * W);
  send.copyFromHost(mine);
  transport.allGather(send.ptr, gathered.ptr, 4, 'int32', stream);
  // all-to-all: rank r sends (p + 1) elements to peer p, value r * 1000 + p
  const sendCounts = Array.from({ length: W }, (_, p) => p + 1);
  const sendOffsets = sendCounts.map((_, p) => (p * (p + 1)) / 2);
  const totalSend = sendCounts.reduce((a, b) => a + b, 0);
  const recvCounts = Array.from({ length: W }, () => r + 1);
  const recvOffsets = recvCounts.map((_, p) => p * (r + 1));
  const a2aSendHost = new Int32Array(totalSend);
  sendCounts.forEach((c, p) => a2aSendHost.fill(r * 1000 + p, sendOffsets[p], sendOffsets[p] + c));
  const a2aSend = DeviceBuffer.alloc(totalSend * 4);
  const a2aRecv = DeviceBuffer.alloc(W * (r + 1) * 4);
  a2aSend.copyFromHost(a2aSendHost);
  transport.allToAllV({
    send: a2aSend.ptr, recv: a2aRecv.ptr, dtype: 'int32', sendCounts, sendOffsets, recvCounts, recvOffsets,
    sendCapacity: totalSend, recvCapacity: W * (r + 1),
  }, stream);
  transport.barrier(stream);
  const g = new Int32Array(4 * W);
  gathered.copyToHost(g);
  const a = new Int32Array(W * (r + 1));
  a2aRecv.copyToHost(a);
  transport.dispose();
  for (const b of [send, gathered, a2aSend, a2aRecv]) b.dispose();
  stream.dispose();
  return { rank: r, gathered: [...g], received: [...a] };
}
