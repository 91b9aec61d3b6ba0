// Raw bindings to the CUDA driver (libcuda.so.1) through koffi, loaded lazily on first use so that importing this
// module never fails on a machine without a GPU. Nothing outside src/cuda/ should call these directly: the classes
// in memory.ts, stream.ts, module.ts ... wrap them with lifetimes and CudaError.
//
// Binding conventions (WHY): every handle (CUcontext, CUstream, CUevent, CUmodule, CUfunction, CUgraph, CUgraphExec)
// and every pointer we own is passed as a `uintptr_t` integer, and every out-parameter points into one native scratch
// block allocated once. On x86-64 a pointer and a 64-bit integer travel in the same register, so this is ABI-exact,
// and it means no koffi object is created per call: a loop of a million alloc/free pairs allocates nothing native.
// Symbol names are the ones cuda.h maps the API names to (cuMemAlloc -> cuMemAlloc_v2, ...), legacy default stream
// (not the _ptds/_ptsz variants).
import koffi from 'koffi';
import { loadFirstLibrary } from './library.js';
import { CudaError, CudaUnavailableError, cuResultName } from './errors.js';

type Addr = bigint | number;

/** The driver functions megamoe uses; each returns a CUresult (0 = success) unless noted. */
export interface DriverFunctions {
  cuInit(flags: number): number;
  cuDriverGetVersion(outInt: Addr): number;
  cuGetErrorString(code: number, outStr: Addr): number;
  cuDeviceGetCount(outInt: Addr): number;
  cuDeviceGet(outDevice: Addr, ordinal: number): number;
  cuDeviceGetName(name: Uint8Array, len: number, dev: number): number;
  cuDeviceGetAttribute(outInt: Addr, attribute: number, dev: number): number;
  cuDeviceTotalMem_v2(outSize: Addr, dev: number): number;
  cuDeviceGetPCIBusId(busId: Uint8Array, len: number, dev: number): number;
  cuDevicePrimaryCtxRetain(outCtx: Addr, dev: number): number;
  cuDevicePrimaryCtxRelease_v2(dev: number): number;
  cuCtxSetCurrent(ctx: Addr): number;
  cuCtxGetCurrent(outCtx: Addr): number;
  cuCtxSynchronize(): number;
  cuMemGetInfo_v2(outFree: Addr, outTotal: Addr): number;
  cuMemAlloc_v2(outPtr: Addr, bytes: number): number;
  cuMemFree_v2(ptr: Addr): number;
  cuMemAllocAsync(outPtr: Addr, bytes: number, stream: Addr): number;
  cuMemFreeAsync(ptr: Addr, stream: Addr): number;
  cuMemHostAlloc(outPtr: Addr, bytes: number, flags: number): number;
  cuMemFreeHost(ptr: Addr): number;
  cuMemcpyHtoD_v2(dst: Addr, src: ArrayBufferView, bytes: number): number;
  cuMemcpyDtoH_v2(dst: ArrayBufferView, src: Addr, bytes: number): number;
  /** Same symbols with the host side as an address (pinned memory, offsets into it). */
  cuMemcpyHtoDAddr(dst: Addr, src: Addr, bytes: number): number;
  cuMemcpyDtoHAddr(dst: Addr, src: Addr, bytes: number): number;
  cuMemcpyDtoD_v2(dst: Addr, src: Addr, bytes: number): number;
  cuMemcpyHtoDAsync_v2(dst: Addr, src: ArrayBufferView, bytes: number, stream: Addr): number;
  cuMemcpyDtoHAsync_v2(dst: ArrayBufferView, src: Addr, bytes: number, stream: Addr): number;
  cuMemcpyHtoDAsyncAddr(dst: Addr, src: Addr, bytes: number, stream: Addr): number;
  cuMemcpyDtoHAsyncAddr(dst: Addr, src: Addr, bytes: number, stream: Addr): number;
  cuMemcpyDtoDAsync_v2(dst: Addr, src: Addr, bytes: number, stream: Addr): number;
  cuMemsetD8_v2(dst: Addr, value: number, count: number): number;
  cuMemsetD32_v2(dst: Addr, value: number, count: number): number;
  cuMemsetD8Async(dst: Addr, value: number, count: number, stream: Addr): number;
  cuMemsetD32Async(dst: Addr, value: number, count: number, stream: Addr): number;
  cuStreamCreate(outStream: Addr, flags: number): number;
  cuStreamDestroy_v2(stream: Addr): number;
  cuStreamSynchronize(stream: Addr): number;
  cuStreamQuery(stream: Addr): number;
  cuStreamWaitEvent(stream: Addr, event: Addr, flags: number): number;
  cuEventCreate(outEvent: Addr, flags: number): number;
  cuEventDestroy_v2(event: Addr): number;
  cuEventRecord(event: Addr, stream: Addr): number;
  cuEventSynchronize(event: Addr): number;
  cuEventQuery(event: Addr): number;
  cuEventElapsedTime(outMs: Addr, start: Addr, end: Addr): number;
  cuModuleLoadData(outModule: Addr, image: Uint8Array): number;
  cuModuleUnload(module: Addr): number;
  cuModuleGetFunction(outFunction: Addr, module: Addr, name: string): number;
  cuFuncSetAttribute(fn: Addr, attribute: number, value: number): number;
  cuFuncGetAttribute(outInt: Addr, attribute: number, fn: Addr): number;
  /** config: a CUlaunchConfig (56 bytes) in native memory. */
  cuOccupancyMaxActiveClusters(outInt: Addr, fn: Addr, config: Addr): number;
  cuLaunchKernel(fn: Addr, gx: number, gy: number, gz: number, bx: number, by: number, bz: number,
    sharedMemBytes: number, stream: Addr, kernelParams: Addr, extra: Addr): number;
  cuTensorMapEncodeTiled(outMap: Addr, dataType: number, rank: number, globalAddress: Addr, globalDim: BigUint64Array,
    globalStrides: BigUint64Array, boxDim: Uint32Array, elementStrides: Uint32Array, interleave: number,
    swizzle: number, l2Promotion: number, oobFill: number): number;
  cuStreamBeginCapture_v2(stream: Addr, mode: number): number;
  cuStreamEndCapture(stream: Addr, outGraph: Addr): number;
  cuGraphInstantiateWithFlags(outExec: Addr, graph: Addr, flags: number): number;
  cuGraphLaunch(exec: Addr, stream: Addr): number;
  cuGraphExecDestroy(exec: Addr): number;
  cuGraphDestroy(graph: Addr): number;
  cuDeviceCanAccessPeer(outInt: Addr, dev: number, peerDev: number): number;
  cuCtxEnablePeerAccess(peerCtx: Addr, flags: number): number;
}

/**
 * One native scratch block for out-parameters (WHY: see the header). 256 bytes, 8-byte slots. JavaScript is
 * single-threaded and the driver writes the out-parameter before returning, so one block is enough for everyone.
 */
export interface Scratch {
  /** Address of slot 0; slot i is at address + 8 * i. */
  readonly address: number;
  readonly view: DataView;
  /** The koffi pointer of the block, for koffi.decode. */
  readonly pointer: unknown;
}

export interface Driver {
  readonly fn: DriverFunctions;
  readonly scratch: Scratch;
  /** Path or soname that was loaded. */
  readonly libraryName: string;
  /** The koffi library handle, for bindings declared elsewhere in src/cuda/ (ipc.ts binds its struct-by-value calls). */
  readonly lib: koffi.IKoffiLib;
}

const PROTOTYPES: ReadonlyArray<readonly [keyof DriverFunctions, string]> = [
  ['cuInit', 'int cuInit(unsigned int flags)'],
  ['cuDriverGetVersion', 'int cuDriverGetVersion(uintptr_t out)'],
  ['cuGetErrorString', 'int cuGetErrorString(int code, uintptr_t out)'],
  ['cuDeviceGetCount', 'int cuDeviceGetCount(uintptr_t out)'],
  ['cuDeviceGet', 'int cuDeviceGet(uintptr_t out, int ordinal)'],
  ['cuDeviceGetName', 'int cuDeviceGetName(uint8_t *name, int len, int dev)'],
  ['cuDeviceGetAttribute', 'int cuDeviceGetAttribute(uintptr_t out, int attrib, int dev)'],
  ['cuDeviceTotalMem_v2', 'int cuDeviceTotalMem_v2(uintptr_t out, int dev)'],
  ['cuDeviceGetPCIBusId', 'int cuDeviceGetPCIBusId(uint8_t *busId, int len, int dev)'],
  ['cuDevicePrimaryCtxRetain', 'int cuDevicePrimaryCtxRetain(uintptr_t out, int dev)'],
  ['cuDevicePrimaryCtxRelease_v2', 'int cuDevicePrimaryCtxRelease_v2(int dev)'],
  ['cuCtxSetCurrent', 'int cuCtxSetCurrent(uintptr_t ctx)'],
  ['cuCtxGetCurrent', 'int cuCtxGetCurrent(uintptr_t out)'],
  ['cuCtxSynchronize', 'int cuCtxSynchronize()'],
  ['cuMemGetInfo_v2', 'int cuMemGetInfo_v2(uintptr_t outFree, uintptr_t outTotal)'],
  ['cuMemAlloc_v2', 'int cuMemAlloc_v2(uintptr_t out, size_t bytes)'],
  ['cuMemFree_v2', 'int cuMemFree_v2(uint64_t ptr)'],
  ['cuMemAllocAsync', 'int cuMemAllocAsync(uintptr_t out, size_t bytes, uintptr_t stream)'],
  ['cuMemFreeAsync', 'int cuMemFreeAsync(uint64_t ptr, uintptr_t stream)'],
  ['cuMemHostAlloc', 'int cuMemHostAlloc(uintptr_t out, size_t bytes, unsigned int flags)'],
  ['cuMemFreeHost', 'int cuMemFreeHost(uintptr_t ptr)'],
  ['cuMemcpyHtoD_v2', 'int cuMemcpyHtoD_v2(uint64_t dst, const void *src, size_t bytes)'],
  ['cuMemcpyDtoH_v2', 'int cuMemcpyDtoH_v2(void *dst, uint64_t src, size_t bytes)'],
  ['cuMemcpyDtoD_v2', 'int cuMemcpyDtoD_v2(uint64_t dst, uint64_t src, size_t bytes)'],
  ['cuMemcpyHtoDAsync_v2', 'int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t bytes, uintptr_t stream)'],
  ['cuMemcpyDtoHAsync_v2', 'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, uintptr_t stream)'],
  ['cuMemcpyDtoDAsync_v2', 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, uintptr_t stream)'],
  ['cuMemsetD8_v2', 'int cuMemsetD8_v2(uint64_t dst, uint8_t value, size_t count)'],
  ['cuMemsetD32_v2', 'int cuMemsetD32_v2(uint64_t dst, uint32_t value, size_t count)'],
  ['cuMemsetD8Async', 'int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, uintptr_t stream)'],
  ['cuMemsetD32Async', 'int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, uintptr_t stream)'],
  ['cuStreamCreate', 'int cuStreamCreate(uintptr_t out, unsigned int flags)'],
  ['cuStreamDestroy_v2', 'int cuStreamDestroy_v2(uintptr_t stream)'],
  ['cuStreamSynchronize', 'int cuStreamSynchronize(uintptr_t stream)'],
  ['cuStreamQuery', 'int cuStreamQuery(uintptr_t stream)'],
  ['cuStreamWaitEvent', 'int cuStreamWaitEvent(uintptr_t stream, uintptr_t event, unsigned int flags)'],
  ['cuEventCreate', 'int cuEventCreate(uintptr_t out, unsigned int flags)'],
  ['cuEventDestroy_v2', 'int cuEventDestroy_v2(uintptr_t event)'],
  ['cuEventRecord', 'int cuEventRecord(uintptr_t event, uintptr_t stream)'],
  ['cuEventSynchronize', 'int cuEventSynchronize(uintptr_t event)'],
  ['cuEventQuery', 'int cuEventQuery(uintptr_t event)'],
  ['cuModuleLoadData', 'int cuModuleLoadData(uintptr_t out, const uint8_t *image)'],
  ['cuModuleUnload', 'int cuModuleUnload(uintptr_t module)'],
  ['cuModuleGetFunction', 'int cuModuleGetFunction(uintptr_t out, uintptr_t module, const char *name)'],
  ['cuFuncSetAttribute', 'int cuFuncSetAttribute(uintptr_t fn, int attrib, int value)'],
  ['cuFuncGetAttribute', 'int cuFuncGetAttribute(uintptr_t out, int attrib, uintptr_t fn)'],
  ['cuOccupancyMaxActiveClusters', 'int cuOccupancyMaxActiveClusters(uintptr_t out, uintptr_t fn, uintptr_t config)'],
  ['cuLaunchKernel', 'int cuLaunchKernel(uintptr_t fn, unsigned int gx, unsigned int gy, unsigned int gz, ' +
    'unsigned int bx, unsigned int by, unsigned int bz, unsigned int smem, uintptr_t stream, uintptr_t params, uintptr_t extra)'],
  ['cuTensorMapEncodeTiled', 'int cuTensorMapEncodeTiled(uintptr_t out, int dataType, uint32_t rank, uint64_t globalAddress, ' +
    'const uint64_t *globalDim, const uint64_t *globalStrides, const uint32_t *boxDim, const uint32_t *elementStrides, ' +
    'int interleave, int swizzle, int l2Promotion, int oobFill)'],
  ['cuStreamBeginCapture_v2', 'int cuStreamBeginCapture_v2(uintptr_t stream, int mode)'],
  ['cuStreamEndCapture', 'int cuStreamEndCapture(uintptr_t stream, uintptr_t out)'],
  ['cuGraphInstantiateWithFlags', 'int cuGraphInstantiateWithFlags(uintptr_t out, uintptr_t graph, uint64_t flags)'],
  ['cuGraphLaunch', 'int cuGraphLaunch(uintptr_t exec, uintptr_t stream)'],
  ['cuGraphExecDestroy', 'int cuGraphExecDestroy(uintptr_t exec)'],
  ['cuGraphDestroy', 'int cuGraphDestroy(uintptr_t graph)'],
  ['cuDeviceCanAccessPeer', 'int cuDeviceCanAccessPeer(uintptr_t out, int dev, int peerDev)'],
  ['cuCtxEnablePeerAccess', 'int cuCtxEnablePeerAccess(uintptr_t peerCtx, unsigned int flags)'],
];

/** Bindings declared under another name: [our name, symbol, prototype]. */
const ALIASES: ReadonlyArray<readonly [keyof DriverFunctions, string, string]> = [
  ['cuMemcpyHtoDAddr', 'cuMemcpyHtoD_v2', 'int cuMemcpyHtoDAddr(uint64_t dst, uintptr_t src, size_t bytes)'],
  ['cuMemcpyDtoHAddr', 'cuMemcpyDtoH_v2', 'int cuMemcpyDtoHAddr(uintptr_t dst, uint64_t src, size_t bytes)'],
  ['cuMemcpyHtoDAsyncAddr', 'cuMemcpyHtoDAsync_v2', 'int cuMemcpyHtoDAsyncAddr(uint64_t dst, uintptr_t src, size_t bytes, uintptr_t stream)'],
  ['cuMemcpyDtoHAsyncAddr', 'cuMemcpyDtoHAsync_v2', 'int cuMemcpyDtoHAsyncAddr(uintptr_t dst, uint64_t src, size_t bytes, uintptr_t stream)'],
];

let loaded: Driver | null = null;
let loadFailure: string | null = null;
let initResult: number | null = null;

/** The library to open: $MEGAMOE_LIBCUDA when set (a path), else the driver's soname. */
function libraryCandidates(): string[] {
  const override = process.env.MEGAMOE_LIBCUDA;
  return override ? [override] : ['libcuda.so.1'];
}

function bind(lib: koffi.IKoffiLib): DriverFunctions {
  const fn: Record<string, unknown> = {};
  for (const [name, proto] of PROTOTYPES) fn[name] = lib.func(proto);
  for (const [name, symbol, proto] of ALIASES) {
    // koffi declares by prototype name; `lib.func(symbol, ret, args)` form binds another name to the symbol.
    const m = /^int \w+\((.*)\)$/.exec(proto);
    if (!m) throw new Error(`internal: bad alias prototype ${proto}`);
    fn[name] = lib.func(`int ${symbol}(${m[1]})`);
  }
  // cuEventElapsedTime is cuEventElapsedTime_v2 in CUDA >= 12.8 headers; older drivers only have the plain symbol.
  try {
    fn.cuEventElapsedTime = lib.func('int cuEventElapsedTime_v2(uintptr_t out, uintptr_t start, uintptr_t end)');
  } catch {
    fn.cuEventElapsedTime = lib.func('int cuEventElapsedTime(uintptr_t out, uintptr_t start, uintptr_t end)');
  }
  return fn as unknown as DriverFunctions;
}

/**
 * Opens libcuda and binds the functions (no cuInit). Returns null with the reason recorded when the library cannot
 * be opened or lacks a symbol; never throws.
 */
export function tryLoadDriver(): Driver | null {
  if (loaded) return loaded;
  if (loadFailure !== null) return null;
  if (process.env.MEGAMOE_DISABLE_CUDA === '1') {
    loadFailure = 'disabled by MEGAMOE_DISABLE_CUDA=1';
    return null;
  }
  let boundLib = null as koffi.IKoffiLib | null; // (a cast: assigned inside the callback, so no narrowing to null)
  const r = loadFirstLibrary(libraryCandidates(), (lib) => { const fn = bind(lib); boundLib = lib; return fn; },
    'a needed symbol (driver too old for CUDA 12.8+?)');
  if ('errors' in r) {
    loadFailure = r.errors.join('; ');
    return null;
  }
  const block = koffi.alloc('uint64_t', 32);
  const scratch: Scratch = {
    address: Number(koffi.address(block)),
    view: new DataView(koffi.view(block, 256)),
    pointer: block,
  };
  loaded = { fn: r.value, scratch, libraryName: r.name, lib: boundLib! };
  return loaded;
}

/** Why the driver could not be loaded (null when it was loaded or never tried). */
export function driverLoadFailure(): string | null {
  return loadFailure;
}

/**
 * The driver, loaded and cuInit'ed. Throws CudaUnavailableError when there is no driver and CudaError when cuInit
 * fails (e.g. CUDA_ERROR_NO_DEVICE).
 */
export function getDriver(): Driver {
  const d = loaded ?? tryLoadDriver();
  if (!d) throw new CudaUnavailableError(loadFailure ?? 'libcuda could not be loaded');
  if (initResult === null) initResult = d.fn.cuInit(0);
  if (initResult !== 0) throw new CudaError('cuInit', initResult, undefined, describeResult(d, initResult));
  return d;
}

/** The result of cuInit(0) once tried (null before), for status reports. */
export function initCode(): number | null {
  if (initResult === null && loaded) initResult = loaded.fn.cuInit(0);
  return initResult;
}

/** The driver's description of a CUresult (cuGetErrorString), or '' when unavailable. */
export function describeResult(d: Driver, code: number): string {
  try {
    if (d.fn.cuGetErrorString(code, d.scratch.address) !== 0) return '';
    // cuGetErrorString stored a `const char *` in slot 0: decode it as a C string.
    const s = koffi.decode(d.scratch.pointer, 'const char *') as string | null;
    return s ?? '';
  } catch {
    return '';
  }
}

/** Throws a CudaError for a failed call (kept out of line so callers stay small and monomorphic). */
export function throwCuda(call: string, code: number, detail?: string): never {
  const description = loaded ? describeResult(loaded, code) : '';
  throw new CudaError(call, code, detail, description || undefined);
}

/** Checks a CUresult: returns when 0, throws CudaError otherwise. */
export function check(call: string, code: number, detail?: string): void {
  if (code !== 0) throwCuda(call, code, detail);
}

export { cuResultName };
