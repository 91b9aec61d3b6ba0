// NCCL through koffi, the same way as libcuda (driver.ts, library.ts): libnccl.so.2 is opened lazily on first use,
// so importing this module never fails on a machine without NCCL; its absence is a NcclUnavailableError that names
// the fix. Every failing call is a NcclError naming the call and the ncclResult_t (e.g. "ncclCommInitRank failed:
// ncclInvalidUsage (5)"), with NCCL's own last-error text when the library has ncclGetLastError.
//
// Which library: `library` in the options (the CLI's --nccl-library), else $MEGAMOE_NCCL_LIBRARY (a path, as
// vLLM's VLLM_NCCL_SO_PATH), else the soname libnccl.so.2 (then libnccl.so) on the loader path.
//
// Binding conventions as in driver.ts: handles (ncclComm_t, CUstream) and device pointers travel as integers
// (uintptr_t), out-parameters are small typed arrays, the 128-byte ncclUniqueId is passed BY VALUE as a struct (the
// x86-64 ABI copies it to the stack: it must be declared as a struct, not a pointer). NCCL uses the CUDA runtime
// underneath: ncclCommInitRank binds the communicator to the device of the context current on the calling thread,
// so call useDevice(ordinal) before NcclCommunicator.init. Never NVLink multicast: NCCL_NVLS_ENABLE is forced to 0
// (cuMulticast* is forbidden on this workplace's GPU hosts) unless the environment already sets it.
import koffi from 'koffi';
import { loadFirstLibrary } from './library.js';

/** ncclResult_t names (nccl.h, NCCL 2.x). */
export const NCCL_RESULT_NAMES: Readonly<Record<number, string>> = {
  0: 'ncclSuccess',
  1: 'ncclUnhandledCudaError',
  2: 'ncclSystemError',
  3: 'ncclInternalError',
  4: 'ncclInvalidArgument',
  5: 'ncclInvalidUsage',
  6: 'ncclRemoteError',
  7: 'ncclInProgress',
};

/** The symbolic name of an ncclResult_t, e.g. 5 -> 'ncclInvalidUsage' ('ncclResult<code>' when unknown). */
export function ncclResultName(code: number): string {
  return NCCL_RESULT_NAMES[code] ?? `ncclResult${code}`;
}

/** ncclDataType_t by megamoe's element type names, with the element size in bytes. */
export const NCCL_DATA_TYPES = {
  int8: { code: 0, bytes: 1 },
  uint8: { code: 1, bytes: 1 },
  int32: { code: 2, bytes: 4 },
  uint32: { code: 3, bytes: 4 },
  int64: { code: 4, bytes: 8 },
  uint64: { code: 5, bytes: 8 },
  float16: { code: 6, bytes: 2 },
  float32: { code: 7, bytes: 4 },
  float64: { code: 8, bytes: 8 },
  bfloat16: { code: 9, bytes: 2 },
  /** NCCL >= 2.24. */
  float8e4m3: { code: 10, bytes: 1 },
  /** NCCL >= 2.24. */
  float8e5m2: { code: 11, bytes: 1 },
} as const;
export type NcclDataType = keyof typeof NCCL_DATA_TYPES;

/** ncclRedOp_t. */
export const NCCL_RED_OPS = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;
export type NcclRedOp = keyof typeof NCCL_RED_OPS;

/** NCCL_UNIQUE_ID_BYTES. */
export const NCCL_UNIQUE_ID_BYTES = 128;

const HINTS: Readonly<Record<string, string>> = {
  ncclInvalidUsage: 'NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): give each rank its own device, or on one GPU use the CUDA IPC transport (--transport ipc); other causes are printed with NCCL_DEBUG=WARN',
  ncclSystemError: 'a system call failed inside NCCL (shared memory, sockets): check /dev/shm space and run with NCCL_DEBUG=INFO',
  ncclUnhandledCudaError: 'a CUDA call failed inside NCCL: run with NCCL_DEBUG=WARN',
  ncclInternalError: 'NCCL internal error: run with NCCL_DEBUG=WARN and check that every rank uses the same libnccl',
  ncclRemoteError: 'a peer rank failed or disconnected: its own error is the one to read',
  ncclInvalidArgument: 'a bad argument reached NCCL (pointer, count, type or peer): run with NCCL_DEBUG=WARN',
};

export class NcclError extends Error {
  readonly call: string;
  readonly code: number;
  readonly codeName: string;
  constructor(call: string, code: number, detail?: string, description?: string) {
    const codeName = ncclResultName(code);
    let message = `${call} failed: ${codeName} (${code})`;
    if (description) message += `: ${description}`;
    if (detail) message += ` [${detail}]`;
    const hint = HINTS[codeName];
    if (hint) message += `. Hint: ${hint}`;
    super(message);
    this.name = 'NcclError';
    this.call = call;
    this.code = code;
    this.codeName = codeName;
  }
}

/** The environment variable that names the libnccl to load (a path). */
export const NCCL_LIBRARY_ENV = 'MEGAMOE_NCCL_LIBRARY';

export class NcclUnavailableError extends Error {
  /** What was tried and why each failed. */
  readonly reason: string;
  constructor(reason: string) {
    super(`NCCL is not available here: ${reason}. Fix: install NCCL so that libnccl.so.2 is on the loader path ` +
      `(the libnccl2 package, or pip's nvidia-nccl-cu12 / nvidia-nccl-cu13), or set ${NCCL_LIBRARY_ENV}=/path/to/libnccl.so.2 ` +
      `(the --nccl-library option)`);
    this.name = 'NcclUnavailableError';
    this.reason = reason;
  }
}

type Addr = bigint | number;

export interface NcclFunctions {
  ncclGetVersion(outVersion: Int32Array): number;
  ncclGetUniqueId(outId: Uint8Array): number;
  ncclCommInitRank(outComm: BigUint64Array, nranks: number, id: { internal: Uint8Array }, rank: number): number;
  ncclCommDestroy(comm: Addr): number;
  ncclCommAbort(comm: Addr): number;
  ncclCommGetAsyncError(comm: Addr, outResult: Int32Array): number;
  ncclGroupStart(): number;
  ncclGroupEnd(): number;
  ncclSend(send: Addr, count: number, dtype: number, peer: number, comm: Addr, stream: Addr): number;
  ncclRecv(recv: Addr, count: number, dtype: number, peer: number, comm: Addr, stream: Addr): number;
  ncclAllGather(send: Addr, recv: Addr, sendCount: number, dtype: number, comm: Addr, stream: Addr): number;
  ncclAllReduce(send: Addr, recv: Addr, count: number, dtype: number, op: number, comm: Addr, stream: Addr): number;
  ncclGetErrorString(code: number): string | null;
  /** NCCL >= 2.13; null on older libraries. */
  ncclGetLastError: ((comm: Addr) => string | null) | null;
}

export interface Nccl {
  readonly fn: NcclFunctions;
  /** Path or soname that was loaded. */
  readonly libraryName: string;
}

export interface NcclLoadOptions {
  /** A libnccl path (the --nccl-library option); overrides $MEGAMOE_NCCL_LIBRARY. */
  library?: string;
}

/** The libraries to try, in order. */
export function ncclLibraryCandidates(options: NcclLoadOptions = {}, env: NodeJS.ProcessEnv = process.env): string[] {
  if (options.library !== undefined) {
    if (options.library.trim() === '') throw new RangeError('--nccl-library: empty path');
    return [options.library];
  }
  const override = env[NCCL_LIBRARY_ENV];
  if (override !== undefined && override !== '') return [override];
  return ['libnccl.so.2', 'libnccl.so'];
}

let uniqueIdType: koffi.IKoffiCType | null = null;
function uniqueIdStruct(): koffi.IKoffiCType {
  uniqueIdType ??= koffi.struct('megamoe_ncclUniqueId', { internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES) });
  return uniqueIdType;
}

function bind(lib: koffi.IKoffiLib): NcclFunctions {
  const U = uniqueIdStruct();
  const f = (name: string, ret: string, args: Array<string | koffi.IKoffiCType>) => lib.func(name, ret, args);
  let lastError: NcclFunctions['ncclGetLastError'] = null;
  try {
    lastError = f('ncclGetLastError', 'const char *', ['uintptr_t']) as NcclFunctions['ncclGetLastError'];
  } catch { /* NCCL < 2.13 */ }
  return {
    ncclGetVersion: f('ncclGetVersion', 'int', ['void *']),
    ncclGetUniqueId: f('ncclGetUniqueId', 'int', ['void *']),
    ncclCommInitRank: f('ncclCommInitRank', 'int', ['void *', 'int', U, 'int']),
    ncclCommDestroy: f('ncclCommDestroy', 'int', ['uintptr_t']),
    ncclCommAbort: f('ncclCommAbort', 'int', ['uintptr_t']),
    ncclCommGetAsyncError: f('ncclCommGetAsyncError', 'int', ['uintptr_t', 'void *']),
    ncclGroupStart: f('ncclGroupStart', 'int', []),
    ncclGroupEnd: f('ncclGroupEnd', 'int', []),
    ncclSend: f('ncclSend', 'int', ['uintptr_t', 'size_t', 'int', 'int', 'uintptr_t', 'uintptr_t']),
    ncclRecv: f('ncclRecv', 'int', ['uintptr_t', 'size_t', 'int', 'int', 'uintptr_t', 'uintptr_t']),
    ncclAllGather: f('ncclAllGather', 'int', ['uintptr_t', 'uintptr_t', 'size_t', 'int', 'uintptr_t', 'uintptr_t']),
    ncclAllReduce: f('ncclAllReduce', 'int', ['uintptr_t', 'uintptr_t', 'size_t', 'int', 'int', 'uintptr_t', 'uintptr_t']),
    ncclGetErrorString: f('ncclGetErrorString', 'const char *', ['int']),
    ncclGetLastError: lastError,
  } as unknown as NcclFunctions;
}

const loaded = new Map<string, Nccl | NcclUnavailableError>();

/** Opens libnccl and binds the functions, or returns the NcclUnavailableError saying what was tried. Never throws. */
export function tryLoadNccl(options: NcclLoadOptions = {}): Nccl | NcclUnavailableError {
  let candidates: string[];
  try {
    candidates = ncclLibraryCandidates(options);
  } catch (err) {
    return new NcclUnavailableError((err as Error).message);
  }
  const key = candidates.join('\0');
  const have = loaded.get(key);
  if (have) return have;
  if (process.env.NCCL_NVLS_ENABLE === undefined) process.env.NCCL_NVLS_ENABLE = '0';
  const r = loadFirstLibrary(candidates, bind, 'a needed NCCL symbol (NCCL older than 2.7, or not libnccl?)');
  const out = 'errors' in r ? new NcclUnavailableError(r.errors.join('; ')) : { fn: r.value, libraryName: r.name };
  loaded.set(key, out);
  return out;
}

/** The NCCL library, loaded; throws NcclUnavailableError when it cannot be. */
export function getNccl(options: NcclLoadOptions = {}): Nccl {
  const n = tryLoadNccl(options);
  if (n instanceof NcclUnavailableError) throw n;
  return n;
}

/** Checks an ncclResult_t: returns on ncclSuccess, throws NcclError otherwise. */
export function checkNccl(nccl: Nccl, call: string, code: number, detail?: string, comm?: Addr): void {
  if (code === 0) return;
  let description = '';
  try {
    description = nccl.fn.ncclGetErrorString(code) ?? '';
    const last = nccl.fn.ncclGetLastError?.(comm ?? 0) ?? null;
    if (last) description += description ? ` (NCCL: ${last})` : last;
  } catch { /* the text is a courtesy */ }
  throw new NcclError(call, code, detail, description || undefined);
}

/** NCCL's version code decoded (>= 2.9: major*10000 + minor*100 + patch; older: major*1000 + minor*100 + patch). */
export function decodeNcclVersion(code: number): { major: number; minor: number; patch: number; text: string } {
  if (!Number.isInteger(code) || code <= 0) throw new RangeError(`not an NCCL version code: ${code}`);
  const major = code >= 10000 ? Math.floor(code / 10000) : Math.floor(code / 1000);
  const rest = code >= 10000 ? code % 10000 : code % 1000;
  const minor = Math.floor(rest / 100);
  const patch = rest % 100;
  return { major, minor, patch, text: `${major}.${minor}.${patch}` };
}

/** ncclGetVersion, decoded. */
export function ncclVersion(options: NcclLoadOptions = {}): { code: number; major: number; minor: number; patch: number; text: string } {
  const n = getNccl(options);
  const out = new Int32Array(1);
  checkNccl(n, 'ncclGetVersion', n.fn.ncclGetVersion(out));
  return { code: out[0], ...decodeNcclVersion(out[0]) };
}

/** A fresh ncclUniqueId (128 opaque bytes): made by one rank, shared with the others over the control channel. */
export function ncclGetUniqueId(options: NcclLoadOptions = {}): Uint8Array {
  const n = getNccl(options);
  const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
  checkNccl(n, 'ncclGetUniqueId', n.fn.ncclGetUniqueId(id));
  return id;
}

function checkCount(what: string, v: number): number {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${what} must be a non-negative integer, got ${v}`);
  return v;
}

/** Checks ncclCommInitRank's arguments (throws a RangeError / TypeError naming the bad one). */
export function checkCommInitArgs(uniqueId: Uint8Array, nranks: number, rank: number): void {
  if (!(uniqueId instanceof Uint8Array) || uniqueId.byteLength !== NCCL_UNIQUE_ID_BYTES) {
    throw new RangeError(`an NCCL unique id is ${NCCL_UNIQUE_ID_BYTES} bytes, got ${uniqueId instanceof Uint8Array ? uniqueId.byteLength : typeof uniqueId}`);
  }
  if (!Number.isInteger(nranks) || nranks < 1) throw new RangeError(`nranks must be a positive integer, got ${nranks}`);
  if (!Number.isInteger(rank) || rank < 0 || rank >= nranks) throw new RangeError(`rank must be in [0, ${nranks - 1}], got ${rank}`);
}

/** The element type's NCCL code; throws a RangeError for an unknown name. */
export function ncclDataType(dtype: string): { code: number; bytes: number } {
  const t = (NCCL_DATA_TYPES as Record<string, { code: number; bytes: number }>)[dtype];
  if (!t) throw new RangeError(`unknown element type '${dtype}' (known: ${Object.keys(NCCL_DATA_TYPES).join(', ')})`);
  return t;
}

function checkPtr(what: string, p: bigint, count: number): bigint {
  if (typeof p !== 'bigint' || p < 0n) throw new TypeError(`${what} must be a device address (bigint), got ${String(p)}`);
  if (p === 0n && count > 0) throw new RangeError(`${what} is a null device address for ${count} elements`);
  return p;
}

/** ncclGroupStart / ncclGroupEnd around `body` (the group is ended even when body throws). */
export function ncclGroup<T>(body: () => T, options: NcclLoadOptions = {}): T {
  const n = getNccl(options);
  checkNccl(n, 'ncclGroupStart', n.fn.ncclGroupStart());
  let ok = false;
  try {
    const r = body();
    ok = true;
    return r;
  } finally {
    const rc = n.fn.ncclGroupEnd();
    if (ok) checkNccl(n, 'ncclGroupEnd', rc);
  }
}

/** One NCCL communicator (one rank's end). Device addresses are bigints (DeviceBuffer.ptr), streams CUstream handles. */
export class NcclCommunicator {
  readonly nccl: Nccl;
  readonly handle: bigint;
  readonly rank: number;
  readonly nranks: number;
  private destroyed = false;

  private constructor(nccl: Nccl, handle: bigint, rank: number, nranks: number) {
    this.nccl = nccl;
    this.handle = handle;
    this.rank = rank;
    this.nranks = nranks;
  }

  /** ncclCommInitRank on the device of the current CUDA context (useDevice first). Blocks until every rank joined. */
  static init(uniqueId: Uint8Array, nranks: number, rank: number, options: NcclLoadOptions = {}): NcclCommunicator {
    checkCommInitArgs(uniqueId, nranks, rank);
    const n = getNccl(options);
    const out = new BigUint64Array(1);
    checkNccl(n, 'ncclCommInitRank', n.fn.ncclCommInitRank(out, nranks, { internal: uniqueId }, rank), `rank ${rank} of ${nranks}`);
    return new NcclCommunicator(n, out[0], rank, nranks);
  }

  private live(call: string): bigint {
    if (this.destroyed) throw new Error(`${call}: the NCCL communicator of rank ${this.rank} was destroyed`);
    return this.handle;
  }

  private checkPeer(peer: number): void {
    if (!Number.isInteger(peer) || peer < 0 || peer >= this.nranks) throw new RangeError(`peer must be in [0, ${this.nranks - 1}], got ${peer}`);
  }

  send(buf: bigint, count: number, dtype: NcclDataType, peer: number, stream: bigint): void {
    const c = this.live('ncclSend');
    checkCount('count', count);
    checkPtr('send buffer', buf, count);
    this.checkPeer(peer);
    checkNccl(this.nccl, 'ncclSend', this.nccl.fn.ncclSend(buf, count, ncclDataType(dtype).code, peer, c, stream), `rank ${this.rank} -> ${peer}, ${count} x ${dtype}`, c);
  }

  recv(buf: bigint, count: number, dtype: NcclDataType, peer: number, stream: bigint): void {
    const c = this.live('ncclRecv');
    checkCount('count', count);
    checkPtr('receive buffer', buf, count);
    this.checkPeer(peer);
    checkNccl(this.nccl, 'ncclRecv', this.nccl.fn.ncclRecv(buf, count, ncclDataType(dtype).code, peer, c, stream), `rank ${this.rank} <- ${peer}, ${count} x ${dtype}`, c);
  }

  /** recv holds nranks * sendCount elements, rank r's at r * sendCount. */
  allGather(send: bigint, recv: bigint, sendCount: number, dtype: NcclDataType, stream: bigint): void {
    const c = this.live('ncclAllGather');
    checkCount('sendCount', sendCount);
    checkPtr('send buffer', send, sendCount);
    checkPtr('receive buffer', recv, sendCount);
    checkNccl(this.nccl, 'ncclAllGather', this.nccl.fn.ncclAllGather(send, recv, sendCount, ncclDataType(dtype).code, c, stream), `rank ${this.rank}, ${sendCount} x ${dtype}`, c);
  }

  allReduce(send: bigint, recv: bigint, count: number, dtype: NcclDataType, op: NcclRedOp, stream: bigint): void {
    const c = this.live('ncclAllReduce');
    checkCount('count', count);
    checkPtr('send buffer', send, count);
    checkPtr('receive buffer', recv, count);
    const opCode = NCCL_RED_OPS[op];
    if (opCode === undefined) throw new RangeError(`unknown reduction '${String(op)}'`);
    checkNccl(this.nccl, 'ncclAllReduce', this.nccl.fn.ncclAllReduce(send, recv, count, ncclDataType(dtype).code, opCode, c, stream), `rank ${this.rank}`, c);
  }

  /** ncclCommGetAsyncError: 0 (ncclSuccess) or the error that a running operation hit. */
  asyncError(): number {
    const out = new Int32Array(1);
    checkNccl(this.nccl, 'ncclCommGetAsyncError', this.nccl.fn.ncclCommGetAsyncError(this.live('ncclCommGetAsyncError'), out));
    return out[0];
  }

  /** ncclCommAbort: for the failure path (a peer died); does not wait for pending operations. */
  abort(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    checkNccl(this.nccl, 'ncclCommAbort', this.nccl.fn.ncclCommAbort(this.handle));
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    checkNccl(this.nccl, 'ncclCommDestroy', this.nccl.fn.ncclCommDestroy(this.handle));
  }

  [Symbol.dispose](): void {
    this.destroy();
  }
}
