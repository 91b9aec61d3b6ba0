// An in-process simulation of N ranks for the IPC transport and symmetric memory (no GPU, no processes): an exchange
// that resolves when every rank gave its blob (as the supervisor does), and a flat simulated device address space
// where each allocation is a Uint8Array at a fake base address, so peer copies are real byte copies we can check.
import type { IpcTransportDeps, SymmetricHeap } from '../../src/dist/ipc-transport.js';
import type { SymmetricExchange } from '../../src/dist/symmetric-memory.js';

export class SimExchange {
  private readonly pending = new Map<string, { blobs: Map<number, Uint8Array>; waiters: Array<(b: Uint8Array[]) => void> }>();
  readonly log: string[] = [];
  constructor(readonly worldSize: number) {}

  exchange(rank: number, key: string, blob: Uint8Array): Promise<Uint8Array[]> {
    this.log.push(`${rank}:${key}`);
    let x = this.pending.get(key);
    if (!x) { x = { blobs: new Map(), waiters: [] }; this.pending.set(key, x); }
    if (x.blobs.has(rank)) return Promise.reject(new Error(`rank ${rank} joined ${key} twice`));
    x.blobs.set(rank, blob.slice());
    const entry = x;
    return new Promise((res) => {
      entry.waiters.push(res);
      if (entry.blobs.size === this.worldSize) {
        this.pending.delete(key);
        const all = Array.from({ length: this.worldSize }, (_, r) => entry.blobs.get(r)!);
        for (const w of entry.waiters) w(all);
      }
    });
  }

  /** Keys some rank is still waiting on (a test asserts none are left). */
  get open(): string[] { return [...this.pending.keys()]; }

  context(rank: number, device = 0): SymmetricExchange {
    return { rank, worldSize: this.worldSize, device, exchange: (k, b) => this.exchange(rank, k, b) };
  }
}

/** A flat fake device address space: allocations at distinct bases, copies between any two of them. */
export class SimMemory {
  private next = 0x10_0000_0000n;
  private readonly allocs: Array<{ base: bigint; bytes: Uint8Array; freed: boolean }> = [];
  readonly copies: Array<{ dst: bigint; src: bigint; bytes: number }> = [];

  alloc(bytes: number): { ptr: bigint; dispose(): void } {
    const base = this.next;
    this.next += BigInt(Math.ceil((bytes + 1) / 0x10000) * 0x10000);
    const a = { base, bytes: new Uint8Array(bytes), freed: false };
    this.allocs.push(a);
    return { ptr: base, dispose: () => { a.freed = true; } };
  }

  private find(ptr: bigint, n: number): { a: Uint8Array; off: number } {
    for (const x of this.allocs) {
      if (ptr >= x.base && ptr + BigInt(n) <= x.base + BigInt(x.bytes.byteLength)) {
        if (x.freed) throw new Error(`access to freed memory 0x${ptr.toString(16)}`);
        return { a: x.bytes, off: Number(ptr - x.base) };
      }
    }
    throw new Error(`simulated illegal address: 0x${ptr.toString(16)} + ${n} bytes`);
  }

  copy(dst: bigint, src: bigint, n: number): void {
    this.copies.push({ dst, src, bytes: n });
    const s = this.find(src, n);
    const d = this.find(dst, n);
    d.a.set(s.a.subarray(s.off, s.off + n), d.off);
  }

  write(ptr: bigint, data: ArrayBufferView): void {
    const d = this.find(ptr, data.byteLength);
    d.a.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), d.off);
  }

  read(ptr: bigint, n: number): Uint8Array {
    const s = this.find(ptr, n);
    return s.a.slice(s.off, s.off + n);
  }

  get liveAllocations(): number { return this.allocs.filter((a) => !a.freed).length; }
}

/** Symmetric heaps of `bytes` for every rank in one simulated address space (every rank sees every base). */
export function simHeaps(mem: SimMemory, worldSize: number, bytes: number): SymmetricHeap[] {
  const locals = Array.from({ length: worldSize }, () => mem.alloc(bytes));
  return locals.map((l, rank) => ({
    rank, worldSize, bytes, local: { ptr: l.ptr }, addresses: locals.map((x) => x.ptr), dispose: () => l.dispose(),
  }));
}

/** IpcTransport deps of every rank over a SimExchange and a SimMemory; `syncs` counts host waits per rank. */
export function simTransportDeps(worldSize: number, heapBytes: number): {
  mem: SimMemory; ex: SimExchange; deps: IpcTransportDeps[]; syncs: number[];
} {
  const mem = new SimMemory();
  const ex = new SimExchange(worldSize);
  const heaps = simHeaps(mem, worldSize, heapBytes);
  const syncs = new Array<number>(worldSize).fill(0);
  const deps = heaps.map((heap, r): IpcTransportDeps => ({
    heap,
    exchange: (k, b) => ex.exchange(r, k, b),
    copy: (dst, src, n) => mem.copy(dst, src, n),
    synchronize: () => { syncs[r]++; },
  }));
  return { mem, ex, deps, syncs };
}
