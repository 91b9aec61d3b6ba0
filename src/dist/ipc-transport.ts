// The CUDA IPC transport (transport.ts's interface over symmetric memory, one host): the all-to-all of variable sizes
// is a set of peer copies (cuMemcpyDtoDAsync) from this rank's send buffer straight into each peer's receive buffer,
// mapped here through CUDA IPC; the all-gather likewise; the barrier a stream sync plus a control-channel exchange.
// It is what runs expert parallelism on ONE GPU (several ranks on device 0, where NCCL refuses with "duplicate GPU")
// and the NVLink baseline on a multi-GPU host. Never NVLink multicast (cuMulticast*): forbidden here, not used.
//
// WHY receive buffers are symmetric and transport-owned: a copy is pushed by the SENDER into the receiver's memory,
// so every receive buffer must be memory every peer has mapped. The transport owns one symmetric heap per rank
// (SymmetricMemory of `receiveBytes`, allocated and exchanged at create()) and hands out receive regions from it
// (allocateReceive: a bump allocator; every rank must allocate the same sizes in the same order, so a region has the
// same offset on every rank). A recv address outside the heap is refused with a message naming allocateReceive.
// Send buffers may be any device memory of this rank.
//
// WHY the receiver's layout travels with each collective: allToAllV's arguments say where THIS rank receives from
// each peer (recvOffsets), but with push copies the SENDER needs the receiver's offsets. So each collective starts with
// one exchange of every rank's receive layout (heap offset, counts, offsets, element type) over the control channel;
// a sender checks that the receiver expects exactly what it sends (a mismatch is an error naming both ranks, never a
// silent overrun) and copies to the receiver's offsets.
//
// Cross-rank ordering (the baseline's choice, stated): host-side. A collective is
//   1. stream sync: this rank's send data is complete AND its earlier reads of its own receive buffers are done,
//      so peers may overwrite them;
//   2. exchange of layouts = a barrier: every rank reached step 1;
//   3. peer copies on the stream, stream sync: this rank's data has landed in every receiver;
//   4. exchange 'done' = a barrier: every sender finished writing into this rank's receive buffer.
// After it resolves, kernels on any stream of this rank see the received data. Two control-channel round trips and
// two host syncs per collective (tens to hundreds of microseconds): right for a correctness baseline and the
// single-GPU test mode, not for the hot path (the fused kernel's device-side flags are issue 12, deliverable 4).
// Every wait is under the supervisor's barrier deadline: a rank that dies or stalls ends the run with its name.
import { getDriver, throwCuda } from '../cuda/driver.js';
import { Stream, streamHandle, type StreamLike } from '../cuda/stream.js';
import { NCCL_DATA_TYPES } from '../cuda/nccl.js';
import { SymmetricMemory, type SymmetricExchange, type SymmetricOptions } from './symmetric-memory.js';
import { checkAllToAllV, elementBytes, type AllToAllV, type DeviceRegion, type Transport, type TransportDType } from './transport.js';

/** What the transport needs of symmetric memory (SymmetricMemory; a simulated one in the CPU tests). */
export interface SymmetricHeap {
  readonly rank: number;
  readonly worldSize: number;
  readonly bytes: number;
  readonly local: { readonly ptr: bigint };
  readonly addresses: readonly bigint[];
  dispose(): void;
}

export interface IpcTransportDeps {
  heap: SymmetricHeap;
  exchange(key: string, blob: Uint8Array): Promise<Uint8Array[]>;
  /** Queues a device-to-device copy of `bytes` on `stream` (cuMemcpyDtoDAsync). */
  copy(dst: bigint, src: bigint, bytes: number, stream: StreamLike): void;
  /** Host wait for a stream. */
  synchronize(stream: StreamLike): void;
}

export interface IpcTransportOptions {
  /** Bytes of this rank's symmetric receive heap (the same on every rank): the sum of every allocateReceive, aligned. */
  receiveBytes: number;
  /** Control-channel key of the heap's handle exchange (default 'ipc-transport'). */
  key?: string;
  symmetric?: SymmetricOptions['deps'];
}

/** Alignment of receive regions (bytes): 256 keeps every vector load and TMA base aligned. */
export const RECEIVE_ALIGN = 256;

const OP_CODE = { allToAllV: 1, allGather: 2, barrier: 3 } as const;
type OpName = keyof typeof OP_CODE;
const OP_NAME: Record<number, OpName> = { 1: 'allToAllV', 2: 'allGather', 3: 'barrier' };

/** A receive layout record: [op, dtype code, heap offset (-1: receives nothing), count/W, counts..., offsets...] as f64. */
function encodeLayout(op: OpName, dtype: number, heapOffset: number, counts: readonly number[], offsets: readonly number[]): Uint8Array {
  const a = new Float64Array(4 + counts.length + offsets.length);
  a[0] = OP_CODE[op]; a[1] = dtype; a[2] = heapOffset; a[3] = counts.length;
  a.set(counts, 4);
  a.set(offsets, 4 + counts.length);
  return new Uint8Array(a.buffer);
}

interface Layout { op: OpName | 'unknown'; dtype: number; heapOffset: number; counts: number[]; offsets: number[] }

function decodeLayout(blob: Uint8Array): Layout {
  if (blob.byteLength % 8 !== 0 || blob.byteLength < 32) throw new Error(`IPC transport: malformed layout record (${blob.byteLength} bytes)`);
  const a = new Float64Array(blob.slice().buffer);
  const n = a[3];
  return {
    op: OP_NAME[a[0]] ?? 'unknown', dtype: a[1], heapOffset: a[2],
    counts: Array.from(a.subarray(4, 4 + n)), offsets: Array.from(a.subarray(4 + n, 4 + 2 * n)),
  };
}

export class IpcTransport implements Transport {
  readonly name = 'ipc' as const;
  readonly rank: number;
  readonly worldSize: number;
  private readonly deps: IpcTransportDeps;
  private seq = 0;
  private allocated = 0;
  private disposed = false;

  constructor(deps: IpcTransportDeps) {
    this.deps = deps;
    this.rank = deps.heap.rank;
    this.worldSize = deps.heap.worldSize;
  }

  /**
   * Collective: allocates and maps the symmetric receive heap of every rank (the current CUDA context must be this
   * rank's device: useDevice(ctx.device) first).
   */
  static async create(ctx: SymmetricExchange, options: IpcTransportOptions): Promise<IpcTransport> {
    const bytes = Math.ceil(options.receiveBytes / RECEIVE_ALIGN) * RECEIVE_ALIGN;
    const heap = await SymmetricMemory.create(ctx, Math.max(bytes, RECEIVE_ALIGN), {
      key: options.key ?? 'ipc-transport', ...(options.symmetric ? { deps: options.symmetric } : {}),
    });
    return new IpcTransport({
      heap,
      exchange: (k, b) => ctx.exchange(k, b),
      copy: (dst, src, n, stream) => {
        const rc = getDriver().fn.cuMemcpyDtoDAsync_v2(dst, src, n, streamHandle(stream));
        if (rc !== 0) throwCuda('cuMemcpyDtoDAsync_v2', rc, `IPC peer copy of ${n} bytes 0x${src.toString(16)} -> 0x${dst.toString(16)}`);
      },
      synchronize: (s) => (s ?? Stream.legacyDefault).synchronize(),
    });
  }

  /** The symmetric heap (its address table: heap.addresses). */
  get heap(): SymmetricHeap { return this.deps.heap; }

  /** Bytes of the heap handed out so far. */
  get allocatedBytes(): number { return this.allocated; }

  private live(): void {
    if (this.disposed) throw new Error(`the IPC transport of rank ${this.rank} was disposed`);
  }

  allocateReceive(bytes: number): DeviceRegion {
    this.live();
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`allocateReceive: bytes must be a non-negative integer, got ${bytes}`);
    const at = this.allocated;
    const end = at + Math.ceil(bytes / RECEIVE_ALIGN) * RECEIVE_ALIGN;
    if (end > this.deps.heap.bytes) {
      throw new RangeError(`allocateReceive: ${bytes} bytes do not fit the IPC transport's symmetric heap (${this.deps.heap.bytes - at} of ` +
        `${this.deps.heap.bytes} bytes left): create it with a larger receiveBytes`);
    }
    this.allocated = end;
    return { ptr: this.deps.heap.local.ptr + BigInt(at), byteLength: bytes };
  }

  /** Heap offset of a receive range [recv, recv + bytes), or throws naming allocateReceive. */
  private heapOffset(what: string, recv: bigint, bytes: number): number {
    const off = recv - this.deps.heap.local.ptr;
    if (off < 0n || off + BigInt(bytes) > BigInt(this.deps.heap.bytes)) {
      throw new RangeError(`IPC transport ${what}: the receive range 0x${recv.toString(16)} + ${bytes} bytes is not inside this rank's ` +
        'symmetric heap: peers write receive buffers directly, so they must come from transport.allocateReceive()');
    }
    return Number(off);
  }

  /** Steps 1-2 of a collective: drain the stream, then swap receive layouts with every rank (a barrier). */
  private async begin(op: OpName, stream: StreamLike, record: Uint8Array): Promise<{ layouts: Layout[]; key: string }> {
    const key = `ipc:${this.seq++}`;
    this.deps.synchronize(stream);
    const blobs = await this.deps.exchange(`${key}:layout`, record);
    const layouts = blobs.map(decodeLayout);
    layouts.forEach((l, p) => {
      if (l.op !== op) {
        throw new Error(`IPC transport: collective #${this.seq - 1} is ${op} on rank ${this.rank} but ${l.op} on rank ${p}: ` +
          'every rank must call the same collectives in the same order');
      }
    });
    return { layouts, key };
  }

  /** Steps 3-4: the queued copies land (stream sync), then every rank says so (a barrier). */
  private async finish(key: string, stream: StreamLike): Promise<void> {
    this.deps.synchronize(stream);
    await this.deps.exchange(`${key}:done`, new Uint8Array(0));
  }

  async allToAllV(a: AllToAllV, stream: StreamLike): Promise<void> {
    this.live();
    checkAllToAllV(a, this.worldSize);
    const b = elementBytes(a.dtype);
    const W = this.worldSize;
    let recvEnd = 0;
    a.recvCounts.forEach((c, p) => { if (c > 0) recvEnd = Math.max(recvEnd, a.recvOffsets[p] + c); });
    const heapOffset = recvEnd > 0 ? this.heapOffset('allToAllV', a.recv, recvEnd * b) : -1;
    const dtype = NCCL_DATA_TYPES[a.dtype].code;
    const { layouts, key } = await this.begin('allToAllV', stream, encodeLayout('allToAllV', dtype, heapOffset, a.recvCounts, a.recvOffsets));
    const me = this.rank;
    for (let p = 0; p < W; p++) {
      const peer = layouts[p];
      if (peer.counts.length !== W) throw new Error(`IPC transport: rank ${p}'s layout has ${peer.counts.length} entries for a world of ${W}`);
      const expected = peer.counts[me];
      if (expected !== a.sendCounts[p]) {
        throw new Error(`IPC transport allToAllV #${this.seq - 1}: rank ${me} sends ${a.sendCounts[p]} elements to rank ${p}, ` +
          `which expects ${expected} from it: the send and receive counts of every pair must agree`);
      }
      if (a.sendCounts[p] === 0) continue;
      if (peer.dtype !== dtype) throw new Error(`IPC transport allToAllV: rank ${me} sends ${a.dtype} but rank ${p} receives another element type`);
      const dst = this.deps.heap.addresses[p] + BigInt(peer.heapOffset + peer.offsets[me] * b);
      const src = a.send + BigInt(a.sendOffsets[p] * b);
      this.deps.copy(dst, src, a.sendCounts[p] * b, stream);
    }
    await this.finish(key, stream);
  }

  async allGather(send: bigint, recv: bigint, count: number, dtype: TransportDType, stream: StreamLike): Promise<void> {
    this.live();
    const b = elementBytes(dtype);
    if (!Number.isSafeInteger(count) || count < 0) throw new RangeError(`allGather: count must be a non-negative integer, got ${count}`);
    const W = this.worldSize;
    const heapOffset = count > 0 ? this.heapOffset('allGather', recv, W * count * b) : -1;
    if (count > 0 && (typeof send !== 'bigint' || send === 0n)) throw new TypeError(`allGather: send must be a device address, got ${String(send)}`);
    const code = NCCL_DATA_TYPES[dtype].code;
    const { layouts, key } = await this.begin('allGather', stream, encodeLayout('allGather', code, heapOffset, [count], [0]));
    for (let p = 0; p < W; p++) {
      const peer = layouts[p];
      if (peer.counts[0] !== count || peer.dtype !== code) {
        throw new Error(`IPC transport allGather #${this.seq - 1}: rank ${this.rank} gathers ${count} x ${dtype} but rank ${p} ` +
          `${peer.counts[0]} elements${peer.dtype !== code ? ' of another type' : ''}`);
      }
    }
    if (count > 0) {
      for (let p = 0; p < W; p++) {
        const dst = this.deps.heap.addresses[p] + BigInt(layouts[p].heapOffset + this.rank * count * b);
        this.deps.copy(dst, send, count * b, stream);
      }
    }
    await this.finish(key, stream);
  }

  async barrier(stream: StreamLike): Promise<void> {
    this.live();
    // Steps 1-2 only: the stream is drained and every rank reached this point; nothing is copied.
    await this.begin('barrier', stream, encodeLayout('barrier', 0, -1, [], []));
  }

  /**
   * Local teardown: unmaps the peers' heaps and frees this rank's. Call it after a barrier (every peer finished
   * writing here) on the healthy path; on an error path the supervisor ends every rank anyway.
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.deps.heap.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
