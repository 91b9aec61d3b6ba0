// Kernel argument packing: the table of pointers and the values it points at, checked byte by byte (no GPU needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ArgPacker, arg, layoutKernelArgs, type KernelArgLike } from '../src/cuda/args.js';
import { TensorMap } from '../src/cuda/tensor-map.js';

function readTable(p: ArgPacker, n: number, base: number): number[] {
  const v = p.contents;
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(Number(v.getBigUint64(i * 8, true)) - base);
  return out;
}

test('layout puts each value at a multiple of its alignment after the pointer table', () => {
  const blob = new Uint8Array(128).fill(7);
  const args: KernelArgLike[] = [arg.u32(1), arg.ptr(0x1000n), arg.f32(2.5), arg.bytes(blob, 128), arg.i32(-3), arg.i64(-5n)];
  const l = layoutKernelArgs(args);
  // table: 6 x 8 = 48 bytes; u32 at 48; ptr at 56; f32 at 64; blob at 128; i32 at 256; i64 at 264
  assert.deepEqual(l.offsets, [48, 56, 64, 128, 256, 264]);
  assert.deepEqual(l.sizes, [4, 8, 4, 128, 4, 8]);
  assert.equal(l.totalBytes, 272);
});

test('pack writes a table of absolute addresses and the values they point at', () => {
  const p = new ArgPacker();
  try {
    const blob = new Uint8Array(64).map((_, i) => i + 1);
    const args: KernelArgLike[] = [arg.u32(0xfffffffe), 0xdeadbeef12n, arg.f32(1.5), arg.bytes(blob), arg.i32(-7), arg.u64(2n ** 63n + 5n)];
    const base = p.pack(args, 'test');
    assert.equal(base, p.address);
    assert.equal(base % 128, 0, 'block base must be 128-byte aligned');
    const offsets = readTable(p, args.length, base);
    assert.deepEqual(offsets, layoutKernelArgs(args).offsets);
    const v = p.contents;
    assert.equal(v.getUint32(offsets[0], true), 0xfffffffe);
    assert.equal(v.getBigUint64(offsets[1], true), 0xdeadbeef12n);
    assert.equal(v.getFloat32(offsets[2], true), 1.5);
    assert.deepEqual(new Uint8Array(v.buffer, v.byteOffset + offsets[3], 64), blob);
    assert.equal((base + offsets[3]) % 64, 0, 'blob address must be 64-byte aligned');
    assert.equal(v.getInt32(offsets[4], true), -7);
    assert.equal(v.getBigUint64(offsets[5], true), 2n ** 63n + 5n);
  } finally {
    p.dispose();
  }
});

test('objects with a bigint ptr, and TensorMaps, are accepted as arguments', () => {
  const p = new ArgPacker();
  try {
    const map = new TensorMap(new Uint8Array(128).fill(0xab), { dataType: 'uint8', globalAddress: 0n, globalDims: [16], globalStrides: [], boxDims: [16] });
    const base = p.pack([{ ptr: 0x4242n }, map], 'test');
    const offsets = readTable(p, 2, base);
    assert.equal(p.contents.getBigUint64(offsets[0], true), 0x4242n);
    assert.equal((base + offsets[1]) % 128, 0, 'a CUtensorMap must be 128-byte aligned');
    assert.equal(p.contents.getUint8(offsets[1] + 127), 0xab);
  } finally {
    p.dispose();
  }
});

test('the block grows for large argument lists and keeps working', () => {
  const p = new ArgPacker(64);
  try {
    const args: KernelArgLike[] = Array.from({ length: 40 }, (_, i) => (i % 2 ? arg.u32(i) : arg.bytes(new Uint8Array(128).fill(i), 128)));
    const base = p.pack(args, 'big');
    const offsets = readTable(p, args.length, base);
    for (let i = 0; i < args.length; i++) {
      if (i % 2) assert.equal(p.contents.getUint32(offsets[i], true), i);
      else assert.equal(p.contents.getUint8(offsets[i] + 100), i);
    }
  } finally {
    p.dispose();
  }
});

test('bad arguments are refused with the kernel name and argument index', () => {
  const p = new ArgPacker();
  try {
    assert.throws(() => p.pack([arg.u32(1), 3 as unknown as KernelArgLike], 'k1'), /kernel "k1" argument 1: cannot pass the plain number 3/);
    assert.throws(() => p.pack([arg.u32(-1)], 'k2'), /kernel "k2" argument 0 \(u32\): -1 is not a uint32/);
    assert.throws(() => p.pack([arg.i32(2 ** 31)], 'k3'), /argument 0 \(i32\)/);
    assert.throws(() => p.pack([arg.u32(1.5)], 'k4'), /not a uint32/);
    assert.throws(() => p.pack([arg.ptr(-1n)], 'k5'), /not a uint64/);
    assert.throws(() => p.pack([arg.bytes(new Uint8Array(8), 3)], 'k6'), /power of two/);
    assert.throws(() => p.pack([arg.bytes(new Uint8Array(0))], 'k7'), /non-empty/);
  } finally {
    p.dispose();
  }
});

test('a null pointer argument packs as 0', () => {
  const p = new ArgPacker();
  try {
    const base = p.pack([arg.ptr(null)], 'k');
    assert.equal(p.contents.getBigUint64(readTable(p, 1, base)[0], true), 0n);
    assert.equal(p.pack([], 'none'), 0, 'no arguments -> null kernelParams');
  } finally {
    p.dispose();
  }
});
