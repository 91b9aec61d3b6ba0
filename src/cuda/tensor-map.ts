// TMA descriptors (CUtensorMap, 128 opaque bytes) made by cuTensorMapEncodeTiled, for kernels that take them as
// `const __grid_constant__ CUtensorMap` parameters (pass the TensorMap itself to Kernel.launch).
//
// Dimension order follows CUDA: index 0 is the INNERMOST (contiguous) dimension. globalStrides has rank - 1 entries:
// the byte stride of dimensions 1..rank-1 (dimension 0 is contiguous by definition). The helpers tensorMap2D and
// tensorMap3D take row-major shapes instead, which is how the rest of megamoe thinks.
import type { KernelArg } from './args.js';
import { ensureContext } from './device.js';
import { getDriver, throwCuda } from './driver.js';

export type TensorMapDataType = 'uint8' | 'uint16' | 'uint32' | 'int32' | 'uint64' | 'int64' | 'f16' | 'f32' | 'f64' | 'bf16';
export type TensorMapSwizzle = 'none' | '32B' | '64B' | '128B';
export type TensorMapL2Promotion = 'none' | '64B' | '128B' | '256B';

const DATA_TYPE: Readonly<Record<TensorMapDataType, { code: number; bytes: number }>> = {
  uint8: { code: 0, bytes: 1 }, uint16: { code: 1, bytes: 2 }, uint32: { code: 2, bytes: 4 }, int32: { code: 3, bytes: 4 },
  uint64: { code: 4, bytes: 8 }, int64: { code: 5, bytes: 8 }, f16: { code: 6, bytes: 2 }, f32: { code: 7, bytes: 4 },
  f64: { code: 8, bytes: 8 }, bf16: { code: 9, bytes: 2 },
};
const SWIZZLE: Readonly<Record<TensorMapSwizzle, { code: number; span: number }>> = {
  none: { code: 0, span: 0 }, '32B': { code: 1, span: 32 }, '64B': { code: 2, span: 64 }, '128B': { code: 3, span: 128 },
};
const L2: Readonly<Record<TensorMapL2Promotion, number>> = { none: 0, '64B': 1, '128B': 2, '256B': 3 };

/** The bytes of one CUtensorMap. */
export const TENSOR_MAP_BYTES = 128;

export interface TensorMapTiledOptions {
  dataType: TensorMapDataType;
  /** Device address of element [0, 0, ...] (16-byte aligned): a bigint or anything with a bigint `ptr`. */
  globalAddress: bigint | { readonly ptr: bigint };
  /** Sizes, innermost first (1 to 5 dimensions). */
  globalDims: readonly number[];
  /** Byte strides of dimensions 1..rank-1 (multiples of 16). */
  globalStrides: readonly number[];
  /** The tile (box) each TMA copy moves, innermost first; each 1..256. */
  boxDims: readonly number[];
  /** Element strides within the box (default all 1). */
  elementStrides?: readonly number[];
  /** Shared-memory swizzle; the box's inner extent in bytes must not exceed the swizzle span. Default 'none'. */
  swizzle?: TensorMapSwizzle;
  l2Promotion?: TensorMapL2Promotion;
  /** 'nan' fills out-of-bounds floats with NaN (request-zero FMA); default zeros. */
  oobFill?: 'zero' | 'nan';
}

/** An encoded TMA descriptor. Pass it straight to Kernel.launch (by value, 128-byte aligned). */
export class TensorMap {
  readonly bytes: Uint8Array;
  readonly options: Readonly<TensorMapTiledOptions>;
  constructor(bytes: Uint8Array, options: TensorMapTiledOptions) {
    if (bytes.byteLength !== TENSOR_MAP_BYTES) throw new Error(`a CUtensorMap is ${TENSOR_MAP_BYTES} bytes, got ${bytes.byteLength}`);
    this.bytes = bytes;
    this.options = options;
  }
  toKernelArg(): KernelArg { return { kind: 'bytes', value: this.bytes, align: 128 }; }
}

function bad(what: string, why: string): never {
  throw new RangeError(`cuTensorMapEncodeTiled: ${what} ${why}`);
}

/** Checks the documented constraints in JavaScript, so a mistake names the argument instead of CUDA_ERROR_INVALID_VALUE. */
export function validateTensorMapOptions(o: TensorMapTiledOptions): void {
  const dt = DATA_TYPE[o.dataType];
  if (!dt) bad('dataType', `"${String(o.dataType)}" is not one of ${Object.keys(DATA_TYPE).join(', ')}`);
  const rank = o.globalDims.length;
  if (rank < 1 || rank > 5) bad('globalDims', `has ${rank} dimensions; TMA supports 1 to 5`);
  if (o.globalStrides.length !== rank - 1) bad('globalStrides', `needs ${rank - 1} entries (dimensions 1..${rank - 1}), got ${o.globalStrides.length}`);
  if (o.boxDims.length !== rank) bad('boxDims', `needs ${rank} entries, got ${o.boxDims.length}`);
  const es = o.elementStrides ?? o.globalDims.map(() => 1);
  if (es.length !== rank) bad('elementStrides', `needs ${rank} entries, got ${es.length}`);
  const addr = typeof o.globalAddress === 'bigint' ? o.globalAddress : o.globalAddress.ptr;
  if (addr % 16n !== 0n) bad('globalAddress', `0x${addr.toString(16)} is not 16-byte aligned`);
  o.globalDims.forEach((d, i) => {
    if (!Number.isInteger(d) || d < 1 || d > 2 ** 32) bad(`globalDims[${i}]`, `= ${d} must be an integer in 1..2^32`);
  });
  o.globalStrides.forEach((s, i) => {
    if (!Number.isInteger(s) || s <= 0 || s % 16 !== 0 || s >= 2 ** 40) bad(`globalStrides[${i}]`, `= ${s} must be a positive multiple of 16 below 2^40 bytes`);
  });
  o.boxDims.forEach((b, i) => {
    if (!Number.isInteger(b) || b < 1 || b > 256) bad(`boxDims[${i}]`, `= ${b} must be an integer in 1..256`);
  });
  es.forEach((e, i) => {
    if (!Number.isInteger(e) || e < 1 || e > 8) bad(`elementStrides[${i}]`, `= ${e} must be an integer in 1..8`);
  });
  const innerBytes = o.boxDims[0] * dt.bytes;
  if (innerBytes % 16 !== 0) bad('boxDims[0]', `x ${dt.bytes} bytes = ${innerBytes} bytes must be a multiple of 16`);
  const sw = SWIZZLE[o.swizzle ?? 'none'];
  if (!sw) bad('swizzle', `"${String(o.swizzle)}" is not one of none, 32B, 64B, 128B`);
  if (sw.span > 0 && innerBytes > sw.span) {
    bad('boxDims[0]', `x ${dt.bytes} bytes = ${innerBytes} bytes exceeds the ${o.swizzle} swizzle span; use a box inner extent of at most ${sw.span / dt.bytes} elements`);
  }
  if (o.l2Promotion !== undefined && L2[o.l2Promotion] === undefined) bad('l2Promotion', `"${String(o.l2Promotion)}" is not one of none, 64B, 128B, 256B`);
}

// Native-side inputs: kept between calls (no allocation per encode beyond the returned 128 bytes).
const dimsScratch = new BigUint64Array(5);
const stridesScratch = new BigUint64Array(4);
const boxScratch = new Uint32Array(5);
const elemScratch = new Uint32Array(5);

/** Encodes a tiled TMA descriptor (cuTensorMapEncodeTiled). Needs the driver; the address must be device memory. */
export function encodeTensorMapTiled(o: TensorMapTiledOptions): TensorMap {
  validateTensorMapOptions(o);
  ensureContext();
  const d = getDriver();
  const rank = o.globalDims.length;
  const es = o.elementStrides ?? o.globalDims.map(() => 1);
  for (let i = 0; i < rank; i++) {
    dimsScratch[i] = BigInt(o.globalDims[i]);
    boxScratch[i] = o.boxDims[i];
    elemScratch[i] = es[i];
    if (i > 0) stridesScratch[i - 1] = BigInt(o.globalStrides[i - 1]);
  }
  const addr = typeof o.globalAddress === 'bigint' ? o.globalAddress : o.globalAddress.ptr;
  // The driver scratch block is 256 bytes with a malloc-aligned base; the map needs 64/128-byte alignment, so write
  // it at the first 128-aligned address inside the block.
  const base = d.scratch.address;
  const pad = (128 - (base % 128)) % 128;
  if (pad + TENSOR_MAP_BYTES > 256) throw new Error('internal: driver scratch block too small for a tensor map');
  const rc = d.fn.cuTensorMapEncodeTiled(base + pad, DATA_TYPE[o.dataType].code, rank, addr, dimsScratch, stridesScratch,
    boxScratch, elemScratch, 0, SWIZZLE[o.swizzle ?? 'none'].code, L2[o.l2Promotion ?? 'none'], o.oobFill === 'nan' ? 1 : 0);
  if (rc !== 0) {
    throwCuda('cuTensorMapEncodeTiled', rc, `${o.dataType} dims [${o.globalDims.join(', ')}] strides [${o.globalStrides.join(', ')}] box [${o.boxDims.join(', ')}] swizzle ${o.swizzle ?? 'none'}`);
  }
  const bytes = new Uint8Array(TENSOR_MAP_BYTES);
  bytes.set(new Uint8Array(d.scratch.view.buffer, d.scratch.view.byteOffset + pad, TENSOR_MAP_BYTES));
  return new TensorMap(bytes, o);
}

export interface TensorMap2DOptions {
  dataType: TensorMapDataType;
  globalAddress: bigint | { readonly ptr: bigint };
  /** Row-major [rows, cols]: cols contiguous. */
  rows: number;
  cols: number;
  /** Bytes between rows (default cols * element size). */
  rowStrideBytes?: number;
  boxRows: number;
  boxCols: number;
  swizzle?: TensorMapSwizzle;
  l2Promotion?: TensorMapL2Promotion;
  oobFill?: 'zero' | 'nan';
}

/** A 2D map over a row-major matrix: box of boxRows x boxCols elements. */
export function tensorMap2D(o: TensorMap2DOptions): TensorMap {
  const eb = DATA_TYPE[o.dataType]?.bytes ?? 1;
  return encodeTensorMapTiled({
    dataType: o.dataType, globalAddress: o.globalAddress,
    globalDims: [o.cols, o.rows], globalStrides: [o.rowStrideBytes ?? o.cols * eb],
    boxDims: [o.boxCols, o.boxRows], swizzle: o.swizzle, l2Promotion: o.l2Promotion, oobFill: o.oobFill,
  });
}

export interface TensorMap3DOptions {
  dataType: TensorMapDataType;
  globalAddress: bigint | { readonly ptr: bigint };
  /** Row-major [depth, rows, cols]: e.g. [experts, N, K] weights. */
  depth: number;
  rows: number;
  cols: number;
  rowStrideBytes?: number;
  /** Bytes between depth slices (default rows * rowStrideBytes). */
  depthStrideBytes?: number;
  boxDepth?: number;
  boxRows: number;
  boxCols: number;
  swizzle?: TensorMapSwizzle;
  l2Promotion?: TensorMapL2Promotion;
  oobFill?: 'zero' | 'nan';
}

/** A 3D map over a row-major [depth, rows, cols] tensor. */
export function tensorMap3D(o: TensorMap3DOptions): TensorMap {
  const eb = DATA_TYPE[o.dataType]?.bytes ?? 1;
  const rowStride = o.rowStrideBytes ?? o.cols * eb;
  return encodeTensorMapTiled({
    dataType: o.dataType, globalAddress: o.globalAddress,
    globalDims: [o.cols, o.rows, o.depth], globalStrides: [rowStride, o.depthStrideBytes ?? o.rows * rowStride],
    boxDims: [o.boxCols, o.boxRows, o.boxDepth ?? 1], swizzle: o.swizzle, l2Promotion: o.l2Promotion, oobFill: o.oobFill,
  });
}
