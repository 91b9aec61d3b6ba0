// The lightning indexer of V4-MODEL 4.5 on the GPU (ratio-4 layers): query preparation, scores over the visible
// compressed indexer keys (paged cache), and the top-k selection. Mirrors model.ts attention() (the qI / wI lines) and
// indexerTopk().
//
// attn_indexer_prepare: one CTA per (row, indexer head): qI = FP4sim(Hadamard(RoPE(qI))) in place, and the head
//   weight w = bf16(w * 1/(sqrt(di) sqrt(Hi))) (the scale comes from the host as one f32, as the CPU computes it).
//   attn_indexer_prepare_warp does the same with a warp per head (di 64 / 128 / 256), bit for bit.
// attn_indexer_scores: one CTA per (up to rows_per_cta rows, 256 visible keys), a thread per key in the epilogue:
//   score[n] = bf16(sum_h bf16(w_h * relu(bf16(qI_h . k_n)))), the head sum in double in the CPU's order (h ascending).
//   The dot products are exact integer arithmetic: qI and k sit on the FP4 grid times power-of-two block scales, so
//   each vector is small integers (|n| <= 127) times one power of two, the int8 dot product is exact in int32 and
//   converts to f32 exactly; the CPU's f64 sum of the same products is exact too, so both give the same f32 (the
//   argument, and the conditions checked per vector and per pair, at "exact integer q . k" below). A vector that is
//   not on such a grid (never for FP4-simulated data whose block scales lie within ~4 binades; checked, not assumed)
//   makes its pairs take the f64 loop in the CPU's order instead, so every score matches the CPU bit for bit and the
//   selection is the same, ties included. Each CTA converts its keys to int8 once and scores them against each of
//   its rows (rows of one item share keys: a prefill chunk). Two bodies:
//   - tensor cores (di 32 / 64 / 128, Hi a multiple of 16): per row, the int8 queries [Hi, di] times the keys
//     [256, di]^T with WMMA s8 -> s32 (exact integer sums, as __dp4a), the products tile [Hi, 256] in shared memory,
//     then the per-key epilogue down its column;
//   - CUDA cores (other head counts; di 256 / 512 take the f64 loop for every pair): the key's int8 words in
//     registers, 32 __dp4a per (key, head) at di 128 against broadcast loads of the int8 queries.
//   (The inputs are also exact in FP8 e4m3 given a per-row scale: docs/GPU-ATTENTION.md.)
// attn_indexer_topk: one CTA per row: the top min(k, visible) scores, ties to the lower block index, written in
//   ascending block order (what the CPU returns), -1 after them. Radix select on the 16-bit bf16 keys (two 8-bit
//   passes), then an in-order compaction with block scans. visible <= k selects every visible block without scores.
#include <mma.h>

#include "attn_common.cuh"

namespace {
constexpr int kPrepMaxDi = 1024;
constexpr int kScoreThreads = 256;
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kKeysPerCta = kScoreThreads;  // a thread per key
constexpr int kTopkThreads = 512;
constexpr int kTopkWarps = kTopkThreads / 32;
}  // namespace

extern "C" __global__ void __launch_bounds__(128)
attn_indexer_prepare(uint16_t* qi,                   // bf16 [rows, Hi, di] in place
                     uint16_t* w,                    // bf16 [rows, Hi] in place
                     const int* __restrict__ items, const int* __restrict__ row_item,
                     const float* __restrict__ freqs, int Hi, int di, int rd, float wscale) {
  __shared__ float x[kPrepMaxDi];
  __shared__ double tmp[kPrepMaxDi];
  const int r = blockIdx.x, h = blockIdx.y;
  const attn::Item it = attn::load_item(items, row_item[r]);
  const int T = it.pos + (r - it.row0);
  uint16_t* v = qi + ((size_t)r * Hi + h) * di;
  for (int i = threadIdx.x; i < di; i += blockDim.x) x[i] = attn::bf16_to_f32(v[i]);
  __syncthreads();
  const int nope = di - rd;
  for (int i = threadIdx.x; i < rd / 2; i += blockDim.x) attn::rope_pair(x[nope + 2 * i], x[nope + 2 * i + 1], freqs, i, T, false);
  __syncthreads();
  attn::hadamard_shared(x, tmp, di);
  for (int b = threadIdx.x; b < di / 32; b += blockDim.x) attn::fp4_sim_block(x + 32 * b, 32);
  __syncthreads();
  for (int i = threadIdx.x; i < di; i += blockDim.x) v[i] = attn::f32_to_bf16_bits(x[i]);
  if (threadIdx.x == 0) {
    uint16_t* wp = w + (size_t)r * Hi + h;
    *wp = attn::f32_to_bf16_bits(__fmul_rn(attn::bf16_to_f32(*wp), wscale));
  }
}

namespace {
// attn_indexer_prepare_warp's body for VPL = di / 32 values per lane (lane l holds values VPL l .. VPL l + VPL - 1).
// Every operation of attn_indexer_prepare in the same order on the same operands, so the bits are the same: the
// RoPE pairs lie in one lane (nope and VPL are even), the Hadamard butterflies of span h < VPL run in the lane, wider
// ones pair lanes l and l ^ (h / VPL) (the lower index adds, the upper one takes lower - upper, as tmp[i] = a + b,
// tmp[i + h] = a - b), and an FP4 block of 32 values is 32 / VPL consecutive lanes (its amax is a max: any order).
template <int VPL>
__device__ __forceinline__ void prepare_head_warp(uint16_t* v, const float* rope_c, const float* rope_s, int nope, int lane) {
  static_assert(VPL % 2 == 0 && VPL <= 32, "pairs in a lane");
  constexpr int n = 32 * VPL;
  float x[VPL];
  const int i0 = lane * VPL;
#pragma unroll
  for (int j = 0; j < VPL; j += 2) {
    const unsigned w2 = *reinterpret_cast<const unsigned*>(v + i0 + j);
    x[j] = __uint_as_float(w2 << 16);
    x[j + 1] = __uint_as_float(w2 & 0xffff0000u);
  }
#pragma unroll
  for (int j = 0; j < VPL; j += 2) {
    const int d = i0 + j;
    if (d >= nope) attn::rope_rotate(x[j], x[j + 1], rope_c[(d - nope) / 2], rope_s[(d - nope) / 2], false);
  }
  double t[VPL];
#pragma unroll
  for (int j = 0; j < VPL; j++) t[j] = (double)x[j];
#pragma unroll
  for (int h = 1; h < VPL; h <<= 1)
#pragma unroll
    for (int j = 0; j < VPL; j++)
      if ((j & h) == 0) {
        const double a = t[j], b = t[j + h];
        t[j] = a + b;
        t[j + h] = a - b;
      }
#pragma unroll
  for (int m = 1; m < 32; m <<= 1) {
    const bool upper = (lane & m) != 0;
#pragma unroll
    for (int j = 0; j < VPL; j++) {
      const double p = __shfl_xor_sync(0xffffffffu, t[j], m);
      t[j] = upper ? p - t[j] : t[j] + p;
    }
  }
  const double sc = 1.0 / sqrt((double)n);
#pragma unroll
  for (int j = 0; j < VPL; j++) x[j] = attn::bf16_round(__double2float_rn(t[j] * sc));
  // FP4 simulation per 32-value block (attn::fp4_sim_block)
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < VPL; j++) amax = fmaxf(amax, fabsf(x[j]));
#pragma unroll
  for (int m = 1; m < 32 / VPL; m <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, m));
  const float s = attn::pow2_ceil(__fmul_rn(fmaxf(amax, 6.0f * 1.17549435e-38f), 1.0f / 6.0f));
#pragma unroll
  for (int j = 0; j < VPL; j++) {
    float q = __fdiv_rn(x[j], s);
    q = fminf(fmaxf(q, -6.f), 6.f);
    x[j] = attn::bf16_round(__fmul_rn(attn::e2m1_round(q), s));
  }
#pragma unroll
  for (int j = 0; j < VPL; j += 2) {
    *reinterpret_cast<unsigned*>(v + i0 + j) = (unsigned)attn::f32_to_bf16_bits(x[j]) | ((unsigned)attn::f32_to_bf16_bits(x[j + 1]) << 16);
  }
}
}  // namespace

// attn_indexer_prepare for di in {64, 128, 256} with di - rd even (the launcher's indexerPrepareOnWarps): one CTA per
// row, a warp per head (heads warp, warp + 8, ...), the row's RoPE cos / sin computed once into shared memory
// (rd / 2 <= 128 pairs). Same results as attn_indexer_prepare bit for bit (prepare_head_warp); the block-per-head
// kernel spent most of its time at its 10 barriers a head (ncu, docs/GPU-ATTENTION.md).
extern "C" __global__ void __launch_bounds__(256)
attn_indexer_prepare_warp(uint16_t* qi, uint16_t* w, const int* __restrict__ items, const int* __restrict__ row_item,
                          const float* __restrict__ freqs, int Hi, int di, int rd, float wscale) {
  __shared__ float rope_c[128], rope_s[128];
  const int r = blockIdx.x;
  const attn::Item it = attn::load_item(items, row_item[r]);
  const int T = it.pos + (r - it.row0);
  for (int i = threadIdx.x; i < rd / 2; i += blockDim.x) attn::rope_cs(freqs, i, T, rope_c[i], rope_s[i]);
  for (int h = threadIdx.x; h < Hi; h += blockDim.x) {
    uint16_t* wp = w + (size_t)r * Hi + h;
    *wp = attn::f32_to_bf16_bits(__fmul_rn(attn::bf16_to_f32(*wp), wscale));
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int nope = di - rd;
  for (int h = warp; h < Hi; h += warps) {
    uint16_t* v = qi + ((size_t)r * Hi + h) * di;
    switch (di) {
      case 64: prepare_head_warp<2>(v, rope_c, rope_s, nope, lane); break;
      case 128: prepare_head_warp<4>(v, rope_c, rope_s, nope, lane); break;
      case 256: prepare_head_warp<8>(v, rope_c, rope_s, nope, lane); break;
      default: break;  // the launcher never picks this kernel for other di
    }
  }
}

namespace {
// ---- exact integer q . k (attn_indexer_scores' fast path) ----------------------------------------------------------
// A vector (one qI head, or one indexer key) of bf16 values v_i with maximum magnitude amax = m 2^E (1 <= m < 2) gets
// the unit 2^U, U = E - 6: amax / 2^U = 64 m is in [64, 128), so every |v_i / 2^U| < 128; it is the finest power of
// two with that bound, so a vector that is integers times ANY power of two within int8 passes with this one.
//  - Conversion (int8_of): g = fma(v, 2^-U, 1.5 * 2^23) rounds the exact product to an integer n in g's low mantissa
//    bits (|n| <= 127, so g's low byte is n in two's complement), and the residual fma(v, 2^-U, 1.5 * 2^23 - g) is
//    zero exactly when v / 2^U IS the integer n: otherwise v / 2^U - n is a nonzero multiple of 2^-149 (v is a bf16
//    value >= 2^-133, 2^-U >= 2^-16 because amax < 2^23) and rounds to nonzero. 2^-U is a normal f32 because
//    amax >= 2^-121. A vector with any nonzero residual (off the grid, NaN, Inf), or amax outside [2^-121, 2^23),
//    is flagged (kSlowExp) and all its pairs take the f64 loop. amax = 0: U = 0, all n = 0.
//  - Which vectors pass: FP4-simulated ones (each 32-block e2m1 values times its scale s_b, i.e. multiples of s_b / 2
//    up to 6 s_b, amax in [3, 6] s_max) whenever every block's s_b >= 2^-3 or 2^-4 of the largest: after the
//    Hadamard rotation the blocks' scales differ by a binade or so. test/indexer-int-dot.test.ts checks the rule.
//  - The dot of an accepted pair: s = sum nq_i nk_i is exact in int32 (__dp4a or the tensor cores' s8 MMA),
//    |s| <= di 127^2 < 2^21 (di <= 128); f32(s) by the magic-number subtraction is exact (|s| < 2^22), and s 2^F,
//    F = Uq + Uk, is exact in f32 while -126 <= F <= 105 (normal, finite; checked per pair, else the f64 loop). The CPU's f64 loop adds the products
//    q_i k_i = nq_i nk_i 2^F in order: every partial sum is an integer multiple of 2^F below 2^21 of them, so no step
//    rounds and its dot is s 2^F too; both round to the same f32 (the old kernel's f64 loop gave the same value).
constexpr int kSlowExp = -1000000;             // U of a vector that is not on such an integer grid: Uq + Uk fails the range check
constexpr float kMagic = 12582912.0f;          // 1.5 * 2^23: x + kMagic for an integer |x| < 2^22 has x in its low mantissa bits
constexpr int kMagicBits = 0x4B400000;

// The byte of n (two's complement, in the low 8 bits of the result) for v = n * 2^U given scale = 2^-U; any residual
// (v * scale not an integer, NaN, Inf) lands in err.
__device__ __forceinline__ unsigned int8_of(float v, float scale, unsigned& err) {
  const float g = __fmaf_rn(v, scale, kMagic);
  const float res = __fmaf_rn(v, scale, __fsub_rn(kMagic, g));
  err |= __float_as_uint(res) << 1;  // +0 or -0 when exact
  return __float_as_uint(g);
}

// scale = 2^-U and U for a vector with maximum magnitude amax (>= 0); false when outside the exact range.
__device__ __forceinline__ bool int_unit(float amax, float& scale, int& U) {
  const unsigned ef = __float_as_uint(amax) >> 23;  // amax is not negative
  if (amax == 0.f) { scale = 1.f; U = 0; return true; }  // all zero (a NaN is caught by the residual)
  if (ef < 6u || ef > 149u) return false;           // 2^-U must be a normal f32; no product may underflow to zero
  scale = __uint_as_float((260u - ef) << 23);        // 2^(133 - ef) = 2^-U
  U = (int)ef - 133;
  return true;
}

__device__ __forceinline__ unsigned pack4(unsigned a, unsigned b, unsigned c, unsigned d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// max |value| of one bf16 row of DI values, its 16-byte loads all in flight (the values die into the max).
template <int DI>
__device__ __forceinline__ float row_amax(const uint4* src) {
  float amax = 0.f;
#pragma unroll
  for (int c = 0; c < DI / 8; c++) {
    const uint4 r4 = src[c];
    const unsigned x[4] = {r4.x, r4.y, r4.z, r4.w};
#pragma unroll
    for (int t = 0; t < 4; t++) {
      amax = fmaxf(amax, fabsf(__uint_as_float(x[t] << 16)));
      amax = fmaxf(amax, fabsf(__uint_as_float(x[t] & 0xffff0000u)));
    }
  }
  return amax;
}

// One key row (di = DI bf16 values) into DI/4 packed int8 words in kw; returns its U (kSlowExp when not exact). Two
// passes over the row: the amax with every load in flight, then (from L1) the conversion one 16-byte chunk at a time,
// the words staged through this thread's own column of shared memory (stage[word * kKeysPerCta]); converting in
// registers, unrolled, kept every value live (~190 registers).
template <int DI>
__device__ __forceinline__ int key_to_int8(const uint16_t* row, int* stage, int (&kw)[DI / 4]) {
  const uint4* src = reinterpret_cast<const uint4*>(row);
  const float amax = row_amax<DI>(src);
  float scale; int U;
  if (!int_unit(amax, scale, U)) {
#pragma unroll
    for (int wd = 0; wd < DI / 4; wd++) kw[wd] = 0;  // (so the old words are dead during the loads)
    return kSlowExp;
  }
  unsigned err = 0;
#pragma unroll 1
  for (int c = 0; c < DI / 8; c++) {
    const uint4 r4 = src[c];
    const unsigned x[4] = {r4.x, r4.y, r4.z, r4.w};
    unsigned b[8];
#pragma unroll
    for (int t = 0; t < 4; t++) {
      b[2 * t] = int8_of(__uint_as_float(x[t] << 16), scale, err);
      b[2 * t + 1] = int8_of(__uint_as_float(x[t] & 0xffff0000u), scale, err);
    }
    stage[(2 * c) * kKeysPerCta] = (int)pack4(b[0], b[1], b[2], b[3]);
    stage[(2 * c + 1) * kKeysPerCta] = (int)pack4(b[4], b[5], b[6], b[7]);
  }
#pragma unroll
  for (int wd = 0; wd < DI / 4; wd++) kw[wd] = stage[wd * kKeysPerCta];
  return err ? kSlowExp : U;
}

// The reference dot product (the CPU's loop: f64, in order), for pairs off the integer grid.
__device__ __noinline__ float dot_double(const uint16_t* q, const uint16_t* k, int di) {
  double dot = 0.0;
  for (int i = 0; i < di; i++) dot += (double)attn::bf16_to_f32(q[i]) * (double)attn::bf16_to_f32(k[i]);
  return __double2float_rn(dot);
}

// attn_indexer_scores' body for di == DI (DI = 0: any di, every pair on the double path).
template <int DI>
__device__ __forceinline__ void indexer_scores_body(
    const uint16_t* __restrict__ qi, const uint16_t* __restrict__ w, const attn::Paged& cache,
    const int* __restrict__ items, const int* __restrict__ row_item, uint16_t* __restrict__ scores, int score_stride,
    int row_begin, int rows, int Hi, int di, int ratio, int topk, int rows_per_cta, unsigned char* smem) {
  const int g0 = blockIdx.x * rows_per_cta;
  const int nr = min(rows_per_cta, rows - g0);
  const int n0 = blockIdx.y * kKeysPerCta;
  signed char* qb = reinterpret_cast<signed char*>(smem);                         // [R, Hi, di] int8 of qI
  int* qexp = reinterpret_cast<int*>(smem + (size_t)rows_per_cta * Hi * di);     // [R, Hi] U of each head
  float* ws = reinterpret_cast<float*>(qexp + rows_per_cta * Hi);                 // [R, Hi] head weights
  int* kstage = reinterpret_cast<int*>(ws + rows_per_cta * Hi) + threadIdx.x;     // [di / 4, kKeysPerCta]: key words
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // the rows' queries as int8 + unit (a warp per head), and the head weights
  for (int p = warp; p < nr * Hi; p += kScoreWarps) {
    const int j = p / Hi, h = p % Hi;
    int U = kSlowExp;
    if constexpr (DI > 0) {
      constexpr int VPL = DI / 32;  // values per lane
      const uint16_t* src = qi + ((size_t)(row_begin + g0 + j) * Hi + h) * DI + lane * VPL;
      float v[VPL];
      float amax = 0.f;
#pragma unroll
      for (int t = 0; t < VPL; t++) { v[t] = attn::bf16_to_f32(src[t]); amax = fmaxf(amax, fabsf(v[t])); }
      amax = attn::warp_max(amax);
      float scale;
      if (int_unit(amax, scale, U)) {
        unsigned err = 0;
        signed char* dst = qb + (size_t)p * DI + lane * VPL;
#pragma unroll
        for (int t = 0; t < VPL; t++) dst[t] = (signed char)(int8_of(v[t], scale, err) & 0xffu);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) err |= __shfl_xor_sync(0xffffffffu, err, o);
        if (err) U = kSlowExp;
      }
    }
    if (lane == 0) qexp[p] = U;
  }
  for (int p = threadIdx.x; p < nr * Hi; p += blockDim.x) {
    const int j = p / Hi, h = p % Hi;
    ws[p] = attn::bf16_to_f32(w[(size_t)(row_begin + g0 + j) * Hi + h]);
  }
  __syncthreads();

  // a thread per key: its int8 words in registers, reloaded when the CTA's next row belongs to another item
  const int n = n0 + threadIdx.x;
  int kw[DI > 0 ? DI / 4 : 4];
  int uk = kSlowExp;
  int loaded_item = -1;
  for (int j = 0; j < nr; j++) {
    const int r = row_begin + g0 + j;
    const int ii = row_item[r];
    const attn::Item it = attn::load_item(items, ii);
    const int T = it.pos + (r - it.row0);
    const int visible = (T + 1) / ratio;
    if (visible <= topk || n >= visible) continue;  // top-k takes every block then / no such key for this row
    const uint16_t* krow = attn::paged_row(cache, it.slot, n);
    if constexpr (DI > 0) {
      if (ii != loaded_item) { uk = key_to_int8<DI>(krow, kstage, kw); loaded_item = ii; }
    }
    const signed char* qrow = qb + (size_t)j * Hi * DI;
    double acc = 0.0;  // the CPU's order: heads ascending
    for (int h = 0; h < Hi; h++) {
      float dot;
      const int F = qexp[j * Hi + h] + uk;
      if (DI > 0 && (unsigned)(F + 126) <= 231u) {  // both on the integer grid, 2^F in [2^-126, 2^105]
        const int4* qv = reinterpret_cast<const int4*>(qrow + (size_t)h * DI);
        int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma unroll
        for (int c = 0; c < (DI > 0 ? DI / 16 : 0); c++) {
          const int4 x = qv[c];
          s0 = __dp4a(x.x, kw[4 * c], s0);
          s1 = __dp4a(x.y, kw[4 * c + 1], s1);
          s2 = __dp4a(x.z, kw[4 * c + 2], s2);
          s3 = __dp4a(x.w, kw[4 * c + 3], s3);
        }
        const int s = (s0 + s1) + (s2 + s3);                                   // |s| <= di 127^2 < 2^22: exact
        const float fs = __fsub_rn(__int_as_float(kMagicBits + s), kMagic);   // = (float)s, exact
        dot = __fmul_rn(fs, __int_as_float((F + 127) << 23));                 // * 2^F, exact (normal range)
      } else {
        dot = dot_double(qi + ((size_t)r * Hi + h) * di, krow, di);
      }
      const float rl = fmaxf(attn::bf16_round(dot), 0.f);
      acc += (double)attn::bf16_round(__fmul_rn(ws[j * Hi + h], rl));
    }
    scores[(size_t)(g0 + j) * score_stride + n] = attn::f32_to_bf16_bits(__double2float_rn(acc));
  }
}

// One key row into 16-byte chunks of int8 (chunk c, values 16c..16c+15, at dst[c * chunk_stride]) for the tensor-core
// path; returns its U (kSlowExp when not exact: the chunks are then not written).
template <int DI>
__device__ __forceinline__ int key_to_int8_chunks(const uint16_t* row, int4* dst, int chunk_stride) {
  const uint4* src = reinterpret_cast<const uint4*>(row);
  const float amax = row_amax<DI>(src);
  float scale; int U;
  if (!int_unit(amax, scale, U)) return kSlowExp;
  unsigned err = 0;
#pragma unroll 1
  for (int c = 0; c < DI / 16; c++) {
    unsigned b[16];
#pragma unroll
    for (int half = 0; half < 2; half++) {
      const uint4 r4 = src[2 * c + half];
      const unsigned x[4] = {r4.x, r4.y, r4.z, r4.w};
#pragma unroll
      for (int t = 0; t < 4; t++) {
        b[8 * half + 2 * t] = int8_of(__uint_as_float(x[t] << 16), scale, err);
        b[8 * half + 2 * t + 1] = int8_of(__uint_as_float(x[t] & 0xffff0000u), scale, err);
      }
    }
    int4 o;
    o.x = (int)pack4(b[0], b[1], b[2], b[3]);
    o.y = (int)pack4(b[4], b[5], b[6], b[7]);
    o.z = (int)pack4(b[8], b[9], b[10], b[11]);
    o.w = (int)pack4(b[12], b[13], b[14], b[15]);
    dst[(size_t)c * chunk_stride] = o;
  }
  return err ? kSlowExp : U;
}

// One qI head (a warp; lane l holds values l*VPL.. in v) into int8 at dst[(i / 16) * chunk_stride + i % 16]; returns
// U (kSlowExp when not exact), the same in every lane.
template <int DI>
__device__ __forceinline__ int q_head_to_int8(const float (&v)[DI / 32], signed char* dst, int chunk_stride, int lane) {
  constexpr int VPL = DI / 32;  // values per lane (<= 4: within one 16-value chunk)
  float amax = 0.f;
#pragma unroll
  for (int t = 0; t < VPL; t++) amax = fmaxf(amax, fabsf(v[t]));
  amax = attn::warp_max(amax);
  float scale; int U;
  if (!int_unit(amax, scale, U)) return kSlowExp;
  unsigned err = 0;
#pragma unroll
  for (int t = 0; t < VPL; t++) {
    const int i = lane * VPL + t;
    dst[(i >> 4) * chunk_stride + (i & 15)] = (signed char)(int8_of(v[t], scale, err) & 0xffu);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) err |= __shfl_xor_sync(0xffffffffu, err, o);
  return err ? kSlowExp : U;
}

// The epilogue of one (row, key): score = bf16(sum_h bf16(w_h relu(bf16(dot_h)))), heads ascending (the CPU's order);
// dot_h from the exact integer product s_h when both vectors are on the grid and 2^F is in range, else the f64 loop.
template <typename SumOf>
__device__ __forceinline__ float score_of(SumOf sum_of, const int* qexp, const float* ws, int uk, int Hi, int di,
                                          const uint16_t* qrow, const uint16_t* krow) {
  double acc = 0.0;
  for (int h = 0; h < Hi; h++) {
    float dot;
    const int F = qexp[h] + uk;
    if ((unsigned)(F + 126) <= 231u) {  // both on the integer grid, 2^F in [2^-126, 2^105]
      const int s = sum_of(h);                                               // |s| <= di 127^2 < 2^22: exact
      const float fs = __fsub_rn(__int_as_float(kMagicBits + s), kMagic);   // = (float)s, exact
      dot = __fmul_rn(fs, __int_as_float((F + 127) << 23));                 // * 2^F, exact (normal range)
    } else {
      dot = dot_double(qrow + (size_t)h * di, krow, di);
    }
    const float rl = fmaxf(attn::bf16_round(dot), 0.f);
    acc += (double)attn::bf16_round(__fmul_rn(ws[h], rl));
  }
  return __double2float_rn(acc);
}

// The fast epilogue of one (row, key), for a key whose every pair passes score_of's range check (the caller checks
// the heads' unit range once): the same operations in the same order without the per-head test; the products come
// four heads at a time from the key's row of S, with the heads' 2^(Uq + 127) bits and weights beside them.
__device__ __forceinline__ float score_fast(const int* srow, const int* qsh, const float* ws, int uk, int Hi) {
  const int ub = uk << 23;
  double acc = 0.0;
  for (int h = 0; h < Hi; h += 4) {
    const int4 s4 = *reinterpret_cast<const int4*>(srow + h);
    const int4 q4 = *reinterpret_cast<const int4*>(qsh + h);
    const float4 w4 = *reinterpret_cast<const float4*>(ws + h);
    const int sv[4] = {s4.x, s4.y, s4.z, s4.w}, qv[4] = {q4.x, q4.y, q4.z, q4.w};
    const float wv[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const float fs = __fsub_rn(__int_as_float(kMagicBits + sv[u]), kMagic);  // = (float)s, exact
      const float dot = __fmul_rn(fs, __int_as_float(qv[u] + ub));            // * 2^F, exact (normal range)
      const unsigned b = __float_as_uint(dot);                                // finite: bf16 rounding without the NaN test
      const float rl = fmaxf(__uint_as_float((b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u), 0.f);
      acc += (double)attn::bf16_round(__fmul_rn(wv[u], rl));
    }
  }
  return __double2float_rn(acc);
}

// attn_indexer_scores' tensor-core body (di == DI in {32, 64, 128}, Hi a multiple of 16): per row, the int8 queries
// [Hi, DI] times the CTA's int8 keys [256, DI]^T on the tensor cores (WMMA s8 -> s32: exact integer sums), the
// products tile S in shared memory key-major (a key's heads contiguous), then a thread per key runs the epilogue.
// The keys load coalesced: DI / 8 lanes per key row, 16 bytes each, every load of a thread in flight at once (a thread
// per key row, one row after another, had most of the kernel's stall samples: docs/GPU-ATTENTION.md).
// Shared memory (indexerTcSmemBytes): qk [DI/16][Hi][16] int8 | kk [DI/16][256][16] int8 | S [256][Hi + 4] int32 |
// qexp [Hi] | qsh [Hi] ((Uq + 127) << 23) | ws [Hi] | ukey [256] | the warps' min / max of Uq [2][8].
template <int DI>
__device__ __forceinline__ void indexer_scores_tc(
    const uint16_t* __restrict__ qi, const uint16_t* __restrict__ w, const attn::Paged& cache,
    const int* __restrict__ items, const int* __restrict__ row_item, uint16_t* __restrict__ scores, int score_stride,
    int row_begin, int rows, int Hi, int ratio, int topk, int rows_per_cta, unsigned char* smem) {
  using namespace nvcuda;
  constexpr int LPK = DI / 8;                                   // lanes per key row (16 bytes each)
  constexpr int KPW = 32 / LPK;                                 // key rows per warp and step
  constexpr int kSteps = kKeysPerCta / (kScoreWarps * KPW);     // loads per thread (= LPK)
  const int g0 = blockIdx.x * rows_per_cta;
  const int nr = min(rows_per_cta, rows - g0);
  const int n0 = blockIdx.y * kKeysPerCta;
  const int ldS = Hi + 4;
  signed char* qk = reinterpret_cast<signed char*>(smem);
  signed char* kk = qk + (size_t)Hi * DI;
  int* S = reinterpret_cast<int*>(kk + (size_t)kKeysPerCta * DI);
  int* qexp = S + (size_t)kKeysPerCta * ldS;
  int* qsh = qexp + Hi;
  float* ws = reinterpret_cast<float*>(qsh + Hi);
  int* ukey = reinterpret_cast<int*>(ws + Hi);
  int* wrange = ukey + kKeysPerCta;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = n0 + threadIdx.x;
  int loaded_item = -1;
  for (int j = 0; j < nr; j++) {  // everything but the epilogue is uniform over the CTA
    const int r = row_begin + g0 + j;
    const int ii = row_item[r];
    const attn::Item it = attn::load_item(items, ii);
    const int visible = (it.pos + (r - it.row0) + 1) / ratio;
    if (visible <= topk || n0 >= visible) continue;  // the top-k kernel takes every block then / no keys here
    __syncthreads();  // the previous row's epilogue is done with S, qexp, ws (and the keys, for another item)
    if (ii != loaded_item) {
      int vis_last = visible;  // keys for every later row of this item in the CTA (rows of an item are consecutive)
      for (int jj = j + 1; jj < nr && row_item[row_begin + g0 + jj] == ii; jj++) vis_last = (it.pos + (row_begin + g0 + jj - it.row0) + 1) / ratio;
      const int sub = lane % LPK;
      uint4 raw[kSteps];
#pragma unroll
      for (int st = 0; st < kSteps; st++) {
        const int kn = n0 + (st * kScoreWarps + warp) * KPW + lane / LPK;
        raw[st] = kn < vis_last ? reinterpret_cast<const uint4*>(attn::paged_row(cache, it.slot, kn))[sub] : uint4{0u, 0u, 0u, 0u};
      }
#pragma unroll
      for (int st = 0; st < kSteps; st++) {
        const int kidx = (st * kScoreWarps + warp) * KPW + lane / LPK;
        const unsigned x[4] = {raw[st].x, raw[st].y, raw[st].z, raw[st].w};
        float amax = 0.f;
#pragma unroll
        for (int t = 0; t < 4; t++) {
          amax = fmaxf(amax, fabsf(__uint_as_float(x[t] << 16)));
          amax = fmaxf(amax, fabsf(__uint_as_float(x[t] & 0xffff0000u)));
        }
#pragma unroll
        for (int o = 1; o < LPK; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        float scale; int U;
        unsigned err = int_unit(amax, scale, U) ? 0u : 1u;  // uniform over the key's lanes
        if (!err) {
          unsigned b[8];
#pragma unroll
          for (int t = 0; t < 4; t++) {
            b[2 * t] = int8_of(__uint_as_float(x[t] << 16), scale, err);
            b[2 * t + 1] = int8_of(__uint_as_float(x[t] & 0xffff0000u), scale, err);
          }
          *reinterpret_cast<uint2*>(kk + ((size_t)(sub >> 1) * kKeysPerCta + kidx) * 16 + (sub & 1) * 8) =
              uint2{pack4(b[0], b[1], b[2], b[3]), pack4(b[4], b[5], b[6], b[7])};
        }
#pragma unroll
        for (int o = 1; o < LPK; o <<= 1) err |= __shfl_xor_sync(0xffffffffu, err, o);
        if (sub == 0) ukey[kidx] = (err || n0 + kidx >= vis_last) ? kSlowExp : U;
      }
      loaded_item = ii;
    }
    int umin = 0x7fffffff, umax = -0x7fffffff;  // this warp's heads' units
    for (int h0 = warp; h0 < Hi; h0 += 4 * kScoreWarps) {  // four heads per warp at a time: their loads in flight
      constexpr int VPL = DI / 32;
      float v[4][VPL];
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int h = h0 + u * kScoreWarps;
#pragma unroll
        for (int t = 0; t < VPL; t++) v[u][t] = h < Hi ? attn::bf16_to_f32(qi[((size_t)r * Hi + h) * DI + lane * VPL + t]) : 0.f;
      }
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int h = h0 + u * kScoreWarps;
        if (h < Hi) {  // uniform over the warp
          const int U = q_head_to_int8<DI>(v[u], qk + h * 16, Hi * 16, lane);
          umin = min(umin, U); umax = max(umax, U);
          if (lane == 0) { qexp[h] = U; qsh[h] = (U + 127) << 23; }
        }
      }
    }
    if (lane == 0) { wrange[warp] = umin; wrange[kScoreWarps + warp] = umax; }
    for (int h = threadIdx.x; h < Hi; h += blockDim.x) ws[h] = attn::bf16_to_f32(w[(size_t)r * Hi + h]);
    __syncthreads();
    // S[m][h] = sum_i q[h][i] k[m][i]: warp w takes keys 32w..32w+31 (two 16-key tiles) for every 16-head tile
    if (n0 + 32 * warp < visible) {
      for (int mt = 0; mt < Hi / 16; mt++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, int> c0, c1;
        wmma::fill_fragment(c0, 0);
        wmma::fill_fragment(c1, 0);
#pragma unroll
        for (int kt = 0; kt < DI / 16; kt++) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, signed char, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, signed char, wmma::col_major> b0, b1;
          wmma::load_matrix_sync(a, qk + ((size_t)kt * Hi + 16 * mt) * 16, 16);
          wmma::load_matrix_sync(b0, kk + ((size_t)kt * kKeysPerCta + 32 * warp) * 16, 16);
          wmma::load_matrix_sync(b1, kk + ((size_t)kt * kKeysPerCta + 32 * warp + 16) * 16, 16);
          wmma::mma_sync(c0, a, b0, c0);
          wmma::mma_sync(c1, a, b1, c1);
        }
        wmma::store_matrix_sync(S + (size_t)(32 * warp) * ldS + 16 * mt, c0, ldS, wmma::mem_col_major);
        wmma::store_matrix_sync(S + (size_t)(32 * warp + 16) * ldS + 16 * mt, c1, ldS, wmma::mem_col_major);
      }
    }
    __syncthreads();
    if (n < visible) {
      int qmin = wrange[0], qmax = wrange[kScoreWarps];
#pragma unroll
      for (int i = 1; i < kScoreWarps; i++) { qmin = min(qmin, wrange[i]); qmax = max(qmax, wrange[kScoreWarps + i]); }
      const int uk = ukey[threadIdx.x];
      const int* srow = S + (size_t)threadIdx.x * ldS;
      float sc;
      if (uk != kSlowExp && qmin != kSlowExp && qmin + uk >= -126 && qmax + uk <= 105) {
        sc = score_fast(srow, qsh, ws, uk, Hi);
      } else {
        sc = score_of([&](int h) { return srow[h]; }, qexp, ws, uk, Hi, DI, qi + (size_t)r * Hi * DI, attn::paged_row(cache, it.slot, n));
      }
      scores[(size_t)(g0 + j) * score_stride + n] = attn::f32_to_bf16_bits(sc);
    }
  }
}
}  // namespace

// grid (ceil(rows / rows_per_cta), ceil(max visible / kKeysPerCta)); dynamic shared memory
// rows_per_cta * Hi * (di + 8) + kKeysPerCta * di bytes (indexerScoreSmemBytes). Rows with visible <= topk are skipped (the top-k kernel takes every block).
extern "C" __global__ void __launch_bounds__(kScoreThreads)
attn_indexer_scores(const uint16_t* __restrict__ qi,  // bf16 [rows, Hi, di] (prepared)
                    const uint16_t* __restrict__ w,   // bf16 [rows, Hi] (scaled)
                    uint16_t* idx_base, const int* __restrict__ idx_table, int table_stride, int block_rows,
                    int layer_slot, int layers,
                    const int* __restrict__ items, const int* __restrict__ row_item,
                    uint16_t* __restrict__ scores,    // bf16 bits [chunk rows, score_stride]
                    int score_stride, int row_begin, int rows, int Hi, int di, int ratio, int topk, int rows_per_cta,
                    int tensor_cores) {  // 1: the tensor-core body where it applies (the launcher's indexerScoresOnTensorCores)
  extern __shared__ __align__(128) unsigned char smem[];  // (wmma wants 32-byte aligned tiles)
  const attn::Paged cache{idx_base, idx_table, table_stride, block_rows, layer_slot, layers, di};
  if (tensor_cores && Hi % 16 == 0) {
    switch (di) {
      case 32: indexer_scores_tc<32>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, ratio, topk, rows_per_cta, smem); return;
      case 64: indexer_scores_tc<64>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, ratio, topk, rows_per_cta, smem); return;
      case 128: indexer_scores_tc<128>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, ratio, topk, rows_per_cta, smem); return;
      default: break;
    }
  }
  switch (di) {
    case 32: indexer_scores_body<32>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, di, ratio, topk, rows_per_cta, smem); break;
    case 64: indexer_scores_body<64>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, di, ratio, topk, rows_per_cta, smem); break;
    case 128: indexer_scores_body<128>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, di, ratio, topk, rows_per_cta, smem); break;
    default: indexer_scores_body<0>(qi, w, cache, items, row_item, scores, score_stride, row_begin, rows, Hi, di, ratio, topk, rows_per_cta, smem); break;
  }
}

namespace {
// bf16 bits -> an unsigned key with the float order (-0 taken as +0, so the two zeros tie as on the CPU)
__device__ __forceinline__ unsigned order_key(uint16_t b) {
  if (b == 0x8000u) b = 0;
  return (b & 0x8000u) ? (~(unsigned)b & 0xffffu) : ((unsigned)b | 0x8000u);
}

// Exclusive prefix sum over the block; `total` gets the block's sum. ws: kTopkWarps ints of shared memory.
__device__ __forceinline__ int block_exclusive_scan(int v, int* ws, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) ws[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int s = lane < kTopkWarps ? ws[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    if (lane < kTopkWarps) ws[lane] = s;
  }
  __syncthreads();
  const int base = warp > 0 ? ws[warp - 1] : 0;
  total = ws[kTopkWarps - 1];
  __syncthreads();  // ws is reused by the next call
  return base + x - v;
}
}  // namespace

extern "C" __global__ void __launch_bounds__(kTopkThreads)
attn_indexer_topk(const uint16_t* __restrict__ scores, int score_stride, int row_begin,
                  const int* __restrict__ items, const int* __restrict__ row_item,
                  int* __restrict__ picks, int pick_stride, int ratio, int topk) {
  __shared__ int hist[256];
  __shared__ int ws[kTopkWarps];
  __shared__ int sel[3];  // threshold high byte / count above it, then the threshold key and equal keys to take
  const int r = row_begin + blockIdx.x;
  const attn::Item it = attn::load_item(items, row_item[r]);
  const int T = it.pos + (r - it.row0);
  const int visible = (T + 1) / ratio;
  const int k = min(topk, visible);
  int* out = picks + (size_t)r * pick_stride;
  for (int j = k + threadIdx.x; j < pick_stride; j += blockDim.x) out[j] = -1;
  if (k == visible) {
    for (int j = threadIdx.x; j < visible; j += blockDim.x) out[j] = j;
    return;
  }
  const uint16_t* s = scores + (size_t)blockIdx.x * score_stride;

  // pass 1: histogram of the high byte
  for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  for (int n = threadIdx.x; n < visible; n += blockDim.x) atomicAdd(&hist[order_key(s[n]) >> 8], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int cum = 0, b = 255;
    for (; b > 0; b--) { if (cum + hist[b] >= k) break; cum += hist[b]; }
    sel[0] = b; sel[1] = cum;  // keys with high byte > b: cum of them (< k)
  }
  __syncthreads();
  const unsigned hi = (unsigned)sel[0];
  const int above_hi = sel[1];
  __syncthreads();
  // pass 2: histogram of the low byte among keys with that high byte
  for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
  __syncthreads();
  for (int n = threadIdx.x; n < visible; n += blockDim.x) {
    const unsigned key = order_key(s[n]);
    if ((key >> 8) == hi) atomicAdd(&hist[key & 0xffu], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int need = k - above_hi;
    int cum = 0, b = 255;
    for (; b > 0; b--) { if (cum + hist[b] >= need) break; cum += hist[b]; }
    sel[0] = (int)((hi << 8) | (unsigned)b);
    sel[2] = need - cum;  // keys equal to the threshold to take, lowest block index first
  }
  __syncthreads();
  const unsigned thr = (unsigned)sel[0];
  const int eq_need = sel[2];

  // pass 3: in-order compaction
  int out_base = 0, eq_base = 0;
  for (int t0 = 0; t0 < visible; t0 += blockDim.x) {
    const int n = t0 + threadIdx.x;
    const unsigned key = n < visible ? order_key(s[n]) : 0u;
    const int gt = n < visible && key > thr;
    const int eq = n < visible && key == thr;
    int eq_total, sel_total;
    const int eq_rank = eq_base + block_exclusive_scan(eq, ws, eq_total);
    const int take = gt || (eq && eq_rank < eq_need);
    const int pos = out_base + block_exclusive_scan(take, ws, sel_total);
    if (take) out[pos] = n;
    eq_base += eq_total;
    out_base += sel_total;
  }
}
