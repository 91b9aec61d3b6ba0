// GPU tests of kernel launches: mixed argument types, shared memory limits, events, graphs, TMA descriptors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  CudaError, CudaEvent, CudaGraph, DeviceBuffer, Stream, arg, gpuSkipReason, loadKernel, measureLaunchOverhead,
  tensorMap2D, tensorMap3D, type Kernel,
} from '../src/cuda/index.js';

const skip = gpuSkipReason();

const SOURCE = `
#include <cuda.h>
struct __align__(64) Blob64 { float v[16]; };

extern "C" __global__ void vadd_mixed(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ c,
                                      unsigned n, float alpha, long long bias, Blob64 blob, int neg) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) c[i] = a[i] + alpha * b[i] + (float)bias + blob.v[i % 16] + (float)neg;
}

extern "C" __global__ void spin(unsigned long long cycles) {
  long long t0 = clock64();
  while (clock64() - t0 < (long long)cycles) {}
}

extern "C" __global__ void reverse_smem(float* out) {
  extern __shared__ float s[];
  s[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// One TMA load of a 2D tile into shared memory (as the FP8 GEMM does), then a plain copy out.
extern "C" __global__ void tma_load_tile(const __grid_constant__ CUtensorMap map, unsigned char* out, int c0, int r0,
                                         unsigned tile_bytes) {
  __shared__ __align__(1024) unsigned char tile[8192];
  __shared__ __align__(8) unsigned long long bar;
  const unsigned bar_addr = static_cast<unsigned>(__cvta_generic_to_shared(&bar));
  const unsigned tile_addr = static_cast<unsigned>(__cvta_generic_to_shared(tile));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar_addr) : "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar_addr), "r"(tile_bytes) : "memory");
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
                 :: "r"(tile_addr), "l"(reinterpret_cast<unsigned long long>(&map)), "r"(c0), "r"(r0), "r"(bar_addr)
                 : "memory");
  }
  asm volatile("{\\n"
               ".reg .pred P1;\\n"
               "LAB_WAIT:\\n"
               "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], 0;\\n"
               "@P1 bra DONE;\\n"
               "bra LAB_WAIT;\\n"
               "DONE:\\n"
               "}" :: "r"(bar_addr) : "memory");
  for (unsigned i = threadIdx.x; i < tile_bytes; i += blockDim.x) out[i] = tile[i];
}
`;

const kernel = (entry: string): Promise<Kernel> => loadKernel({ source: 'cuda_layer_test.cu', sourceText: SOURCE, entry });

function blob16(): { bytes: Uint8Array; values: Float32Array } {
  const values = Float32Array.from({ length: 16 }, (_, i) => i * 0.5 - 3);
  return { bytes: new Uint8Array(values.buffer), values };
}

test('a vector add launched with pointer, u32, f32, i64, 64-byte struct and i32 arguments', { skip }, async () => {
  const k = await kernel('vadd_mixed');
  const attrs = k.attributes();
  assert.equal(attrs.binaryVersion, 90);
  assert.ok(attrs.numRegs > 0);
  const n = 10_000;
  const a = Float32Array.from({ length: n }, (_, i) => Math.sin(i));
  const b = Float32Array.from({ length: n }, (_, i) => Math.cos(i) * 3);
  using da = DeviceBuffer.alloc(n * 4);
  using db = DeviceBuffer.alloc(n * 4);
  using dc = DeviceBuffer.alloc(n * 4);
  da.copyFromHost(a);
  db.copyFromHost(b);
  const { bytes, values } = blob16();
  const alpha = 0.75; const bias = -5n; const neg = -2;
  using stream = Stream.create();
  k.launch({ grid: Math.ceil(n / 256), block: 256, stream },
    [da, db, dc, arg.u32(n), arg.f32(alpha), arg.i64(bias), arg.bytes(bytes, 64), arg.i32(neg)]);
  stream.synchronize();
  const c = new Float32Array(n);
  dc.copyToHost(c);
  for (let i = 0; i < n; i++) {
    const want = Math.fround(Math.fround(Math.fround(Math.fround(a[i] + Math.fround(0.75 * b[i])) - 5) + values[i % 16]) - 2);
    if (Math.abs(c[i] - want) > 1e-5 * Math.max(1, Math.abs(want))) assert.fail(`c[${i}] = ${c[i]}, want ${want}`);
  }
});

test('dynamic shared memory: above 48 KiB needs the opt-in, and too much throws CudaError', { skip }, async () => {
  const k = await kernel('reverse_smem');
  using out = DeviceBuffer.alloc(1024 * 4);
  // 200 KiB without the opt-in fails at launch.
  assert.throws(() => k.launch({ grid: 1, block: 1024, sharedMemBytes: 200 * 1024 }, [out]), (err: unknown) => {
    assert.ok(err instanceof CudaError);
    assert.equal(err.call, 'cuLaunchKernel');
    assert.equal(err.codeName, 'CUDA_ERROR_INVALID_VALUE');
    assert.match(err.message, /setMaxDynamicSharedMemory/);
    return true;
  });
  k.setMaxDynamicSharedMemory(200 * 1024);
  k.launch({ grid: 1, block: 1024, sharedMemBytes: 200 * 1024 }, [out]);
  const r = new Float32Array(1024);
  out.copyToHost(r);
  assert.equal(r[0], 1023);
  assert.equal(r[1023], 0);
  // More than the device has (H100: 227 KiB opt-in) is refused by the driver.
  assert.throws(() => k.setMaxDynamicSharedMemory(300 * 1024), (err: unknown) => err instanceof CudaError && err.codeName === 'CUDA_ERROR_INVALID_VALUE');
  assert.throws(() => k.launch({ grid: 1, block: 1024, sharedMemBytes: 300 * 1024 }, [out]), (err: unknown) => err instanceof CudaError && /^CUDA_ERROR_/.test(err.codeName));
  // A wrong kernel name is a CudaError naming it.
  assert.throws(() => k.module.getKernel('no_such_kernel'), /cuModuleGetFunction failed: CUDA_ERROR_NOT_FOUND.*no kernel "no_such_kernel"/);
});

test('events time a kernel of known length', { skip }, async () => {
  const k = await kernel('spin');
  using stream = Stream.create();
  using start = CudaEvent.create();
  using end = CudaEvent.create();
  start.record(stream);
  k.launch({ grid: 1, block: 1, stream }, [arg.u64(2_000_000n)]);
  end.record(stream);
  end.synchronize();
  assert.equal(end.query(), true);
  const ms = end.elapsedMsSince(start);
  console.log(`# 2e6-cycle spin took ${ms.toFixed(3)} ms`);
  assert.ok(ms > 0.2 && ms < 100, `elapsed ${ms} ms`);
});

test('a captured graph does nothing at capture time and replays correctly with new inputs', { skip }, async () => {
  const k = await kernel('vadd_mixed');
  const n = 4096;
  using stream = Stream.create();
  using da = DeviceBuffer.alloc(n * 4);
  using db = DeviceBuffer.alloc(n * 4);
  using dc = DeviceBuffer.alloc(n * 4);
  using dd = DeviceBuffer.alloc(n * 4);
  const b = Float32Array.from({ length: n }, (_, i) => i);
  db.copyFromHost(b);
  dd.memset8(0);
  const { bytes, values } = blob16();
  using graph = CudaGraph.capture(stream, () => {
    dc.memset8(0, { stream });
    k.launch({ grid: n / 256, block: 256, stream }, [da, db, dc, arg.u32(n), arg.f32(2), arg.i64(1n), arg.bytes(bytes), arg.i32(0)]);
    dd.copyFromDevice(dc, { stream });
  });
  const d = new Float32Array(n);
  dd.copyToHost(d);
  assert.ok(d.every((x) => x === 0), 'capture must not execute the work');
  for (let rep = 0; rep < 3; rep++) {
    const a = Float32Array.from({ length: n }, (_, i) => rep * 100 + (i % 7));
    da.copyFromHost(a);
    graph.launch(stream);
    stream.synchronize();
    dd.copyToHost(d);
    for (let i = 0; i < n; i++) {
      const want = a[i] + 2 * b[i] + 1 + values[i % 16];
      if (Math.abs(d[i] - want) > 1e-4 * Math.max(1, Math.abs(want))) assert.fail(`replay ${rep}: d[${i}] = ${d[i]}, want ${want}`);
    }
  }
  // A capture whose callback throws ends the capture and leaves the stream usable.
  assert.throws(() => CudaGraph.capture(stream, () => { throw new Error('boom'); }), /boom/);
  dd.memset8(0, { stream });
  stream.synchronize();
  assert.throws(() => CudaGraph.capture(Stream.legacyDefault, () => undefined), /legacy default stream cannot be captured/);
});

test('TMA tensor maps passed by value load the right tile (no swizzle, 128B swizzle, out of bounds)', { skip }, async () => {
  const k = await kernel('tma_load_tile');
  const rows = 100; const cols = 304;
  const host = new Uint8Array(rows * cols);
  const val = (r: number, c: number): number => ((r * 7 + c * 13) & 255) | 1;
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) host[r * cols + c] = val(r, c);
  using mat = DeviceBuffer.alloc(host.length);
  mat.copyFromHost(host);
  using out = DeviceBuffer.alloc(8192);
  const run = (map: ReturnType<typeof tensorMap2D>, c0: number, r0: number, bytes: number): Uint8Array => {
    out.memset8(0);
    k.launch({ grid: 1, block: 128 }, [map, out, arg.i32(c0), arg.i32(r0), arg.u32(bytes)]);
    const got = new Uint8Array(bytes);
    out.copyToHost(got);
    return got;
  };
  // No swizzle: box 64 cols x 32 rows at (c0 16, r0 8), row-major in shared memory.
  const plain = tensorMap2D({ dataType: 'uint8', globalAddress: mat, rows, cols, boxRows: 32, boxCols: 64 });
  assert.equal(plain.bytes.byteLength, 128);
  let got = run(plain, 16, 8, 64 * 32);
  for (let r = 0; r < 32; r++) for (let c = 0; c < 64; c++) {
    if (got[r * 64 + c] !== val(8 + r, 16 + c)) assert.fail(`plain tile (${r}, ${c}) = ${got[r * 64 + c]}`);
  }
  // 128B swizzle: box 128 cols x 16 rows; 16-byte chunk j of row r lands at chunk j ^ (r % 8).
  const swz = tensorMap2D({ dataType: 'uint8', globalAddress: mat, rows, cols, boxRows: 16, boxCols: 128, swizzle: '128B' });
  got = run(swz, 128, 40, 128 * 16);
  for (let r = 0; r < 16; r++) for (let c = 0; c < 128; c++) {
    const at = r * 128 + ((((c >> 4) ^ (r & 7)) << 4) | (c & 15));
    if (got[at] !== val(40 + r, 128 + c)) assert.fail(`swizzled tile (${r}, ${c}) at ${at} = ${got[at]}`);
  }
  // Out of bounds: elements past the matrix edge arrive as zeros.
  got = run(plain, 256, 90, 64 * 32);
  for (let r = 0; r < 32; r++) for (let c = 0; c < 64; c++) {
    const inside = 90 + r < rows && 256 + c < cols;
    const want = inside ? val(90 + r, 256 + c) : 0;
    if (got[r * 64 + c] !== want) assert.fail(`edge tile (${r}, ${c}) = ${got[r * 64 + c]}, want ${want}`);
  }
  // A 3D bf16 map over [experts, N, K] weights encodes (what the grouped GEMM builds for B).
  using w = DeviceBuffer.alloc(4 * 256 * 512 * 2);
  const m3 = tensorMap3D({ dataType: 'bf16', globalAddress: w, depth: 4, rows: 256, cols: 512, boxRows: 64, boxCols: 64, swizzle: '128B' });
  assert.ok(m3.bytes.some((x) => x !== 0));
});

test('launch overhead: host microseconds per cuLaunchKernel and per cuGraphLaunch', { skip }, async () => {
  const r = await measureLaunchOverhead({ launches: 10_000 });
  const r10 = await measureLaunchOverhead({ launches: 2_000, graphNodes: 10 });
  console.log(`# launch overhead ${JSON.stringify(r)}`);
  console.log(`# graph of 10 kernels: ${r10.graphLaunchUs.toFixed(2)} us per cuGraphLaunch`);
  assert.ok(r.emptyLaunchUs > 0 && r.emptyLaunchUs < 50, `empty launch ${r.emptyLaunchUs} us`);
  assert.ok(r.argsLaunchUs > 0 && r.argsLaunchUs < 50, `launch with args ${r.argsLaunchUs} us`);
  assert.ok(r.graphLaunchUs > 0 && r.graphLaunchUs < 100, `graph launch ${r.graphLaunchUs} us`);
  const outDir = process.env.MEGAMOE_BENCH_OUT;
  if (outDir) {
    mkdirSync(outDir, { recursive: true });
    writeFileSync(join(outDir, 'launch-overhead.json'), JSON.stringify({ single: r, graph10: r10 }, null, 2));
  }
});
