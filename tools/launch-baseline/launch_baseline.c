// The same launch-overhead measurement as src/cuda/launch-overhead.ts, in plain C against the driver API, so the cost
// that the TypeScript layer (koffi + argument packing) adds can be read off as the difference. Dev tool, not product.
// Build + run on a GPU host (after measureLaunchOverhead() has compiled the empty kernel into the cache):
//   gcc -O2 -I/usr/local/cuda/include tools/launch-baseline/launch_baseline.c -o /tmp/lb -lcuda
//   /tmp/lb ~/.cache/megamoe/kernels/megamoe_empty-*.cubin
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char* n_; cuGetErrorName(r_, &n_); \
  fprintf(stderr, "%s failed: %s\n", #x, n_); return 1; } } while (0)

static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return (x > y) - (x < y); }

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s megamoe_empty.cubin\n", argv[0]); return 2; }
  CUdevice dev; CUcontext ctx; CUmodule mod; CUfunction f; CUstream s; CUgraph g; CUgraphExec ge;
  CHECK(cuInit(0)); CHECK(cuDeviceGet(&dev, 0)); CHECK(cuDevicePrimaryCtxRetain(&ctx, dev)); CHECK(cuCtxSetCurrent(ctx));
  CHECK(cuModuleLoad(&mod, argv[1])); CHECK(cuModuleGetFunction(&f, mod, "megamoe_empty"));
  CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  enum { BATCHES = 100, PER = 100 };
  double t[BATCHES];
  for (int i = 0; i < 200; i++) CHECK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
  for (int b = 0; b < BATCHES; b++) {
    CHECK(cuStreamSynchronize(s));
    double t0 = now_us();
    for (int i = 0; i < PER; i++) cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL);
    t[b] = (now_us() - t0) / PER;
  }
  CHECK(cuStreamSynchronize(s));
  qsort(t, BATCHES, sizeof(double), cmp);
  printf("C cuLaunchKernel (empty kernel): median %.2f us, p10 %.2f, p90 %.2f\n", t[BATCHES / 2], t[BATCHES / 10], t[BATCHES * 9 / 10]);
  CHECK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
  CHECK(cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
  CHECK(cuStreamEndCapture(s, &g)); CHECK(cuGraphInstantiate(&ge, g, 0));
  for (int i = 0; i < 50; i++) CHECK(cuGraphLaunch(ge, s));
  for (int b = 0; b < BATCHES; b++) {
    CHECK(cuStreamSynchronize(s));
    double t0 = now_us();
    for (int i = 0; i < PER; i++) cuGraphLaunch(ge, s);
    t[b] = (now_us() - t0) / PER;
  }
  CHECK(cuStreamSynchronize(s));
  qsort(t, BATCHES, sizeof(double), cmp);
  printf("C cuGraphLaunch (1 empty kernel): median %.2f us, p10 %.2f, p90 %.2f\n", t[BATCHES / 2], t[BATCHES / 10], t[BATCHES * 9 / 10]);
  return 0;
}
