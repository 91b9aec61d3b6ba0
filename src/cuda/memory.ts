// Device memory (DeviceBuffer) and page-locked host memory (PinnedBuffer), with explicit lifetimes.
// Copies and memsets are methods of the device side. Zero-byte buffers are allowed (pointer 0, no driver call),
// because empty batches (T = 0 tokens) are legal everywhere above this layer.
import koffi from 'koffi';
import { CudaContext, currentCudaContext, ensureContext } from './device.js';
import { getDriver, throwCuda } from './driver.js';
import { streamHandle, type StreamLike } from './stream.js';

const CU_MEMHOSTALLOC_PORTABLE = 0x01;

function checkSize(what: string, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new RangeError(`${what}: byte count must be a non-negative integer, got ${bytes}`);
  }
}

function checkRange(what: string, offset: number, bytes: number, capacity: number): void {
  checkSize(what, bytes);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes > capacity) {
    throw new RangeError(`${what}: range [${offset}, ${offset + bytes}) is outside the buffer of ${capacity} bytes`);
  }
}

/** Host memory a copy can read or write: a typed array / DataView (pageable) or a PinnedBuffer. */
export type HostMemory = ArrayBufferView | PinnedBuffer;

export interface CopyOptions {
  /** Queue the copy on this stream (asynchronous); omitted = synchronous copy. */
  stream?: StreamLike;
  /** Byte offset into the device buffer. */
  offset?: number;
  /** Bytes to copy (default: the whole host view, or the whole source buffer). */
  bytes?: number;
}

/**
 * A block of device memory. `ptr` is the CUdeviceptr as a bigint, the form kernel arguments take.
 * Allocated with cuMemAlloc_v2, or stream-ordered with cuMemAllocAsync when a stream is given (then freed on that
 * stream by dispose(), unless dispose(otherStream) says otherwise).
 */
export class DeviceBuffer {
  readonly ptr: bigint;
  readonly byteLength: number;
  readonly context: CudaContext;
  /** The stream it was allocated on when stream-ordered, else null. */
  readonly allocStream: StreamLike;
  private freed = false;

  private constructor(ptr: bigint, byteLength: number, context: CudaContext, allocStream: StreamLike) {
    this.ptr = ptr;
    this.byteLength = byteLength;
    this.context = context;
    this.allocStream = allocStream;
  }

  /** Allocates `bytes` of device memory (uninitialised). With options.stream, stream-ordered (cuMemAllocAsync). */
  static alloc(bytes: number, options: { stream?: StreamLike } = {}): DeviceBuffer {
    checkSize('DeviceBuffer.alloc', bytes);
    const ctx = ensureContext();
    if (bytes === 0) return new DeviceBuffer(0n, 0, ctx, null);
    const d = getDriver();
    let rc: number;
    if (options.stream) rc = d.fn.cuMemAllocAsync(d.scratch.address, bytes, streamHandle(options.stream));
    else rc = d.fn.cuMemAlloc_v2(d.scratch.address, bytes);
    if (rc !== 0) throwCuda(options.stream ? 'cuMemAllocAsync' : 'cuMemAlloc_v2', rc, `${bytes} bytes`);
    return new DeviceBuffer(d.scratch.view.getBigUint64(0, true), bytes, ctx, options.stream ?? null);
  }

  get disposed(): boolean { return this.freed; }

  private live(what: string): void {
    if (this.freed) throw new Error(`${what}: this DeviceBuffer (${this.byteLength} bytes) was disposed`);
  }

  /** Host -> device copy of `src` into this buffer at options.offset. */
  copyFromHost(src: HostMemory, options: CopyOptions = {}): void {
    this.live('copyFromHost');
    const offset = options.offset ?? 0;
    const bytes = options.bytes ?? src.byteLength;
    if (bytes > src.byteLength) throw new RangeError(`copyFromHost: ${bytes} bytes asked but the host source has ${src.byteLength}`);
    checkRange('copyFromHost', offset, bytes, this.byteLength);
    if (bytes === 0) return;
    const d = getDriver();
    const dst = this.ptr + BigInt(offset);
    let rc: number;
    if (src instanceof PinnedBuffer) {
      rc = options.stream ? d.fn.cuMemcpyHtoDAsyncAddr(dst, src.address, bytes, streamHandle(options.stream))
        : d.fn.cuMemcpyHtoDAddr(dst, src.address, bytes);
    } else {
      // Pageable memory: the driver stages it before returning, so the JS array may change right after the call.
      rc = options.stream ? d.fn.cuMemcpyHtoDAsync_v2(dst, src, bytes, streamHandle(options.stream))
        : d.fn.cuMemcpyHtoD_v2(dst, src, bytes);
    }
    if (rc !== 0) throwCuda(options.stream ? 'cuMemcpyHtoDAsync_v2' : 'cuMemcpyHtoD_v2', rc, `${bytes} bytes to 0x${dst.toString(16)}`);
  }

  /**
   * Device -> host copy from this buffer at options.offset into `dst`. With a stream and a PinnedBuffer the copy is
   * truly asynchronous: synchronize the stream before reading dst. Into pageable memory the driver returns only
   * once the copy is done.
   */
  copyToHost(dst: HostMemory, options: CopyOptions = {}): void {
    this.live('copyToHost');
    const offset = options.offset ?? 0;
    const bytes = options.bytes ?? dst.byteLength;
    if (bytes > dst.byteLength) throw new RangeError(`copyToHost: ${bytes} bytes asked but the host destination has ${dst.byteLength}`);
    checkRange('copyToHost', offset, bytes, this.byteLength);
    if (bytes === 0) return;
    const d = getDriver();
    const src = this.ptr + BigInt(offset);
    let rc: number;
    if (dst instanceof PinnedBuffer) {
      rc = options.stream ? d.fn.cuMemcpyDtoHAsyncAddr(dst.address, src, bytes, streamHandle(options.stream))
        : d.fn.cuMemcpyDtoHAddr(dst.address, src, bytes);
    } else {
      rc = options.stream ? d.fn.cuMemcpyDtoHAsync_v2(dst, src, bytes, streamHandle(options.stream))
        : d.fn.cuMemcpyDtoH_v2(dst, src, bytes);
    }
    if (rc !== 0) throwCuda(options.stream ? 'cuMemcpyDtoHAsync_v2' : 'cuMemcpyDtoH_v2', rc, `${bytes} bytes from 0x${src.toString(16)}`);
  }

  /** Device -> device copy from `src` (at options.srcOffset) into this buffer (at options.offset). */
  copyFromDevice(src: DeviceBuffer, options: CopyOptions & { srcOffset?: number } = {}): void {
    this.live('copyFromDevice');
    src.live('copyFromDevice (source)');
    const offset = options.offset ?? 0;
    const srcOffset = options.srcOffset ?? 0;
    const bytes = options.bytes ?? src.byteLength - srcOffset;
    checkRange('copyFromDevice (source)', srcOffset, bytes, src.byteLength);
    checkRange('copyFromDevice (destination)', offset, bytes, this.byteLength);
    if (bytes === 0) return;
    const d = getDriver();
    const dst = this.ptr + BigInt(offset);
    const from = src.ptr + BigInt(srcOffset);
    const rc = options.stream ? d.fn.cuMemcpyDtoDAsync_v2(dst, from, bytes, streamHandle(options.stream))
      : d.fn.cuMemcpyDtoD_v2(dst, from, bytes);
    if (rc !== 0) throwCuda(options.stream ? 'cuMemcpyDtoDAsync_v2' : 'cuMemcpyDtoD_v2', rc, `${bytes} bytes`);
  }

  /** Sets `count` bytes (default: all) from byte `offset` to `value` (0..255). */
  memset8(value: number, options: { offset?: number; count?: number; stream?: StreamLike } = {}): void {
    this.live('memset8');
    if (!Number.isInteger(value) || value < 0 || value > 255) throw new RangeError(`memset8: value must be a byte 0..255, got ${value}`);
    const offset = options.offset ?? 0;
    const count = options.count ?? this.byteLength - offset;
    checkRange('memset8', offset, count, this.byteLength);
    if (count === 0) return;
    const d = getDriver();
    const dst = this.ptr + BigInt(offset);
    const rc = options.stream ? d.fn.cuMemsetD8Async(dst, value, count, streamHandle(options.stream))
      : d.fn.cuMemsetD8_v2(dst, value, count);
    if (rc !== 0) throwCuda(options.stream ? 'cuMemsetD8Async' : 'cuMemsetD8_v2', rc, `${count} bytes`);
  }

  /**
   * Sets `count` 32-bit words (default: all whole words) from byte `offset` (a multiple of 4) to `value`, given as
   * an unsigned 32-bit pattern (use `new Uint32Array(new Float32Array([x]).buffer)[0]` for a float).
   */
  memset32(value: number, options: { offset?: number; count?: number; stream?: StreamLike } = {}): void {
    this.live('memset32');
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`memset32: value must be a uint32 bit pattern, got ${value}`);
    const offset = options.offset ?? 0;
    if (offset % 4 !== 0 || this.ptr % 4n !== 0n) throw new RangeError(`memset32: offset ${offset} must be a multiple of 4 bytes`);
    const count = options.count ?? Math.floor((this.byteLength - offset) / 4);
    checkRange('memset32', offset, count * 4, this.byteLength);
    if (count === 0) return;
    const d = getDriver();
    const dst = this.ptr + BigInt(offset);
    const rc = options.stream ? d.fn.cuMemsetD32Async(dst, value, count, streamHandle(options.stream))
      : d.fn.cuMemsetD32_v2(dst, value, count);
    if (rc !== 0) throwCuda(options.stream ? 'cuMemsetD32Async' : 'cuMemsetD32_v2', rc, `${count} words`);
  }

  /**
   * Frees the memory. A stream-ordered buffer is freed on `stream` (default: the stream it was allocated on);
   * a plain one with cuMemFree_v2, which waits for pending work on it. Disposing twice is a no-op.
   */
  dispose(stream?: StreamLike): void {
    if (this.freed) return;
    this.freed = true;
    if (this.byteLength === 0) return;
    const d = getDriver();
    const previous = currentCudaContext();
    if (previous !== this.context) this.context.makeCurrent();
    try {
      const onStream = stream ?? this.allocStream;
      // A stream disposed since the allocation can no longer order the free: cuMemFree_v2 waits instead.
      const ordered = onStream !== null && onStream !== undefined && !onStream.disposed;
      const rc = ordered ? d.fn.cuMemFreeAsync(this.ptr, streamHandle(onStream)) : d.fn.cuMemFree_v2(this.ptr);
      if (rc !== 0) throwCuda(ordered ? 'cuMemFreeAsync' : 'cuMemFree_v2', rc, `0x${this.ptr.toString(16)}`);
    } finally {
      if (previous && previous !== this.context) previous.makeCurrent();
    }
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * Page-locked (pinned) host memory from cuMemHostAlloc: the host side of truly asynchronous copies.
 * `bytes` is a Uint8Array over it, valid until dispose(); never touch it (or views made from it) afterwards.
 */
export class PinnedBuffer {
  readonly byteLength: number;
  /** The host address, for the driver. */
  readonly address: number;
  private view: Uint8Array;
  private freed = false;

  private constructor(address: number, byteLength: number, view: Uint8Array) {
    this.address = address;
    this.byteLength = byteLength;
    this.view = view;
  }

  /** Allocates `bytes` of pinned host memory, portable across contexts. */
  static alloc(bytes: number): PinnedBuffer {
    checkSize('PinnedBuffer.alloc', bytes);
    ensureContext();
    if (bytes === 0) return new PinnedBuffer(0, 0, new Uint8Array(0));
    const d = getDriver();
    const rc = d.fn.cuMemHostAlloc(d.scratch.address, bytes, CU_MEMHOSTALLOC_PORTABLE);
    if (rc !== 0) throwCuda('cuMemHostAlloc', rc, `${bytes} bytes`);
    const pointer = koffi.decode(d.scratch.pointer, 'void *') as unknown;
    const address = Number(koffi.address(pointer));
    return new PinnedBuffer(address, bytes, new Uint8Array(koffi.view(pointer, bytes)));
  }

  get disposed(): boolean { return this.freed; }

  /** The memory as bytes (throws after dispose). */
  get bytes(): Uint8Array {
    if (this.freed) throw new Error('this PinnedBuffer was disposed: its memory is gone');
    return this.view;
  }

  /** The memory as another typed array, e.g. pinned.as(Float32Array) (whole elements only). */
  as<T>(ctor: { new (buffer: ArrayBuffer, byteOffset: number, length: number): T; readonly BYTES_PER_ELEMENT: number }): T {
    const b = this.bytes;
    return new ctor(b.buffer as ArrayBuffer, b.byteOffset, Math.floor(b.byteLength / ctor.BYTES_PER_ELEMENT));
  }

  dispose(): void {
    if (this.freed) return;
    this.freed = true;
    this.view = new Uint8Array(0);
    if (this.byteLength === 0) return;
    const rc = getDriver().fn.cuMemFreeHost(this.address);
    if (rc !== 0) throwCuda('cuMemFreeHost', rc);
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/**
 * Copies on raw device addresses (bigint), for memory that is not a DeviceBuffer of this process: a transport's
 * receive region carved from symmetric memory, a peer's buffer mapped through CUDA IPC. No range checks are possible
 * here: the caller owns the bounds. Pageable host memory: the same staging rules as DeviceBuffer's copies.
 */
export function copyDeviceToHostRaw(src: bigint, dst: ArrayBufferView, bytes = dst.byteLength): void {
  checkSize('copyDeviceToHostRaw', bytes);
  if (bytes > dst.byteLength) throw new RangeError(`copyDeviceToHostRaw: ${bytes} bytes asked but the host destination has ${dst.byteLength}`);
  if (bytes === 0) return;
  ensureContext();
  const rc = getDriver().fn.cuMemcpyDtoH_v2(dst, src, bytes);
  if (rc !== 0) throwCuda('cuMemcpyDtoH_v2', rc, `${bytes} bytes from 0x${src.toString(16)}`);
}

export function copyHostToDeviceRaw(dst: bigint, src: ArrayBufferView, stream?: StreamLike, bytes = src.byteLength): void {
  checkSize('copyHostToDeviceRaw', bytes);
  if (bytes > src.byteLength) throw new RangeError(`copyHostToDeviceRaw: ${bytes} bytes asked but the host source has ${src.byteLength}`);
  if (bytes === 0) return;
  ensureContext();
  const d = getDriver();
  const rc = stream ? d.fn.cuMemcpyHtoDAsync_v2(dst, src, bytes, streamHandle(stream)) : d.fn.cuMemcpyHtoD_v2(dst, src, bytes);
  if (rc !== 0) throwCuda(stream ? 'cuMemcpyHtoDAsync_v2' : 'cuMemcpyHtoD_v2', rc, `${bytes} bytes to 0x${dst.toString(16)}`);
}

export function copyDeviceToDeviceRaw(dst: bigint, src: bigint, bytes: number, stream?: StreamLike): void {
  checkSize('copyDeviceToDeviceRaw', bytes);
  if (bytes === 0) return;
  ensureContext();
  const d = getDriver();
  const rc = stream ? d.fn.cuMemcpyDtoDAsync_v2(dst, src, bytes, streamHandle(stream)) : d.fn.cuMemcpyDtoD_v2(dst, src, bytes);
  if (rc !== 0) throwCuda(stream ? 'cuMemcpyDtoDAsync_v2' : 'cuMemcpyDtoD_v2', rc, `${bytes} bytes 0x${src.toString(16)} -> 0x${dst.toString(16)}`);
}
