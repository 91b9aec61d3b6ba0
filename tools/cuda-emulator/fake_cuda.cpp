// A stand-in for libcuda.so.1 that runs plain-CUDA-C++ kernels on the CPU (see README.md): "device" memory is host
// memory, every call is synchronous, cuModuleGetFunction finds kernels compiled into this library from the .cu
// sources (build.sh), cuLaunchKernel runs each block's threads as fibers. Load it with MEGAMOE_LIBCUDA=<this .so>.
// Implements what src/cuda/driver.ts binds; graphs and tensor maps answer "not supported".
#include "emu_shim.h"
#include "emu_registry.h"

#include <ucontext.h>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace emu {

struct Fiber {
  ucontext_t ctx;
  Dim3 tid;
  int linear = 0;
  bool done = false;
};

struct Barrier {
  int count = 0;
  int expected = 0;
  unsigned gen = 0;
};

Dim3 g_block_idx{0, 0, 0}, g_block_dim{1, 1, 1}, g_grid_dim{1, 1, 1};
static ucontext_t g_sched;
static Fiber* g_cur = nullptr;
static std::vector<Fiber> g_fibers;
static std::vector<std::vector<char>> g_stacks;
static Barrier g_block_bar;
static std::vector<Barrier> g_warp_bars;
static std::vector<uint64_t> g_slots;  // [warps * 32]
static std::vector<unsigned char> g_dyn;
static const KernelEntry* g_entry = nullptr;
static void** g_params = nullptr;
constexpr size_t kStack = 256 * 1024;

Fiber* current() { return g_cur; }
const Dim3& thread_idx() { return g_cur->tid; }
unsigned char* dyn_smem() {  // 128-byte aligned, as the GPU's dynamic shared memory (wmma needs 32)
  const uintptr_t a = reinterpret_cast<uintptr_t>(g_dyn.data());
  return g_dyn.data() + ((128 - (a & 127)) & 127);
}
int lane_id() { return g_cur->linear & 31; }

static void yield() { swapcontext(&g_cur->ctx, &g_sched); }

static void arrive(Barrier& b) {
  const unsigned gen = b.gen;
  if (++b.count >= b.expected) { b.count = 0; b.gen++; return; }
  while (b.gen == gen) yield();
}

// a finished thread no longer takes part: release a barrier the others are already waiting at
static void drop(Barrier& b) {
  b.expected--;
  if (b.expected > 0 && b.count >= b.expected) { b.count = 0; b.gen++; }
}

void sync_block() { arrive(g_block_bar); }
void sync_warp() { arrive(g_warp_bars[g_cur->linear >> 5]); }

uint64_t exchange(uint64_t mine, int src_lane) {
  const int w = g_cur->linear >> 5;
  g_slots[w * 32 + lane_id()] = mine;
  sync_warp();
  const uint64_t v = g_slots[w * 32 + (src_lane & 31)];
  sync_warp();
  return v;
}

static void trampoline() {
  g_entry->invoke(g_params);
  g_cur->done = true;
  drop(g_block_bar);
  drop(g_warp_bars[g_cur->linear >> 5]);
  // returning switches to uc_link (the scheduler)
}

static void run_block(int threads) {
  g_fibers.assign(threads, Fiber{});
  if ((int)g_stacks.size() < threads) g_stacks.resize(threads, std::vector<char>(kStack));
  const int warps = (threads + 31) / 32;
  g_block_bar = Barrier{0, threads, 0};
  g_warp_bars.assign(warps, Barrier{});
  for (int w = 0; w < warps; w++) g_warp_bars[w].expected = std::min(32, threads - 32 * w);
  g_slots.assign(warps * 32, 0);
  for (int t = 0; t < threads; t++) {
    Fiber& f = g_fibers[t];
    f.linear = t;
    f.tid = Dim3{t % g_block_dim.x, (t / g_block_dim.x) % g_block_dim.y, t / (g_block_dim.x * g_block_dim.y)};
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = g_stacks[t].data();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &g_sched;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (int alive = threads; alive > 0;) {
    alive = 0;
    for (int t = 0; t < threads; t++) {
      Fiber& f = g_fibers[t];
      if (f.done) continue;
      g_cur = &f;
      swapcontext(&g_sched, &f.ctx);
      if (!f.done) alive++;
    }
  }
  g_cur = nullptr;
}

static std::map<std::string, KernelEntry>& registry() {
  static std::map<std::string, KernelEntry> r;
  return r;
}

}  // namespace emu

void emu_register(const char* name, emu::KernelEntry e) { emu::registry()[name] = e; }

// ---- the driver API ---------------------------------------------------------------------------------------------
namespace {
size_t g_allocated = 0;
std::map<uintptr_t, size_t> g_allocs;
constexpr size_t kTotal = 80ull << 30;
uint64_t g_next_handle = 0x1000;
std::map<std::string, int> g_modules_loaded;

template <typename T>
void put(uintptr_t out, T v) { std::memcpy(reinterpret_cast<void*>(out), &v, sizeof(T)); }

int alloc(uintptr_t out, size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes ? (bytes + 255) / 256 * 256 : 256) != 0) return 2;  // CUDA_ERROR_OUT_OF_MEMORY
  g_allocs[reinterpret_cast<uintptr_t>(p)] = bytes;
  g_allocated += bytes;
  put<uint64_t>(out, reinterpret_cast<uint64_t>(p));
  return 0;
}
int release(uint64_t ptr) {
  auto it = g_allocs.find(ptr);
  if (it == g_allocs.end()) return 1;  // CUDA_ERROR_INVALID_VALUE
  g_allocated -= it->second;
  g_allocs.erase(it);
  std::free(reinterpret_cast<void*>(ptr));
  return 0;
}
}  // namespace

extern "C" {
int cuInit(unsigned) { return 0; }
int cuDriverGetVersion(uintptr_t out) { put<int>(out, 13000); return 0; }
int cuGetErrorString(int code, uintptr_t out) {
  static const char* msg = "emulated CUDA error (tools/cuda-emulator)";
  (void)code;
  put<const char*>(out, msg);
  return 0;
}
int cuDeviceGetCount(uintptr_t out) { put<int>(out, 1); return 0; }
int cuDeviceGet(uintptr_t out, int) { put<int>(out, 0); return 0; }
int cuDeviceGetName(uint8_t* name, int len, int) {
  std::snprintf(reinterpret_cast<char*>(name), len, "CPU emulation of sm_90 (tools/cuda-emulator)");
  return 0;
}
int cuDeviceGetAttribute(uintptr_t out, int attr, int) {
  int v = 0;
  switch (attr) {
    case 13: v = 1980000; break;     // clock kHz
    case 16: v = 132; break;         // SMs
    case 36: v = 2619000; break;     // memory clock kHz
    case 37: v = 6144; break;        // bus width
    case 38: v = 60 << 20; break;    // L2
    case 39: v = 2048; break;
    case 75: v = 9; break;           // compute capability 9.0
    case 76: v = 0; break;
    case 81: v = 233472; break;
    case 82: v = 65536; break;
    case 97: v = 232448; break;      // opt-in shared memory per block
    case 115: v = 1; break;
    default: v = 0;
  }
  put<int>(out, v);
  return 0;
}
int cuDeviceTotalMem_v2(uintptr_t out, int) { put<uint64_t>(out, kTotal); return 0; }
int cuDeviceGetPCIBusId(uint8_t* bus, int len, int) { std::snprintf(reinterpret_cast<char*>(bus), len, "0000:00:00.0"); return 0; }
int cuDevicePrimaryCtxRetain(uintptr_t out, int) { put<uint64_t>(out, 1); return 0; }
int cuDevicePrimaryCtxRelease_v2(int) { return 0; }
int cuCtxSetCurrent(uintptr_t) { return 0; }
int cuCtxGetCurrent(uintptr_t out) { put<uint64_t>(out, 1); return 0; }
int cuCtxSynchronize() { return 0; }
int cuMemGetInfo_v2(uintptr_t f, uintptr_t t) { put<uint64_t>(f, kTotal - g_allocated); put<uint64_t>(t, kTotal); return 0; }
int cuMemAlloc_v2(uintptr_t out, size_t bytes) { return alloc(out, bytes); }
int cuMemFree_v2(uint64_t p) { return release(p); }
int cuMemAllocAsync(uintptr_t out, size_t bytes, uintptr_t) { return alloc(out, bytes); }
int cuMemFreeAsync(uint64_t p, uintptr_t) { return release(p); }
int cuMemHostAlloc(uintptr_t out, size_t bytes, unsigned) { void* p = std::malloc(bytes ? bytes : 1); put<void*>(out, p); return 0; }
int cuMemFreeHost(uintptr_t p) { std::free(reinterpret_cast<void*>(p)); return 0; }
int cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t n) { std::memcpy(reinterpret_cast<void*>(dst), src, n); return 0; }
int cuMemcpyDtoH_v2(void* dst, uint64_t src, size_t n) { std::memcpy(dst, reinterpret_cast<void*>(src), n); return 0; }
int cuMemcpyDtoD_v2(uint64_t dst, uint64_t src, size_t n) { std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n); return 0; }
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, uintptr_t) { return cuMemcpyHtoD_v2(dst, src, n); }
int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, uintptr_t) { return cuMemcpyDtoH_v2(dst, src, n); }
int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, uintptr_t) { return cuMemcpyDtoD_v2(dst, src, n); }
int cuMemsetD8_v2(uint64_t dst, uint8_t v, size_t n) { std::memset(reinterpret_cast<void*>(dst), v, n); return 0; }
int cuMemsetD32_v2(uint64_t dst, uint32_t v, size_t n) { auto* p = reinterpret_cast<uint32_t*>(dst); for (size_t i = 0; i < n; i++) p[i] = v; return 0; }
int cuMemsetD8Async(uint64_t dst, uint8_t v, size_t n, uintptr_t) { return cuMemsetD8_v2(dst, v, n); }
int cuMemsetD32Async(uint64_t dst, uint32_t v, size_t n, uintptr_t) { return cuMemsetD32_v2(dst, v, n); }
int cuStreamCreate(uintptr_t out, unsigned) { put<uint64_t>(out, g_next_handle++); return 0; }
int cuStreamDestroy_v2(uintptr_t) { return 0; }
int cuStreamSynchronize(uintptr_t) { return 0; }
int cuStreamQuery(uintptr_t) { return 0; }
int cuStreamWaitEvent(uintptr_t, uintptr_t, unsigned) { return 0; }
int cuEventCreate(uintptr_t out, unsigned) { put<uint64_t>(out, g_next_handle++); return 0; }
int cuEventDestroy_v2(uintptr_t) { return 0; }
int cuEventRecord(uintptr_t, uintptr_t) { return 0; }
int cuEventSynchronize(uintptr_t) { return 0; }
int cuEventQuery(uintptr_t) { return 0; }
int cuEventElapsedTime_v2(uintptr_t out, uintptr_t, uintptr_t) { put<float>(out, 0.f); return 0; }
int cuModuleLoadData(uintptr_t out, const uint8_t*) { put<uint64_t>(out, g_next_handle++); return 0; }
int cuModuleUnload(uintptr_t) { return 0; }
int cuModuleGetFunction(uintptr_t out, uintptr_t, const char* name) {
  auto& r = emu::registry();
  auto it = r.find(name);
  if (it == r.end()) return 500;  // CUDA_ERROR_NOT_FOUND: not a kernel this emulator carries
  put<uint64_t>(out, reinterpret_cast<uint64_t>(&it->second));
  return 0;
}
int cuFuncSetAttribute(uintptr_t, int, int) { return 0; }
int cuFuncGetAttribute(uintptr_t out, int, uintptr_t) { put<int>(out, 0); return 0; }
int cuLaunchKernel(uintptr_t fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem,
                   uintptr_t, uintptr_t params, uintptr_t) {
  const auto* e = reinterpret_cast<const emu::KernelEntry*>(fn);
  const int threads = (int)(bx * by * bz);
  if (threads < 1 || threads > 1024 || gx == 0 || gy == 0 || gz == 0) return 1;
  emu::g_entry = e;
  emu::g_params = reinterpret_cast<void**>(params);
  emu::g_grid_dim = emu::Dim3{gx, gy, gz};
  emu::g_block_dim = emu::Dim3{bx, by, bz};
  emu::g_dyn.assign(smem + 16 + 128, 0xcd);  // poisoned: a kernel that reads before it writes shows up as garbage
  // Copy the argument values first: they live in the caller's reusable block only during this call anyway.
  for (unsigned z = 0; z < gz; z++)
    for (unsigned y = 0; y < gy; y++)
      for (unsigned x = 0; x < gx; x++) {
        emu::g_block_idx = emu::Dim3{x, y, z};
        emu::run_block(threads);
      }
  return 0;
}
int cuTensorMapEncodeTiled(uintptr_t, int, uint32_t, uint64_t, const uint64_t*, const uint64_t*, const uint32_t*, const uint32_t*, int, int, int, int) { return 801; }
// clusters (the fused MoE kernel's occupancy query): not emulated
int cuOccupancyMaxActiveClusters(uintptr_t out, uintptr_t, uintptr_t) { put<int>(out, 0); return 801; }
int cuStreamBeginCapture_v2(uintptr_t, int) { return 801; }  // CUDA_ERROR_NOT_SUPPORTED
int cuStreamEndCapture(uintptr_t, uintptr_t) { return 801; }
int cuGraphInstantiateWithFlags(uintptr_t, uintptr_t, uint64_t) { return 801; }
int cuGraphLaunch(uintptr_t, uintptr_t) { return 801; }
int cuGraphExecDestroy(uintptr_t) { return 0; }
int cuGraphDestroy(uintptr_t) { return 0; }
int cuDeviceCanAccessPeer(uintptr_t out, int, int) { put<int>(out, 0); return 0; }
int cuCtxEnablePeerAccess(uintptr_t, unsigned) { return 0; }
}
