// The NCCL transport (transport.ts's interface over src/cuda/nccl.ts): the all-to-all of variable sizes is one
// NCCL group of a send and a receive per peer with data (self included: NCCL copies it locally), the all-gather
// is ncclAllGather, the barrier a one-element all-reduce followed by a host wait on the stream.
//
// Setup over the control channel: rank 0 makes the ncclUniqueId and publishes it under 'nccl-unique-id'; every rank
// fetches it and joins with ncclCommInitRank on its device (ctx.device, made current first). NCCL refuses two ranks
// on one GPU: that ncclInvalidUsage is turned into a message naming the IPC transport.
import {
  NcclCommunicator, NcclError, ncclGetUniqueId, ncclGroup, type NcclDataType, type NcclLoadOptions, type NcclRedOp,
} from '../cuda/nccl.js';
import { DeviceBuffer } from '../cuda/memory.js';
import { useDevice } from '../cuda/device.js';
import { Stream, streamHandle, type StreamLike } from '../cuda/stream.js';
import { checkAllToAllV, elementBytes, type AllToAllV, type DeviceRegion, type Transport, type TransportDType } from './transport.js';

/** The part of a communicator the transport uses (NcclCommunicator; a recording fake in the tests). */
export interface NcclCommLike {
  readonly rank: number;
  readonly nranks: number;
  send(buf: bigint, count: number, dtype: NcclDataType, peer: number, stream: bigint): void;
  recv(buf: bigint, count: number, dtype: NcclDataType, peer: number, stream: bigint): void;
  allGather(send: bigint, recv: bigint, sendCount: number, dtype: NcclDataType, stream: bigint): void;
  allReduce(send: bigint, recv: bigint, count: number, dtype: NcclDataType, op: NcclRedOp, stream: bigint): void;
  destroy(): void;
}

export interface NcclTransportDeps {
  comm: NcclCommLike;
  /** Runs body inside ncclGroupStart / ncclGroupEnd. */
  group: (body: () => void) => void;
  /** A device buffer of at least 4 bytes for the barrier's all-reduce. */
  barrierScratch: bigint;
  /** Host wait for a stream. */
  synchronize: (stream: StreamLike) => void;
  /** Frees what the transport owns beyond the communicator (the scratch buffer). */
  release?: () => void;
}

/** The control-channel part NcclTransport.create needs (a RankContext has it). */
export interface UniqueIdExchange {
  readonly rank: number;
  readonly worldSize: number;
  readonly device: number;
  publish(key: string, blob: Uint8Array): void;
  fetch(key: string): Promise<Uint8Array>;
}

export const NCCL_UNIQUE_ID_KEY = 'nccl-unique-id';

export class NcclTransport implements Transport {
  readonly name = 'nccl' as const;
  readonly rank: number;
  readonly worldSize: number;
  private readonly deps: NcclTransportDeps;
  private disposed = false;
  /** Receive buffers handed out by allocateReceive (NCCL needs no symmetric memory: plain allocations). */
  private readonly receives: DeviceBuffer[] = [];

  constructor(deps: NcclTransportDeps) {
    this.deps = deps;
    this.rank = deps.comm.rank;
    this.worldSize = deps.comm.nranks;
  }

  /** Joins the world's NCCL communicator (every rank calls this; rank 0 makes and publishes the id). */
  static async create(ctx: UniqueIdExchange, options: NcclLoadOptions = {}): Promise<NcclTransport> {
    if (ctx.rank === 0) ctx.publish(NCCL_UNIQUE_ID_KEY, ncclGetUniqueId(options));
    const id = await ctx.fetch(NCCL_UNIQUE_ID_KEY);
    useDevice(ctx.device);
    let comm: NcclCommunicator;
    try {
      comm = NcclCommunicator.init(id, ctx.worldSize, ctx.rank, options);
    } catch (err) {
      if (err instanceof NcclError && err.codeName === 'ncclInvalidUsage') {
        throw new NcclError(err.call, err.code, `rank ${ctx.rank} of ${ctx.worldSize} on device ${ctx.device}; ` +
          'NCCL needs one GPU per rank: with several ranks on one GPU use --transport ipc');
      }
      throw err;
    }
    const scratch = DeviceBuffer.alloc(4);
    return new NcclTransport({
      comm,
      group: (body) => ncclGroup(body, options),
      barrierScratch: scratch.ptr,
      synchronize: (s) => (s ?? Stream.legacyDefault).synchronize(),
      release: () => scratch.dispose(),
    });
  }

  private live(): void {
    if (this.disposed) throw new Error(`the NCCL transport of rank ${this.rank} was disposed`);
  }

  allToAllV(a: AllToAllV, stream: StreamLike): void {
    this.live();
    checkAllToAllV(a, this.worldSize);
    const bytes = BigInt(elementBytes(a.dtype));
    const s = streamHandle(stream);
    const { comm } = this.deps;
    this.deps.group(() => {
      for (let p = 0; p < this.worldSize; p++) {
        if (a.sendCounts[p] > 0) comm.send(a.send + BigInt(a.sendOffsets[p]) * bytes, a.sendCounts[p], a.dtype, p, s);
        if (a.recvCounts[p] > 0) comm.recv(a.recv + BigInt(a.recvOffsets[p]) * bytes, a.recvCounts[p], a.dtype, p, s);
      }
    });
  }

  allGather(send: bigint, recv: bigint, count: number, dtype: TransportDType, stream: StreamLike): void {
    this.live();
    elementBytes(dtype);
    this.deps.comm.allGather(send, recv, count, dtype, streamHandle(stream));
  }

  barrier(stream: StreamLike): void {
    this.live();
    const p = this.deps.barrierScratch;
    this.deps.comm.allReduce(p, p, 1, 'int32', 'sum', streamHandle(stream));
    this.deps.synchronize(stream);
  }

  allocateReceive(bytes: number): DeviceRegion {
    this.live();
    const b = DeviceBuffer.alloc(bytes);
    this.receives.push(b);
    return b;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of this.receives.splice(0)) b.dispose();
    try {
      this.deps.comm.destroy();
    } finally {
      this.deps.release?.();
    }
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
