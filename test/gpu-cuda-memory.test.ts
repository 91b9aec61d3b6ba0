// GPU tests of device memory, copies, streams and lifetimes. Skip with the reason where no Hopper GPU is present.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import v8 from 'node:v8';
import vm from 'node:vm';
import {
  CudaError, CudaModule, DeviceBuffer, DeviceTensor, PinnedBuffer, Stream, arg, canAccessPeer, deviceCount, enablePeerAccess,
  gpuSkipReason, loadKernel, useDevice,
} from '../src/cuda/index.js';
import { HostTensor } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const skip = gpuSkipReason();

function randomBytes(n: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.int(256);
  return out;
}

test('device 0 looks like a Hopper GPU and its context reports memory', { skip }, () => {
  const ctx = useDevice(0);
  const p = ctx.properties();
  assert.equal(p.computeCapability.major, 9);
  assert.ok(p.smCount >= 100, `SM count ${p.smCount}`);
  assert.ok(p.l2CacheBytes >= 40 * 1024 * 1024, `L2 ${p.l2CacheBytes}`);
  assert.ok(p.maxSharedMemoryPerBlockOptin >= 227 * 1024, `smem opt-in ${p.maxSharedMemoryPerBlockOptin}`);
  const mem = ctx.memoryInfo();
  assert.ok(mem.totalBytes > 40 * 2 ** 30 && mem.freeBytes > 0 && mem.freeBytes <= mem.totalBytes);
  console.log(`# ${p.name} ${p.arch} SMs ${p.smCount} mem ${(p.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB L2 ${p.l2CacheBytes >> 20} MiB ` +
    `smem ${p.maxSharedMemoryPerBlockOptin} B peak ${p.peakMemoryBandwidthGBs.toFixed(0)} GB/s`);
});

test('host -> device -> host round trip, device -> device copies with offsets, memset8 / memset32', { skip }, () => {
  const n = 1 << 20;
  const src = randomBytes(n, 1);
  using a = DeviceBuffer.alloc(n);
  using b = DeviceBuffer.alloc(n);
  a.copyFromHost(src);
  const back = new Uint8Array(n);
  a.copyToHost(back);
  assert.deepEqual(back, src);

  b.memset8(0);
  b.copyFromDevice(a, { srcOffset: 1000, offset: 64, bytes: 5000 });
  const got = new Uint8Array(6000);
  b.copyToHost(got);
  assert.deepEqual(got.subarray(64, 5064), src.subarray(1000, 6000));
  assert.ok(got.subarray(0, 64).every((x) => x === 0) && got.subarray(5064).every((x) => x === 0));

  b.memset8(0xab, { offset: 16, count: 32 });
  const m8 = new Uint8Array(64);
  b.copyToHost(m8);
  assert.ok(m8.subarray(16, 48).every((x) => x === 0xab) && m8.subarray(0, 16).every((x) => x === 0));

  const onePointFive = new Uint32Array(new Float32Array([1.5]).buffer)[0];
  b.memset32(onePointFive, { offset: 8192, count: 100 }); // past the copied range [64, 5064), still zero around it
  const f = new Float32Array(102);
  b.copyToHost(f, { offset: 8188 });
  assert.equal(f[0], 0, 'word before the range untouched');
  assert.ok(f.subarray(1, 101).every((x) => x === 1.5));
  assert.equal(f[101], 0, 'word after the range untouched');

  assert.throws(() => a.copyToHost(new Uint8Array(16), { offset: n - 8 }), /outside the buffer/);
  assert.throws(() => b.memset32(1, { offset: 2 }), /multiple of 4/);
});

test('async copies on a stream with pinned memory, and stream-ordered allocation', { skip }, () => {
  const n = 1 << 18; // floats
  using stream = Stream.create();
  using pinIn = PinnedBuffer.alloc(n * 4);
  using pinOut = PinnedBuffer.alloc(n * 4);
  const input = pinIn.as(Float32Array);
  for (let i = 0; i < n; i++) input[i] = i * 0.25 - 7;
  using dev = DeviceBuffer.alloc(n * 4, { stream });
  dev.copyFromHost(pinIn, { stream });
  dev.memset32(new Uint32Array(new Float32Array([-2]).buffer)[0], { offset: 0, count: 16, stream });
  dev.copyToHost(pinOut, { stream });
  stream.synchronize();
  assert.equal(stream.query(), true);
  const out = pinOut.as(Float32Array);
  for (let i = 0; i < 16; i++) assert.equal(out[i], -2);
  for (let i = 16; i < n; i++) if (out[i] !== input[i]) assert.fail(`element ${i}: ${out[i]} != ${input[i]}`);
  // Pageable destination on a stream: the driver returns when the copy is done.
  const pageable = new Float32Array(8);
  dev.copyToHost(pageable, { stream, offset: 64 * 4 });
  assert.deepEqual(Array.from(pageable), Array.from(input.subarray(64, 72)));
});

test('DeviceTensor fromHost / toHost / zeros / reshape, including empty tensors', { skip }, () => {
  const rng = new Rng(5);
  const bf = new HostTensor('BF16', [3, 5]);
  for (let i = 0; i < bf.numel; i++) bf.data[i] = rng.int(65536);
  using d = DeviceTensor.fromHost(bf);
  assert.equal(d.byteLength, 30);
  const back = d.toHost();
  assert.equal(back.dtype, 'BF16');
  assert.deepEqual(back.shape, [3, 5]);
  assert.deepEqual(back.data, bf.data);
  assert.deepEqual(d.reshape([15]).toHost().shape, [15]);

  const ids = new HostTensor('I64', [4, 2], BigInt64Array.from([1n, -1n, 2n ** 40n, 0n, 5n, 6n, -7n, 8n]));
  using di = DeviceTensor.fromHost(ids);
  assert.deepEqual(di.toHost().data, ids.data);

  using z = DeviceTensor.zeros('F32', [1000]);
  assert.ok((z.toHost().data as Float32Array).every((x) => x === 0));

  using stream = Stream.create();
  using e = DeviceTensor.fromHost(new HostTensor('F32', [0, 4]), stream);
  assert.equal(e.ptr, 0n);
  assert.equal(e.toHost(stream).numel, 0);
});

test('1,000,000 alloc/free pairs do not grow host memory', { skip }, () => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  using stream = Stream.create();
  const loop = (count: number, onStream: boolean): number => {
    const t0 = performance.now();
    for (let i = 0; i < count; i++) {
      const b = DeviceBuffer.alloc(256 + (i & 1023), onStream ? { stream } : {});
      b.dispose();
    }
    stream.synchronize();
    return ((performance.now() - t0) * 1e3) / count;
  };
  loop(20_000, true);
  loop(2_000, false);
  gc();
  const rss0 = process.memoryUsage().rss;
  const usAsync = loop(1_000_000, true);
  const usSync = loop(100_000, false);
  gc();
  const growth = process.memoryUsage().rss - rss0;
  console.log(`# alloc+free: ${usAsync.toFixed(2)} us/pair stream-ordered (1e6), ${usSync.toFixed(2)} us/pair cuMemAlloc/cuMemFree (1e5); RSS growth ${(growth / 2 ** 20).toFixed(1)} MiB`);
  assert.ok(growth < 48 * 2 ** 20, `RSS grew by ${(growth / 2 ** 20).toFixed(1)} MiB over 1.1 million alloc/free pairs`);
});

test('failing driver calls throw CudaError with the call and the CUresult name', { skip }, () => {
  assert.throws(() => DeviceBuffer.alloc(2 ** 50), (err: unknown) => {
    assert.ok(err instanceof CudaError);
    assert.equal(err.call, 'cuMemAlloc_v2');
    assert.equal(err.codeName, 'CUDA_ERROR_OUT_OF_MEMORY');
    assert.match(err.message, /cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY \(2\)/);
    return true;
  });
  assert.throws(() => CudaModule.load(new Uint8Array(256).fill(0x41), 'garbage'), (err: unknown) => {
    assert.ok(err instanceof CudaError);
    assert.equal(err.call, 'cuModuleLoadData');
    assert.match(err.codeName, /^CUDA_ERROR_/);
    return true;
  });
  // The context survives these errors.
  using ok = DeviceBuffer.alloc(64);
  ok.memset8(1);
  const b = DeviceBuffer.alloc(16);
  b.dispose();
  assert.throws(() => b.copyToHost(new Uint8Array(16)), /was disposed/);
  b.dispose(); // twice is a no-op
});

const PEER_SOURCE = `
extern "C" __global__ void peer_increment(const unsigned* src, unsigned* dst, unsigned n) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src[i] + 1u;
}
`;

test('peer access: a kernel on device 0 reads device 1 memory directly', { skip: skip ?? (deviceCount() < 2 ? 'needs two GPUs' : undefined) }, async (t) => {
  if (!canAccessPeer(0, 1)) { t.skip('devices 0 and 1 have no P2P path'); return; }
  const n = 4096;
  const pattern = Uint32Array.from({ length: n }, (_, i) => (i * 2654435761) >>> 0);
  const remoteCtx = useDevice(1);
  const remote = DeviceBuffer.alloc(n * 4);
  remote.copyFromHost(pattern);
  remoteCtx.synchronize();
  const localCtx = useDevice(0);
  enablePeerAccess(0, 1);
  enablePeerAccess(0, 1); // idempotent
  const local = DeviceBuffer.alloc(n * 4);
  const kernel = await loadKernel({ source: 'peer_test.cu', sourceText: PEER_SOURCE, entry: 'peer_increment' });
  kernel.launch({ grid: [n / 256], block: [256] }, [remote, local, arg.u32(n)]);
  localCtx.synchronize();
  const got = new Uint32Array(n);
  local.copyToHost(got);
  for (let i = 0; i < n; i++) assert.equal(got[i], (pattern[i] + 1) >>> 0, `element ${i}`);
  local.dispose();
  useDevice(1);
  remote.dispose();
  useDevice(0);
  assert.throws(() => enablePeerAccess(0, 7), /out of range/);
});
