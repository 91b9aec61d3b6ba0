// Device tensors: a dtype, a shape and a DeviceBuffer, the GPU twin of HostTensor. Element sizes come from
// DTYPE_BYTES (src/tensor/host.ts); the bytes are the same little-endian layout as the host storage, so an upload
// is one copy.
import { DTYPE_BYTES, HostTensor, numel, storageFromBytes, type DType } from '../tensor/host.js';
import { DeviceBuffer } from './memory.js';
import type { StreamLike } from './stream.js';

function checkShape(dtype: DType, shape: readonly number[]): void {
  if (!Object.prototype.hasOwnProperty.call(DTYPE_BYTES, dtype)) throw new Error(`unknown dtype ${String(dtype)}`);
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`invalid ${dtype} device tensor shape [${shape.join(', ')}]`);
  }
}

export class DeviceTensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly buffer: DeviceBuffer;
  /** Whether dispose() frees the buffer (false for views made by reshape / wrap). */
  private readonly owns: boolean;

  constructor(dtype: D, shape: readonly number[], buffer: DeviceBuffer, owns = true) {
    checkShape(dtype, shape);
    const need = numel(shape) * DTYPE_BYTES[dtype];
    if (buffer.byteLength < need) {
      throw new Error(`${dtype}[${shape.join(', ')}] needs ${need} bytes but the device buffer has ${buffer.byteLength}`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.buffer = buffer;
    this.owns = owns;
  }

  /** Uninitialised device memory for dtype[shape] (stream-ordered when a stream is given). */
  static empty<D extends DType>(dtype: D, shape: readonly number[], options: { stream?: StreamLike } = {}): DeviceTensor<D> {
    checkShape(dtype, shape);
    return new DeviceTensor(dtype, shape, DeviceBuffer.alloc(numel(shape) * DTYPE_BYTES[dtype], options));
  }

  /** Zero-filled dtype[shape] (all-zero bytes: 0 / +0.0 for every dtype). */
  static zeros<D extends DType>(dtype: D, shape: readonly number[], options: { stream?: StreamLike } = {}): DeviceTensor<D> {
    const t = DeviceTensor.empty(dtype, shape, options);
    t.buffer.memset8(0, { stream: options.stream });
    return t;
  }

  /** Uploads a host tensor (synchronously, or queued on `stream`: pageable memory is staged before returning). */
  static fromHost<D extends DType>(host: HostTensor<D>, stream?: StreamLike): DeviceTensor<D> {
    const t = DeviceTensor.empty(host.dtype, host.shape, { stream });
    try {
      t.buffer.copyFromHost(host.bytes(), { stream });
    } catch (err) {
      t.dispose();
      throw err;
    }
    return t;
  }

  get ptr(): bigint { return this.buffer.ptr; }
  get numel(): number { return numel(this.shape); }
  get byteLength(): number { return this.numel * DTYPE_BYTES[this.dtype]; }
  get disposed(): boolean { return this.buffer.disposed; }

  /** Downloads into a new HostTensor (waits for `stream` first when given, so queued work is included). */
  toHost(stream?: StreamLike): HostTensor<D> {
    const bytes = new Uint8Array(this.byteLength);
    if (stream) stream.synchronize();
    this.buffer.copyToHost(bytes);
    return new HostTensor(this.dtype, this.shape, storageFromBytes(this.dtype, bytes));
  }

  /** Overwrites the contents from a host tensor of the same dtype and element count. */
  copyFromHost(host: HostTensor<D>, stream?: StreamLike): void {
    if (host.dtype !== this.dtype || host.numel !== this.numel) {
      throw new Error(`copyFromHost: host ${host.describe()} does not match device ${this.describe()}`);
    }
    this.buffer.copyFromHost(host.bytes(), { stream });
  }

  /** Same memory, another shape with the same element count (a view: disposing it does not free the memory). */
  reshape(shape: readonly number[]): DeviceTensor<D> {
    if (numel(shape) !== this.numel) {
      throw new Error(`cannot reshape ${this.describe()} to [${shape.join(', ')}]: element counts differ`);
    }
    return new DeviceTensor(this.dtype, shape, this.buffer, false);
  }

  describe(): string { return `device ${this.dtype}[${this.shape.join(', ')}]`; }

  /** Frees the memory (on `stream` when stream-ordered). No-op for views. */
  dispose(stream?: StreamLike): void {
    if (this.owns) this.buffer.dispose(stream);
  }

  [Symbol.dispose](): void { this.dispose(); }
}
