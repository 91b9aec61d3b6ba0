// NCCL through koffi (src/cuda/nccl.ts) without NCCL or a GPU: the absence error names the fix, the override order
// (--nccl-library, MEGAMOE_NCCL_LIBRARY, the soname), the ncclResult name table and NcclError's message, argument
// validation before any native call, and, when a C compiler is present, the real koffi bindings against a fake
// libnccl built here (the 128-byte unique id passed by value, out-parameters, error strings, argument order).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  NcclCommunicator, NcclError, NcclUnavailableError, checkCommInitArgs, decodeNcclVersion, getNccl, ncclDataType,
  ncclGetUniqueId, ncclGroup, ncclLibraryCandidates, ncclResultName, ncclVersion, tryLoadNccl, NCCL_RESULT_NAMES,
} from '../src/cuda/index.js';

test('NCCL missing: a NcclUnavailableError that says what was tried and names the fix', () => {
  const lib = '/nonexistent/megamoe/libnccl.so.2';
  const r = tryLoadNccl({ library: lib });
  assert.ok(r instanceof NcclUnavailableError);
  assert.match(r.message, /^NCCL is not available here: \/nonexistent\/megamoe\/libnccl\.so\.2: /);
  assert.match(r.message, /Fix: install NCCL so that libnccl\.so\.2 is on the loader path .*or set MEGAMOE_NCCL_LIBRARY=\/path\/to\/libnccl\.so\.2 \(the --nccl-library option\)$/);
  assert.throws(() => getNccl({ library: lib }), NcclUnavailableError);
  assert.throws(() => ncclGetUniqueId({ library: lib }), /NCCL is not available here/);
  assert.throws(() => ncclVersion({ library: lib }), /NCCL is not available here/);
});

test('a library that is not libnccl is refused with the missing symbol, not a crash', () => {
  const r = tryLoadNccl({ library: 'libc.so.6' });
  assert.ok(r instanceof NcclUnavailableError);
  assert.match(r.message, /libc\.so\.6 lacks a needed NCCL symbol/);
});

test('which library: --nccl-library, then MEGAMOE_NCCL_LIBRARY, then the soname', () => {
  assert.deepEqual(ncclLibraryCandidates({}, {}), ['libnccl.so.2', 'libnccl.so']);
  assert.deepEqual(ncclLibraryCandidates({}, { MEGAMOE_NCCL_LIBRARY: '/opt/nccl/lib/libnccl.so.2' }), ['/opt/nccl/lib/libnccl.so.2']);
  assert.deepEqual(ncclLibraryCandidates({ library: '/x/libnccl.so.2' }, { MEGAMOE_NCCL_LIBRARY: '/y' }), ['/x/libnccl.so.2']);
  assert.throws(() => ncclLibraryCandidates({ library: ' ' }, {}), /--nccl-library: empty path/);
  const saved = process.env.MEGAMOE_NCCL_LIBRARY;
  process.env.MEGAMOE_NCCL_LIBRARY = '/nonexistent/env/libnccl.so.2';
  try {
    const r = tryLoadNccl();
    assert.ok(r instanceof NcclUnavailableError);
    assert.match(r.message, /\/nonexistent\/env\/libnccl\.so\.2: /);
  } finally {
    if (saved === undefined) delete process.env.MEGAMOE_NCCL_LIBRARY;
    else process.env.MEGAMOE_NCCL_LIBRARY = saved;
  }
});

test('ncclResult names and NcclError messages', () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 7].map(ncclResultName),
    ['ncclSuccess', 'ncclUnhandledCudaError', 'ncclSystemError', 'ncclInternalError', 'ncclInvalidArgument',
      'ncclInvalidUsage', 'ncclRemoteError', 'ncclInProgress'],
  );
  assert.equal(Object.keys(NCCL_RESULT_NAMES).length, 8);
  assert.equal(ncclResultName(42), 'ncclResult42');
  const e = new NcclError('ncclCommInitRank', 5, 'rank 1 of 2', 'invalid usage');
  assert.equal(e.codeName, 'ncclInvalidUsage');
  assert.match(e.message, /^ncclCommInitRank failed: ncclInvalidUsage \(5\): invalid usage \[rank 1 of 2\]\. Hint: NCCL refuses two ranks on one GPU .*--transport ipc/);
  assert.equal(new NcclError('ncclSend', 42).message, 'ncclSend failed: ncclResult42 (42)');
});

test('version codes decode in both NCCL encodings', () => {
  assert.deepEqual(decodeNcclVersion(22703), { major: 2, minor: 27, patch: 3, text: '2.27.3' });
  assert.deepEqual(decodeNcclVersion(2804), { major: 2, minor: 8, patch: 4, text: '2.8.4' });
  assert.throws(() => decodeNcclVersion(0), /not an NCCL version code/);
});

test('arguments are checked before any native call (these would throw NcclUnavailableError otherwise)', () => {
  const lib = { library: '/nonexistent/libnccl.so.2' };
  assert.throws(() => NcclCommunicator.init(new Uint8Array(64), 2, 0, lib), /an NCCL unique id is 128 bytes, got 64/);
  assert.throws(() => NcclCommunicator.init(new Uint8Array(128), 2, 2, lib), /rank must be in \[0, 1\], got 2/);
  assert.throws(() => NcclCommunicator.init(new Uint8Array(128), 0, 0, lib), /nranks must be a positive integer, got 0/);
  assert.throws(() => checkCommInitArgs(new Uint8Array(128), 4, -1), /rank must be in \[0, 3\], got -1/);
  assert.doesNotThrow(() => checkCommInitArgs(new Uint8Array(128), 4, 3));
  assert.deepEqual(ncclDataType('bfloat16'), { code: 9, bytes: 2 });
  assert.deepEqual(ncclDataType('float8e4m3'), { code: 10, bytes: 1 });
  assert.throws(() => ncclDataType('float128'), /unknown element type 'float128'/);
});

// --- the bindings themselves, against a fake libnccl (WHY: no NCCL in CI; this still checks every prototype's ABI)
const FAKE_NCCL = String.raw`
#include <stdint.h>
#include <string.h>
typedef struct { char internal[128]; } ncclUniqueId;
static unsigned char g_id[128]; static long long g_rec[8]; static char g_call[32];
static void rec(const char *c, long long a, long long b, long long d, long long e, long long f, long long g) {
  strncpy(g_call, c, 31); g_rec[0]=a; g_rec[1]=b; g_rec[2]=d; g_rec[3]=e; g_rec[4]=f; g_rec[5]=g; }
int fake_last(char *call, long long *out, unsigned char *id) { strcpy(call, g_call); memcpy(out, g_rec, sizeof g_rec); memcpy(id, g_id, 128); return 0; }
int ncclGetVersion(int *v) { *v = 22703; return 0; }
int ncclGetUniqueId(ncclUniqueId *id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3 + 1); return 0; }
int ncclCommInitRank(void **comm, int n, ncclUniqueId id, int r) {
  memcpy(g_id, id.internal, 128); rec("init", n, r, 0, 0, 0, 0); if (n == 7) return 5; *comm = (void *)0xC0111; return 0; }
int ncclCommDestroy(void *c) { rec("destroy", (long long)c, 0, 0, 0, 0, 0); return 0; }
int ncclCommAbort(void *c) { rec("abort", (long long)c, 0, 0, 0, 0, 0); return 0; }
int ncclCommGetAsyncError(void *c, int *r) { *r = 6; return 0; }
int ncclGroupStart(void) { rec("groupStart", 0, 0, 0, 0, 0, 0); return 0; }
int ncclGroupEnd(void) { rec("groupEnd", 0, 0, 0, 0, 0, 0); return 0; }
int ncclSend(const void *b, size_t n, int t, int p, void *c, void *s) { rec("send", (long long)b, n, t, p, (long long)c, (long long)s); return p == 3 ? 2 : 0; }
int ncclRecv(void *b, size_t n, int t, int p, void *c, void *s) { rec("recv", (long long)b, n, t, p, (long long)c, (long long)s); return 0; }
int ncclAllGather(const void *a, void *b, size_t n, int t, void *c, void *s) { rec("allGather", (long long)a, (long long)b, n, t, (long long)c, (long long)s); return 0; }
int ncclAllReduce(const void *a, void *b, size_t n, int t, int op, void *c, void *s) { rec("allReduce", (long long)a, (long long)b, n, t, op, (long long)c); return 0; }
const char *ncclGetErrorString(int r) { return r == 5 ? "invalid usage (run with NCCL_DEBUG=WARN for details)" : r == 2 ? "unhandled system error" : "?"; }
const char *ncclGetLastError(void *c) { return "Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 0"; }
`;

function buildFake(): { dir: string; lib: string } | string {
  const dir = mkdtempSync(join(tmpdir(), 'megamoe-fake-nccl-'));
  try {
    writeFileSync(join(dir, 'fake.c'), FAKE_NCCL);
    execFileSync('cc', ['-shared', '-fPIC', '-O0', '-o', join(dir, 'libnccl.so.2'), join(dir, 'fake.c')], { stdio: 'pipe' });
    return { dir, lib: join(dir, 'libnccl.so.2') };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return `no C compiler to build the fake libnccl (${(err as Error).message.split('\n')[0]})`;
  }
}

const fake = buildFake();
const fakeSkip = typeof fake === 'string' ? fake : false;
process.on('exit', () => { if (typeof fake !== 'string') rmSync(fake.dir, { recursive: true, force: true }); });

test('the bindings against a fake libnccl: version, unique id, init by value, collectives, errors', { skip: fakeSkip }, async () => {
  if (typeof fake === 'string') return;
  const koffi = (await import('koffi')).default;
  const opts = { library: fake.lib };
  const nccl = getNccl(opts);
  assert.equal(nccl.libraryName, fake.lib);
  const last = koffi.load(fake.lib).func('fake_last', 'int', ['void *', 'void *', 'void *']) as (a: Uint8Array, b: BigInt64Array, c: Uint8Array) => number;
  const read = () => {
    const call = new Uint8Array(32); const rec = new BigInt64Array(8); const id = new Uint8Array(128);
    last(call, rec, id);
    return { call: Buffer.from(call).toString('latin1').replace(/\0.*$/s, ''), rec: [...rec].map(Number), id };
  };

  assert.deepEqual(ncclVersion(opts), { code: 22703, major: 2, minor: 27, patch: 3, text: '2.27.3' });
  const id = ncclGetUniqueId(opts);
  assert.deepEqual([...id.subarray(0, 4)], [1, 4, 7, 10]);
  assert.equal(id[127], (127 * 3 + 1) & 0xff);

  const sent = Uint8Array.from({ length: 128 }, (_, i) => 255 - i);
  const comm = NcclCommunicator.init(sent, 4, 2, opts);
  assert.equal(comm.handle, 0xC0111n);
  let r = read();
  assert.equal(r.call, 'init');
  assert.deepEqual(r.rec.slice(0, 2), [4, 2]);
  assert.deepEqual(r.id, sent, 'the 128-byte id arrives by value, intact');

  ncclGroup(() => {
    comm.send(0x1000n, 96, 'float8e4m3', 1, 0x77n);
    r = read();
    assert.equal(r.call, 'send');
    assert.deepEqual(r.rec.slice(0, 6), [0x1000, 96, 10, 1, 0xC0111, 0x77]);
    comm.recv(0x2000n, 5, 'bfloat16', 0, 0n);
    assert.deepEqual(read().rec.slice(0, 6), [0x2000, 5, 9, 0, 0xC0111, 0]);
  }, opts);
  assert.equal(read().call, 'groupEnd');
  comm.allGather(0x3000n, 0x4000n, 7, 'float32', 0x5n);
  assert.deepEqual(read().rec.slice(0, 6), [0x3000, 0x4000, 7, 7, 0xC0111, 0x5]);
  comm.allReduce(0x10n, 0x10n, 1, 'int32', 'sum', 0n);
  assert.deepEqual(read().rec.slice(0, 6), [0x10, 0x10, 1, 2, 0, 0xC0111]);
  assert.equal(comm.asyncError(), 6);

  assert.throws(() => comm.send(0x1000n, 1, 'int8', 3, 0n),
    /^NcclError: ncclSend failed: ncclSystemError \(2\): unhandled system error \(NCCL: Duplicate GPU detected[^)]*\) \[rank 2 -> 3, 1 x int8\]\. Hint: a system call failed/);
  assert.throws(() => comm.send(0x1000n, 1, 'int8', 4, 0n), /peer must be in \[0, 3\], got 4/);
  assert.throws(() => comm.send(0n, 1, 'int8', 0, 0n), /send buffer is a null device address for 1 elements/);
  assert.throws(() => comm.recv(0x1n, -1, 'int8', 0, 0n), /count must be a non-negative integer, got -1/);
  comm.destroy();
  assert.deepEqual([read().call, read().rec[0]], ['destroy', 0xC0111]);
  assert.throws(() => comm.send(0x1000n, 1, 'int8', 0, 0n), /the NCCL communicator of rank 2 was destroyed/);

  assert.throws(() => NcclCommunicator.init(sent, 7, 0, opts), (err: unknown) => {
    assert.ok(err instanceof NcclError);
    assert.equal(err.call, 'ncclCommInitRank');
    assert.equal(err.codeName, 'ncclInvalidUsage');
    assert.match(err.message, /^ncclCommInitRank failed: ncclInvalidUsage \(5\): invalid usage \(run with NCCL_DEBUG=WARN for details\) \(NCCL: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 0\) \[rank 0 of 7\]\. Hint: /);
    return true;
  });
  assert.equal(process.env.NCCL_NVLS_ENABLE, '0', 'NVLink multicast (NVLS) is switched off unless the user set it');
});
