// CUDA IPC: share a device allocation with another process of the same host (issue 12, deliverable 3).
//
//   exporter:  const h = exportIpcMemory(buf.ptr);           // 64-byte cuIpcMemHandle + where buf.ptr is in it
//              send(serializeIpcExport(h))                    // over the control channel (a blob, 88 bytes)
//   importer:  const m = openIpcMemory(parseIpcExport(blob));  // m.ptr: this process's address of the exporter's buf.ptr
//              ...kernels / cuMemcpy read and write it...;  m.close()   (before the exporter frees its buffer)
//
// WHY these rules:
// - A handle names a whole cuMemAlloc allocation, never a sub-range: cuIpcOpenMemHandle maps the allocation's BASE.
//   So the exporter records the offset of its pointer inside the allocation (cuMemGetAddressRange) and the importer
//   adds it back (IpcExport.offset). Memory from cuMemAllocAsync pools, cuMemCreate or the host cannot be exported
//   this way (cuIpcGetMemHandle refuses it): allocate shared buffers with DeviceBuffer.alloc(bytes) without a stream.
// - A process cannot open its own handle (the driver refuses with CUDA_ERROR_INVALID_CONTEXT): the owner uses its
//   local pointer (symmetric-memory.ts does this for its own rank).
// - CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS is the one flag the driver takes: when the exporter's device is another GPU,
//   peer access to it is enabled for this mapping on first use. On the SAME device (several ranks on one GPU, the
//   single-GPU test mode) there is nothing to enable; the driver maps the allocation directly (probed on the H200).
// - Never NVLink multicast: no cuMulticast* anywhere in megamoe (forbidden on this workplace's GPU hosts).
//
// Binding (WHY a struct): cuIpcOpenMemHandle takes the 64-byte CUipcMemHandle BY VALUE; on x86-64 the ABI copies a
// struct that size to the stack, so koffi must be told it is a struct, not a pointer (as nccl.ts does for the NCCL
// unique id). cuda.h maps cuIpcOpenMemHandle to cuIpcOpenMemHandle_v2 and cuMemGetAddressRange to _v2.
import koffi from 'koffi';
import { getDriver, throwCuda } from './driver.js';

/** Bytes of a CUipcMemHandle (CU_IPC_HANDLE_SIZE). */
export const CU_IPC_HANDLE_BYTES = 64;
/** cuIpcOpenMemHandle's only flag. */
export const CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 0x1;
/** Bytes of a serialized IpcExport (serializeIpcExport): handle, then u64 offset, u64 bytes, i32 device, i32 pid. */
export const IPC_EXPORT_BYTES = CU_IPC_HANDLE_BYTES + 8 + 8 + 4 + 4;

export interface IpcFunctions {
  cuIpcGetMemHandle(outHandle: Uint8Array, dptr: bigint): number;
  cuIpcOpenMemHandle(outPtr: BigUint64Array, handle: { reserved: Uint8Array }, flags: number): number;
  cuIpcCloseMemHandle(dptr: bigint): number;
  cuMemGetAddressRange(outBase: BigUint64Array, outSize: BigUint64Array, dptr: bigint): number;
}

let handleType: koffi.IKoffiCType | null = null;
function handleStruct(): koffi.IKoffiCType {
  handleType ??= koffi.struct('megamoe_CUipcMemHandle', { reserved: koffi.array('uint8_t', CU_IPC_HANDLE_BYTES) });
  return handleType;
}

/** Declares the IPC functions of a libcuda (the real one, or a fake in the tests). Throws on a missing symbol. */
export function bindIpc(lib: koffi.IKoffiLib): IpcFunctions {
  const H = handleStruct();
  const f = (name: string, ret: string, args: Array<string | koffi.IKoffiCType>) => lib.func(name, ret, args);
  const either = (names: string[], ret: string, args: Array<string | koffi.IKoffiCType>) => {
    let last: unknown;
    for (const n of names) {
      try { return f(n, ret, args); } catch (err) { last = err; }
    }
    throw last;
  };
  return {
    cuIpcGetMemHandle: f('cuIpcGetMemHandle', 'int', ['void *', 'uint64_t']),
    cuIpcOpenMemHandle: either(['cuIpcOpenMemHandle_v2', 'cuIpcOpenMemHandle'], 'int', ['void *', H, 'unsigned int']),
    cuIpcCloseMemHandle: f('cuIpcCloseMemHandle', 'int', ['uint64_t']),
    cuMemGetAddressRange: either(['cuMemGetAddressRange_v2', 'cuMemGetAddressRange'], 'int', ['void *', 'void *', 'uint64_t']),
  } as unknown as IpcFunctions;
}

let bound: { lib: koffi.IKoffiLib; fn: IpcFunctions } | null = null;
/** The IPC functions of the loaded driver (bound once; getDriver() throws CudaUnavailableError without one). */
function ipcFunctions(): IpcFunctions {
  const d = getDriver();
  if (!bound || bound.lib !== d.lib) bound = { lib: d.lib, fn: bindIpc(d.lib) };
  return bound.fn;
}

/** What an importer needs to map an exporter's pointer: the handle of its allocation and where the pointer is in it. */
export interface IpcExport {
  /** The 64-byte CUipcMemHandle of the whole allocation. */
  handle: Uint8Array;
  /** Byte offset of the exported pointer from the allocation's base. */
  offset: number;
  /** Bytes from the exported pointer that the importer may use (default: to the allocation's end). */
  bytes: number;
  /** The exporter's device ordinal (peer-access checks) and pid (error messages). */
  device: number;
  pid: number;
}

function checkHandle(h: unknown): Uint8Array {
  if (!(h instanceof Uint8Array) || h.byteLength !== CU_IPC_HANDLE_BYTES) {
    throw new RangeError(`a CUDA IPC handle is ${CU_IPC_HANDLE_BYTES} bytes, got ${h instanceof Uint8Array ? h.byteLength : typeof h}`);
  }
  return h;
}

/** The handle as base64 (88 characters), for text channels and logs. */
export function encodeIpcHandle(handle: Uint8Array): string {
  return Buffer.from(checkHandle(handle)).toString('base64');
}

export function decodeIpcHandle(text: string): Uint8Array {
  if (typeof text !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new RangeError(`not a base64 CUDA IPC handle: ${JSON.stringify(String(text).slice(0, 100))}`);
  return checkHandle(new Uint8Array(Buffer.from(text, 'base64')));
}

/** IpcExport -> IPC_EXPORT_BYTES bytes (little-endian), the blob the control channel carries. */
export function serializeIpcExport(e: IpcExport): Uint8Array {
  checkHandle(e.handle);
  for (const [k, v] of [['offset', e.offset], ['bytes', e.bytes], ['device', e.device], ['pid', e.pid]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`IpcExport.${k} must be a non-negative integer, got ${v}`);
  }
  const out = new Uint8Array(IPC_EXPORT_BYTES);
  out.set(e.handle, 0);
  const v = new DataView(out.buffer);
  v.setBigUint64(64, BigInt(e.offset), true);
  v.setBigUint64(72, BigInt(e.bytes), true);
  v.setInt32(80, e.device, true);
  v.setInt32(84, e.pid, true);
  return out;
}

export function parseIpcExport(blob: Uint8Array): IpcExport {
  if (!(blob instanceof Uint8Array) || blob.byteLength !== IPC_EXPORT_BYTES) {
    throw new RangeError(`a serialized CUDA IPC export is ${IPC_EXPORT_BYTES} bytes, got ${blob instanceof Uint8Array ? blob.byteLength : typeof blob}`);
  }
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  return {
    handle: blob.slice(0, CU_IPC_HANDLE_BYTES),
    offset: Number(v.getBigUint64(64, true)),
    bytes: Number(v.getBigUint64(72, true)),
    device: v.getInt32(80, true),
    pid: v.getInt32(84, true),
  };
}

/** The cuMemAlloc allocation that contains `ptr`: its base and size (cuMemGetAddressRange). */
export function allocationRange(ptr: bigint, fn: IpcFunctions = ipcFunctions()): { base: bigint; bytes: number } {
  const base = new BigUint64Array(1);
  const size = new BigUint64Array(1);
  const rc = fn.cuMemGetAddressRange(base, size, ptr);
  if (rc !== 0) throwCuda('cuMemGetAddressRange_v2', rc, `0x${ptr.toString(16)} is not device memory of the current context`);
  return { base: base[0], bytes: Number(size[0]) };
}

/**
 * Exports the allocation holding `ptr` (a DeviceBuffer.ptr of a plain DeviceBuffer.alloc) with the offset of `ptr`
 * in it; the current context must be the allocation's. `bytes`: how much from ptr the importer may use (default all).
 */
export function exportIpcMemory(ptr: bigint, options: { bytes?: number; device?: number; fn?: IpcFunctions } = {}): IpcExport {
  if (typeof ptr !== 'bigint' || ptr === 0n) throw new TypeError(`exportIpcMemory: a device address (non-zero bigint) is needed, got ${String(ptr)}`);
  const fn = options.fn ?? ipcFunctions();
  const range = allocationRange(ptr, fn);
  const offset = Number(ptr - range.base);
  const avail = range.bytes - offset;
  const bytes = options.bytes ?? avail;
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes > avail) {
    throw new RangeError(`exportIpcMemory: ${bytes} bytes from 0x${ptr.toString(16)} do not fit its allocation (${avail} bytes left)`);
  }
  const handle = new Uint8Array(CU_IPC_HANDLE_BYTES);
  const rc = fn.cuIpcGetMemHandle(handle, range.base);
  if (rc !== 0) {
    throwCuda('cuIpcGetMemHandle', rc, `allocation 0x${range.base.toString(16)} (${range.bytes} bytes): only memory from ` +
      'cuMemAlloc (DeviceBuffer.alloc without a stream) can be shared through CUDA IPC');
  }
  return { handle, offset, bytes, device: options.device ?? 0, pid: process.pid };
}

/** Another process's allocation mapped into this one; close() unmaps it. */
export class IpcMapping {
  /** This process's address of the exporter's pointer (base + offset). */
  readonly ptr: bigint;
  /** The mapped allocation's base (what cuIpcCloseMemHandle takes). */
  readonly base: bigint;
  readonly bytes: number;
  readonly source: { device: number; pid: number };
  private closed = false;
  private readonly fn: IpcFunctions;

  constructor(base: bigint, e: IpcExport, fn: IpcFunctions) {
    this.base = base;
    this.ptr = base + BigInt(e.offset);
    this.bytes = e.bytes;
    this.source = { device: e.device, pid: e.pid };
    this.fn = fn;
  }

  get disposed(): boolean { return this.closed; }

  /** Unmaps (cuIpcCloseMemHandle). Close before the exporter frees its buffer; closing twice is a no-op. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const rc = this.fn.cuIpcCloseMemHandle(this.base);
    if (rc !== 0) throwCuda('cuIpcCloseMemHandle', rc, `mapping of pid ${this.source.pid}'s allocation at 0x${this.base.toString(16)}`);
  }

  [Symbol.dispose](): void { this.close(); }
}

/**
 * Maps an exporter's allocation into this process (cuIpcOpenMemHandle with CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) in
 * the current context. Fails with a CudaError naming the call and the CUresult (e.g. CUDA_ERROR_INVALID_CONTEXT when
 * the handle is this process's own, CUDA_ERROR_INVALID_VALUE when the exporter already freed it or exited).
 */
export function openIpcMemory(e: IpcExport, options: { fn?: IpcFunctions } = {}): IpcMapping {
  checkHandle(e.handle);
  if (e.pid === process.pid) {
    throw new RangeError(`openIpcMemory: the handle was exported by this process (pid ${e.pid}); use the local pointer instead`);
  }
  const fn = options.fn ?? ipcFunctions();
  const out = new BigUint64Array(1);
  const rc = fn.cuIpcOpenMemHandle(out, { reserved: e.handle }, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
  if (rc !== 0) {
    throwCuda('cuIpcOpenMemHandle_v2', rc, `handle of pid ${e.pid} (device ${e.device}, ${e.bytes} bytes at offset ${e.offset}); ` +
      'the exporter must still hold the buffer, and both processes must see the same GPUs (same CUDA_VISIBLE_DEVICES)');
  }
  return new IpcMapping(out[0], e, fn);
}
