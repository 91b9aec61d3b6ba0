// Host tensors: a dtype, a shape and the bytes, as every layer above numerics/ hands them around.
// Storage per dtype (one element per array slot, except nothing is packed here: packed FP4 stays I8/U8):
//   F32 -> Float32Array, F64 -> Float64Array, BF16 -> Uint16Array (raw bits), F8_E4M3 / F8_E8M0 / U8 -> Uint8Array,
//   I8 -> Int8Array, I32 -> Int32Array, I64 -> BigInt64Array.

export type DType = 'F64' | 'F32' | 'BF16' | 'F8_E4M3' | 'F8_E8M0' | 'I8' | 'U8' | 'I32' | 'I64';

export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  F64: 8, F32: 4, BF16: 2, F8_E4M3: 1, F8_E8M0: 1, I8: 1, U8: 1, I32: 4, I64: 8,
};

export interface DTypeStorage {
  F64: Float64Array; F32: Float32Array; BF16: Uint16Array; F8_E4M3: Uint8Array; F8_E8M0: Uint8Array;
  I8: Int8Array; U8: Uint8Array; I32: Int32Array; I64: BigInt64Array;
}
export type TypedArrayOf<D extends DType> = DTypeStorage[D];
export type AnyTypedArray = DTypeStorage[DType];

export function isDType(s: string): s is DType {
  return Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Allocates zeroed storage of the right typed-array kind for `count` elements of `dtype`. */
export function allocStorage<D extends DType>(dtype: D, count: number): TypedArrayOf<D> {
  switch (dtype) {
    case 'F64': return new Float64Array(count) as TypedArrayOf<D>;
    case 'F32': return new Float32Array(count) as TypedArrayOf<D>;
    case 'BF16': return new Uint16Array(count) as TypedArrayOf<D>;
    case 'F8_E4M3': case 'F8_E8M0': case 'U8': return new Uint8Array(count) as TypedArrayOf<D>;
    case 'I8': return new Int8Array(count) as TypedArrayOf<D>;
    case 'I32': return new Int32Array(count) as TypedArrayOf<D>;
    case 'I64': return new BigInt64Array(count) as TypedArrayOf<D>;
    default: throw new Error(`unknown dtype ${String(dtype)}`);
  }
}

/** Views raw little-endian bytes as the storage of `dtype` (copies when the offset is misaligned). */
export function storageFromBytes<D extends DType>(dtype: D, bytes: Uint8Array): TypedArrayOf<D> {
  const size = DTYPE_BYTES[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new Error(`${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} bytes each)`);
  }
  const aligned = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const n = aligned.byteLength / size;
  const { buffer, byteOffset } = aligned;
  switch (dtype) {
    case 'F64': return new Float64Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'F32': return new Float32Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'BF16': return new Uint16Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'F8_E4M3': case 'F8_E8M0': case 'U8': return new Uint8Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'I8': return new Int8Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'I32': return new Int32Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    case 'I64': return new BigInt64Array(buffer, byteOffset, n) as TypedArrayOf<D>;
    default: throw new Error(`unknown dtype ${String(dtype)}`);
  }
}

export class HostTensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: readonly number[];
  readonly data: TypedArrayOf<D>;

  constructor(dtype: D, shape: readonly number[], data?: TypedArrayOf<D>) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`invalid ${dtype} tensor shape [${shape.join(', ')}]`);
    }
    const n = numel(shape);
    if (data && data.length !== n) {
      throw new Error(`${dtype} tensor of shape [${shape.join(', ')}] needs ${n} elements, got ${data.length}`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.data = data ?? allocStorage(dtype, n);
  }

  get numel(): number { return this.data.length; }
  get byteLength(): number { return this.data.byteLength; }

  /** The raw little-endian bytes (a view, not a copy). */
  bytes(): Uint8Array {
    return new Uint8Array(this.data.buffer, this.data.byteOffset, this.data.byteLength);
  }

  /** Same storage, another shape with the same element count. */
  reshape(shape: readonly number[]): HostTensor<D> {
    return new HostTensor(this.dtype, shape, this.data);
  }

  describe(): string { return `${this.dtype}[${this.shape.join(', ')}]`; }
}
