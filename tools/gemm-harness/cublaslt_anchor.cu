// On-machine anchor: cuBLASLt dense FP8 (e4m3 x e4m3 -> bf16, f32 compute, per-tensor scales) on random data.
// Separate from harness.cu so that a machine without cublasLt.h still builds the harness.
//   nvcc -std=c++17 -O3 -o /tmp/lt cublaslt_anchor.cu -lcublasLt && /tmp/lt
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                                           \
  do {                                                                                                  \
    cudaError_t e_ = (x);                                                                               \
    if (e_ != cudaSuccess) {                                                                            \
      fprintf(stderr, "CUDA %s at %s:%d\n", cudaGetErrorName(e_), __FILE__, __LINE__);                  \
      exit(1);                                                                                          \
    }                                                                                                   \
  } while (0)
#define LT(x)                                                                                           \
  do {                                                                                                  \
    cublasStatus_t s_ = (x);                                                                            \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                  \
      fprintf(stderr, "cuBLASLt status %d at %s:%d: %s\n", (int)s_, __FILE__, __LINE__, #x);            \
      exit(1);                                                                                          \
    }                                                                                                   \
  } while (0)

// Random e4m3 codes without NaN (exponent field never 1111): random sign, |x| up to 240.
__global__ void fill_fp8(unsigned char* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    unsigned h = (unsigned)i * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = (unsigned char)(h & 0xF7u);
  }
}

static void run(cublasLtHandle_t lt, int M, int N, int K, int fast) {
  unsigned char *a, *b;
  void* d;
  float* one;
  void* ws;
  const size_t ws_bytes = 64ull << 20;
  CK(cudaMalloc(&a, (size_t)M * K));
  CK(cudaMalloc(&b, (size_t)N * K));
  CK(cudaMalloc(&d, (size_t)M * N * 2));
  CK(cudaMalloc(&one, 4));
  CK(cudaMalloc(&ws, ws_bytes));
  const float h_one = 1.0f;
  CK(cudaMemcpy(one, &h_one, 4, cudaMemcpyHostToDevice));
  fill_fp8<<<1024, 256>>>(a, (size_t)M * K, 1);
  fill_fp8<<<1024, 256>>>(b, (size_t)N * K, 2);
  CK(cudaDeviceSynchronize());

  cublasLtMatmulDesc_t op;
  LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;  // FP8 needs the "TN" form (both K-major)
  LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &one, sizeof(one)));
  LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &one, sizeof(one)));
  int8_t fa = (int8_t)fast;
  LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fa, sizeof(fa)));
  cublasLtMatrixLayout_t la, lb, lc;
  LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, K, M, K));
  LT(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, K, N, K));
  LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, M, N, M));
  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                          sizeof(ws_bytes)));
  cublasLtMatmulHeuristicResult_t heur;
  int found = 0;
  LT(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &heur, &found));
  if (!found) {
    printf("cuBLASLt: no algorithm for %dx%dx%d\n", M, N, K);
    return;
  }
  const float alpha = 1.0f, beta = 0.0f;
  auto call = [&] {
    LT(cublasLtMatmul(lt, op, &alpha, a, la, b, lb, &beta, d, lc, d, lc, &heur.algo, ws, ws_bytes, 0));
  };
  for (int i = 0; i < 5; i++) call();
  CK(cudaDeviceSynchronize());
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ts;
  for (int i = 0; i < 30; i++) {
    CK(cudaEventRecord(e0));
    call();
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    ts.push_back(ms * 1000.0f);
  }
  std::sort(ts.begin(), ts.end());
  const double us = ts[ts.size() / 2];
  printf("cuBLASLt fp8 %d x %d x %d fast_accum=%d: %.1f us, %.0f TFLOPS\n", M, N, K, fast, us,
         2.0 * M * N * (double)K / us * 1e-6);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(op);
  cudaFree(a);
  cudaFree(b);
  cudaFree(d);
  cudaFree(one);
  cudaFree(ws);
}

int main() {
  cublasLtHandle_t lt;
  LT(cublasLtCreate(&lt));
  run(lt, 8192, 8192, 4096, 1);
  run(lt, 8192, 4096, 4096, 1);
  run(lt, 8192, 4096, 4096, 0);
  run(lt, 32768, 4096, 4096, 1);
  cublasLtDestroy(lt);
  return 0;
}
