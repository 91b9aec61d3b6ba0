// CUDA IPC (src/cuda/ipc.ts) without a GPU: the handle's text and blob forms, argument checks before any native
// call, and, when a C compiler is present, the real koffi bindings against a fake libcuda built here (the 64-byte
// CUipcMemHandle passed BY VALUE to cuIpcOpenMemHandle_v2, the lazy-peer-access flag, the allocation-base offset
// bookkeeping, CUresult names in the errors). Also the workplace rule: no NVLink multicast anywhere in src/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  bindIpc, CU_IPC_HANDLE_BYTES, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, decodeIpcHandle, encodeIpcHandle, exportIpcMemory,
  IPC_EXPORT_BYTES, openIpcMemory, parseIpcExport, serializeIpcExport, type IpcExport,
} from '../src/cuda/ipc.js';
import { CudaError } from '../src/cuda/errors.js';

const handle = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff);

test('IPC handle: base64 round trip, blob round trip, length and field checks', () => {
  const text = encodeIpcHandle(handle);
  assert.equal(text.length, 88);
  assert.deepEqual(decodeIpcHandle(text), handle);
  assert.throws(() => encodeIpcHandle(new Uint8Array(63)), /a CUDA IPC handle is 64 bytes, got 63/);
  assert.throws(() => decodeIpcHandle('AAAA'), /a CUDA IPC handle is 64 bytes, got 3/);
  assert.throws(() => decodeIpcHandle('not base64!'), /not a base64 CUDA IPC handle/);
  const e: IpcExport = { handle, offset: 4096, bytes: 1 << 20, device: 3, pid: 4242 };
  const blob = serializeIpcExport(e);
  assert.equal(blob.byteLength, IPC_EXPORT_BYTES);
  assert.deepEqual(parseIpcExport(blob), e);
  assert.throws(() => parseIpcExport(blob.subarray(1)), /a serialized CUDA IPC export is 88 bytes, got 87/);
  assert.throws(() => serializeIpcExport({ ...e, offset: -1 }), /IpcExport.offset must be a non-negative integer, got -1/);
  assert.equal(CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, 1);
  assert.equal(CU_IPC_HANDLE_BYTES, 64);
});

test('IPC: checks before any native call', () => {
  assert.throws(() => exportIpcMemory(0n), /a device address \(non-zero bigint\) is needed/);
  assert.throws(() => openIpcMemory({ handle, offset: 0, bytes: 1, device: 0, pid: process.pid }),
    /exported by this process .*use the local pointer instead/);
});

test('no NVLink multicast (cuMulticast*) anywhere in src/ (forbidden on this workplace\'s GPU hosts)', () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
  const hits: string[] = [];
  const walk = (d: string) => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else if (/\.(ts|cu|cuh)$/.test(n) && /cuMulticast(Create|AddDevice|BindMem|BindAddr|Unbind|GetGranularity)/.test(readFileSync(p, 'utf8'))) hits.push(p);
    }
  };
  walk(root);
  assert.deepEqual(hits, []);
});

// --- the bindings, against a fake libcuda (WHY: no GPU in CI; this still checks the struct-by-value ABI)
const FAKE_CUDA = String.raw`
#include <stdint.h>
#include <string.h>
typedef struct { char reserved[64]; } CUipcMemHandle;
static unsigned char g_open[64]; static unsigned int g_flags; static uint64_t g_closed; static uint64_t g_got;
int fake_last(unsigned char *h, unsigned int *flags, uint64_t *closed, uint64_t *got) {
  memcpy(h, g_open, 64); *flags = g_flags; *closed = g_closed; *got = g_got; return 0; }
/* allocations are 1 MiB aligned and 1 MiB long in this fake */
int cuMemGetAddressRange_v2(uint64_t *base, size_t *size, uint64_t p) {
  if (p < 0x100000) return 1; *base = p & ~(uint64_t)0xFFFFF; *size = 0x100000; return 0; }
int cuIpcGetMemHandle(CUipcMemHandle *h, uint64_t p) {
  g_got = p; if (p == 0x7700000) return 801; for (int i = 0; i < 64; i++) h->reserved[i] = (char)((p >> 20) + i); return 0; }
int cuIpcOpenMemHandle_v2(uint64_t *p, CUipcMemHandle h, unsigned int flags) {
  memcpy(g_open, h.reserved, 64); g_flags = flags; if ((unsigned char)h.reserved[0] == 0xEE) return 400;
  *p = 0xA000000000ULL + ((uint64_t)(unsigned char)h.reserved[0] << 20); return 0; }
int cuIpcCloseMemHandle(uint64_t p) { g_closed = p; return 0; }
`;

function buildFake(): { dir: string; lib: string } | string {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-fake-cuda-ipc-'));
  try {
    writeFileSync(join(dir, 'fake.c'), FAKE_CUDA);
    execFileSync('cc', ['-shared', '-fPIC', '-O0', '-o', join(dir, 'libfakecuda.so'), join(dir, 'fake.c')], { stdio: 'pipe' });
    return { dir, lib: join(dir, 'libfakecuda.so') };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return `no C compiler to build the fake libcuda (${(err as Error).message.split('\n')[0]})`;
  }
}

const fake = buildFake();
process.on('exit', () => { if (typeof fake !== 'string') rmSync(fake.dir, { recursive: true, force: true }); });

test('the IPC bindings against a fake libcuda: export with offset, open by value with the lazy flag, close, errors',
  { skip: typeof fake === 'string' ? fake : false }, async () => {
    if (typeof fake === 'string') return;
    const koffi = (await import('koffi')).default;
    const lib = koffi.load(fake.lib);
    const fn = bindIpc(lib);
    const last = lib.func('fake_last', 'int', ['void *', 'void *', 'void *', 'void *']) as
      (h: Uint8Array, f: Uint32Array, c: BigUint64Array, g: BigUint64Array) => number;
    const read = () => {
      const h = new Uint8Array(64); const f = new Uint32Array(1); const c = new BigUint64Array(1); const g = new BigUint64Array(1);
      last(h, f, c, g);
      return { h, flags: f[0], closed: c[0], got: g[0] };
    };

    // A pointer 0x3400 bytes into the allocation at 0x5300000: the handle is of the BASE, the offset kept aside.
    const e = exportIpcMemory(0x5303400n, { fn, device: 2 });
    assert.equal(read().got, 0x5300000n, 'cuIpcGetMemHandle gets the allocation base');
    assert.equal(e.offset, 0x3400);
    assert.equal(e.bytes, 0x100000 - 0x3400);
    assert.equal(e.device, 2);
    assert.deepEqual([...e.handle.subarray(0, 3)], [0x53, 0x54, 0x55]);
    assert.throws(() => exportIpcMemory(0x5303400n, { fn, bytes: 0x100000 }), /do not fit its allocation/);

    const m = openIpcMemory({ ...e, pid: 1 }, { fn });
    const r = read();
    assert.deepEqual(r.h, e.handle, 'the 64-byte handle arrives by value, intact');
    assert.equal(r.flags, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    assert.equal(m.base, 0xA000000000n + (0x53n << 20n));
    assert.equal(m.ptr, m.base + 0x3400n, 'the mapped pointer is the base plus the exporter\'s offset');
    m.close();
    assert.equal(read().closed, m.base, 'cuIpcCloseMemHandle gets the mapped base');
    m.close();

    assert.throws(() => exportIpcMemory(0x7700000n, { fn }), (err: unknown) => {
      assert.ok(err instanceof CudaError);
      assert.match(err.message, /^cuIpcGetMemHandle failed: CUDA_ERROR_NOT_SUPPORTED \(801\).*only memory from cuMemAlloc/);
      return true;
    });
    const bad = new Uint8Array(64).fill(0xEE);
    assert.throws(() => openIpcMemory({ handle: bad, offset: 0, bytes: 16, device: 1, pid: 77 }, { fn }),
      /^CudaError: cuIpcOpenMemHandle_v2 failed: CUDA_ERROR_INVALID_HANDLE \(400\).*handle of pid 77 \(device 1/);
    assert.throws(() => exportIpcMemory(0x10n, { fn }), /cuMemGetAddressRange_v2 failed: CUDA_ERROR_INVALID_VALUE/);
  });
