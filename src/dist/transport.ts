// The transport between ranks, behind one small interface: NCCL (nccl-transport.ts; the one that goes across hosts
// later) and CUDA IPC peer copies on one host (ipc-transport.ts). The unfused EP baseline moves its FP8 rows + scales
// with allToAllV and gathers counts with allGather; barrier orders the ranks' streams.
//
// Units: counts and offsets are in ELEMENTS of `dtype`, addresses are device addresses (bigint, DeviceBuffer.ptr),
// streams are Streams (null: the legacy default stream).
//
// Completion: an operation returns void or a Promise; callers always `await` it. NCCL enqueues on the stream and
// returns at once (no host sync, except barrier). The IPC transport orders the ranks on the HOST (stream sync, then a
// control-channel exchange), so its operations resolve once the data has landed in every receiver: see
// ipc-transport.ts for why that is acceptable for the baseline.
//
// Receive buffers: with IPC a sender writes straight into the receiver's memory, so a receive buffer must live in
// memory every peer has mapped (symmetric memory). Get receive buffers from transport.allocateReceive(bytes): the IPC
// transport carves them from its symmetric heap, NCCL allocates plain device memory. Send buffers may be anywhere.
import { NCCL_DATA_TYPES, type NcclDataType } from '../cuda/nccl.js';
import type { StreamLike } from '../cuda/stream.js';

export type TransportDType = NcclDataType;
export type TransportName = 'nccl' | 'ipc';

export interface AllToAllV {
  send: bigint;
  recv: bigint;
  dtype: TransportDType;
  /** Per peer: elements this rank sends to peer p, from send + sendOffsets[p] elements. */
  sendCounts: readonly number[];
  sendOffsets: readonly number[];
  /** Per peer: elements this rank receives from peer p, at recv + recvOffsets[p] elements. */
  recvCounts: readonly number[];
  recvOffsets: readonly number[];
  /** Elements the send / receive buffers hold, when known: every range is checked against them. */
  sendCapacity?: number;
  recvCapacity?: number;
}

/** A device range a transport handed out (allocateReceive): valid until the transport is disposed. */
export interface DeviceRegion {
  readonly ptr: bigint;
  readonly byteLength: number;
}

export interface Transport {
  readonly name: TransportName;
  readonly rank: number;
  readonly worldSize: number;
  /** Variable-size all-to-all: what peer p receives from this rank is what this rank's sendCounts[p] says. */
  allToAllV(args: AllToAllV, stream: StreamLike): void | Promise<void>;
  /** recv holds worldSize * count elements, rank r's `count` at r * count. */
  allGather(send: bigint, recv: bigint, count: number, dtype: TransportDType, stream: StreamLike): void | Promise<void>;
  /** Every rank reached this point of its stream, and the host waited for it. */
  barrier(stream: StreamLike): void | Promise<void>;
  /**
   * A buffer that can be the `recv` of allToAllV / allGather. Sizes may differ by rank (the IPC transport tells each
   * sender the receiver's own offsets per collective); when every rank asks the same sizes in the same order the IPC
   * regions also sit at the same offset of every rank's heap, which device-side peer access can rely on.
   */
  allocateReceive(bytes: number): DeviceRegion;
  dispose(): void;
}

export function elementBytes(dtype: TransportDType): number {
  const t = NCCL_DATA_TYPES[dtype];
  if (!t) throw new RangeError(`unknown element type '${String(dtype)}' (known: ${Object.keys(NCCL_DATA_TYPES).join(', ')})`);
  return t.bytes;
}

function checkList(what: string, v: readonly number[], worldSize: number): void {
  if (!Array.isArray(v) || v.length !== worldSize) {
    throw new RangeError(`${what} must have one entry per rank (${worldSize}), got ${Array.isArray(v) ? v.length : typeof v}`);
  }
  v.forEach((x, p) => {
    if (!Number.isSafeInteger(x) || x < 0) throw new RangeError(`${what}[${p}] must be a non-negative integer, got ${x}`);
  });
}

function checkRanges(what: string, counts: readonly number[], offsets: readonly number[], capacity: number | undefined): void {
  const ranges: Array<[number, number, number]> = [];
  counts.forEach((c, p) => {
    if (c === 0) return;
    const end = offsets[p] + c;
    if (capacity !== undefined && end > capacity) {
      throw new RangeError(`${what} range of peer ${p} [${offsets[p]}, ${end}) is past the buffer's ${capacity} elements`);
    }
    ranges.push([offsets[p], end, p]);
  });
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      throw new RangeError(`${what} ranges of peers ${ranges[i - 1][2]} and ${ranges[i][2]} overlap`);
    }
  }
}

/** Checks an all-to-all's arguments on this rank (throws a RangeError / TypeError naming the bad one). */
export function checkAllToAllV(a: AllToAllV, worldSize: number): void {
  elementBytes(a.dtype);
  for (const [what, p] of [['send', a.send], ['recv', a.recv]] as const) {
    if (typeof p !== 'bigint' || p < 0n) throw new TypeError(`${what} must be a device address (bigint), got ${String(p)}`);
  }
  checkList('sendCounts', a.sendCounts, worldSize);
  checkList('sendOffsets', a.sendOffsets, worldSize);
  checkList('recvCounts', a.recvCounts, worldSize);
  checkList('recvOffsets', a.recvOffsets, worldSize);
  for (const [what, cap] of [['sendCapacity', a.sendCapacity], ['recvCapacity', a.recvCapacity]] as const) {
    if (cap !== undefined && (!Number.isSafeInteger(cap) || cap < 0)) throw new RangeError(`${what} must be a non-negative integer, got ${cap}`);
  }
  if (a.send === 0n && a.sendCounts.some((c) => c > 0)) throw new RangeError('send is a null device address but sendCounts are not all 0');
  if (a.recv === 0n && a.recvCounts.some((c) => c > 0)) throw new RangeError('recv is a null device address but recvCounts are not all 0');
  checkRanges('send', a.sendCounts, a.sendOffsets, a.sendCapacity);
  checkRanges('receive', a.recvCounts, a.recvOffsets, a.recvCapacity);
}

/** Offsets of packed ranges: [0, c0, c0 + c1, ...] (an exclusive prefix sum). */
export function packedOffsets(counts: readonly number[]): number[] {
  const out: number[] = [];
  let acc = 0;
  for (const c of counts) {
    out.push(acc);
    acc += c;
  }
  return out;
}
