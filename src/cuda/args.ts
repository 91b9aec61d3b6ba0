// Kernel argument packing for cuLaunchKernel. The driver takes `void **kernelParams`: one pointer per kernel
// parameter, each pointing at that parameter's value; it copies the values (using the sizes it knows from the
// cubin) before cuLaunchKernel returns, so one reusable native block serves every launch.
//
// Block layout (WHY this way): [ pointer table: n x 8 bytes ][ values, each at a multiple of its alignment ].
// The block base is 128-byte aligned, so a value's address is as aligned as its offset: 4 for 32-bit scalars,
// 8 for 64-bit ones, and the asked alignment (64 by default, 128 for a CUtensorMap) for raw byte blobs passed by
// value. The layout of the values in this block need not match the kernel's parameter layout: the driver reads
// each one through its own pointer.
import koffi from 'koffi';

/** One kernel argument, typed. Build them with the `arg` helpers. */
export type KernelArg =
  | { readonly kind: 'u32' | 'i32' | 'f32'; readonly value: number }
  | { readonly kind: 'u64' | 'i64' | 'ptr'; readonly value: bigint }
  | { readonly kind: 'bytes'; readonly value: Uint8Array; readonly align: number };

/** Something that turns itself into a kernel argument (e.g. a TensorMap). */
export interface ToKernelArg { toKernelArg(): KernelArg }

/**
 * What Kernel.launch accepts per parameter: a typed KernelArg, a bare bigint (a 64-bit value: a device address or
 * a u64), anything with a bigint `ptr` (DeviceBuffer, DeviceTensor), or anything with toKernelArg() (TensorMap).
 * Plain numbers are refused: say arg.u32 / arg.i32 / arg.f32 so the width is never guessed.
 */
export type KernelArgLike = KernelArg | bigint | { readonly ptr: bigint } | ToKernelArg;

const U32_MAX = 0xffffffff;

export const arg = {
  u32(value: number): KernelArg { return { kind: 'u32', value }; },
  i32(value: number): KernelArg { return { kind: 'i32', value }; },
  f32(value: number): KernelArg { return { kind: 'f32', value }; },
  u64(value: bigint | number): KernelArg { return { kind: 'u64', value: BigInt(value) }; },
  i64(value: bigint | number): KernelArg { return { kind: 'i64', value: BigInt(value) }; },
  /** A device address; null / undefined pass a null pointer. */
  ptr(value: bigint | { readonly ptr: bigint } | null | undefined): KernelArg {
    const v = value === null || value === undefined ? 0n : typeof value === 'bigint' ? value : value.ptr;
    return { kind: 'ptr', value: v };
  },
  /** Raw bytes passed by value (a struct); `align` a power of two, default 64. */
  bytes(value: Uint8Array, align = 64): KernelArg { return { kind: 'bytes', value, align }; },
} as const;

function normalize(a: KernelArgLike, index: number, kernel: string): KernelArg {
  if (typeof a === 'bigint') return { kind: 'u64', value: a };
  if (a !== null && typeof a === 'object') {
    if ('kind' in a) return a;
    if ('toKernelArg' in a && typeof a.toKernelArg === 'function') return a.toKernelArg();
    if ('ptr' in a && typeof a.ptr === 'bigint') return { kind: 'ptr', value: a.ptr };
  }
  const shown = typeof a === 'number' ? `the plain number ${a} (wrap it: arg.u32 / arg.i32 / arg.f32 / arg.u64)` : String(a);
  throw new TypeError(`kernel "${kernel}" argument ${index}: cannot pass ${shown}`);
}

function fail(kernel: string, index: number, a: KernelArg, why: string): never {
  throw new RangeError(`kernel "${kernel}" argument ${index} (${a.kind}): ${why}`);
}

function sizeAlign(a: KernelArg, index: number, kernel: string): [number, number] {
  switch (a.kind) {
    case 'u32':
      if (!Number.isInteger(a.value) || a.value < 0 || a.value > U32_MAX) fail(kernel, index, a, `${a.value} is not a uint32`);
      return [4, 4];
    case 'i32':
      if (!Number.isInteger(a.value) || a.value < -0x80000000 || a.value > 0x7fffffff) fail(kernel, index, a, `${a.value} is not an int32`);
      return [4, 4];
    case 'f32':
      if (typeof a.value !== 'number') fail(kernel, index, a, `${String(a.value)} is not a number`);
      return [4, 4];
    case 'u64': case 'ptr':
      if (typeof a.value !== 'bigint' || a.value < 0n || a.value >= 1n << 64n) fail(kernel, index, a, `${String(a.value)} is not a uint64`);
      return [8, 8];
    case 'i64':
      if (typeof a.value !== 'bigint' || a.value < -(1n << 63n) || a.value >= 1n << 63n) fail(kernel, index, a, `${String(a.value)} is not an int64`);
      return [8, 8];
    case 'bytes':
      if (!(a.value instanceof Uint8Array) || a.value.byteLength === 0) fail(kernel, index, a, 'needs a non-empty Uint8Array');
      if (!Number.isInteger(a.align) || a.align < 1 || a.align > 4096 || (a.align & (a.align - 1)) !== 0) {
        fail(kernel, index, a, `alignment ${a.align} is not a power of two up to 4096`);
      }
      return [a.value.byteLength, a.align];
    default:
      throw new TypeError(`kernel "${kernel}" argument ${index}: unknown kind ${(a as { kind: string }).kind}`);
  }
}

const alignUp = (x: number, a: number): number => Math.ceil(x / a) * a;

export interface ArgLayout {
  /** Byte offset of each value from the block base. */
  offsets: number[];
  sizes: number[];
  /** Bytes the whole block needs (table + values). */
  totalBytes: number;
}

/** Where each argument's value goes in the block (pure: for tests and for sizing). */
export function layoutKernelArgs(args: readonly KernelArgLike[], kernel = '?'): ArgLayout {
  let cursor = args.length * 8;
  const offsets: number[] = [];
  const sizes: number[] = [];
  args.forEach((raw, i) => {
    const a = normalize(raw, i, kernel);
    const [size, align] = sizeAlign(a, i, kernel);
    cursor = alignUp(cursor, align);
    offsets.push(cursor);
    sizes.push(size);
    cursor += size;
  });
  return { offsets, sizes, totalBytes: cursor };
}

const BASE_ALIGN = 128;

/**
 * Owns one native block and packs argument lists into it. pack() returns the address of the pointer table, valid
 * until the next pack(); the block grows (never shrinks) when an argument list needs more room.
 */
export class ArgPacker {
  private raw: unknown = null;
  private base = 0;
  private capacity = 0;
  private view: DataView = new DataView(new ArrayBuffer(0));
  private bytes: Uint8Array = new Uint8Array(0);

  constructor(initialBytes = 4096) {
    this.grow(initialBytes);
  }

  private grow(bytes: number): void {
    if (this.raw !== null) koffi.free(this.raw);
    const raw = koffi.alloc('uint8_t', bytes + BASE_ALIGN);
    const addr = Number(koffi.address(raw));
    const pad = (BASE_ALIGN - (addr % BASE_ALIGN)) % BASE_ALIGN;
    const all = koffi.view(raw, bytes + BASE_ALIGN);
    this.raw = raw;
    this.base = addr + pad;
    this.capacity = bytes;
    this.view = new DataView(all, pad, bytes);
    this.bytes = new Uint8Array(all, pad, bytes);
  }

  /** Address of the block base (128-byte aligned). */
  get address(): number { return this.base; }

  /** A view of the block (tests read the packed table and values through it). */
  get contents(): DataView { return this.view; }

  /** Packs `args`; returns the address to pass as cuLaunchKernel's kernelParams. */
  pack(args: readonly KernelArgLike[], kernel = '?'): number {
    const n = args.length;
    if (n === 0) return 0;
    // First pass validates and sizes (no allocation for the common all-scalar case beyond the normalised args).
    let cursor = n * 8;
    for (let i = 0; i < n; i++) {
      const [size, align] = sizeAlign(normalize(args[i], i, kernel), i, kernel);
      cursor = alignUp(cursor, align) + size;
    }
    if (cursor > this.capacity) this.grow(alignUp(Math.max(cursor, this.capacity * 2), 4096));
    const v = this.view;
    const base = this.base;
    cursor = n * 8;
    for (let i = 0; i < n; i++) {
      const a = normalize(args[i], i, kernel);
      let size: number; let align: number;
      switch (a.kind) {
        case 'u32': case 'i32': case 'f32': size = 4; align = 4; break;
        case 'u64': case 'i64': case 'ptr': size = 8; align = 8; break;
        default: size = a.value.byteLength; align = a.align; break;
      }
      cursor = alignUp(cursor, align);
      switch (a.kind) {
        case 'u32': v.setUint32(cursor, a.value, true); break;
        case 'i32': v.setInt32(cursor, a.value, true); break;
        case 'f32': v.setFloat32(cursor, a.value, true); break;
        case 'u64': case 'ptr': v.setBigUint64(cursor, a.value, true); break;
        case 'i64': v.setBigInt64(cursor, a.value, true); break;
        default: this.bytes.set(a.value, cursor); break;
      }
      // Table entry i = base + cursor, written as two 32-bit halves (no BigInt per argument).
      const address = base + cursor;
      v.setUint32(i * 8, address % 0x100000000, true);
      v.setUint32(i * 8 + 4, Math.floor(address / 0x100000000), true);
      cursor += size;
    }
    return base;
  }

  dispose(): void {
    if (this.raw !== null) koffi.free(this.raw);
    this.raw = null;
    this.capacity = 0;
    this.view = new DataView(new ArrayBuffer(0));
    this.bytes = new Uint8Array(0);
  }

  [Symbol.dispose](): void { this.dispose(); }
}
