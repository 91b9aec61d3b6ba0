// Symmetric memory on one host (issue 12, deliverable 3): every rank allocates a buffer of the SAME size, exports its
// CUDA IPC handle, the handles are exchanged over the control channel (one exchange: a barrier with a payload, under
// the supervisor's deadline), and every rank maps its peers' buffers. The result is the rank -> device address table
// of this process: addresses[p] is where rank p's buffer is visible here (this rank's own entry is its local pointer;
// a process cannot open its own handle). A kernel or a cuMemcpy on this rank may then read and write any peer's
// buffer through addresses[p] (NVLink / the same GPU's memory).
//
// The table can be uploaded to the device as u64 per rank in rank order: exactly the rank -> base table region
// (regions.rankTable) of the fused kernel's symmetric buffer (src/kernels/mega-moe-layout.ts).
//
// Peer access: IPC mappings are opened with CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, which enables access to another GPU
// for that mapping; before opening we only check that a P2P path exists (cuDeviceCanAccessPeer) so a missing one is a
// clear error naming the devices. A peer on the SAME device (several ranks on one GPU, the single-GPU test mode)
// needs and gets no peer-access call at all (the driver refuses device == peer device).
//
// Teardown: close() is collective (a barrier first, so no peer still writes into this rank's buffer when it is freed,
// then unmaps the peers and frees the local buffer). dispose() is the local, non-collective part for error paths.
// NEVER NVLink multicast (cuMulticast*): forbidden on this workplace's GPU hosts; nothing here uses it.
import { DeviceBuffer } from '../cuda/memory.js';
import { canAccessPeer } from '../cuda/peer.js';
import { exportIpcMemory, openIpcMemory, parseIpcExport, serializeIpcExport, type IpcExport } from '../cuda/ipc.js';
import { checkKey } from './protocol.js';

/** The control-channel part symmetric memory needs (a RankContext has it). */
export interface SymmetricExchange {
  readonly rank: number;
  readonly worldSize: number;
  readonly device: number;
  exchange(key: string, blob: Uint8Array): Promise<Uint8Array[]>;
}

/** The CUDA side, injectable so the exchange logic is tested without a GPU. */
export interface SymmetricDeps {
  /** A whole cuMemAlloc allocation of `bytes` (IPC shares allocations, not pool memory). */
  alloc(bytes: number): { readonly ptr: bigint; dispose(): void };
  exportHandle(ptr: bigint, bytes: number, device: number): IpcExport;
  open(e: IpcExport): { readonly ptr: bigint; close(): void };
  canAccessPeer(device: number, peerDevice: number): boolean;
  /** Fills the local buffer with zeros (so flags start cleared); synchronous. */
  zero?(ptr: bigint, bytes: number): void;
}

export const CUDA_SYMMETRIC_DEPS: SymmetricDeps = {
  alloc: (bytes) => DeviceBuffer.alloc(bytes),
  exportHandle: (ptr, bytes, device) => exportIpcMemory(ptr, { bytes, device }),
  open: (e) => openIpcMemory(e),
  canAccessPeer,
  zero: undefined,
};

export interface SymmetricOptions {
  /** Control-channel key of the handle exchange (default 'symmetric'); one per symmetric buffer of a run. */
  key?: string;
  /** Zero the local buffer before the exchange (default true): peers may read it right after create() resolves. */
  zero?: boolean;
  deps?: SymmetricDeps;
}

/** Serialized per-rank record of the exchange: the IPC export plus the rank's view of the world (sanity checks). */
function encodeRecord(rank: number, worldSize: number, e: IpcExport): Uint8Array {
  const ipc = serializeIpcExport(e);
  const out = new Uint8Array(8 + ipc.byteLength);
  const v = new DataView(out.buffer);
  v.setInt32(0, rank, true);
  v.setInt32(4, worldSize, true);
  out.set(ipc, 8);
  return out;
}

function decodeRecord(blob: Uint8Array): { rank: number; worldSize: number; e: IpcExport } {
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  if (blob.byteLength < 8) throw new RangeError(`a symmetric-memory record is at least 8 bytes, got ${blob.byteLength}`);
  return { rank: v.getInt32(0, true), worldSize: v.getInt32(4, true), e: parseIpcExport(blob.subarray(8)) };
}

export class SymmetricMemory {
  readonly rank: number;
  readonly worldSize: number;
  /** Bytes of every rank's buffer (the same on all ranks). */
  readonly bytes: number;
  /** This rank's own buffer. */
  readonly local: { readonly ptr: bigint };
  /** rank -> device address of that rank's buffer, as seen from this process (own rank: the local pointer). */
  readonly addresses: readonly bigint[];
  /** rank -> device ordinal the rank's buffer lives on. */
  readonly devices: readonly number[];
  private readonly owned: { dispose(): void };
  private readonly mappings: Array<{ close(): void }>;
  private readonly key: string;
  private freed = false;

  private constructor(p: {
    rank: number; worldSize: number; bytes: number; local: { ptr: bigint; dispose(): void }; addresses: bigint[];
    devices: number[]; mappings: Array<{ close(): void }>; key: string;
  }) {
    this.rank = p.rank; this.worldSize = p.worldSize; this.bytes = p.bytes; this.local = p.local; this.owned = p.local;
    this.addresses = Object.freeze(p.addresses); this.devices = Object.freeze(p.devices); this.mappings = p.mappings;
    this.key = p.key;
  }

  /**
   * Collective: every rank calls it with the same `bytes` and key. Resolves once every peer's buffer is mapped here.
   * Errors name the rank and the cause (size mismatch, no P2P path, a CUDA error of the open).
   */
  static async create(ctx: SymmetricExchange, bytes: number, options: SymmetricOptions = {}): Promise<SymmetricMemory> {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new RangeError(`symmetric memory: bytes must be a positive integer, got ${bytes}`);
    const key = checkKey('symmetric memory key', options.key ?? 'symmetric');
    const deps = options.deps ?? CUDA_SYMMETRIC_DEPS;
    const W = ctx.worldSize;
    const local = deps.alloc(bytes);
    const mappings: Array<{ close(): void }> = [];
    try {
      if (options.zero !== false) {
        if (deps.zero) deps.zero(local.ptr, bytes);
        else if (local instanceof DeviceBuffer) {
          local.memset8(0);
          // A memset may still be queued when it returns: finish it before any peer can write here (after the exchange).
          local.context.synchronize();
        }
      }
      const mine = deps.exportHandle(local.ptr, bytes, ctx.device);
      const blobs = await ctx.exchange(`${key}:handles`, encodeRecord(ctx.rank, W, mine));
      if (blobs.length !== W) throw new Error(`symmetric memory '${key}': the exchange gave ${blobs.length} records for a world of ${W}`);
      const records = blobs.map(decodeRecord);
      const addresses: bigint[] = [];
      const devices: number[] = [];
      records.forEach((rec, p) => {
        if (rec.rank !== p || rec.worldSize !== W) {
          throw new Error(`symmetric memory '${key}': record ${p} says rank ${rec.rank} of ${rec.worldSize} (this rank ${ctx.rank} of ${W})`);
        }
        if (rec.e.bytes !== bytes) {
          throw new RangeError(`symmetric memory '${key}': rank ${p} allocated ${rec.e.bytes} bytes, rank ${ctx.rank} ${bytes}: ` +
            'every rank must ask for the same size');
        }
        devices.push(rec.e.device);
      });
      for (let p = 0; p < W; p++) {
        if (p === ctx.rank) {
          addresses.push(local.ptr);
          continue;
        }
        const peerDevice = devices[p];
        // Same device: no peer access exists to enable (the driver refuses device == peer device); just map.
        if (peerDevice !== ctx.device && !deps.canAccessPeer(ctx.device, peerDevice)) {
          throw new Error(`symmetric memory '${key}': rank ${ctx.rank} on device ${ctx.device} cannot access rank ${p}'s device ` +
            `${peerDevice} (no P2P path between them): the IPC transport needs GPUs with NVLink or PCIe P2P; use --transport nccl`);
        }
        const m = deps.open(records[p].e);
        mappings.push(m);
        addresses.push(m.ptr);
      }
      return new SymmetricMemory({ rank: ctx.rank, worldSize: W, bytes, local, addresses, devices, mappings, key });
    } catch (err) {
      for (const m of mappings) { try { m.close(); } catch { /* first error wins */ } }
      local.dispose();
      throw err;
    }
  }

  /** rank -> address table as u64 little-endian, rank order (the rankTable region's layout in mega-moe-layout.ts). */
  addressTable(): BigUint64Array {
    return BigUint64Array.from(this.addresses);
  }

  /** Address of byte `offset` of rank p's buffer, in this process (checks the range). */
  peerAddress(p: number, offset = 0, bytes = 0): bigint {
    if (!Number.isInteger(p) || p < 0 || p >= this.worldSize) throw new RangeError(`rank ${p} is outside [0, ${this.worldSize})`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > this.bytes) {
      throw new RangeError(`range [${offset}, ${offset + bytes}) is outside the ${this.bytes}-byte symmetric buffer`);
    }
    return this.addresses[p] + BigInt(offset);
  }

  /** Byte offset of a local address inside this rank's buffer, or -1 when it is not inside (with `bytes` after it). */
  offsetOf(ptr: bigint, bytes = 0): number {
    const off = ptr - this.local.ptr;
    if (off < 0n || off + BigInt(bytes) > BigInt(this.bytes)) return -1;
    return Number(off);
  }

  /** Uploads the address table (u64 per rank) to `dst` at byte `offset`: e.g. a mega buffer's regions.rankTable.offset. */
  uploadAddressTable(dst: DeviceBuffer, offset = 0): void {
    const t = this.addressTable();
    dst.copyFromHost(t, { offset, bytes: t.byteLength });
  }

  get disposed(): boolean { return this.freed; }

  /** Local teardown (no barrier): unmaps the peers and frees this rank's buffer. Use close() when the run is healthy. */
  dispose(): void {
    if (this.freed) return;
    this.freed = true;
    let first: unknown;
    for (const m of this.mappings.splice(0)) {
      try { m.close(); } catch (err) { first ??= err; }
    }
    this.owned.dispose();
    if (first) throw first;
  }

  /** Collective teardown: waits until every rank is done with every buffer, then dispose(). */
  async close(ctx: SymmetricExchange): Promise<void> {
    if (this.freed) return;
    await ctx.exchange(`${this.key}:close`, new Uint8Array(0));
    this.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
