// The emulator's <mma.h>: the subset of CUDA's warp matrix API (nvcuda::wmma) the attention-side kernels use
// (fragments, fill / load / store / mma_sync; s8 x s8 -> s32 and f64 m8n8k4). Each thread of the warp holds the WHOLE tile in its fragment and
// does the whole operation itself (the GPU spreads it over the lanes in an unspecified layout; kernels must not rely
// on that layout, and these do not touch fragment elements). The documented requirements are checked: 256-bit
// aligned pointers, ldm a multiple of 16 bytes.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <type_traits>

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K> struct tile_dims;
template <int M, int N, int K> struct tile_dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile_dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile_dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = tile_dims<Use, M, N, K>::rows, cols = tile_dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  T x[rows * cols];  // [row][col], the whole tile (emulator only)
};

inline void emu_check(const void* p, unsigned ldm, size_t elem, const char* what) {
  if ((reinterpret_cast<uintptr_t>(p) & 31u) != 0 || (ldm * elem) % 16 != 0) {
    std::fprintf(stderr, "wmma %s: pointer %p not 256-bit aligned or ldm %u (x %zu bytes) not a multiple of 16 bytes\n", what, p, ldm, elem);
    std::abort();
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, T v) {
  for (int i = 0; i < f.num_elements; i++) f.x[i] = v;
}

// row_major: element (r, c) at p[r * ldm + c]; col_major: at p[c * ldm + r] (r, c: the fragment's row and column)
template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  emu_check(p, ldm, sizeof(T), "load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::rows; r++)
    for (int c = 0; c < F::cols; c++) f.x[r * F::cols + c] = std::is_same_v<Layout, col_major> ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}

template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const T* p, unsigned ldm, layout_t l) {
  emu_check(p, ldm, sizeof(T), "load_matrix_sync");
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) f.x[r * N + c] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t l) {
  emu_check(p, ldm, sizeof(T), "store_matrix_sync");
  for (int r = 0; r < M; r++)
    for (int c = 0; c < N; c++) (l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.x[r * N + c];
}

// d = a b + c, integer products summed exactly (int32 wrap-around as the GPU's IMMA)
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
  TC out[M * N];
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      uint32_t s = static_cast<uint32_t>(c.x[m * N + n]);
      for (int k = 0; k < K; k++) s += static_cast<uint32_t>(static_cast<int>(a.x[m * K + k]) * static_cast<int>(b.x[k * N + n]));
      out[m * N + n] = static_cast<TC>(s);
    }
  for (int i = 0; i < M * N; i++) d.x[i] = out[i];
}
// d = a b + c in f64 (m8n8k4): per element one fma chain over k from c (the GPU's order inside a step is unspecified;
// kernels must not depend on it)
template <int M, int N, int K, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, double, void>& d, const fragment<matrix_a, M, N, K, double, LA>& a,
                     const fragment<matrix_b, M, N, K, double, LB>& b, const fragment<accumulator, M, N, K, double, void>& c) {
  double out[M * N];
  for (int m = 0; m < M; m++)
    for (int n = 0; n < N; n++) {
      double s = c.x[m * N + n];
      for (int k = 0; k < K; k++) s = std::fma(a.x[m * K + k], b.x[k * N + n], s);
      out[m * N + n] = s;
    }
  for (int i = 0; i < M * N; i++) d.x[i] = out[i];
}
}  // namespace wmma
}  // namespace nvcuda
