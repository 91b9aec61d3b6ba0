// The non-attention row operations of the DeepSeek-V4 forward on the GPU, each the CPU forward's op bit for bit
// (the arithmetic rules are model/row_ops.cuh's header; launchers: src/gpu-model/, registered in model-ops.ts):
//
//   mo_embed        ids int32 [T] -> bf16 rows of the embedding [V, D], `copies` times per token (the hc streams
//                   start as hc identical copies, V4-MODEL 1). An id outside [0, V) writes NaN rows and bumps *bad.
//   mo_rms_norm     RMSNorm over rows of n (ops.ts rmsNorm, with or without weight), bf16 out, optionally fused
//                   act_quant (ops.ts actQuant) into e4m3 [rows, n] + f32 scales MN-major [n/128, sf_ld] (the grouped
//                   GEMM's A / sfa). With do_norm = 0 it is act_quant alone (y may be null).
//   mo_rope         interleaved RoPE on the last rd dims of every head (rope.ts RopeTable.apply), in place,
//                   positions from device memory, forward or inverse.
//   mo_hc_pre       hc_pre (model.ts hcPre = fp32 mixing logits + hcMix: rms factor, pre / post, Sinkhorn comb,
//                   y = bf16(sum pre_j Hs_j)), optionally fused with the following RMSNorm and act_quant.
//   mo_hc_head      hc_head (model.ts hcHead: sigmoid-only weights, no post / comb), optionally fused with the
//                   final norm.
//   mo_hc_post      hc_post (model.ts hcPost): out_k = bf16(post_k f + sum_j comb[j, k] R_j), f64 inside.
//   mo_mtp_combine  the MTP block's input streams (model.ts mtpNow): bf16(e_proj(e) + h_proj(h)) per stream.
//   mo_q_renorm     the per-head RMS renorm of q in bf16 arithmetic (model.ts qHeadRenorm), in place.
//
// Work split: mo_rms_norm one warp per row (16-byte loads, 8 values per lane; a 128-column scale block is 16 lanes),
// at few rows a row's 256-column steps split over several warps (each recomputing the row's sum of squares);
// mo_hc_pre / mo_hc_head one 256-thread block per token (the 4 x D streams, 24 dot products over 4D and the tiny
// Sinkhorn, one thread per matrix element), at small T after mo_hc_pre_mix / mo_hc_head_mix (the dot products and the sum of squares
// over (1024-column chunks, groups of 4 logits, tokens) blocks into f64 partials that the per-token kernel adds in
// chunk order: one block per token leaves one SM to read all of hc_fn); mo_hc_post one thread per (token, 8
// columns); mo_rope (one block per row, several at few rows) with the row's cos / sin in shared memory. Shapes are launch arguments (one
// compiled variant), except the stream count MO_HC (V4: 4), which sizes the per-thread accumulators.
#include <mma.h>

#include "common.cuh"
#include "cp_async.cuh"
#include "model/row_ops.cuh"

#ifndef MO_HC
#define MO_HC 4
#endif

namespace {
constexpr int kHc = MO_HC;
constexpr int kMixPre = (2 + kHc) * kHc;  // 24 for hc 4: pre, post, comb
constexpr int kHcThreads = 256;
constexpr int kHcWarps = kHcThreads / 32;
constexpr int kNormWarpsPerBlock = 8;
static_assert(kHc >= 1 && kHc <= 8, "MO_HC: 1..8 streams");

__device__ __forceinline__ double f64_from_bits(unsigned long long b) { return __longlong_as_double((long long)b); }
}  // namespace

// ---------------------------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(256) mo_embed(const int* __restrict__ ids, const uint4* __restrict__ table,
                                                           int vocab, int dim, int copies, int tokens,
                                                           uint4* __restrict__ out, int* __restrict__ bad) {
  const int t = blockIdx.x;
  if (t >= tokens) return;
  const int id = ids[t];
  const bool ok = id >= 0 && id < vocab;
  if (!ok && threadIdx.x == 0 && bad) atomicAdd(bad, 1);
  const int chunks = dim / 8;
  const uint4 nan = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const uint4 v = ok ? __ldg(table + (size_t)id * chunks + c) : nan;
    for (int k = 0; k < copies; k++) out[((size_t)t * copies + k) * chunks + c] = v;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Work split: warp g (blockIdx.x * 8 + warp) takes row g / split and its part g % split: the 256-column steps
// [part * per, +per) of the row, per = ceil(ceil(n / 256) / split) (the host, row-ops.ts rmsNormSplit, picks split
// from rows and n: 1 where rows alone fill the GPU, so many rows run exactly as one warp per row; at few rows up to
// one step per warp). Bit-identical for every split: a step's outputs depend only on its columns, the row's rms
// factor and, for act_quant, its own two 128-column scale blocks (16 lanes each, never shared between steps), so
// which warp runs a step changes nothing; and each warp of a row recomputes the row's sum of squares over ALL its
// columns in the order of split 1 (lane l: columns 8l + 256i, i ascending, then warp_sum_f64's butterfly), so every
// part gets the same f64 ss bit for bit whether or not that sum is exact (it re-reads the row: cheap at few rows).
extern "C" __global__ void __launch_bounds__(kNormWarpsPerBlock * 32)
mo_rms_norm(const mo::u16* __restrict__ x, long long x_stride, const float* __restrict__ w,
            unsigned long long eps_bits, int rows, int n, int do_norm, mo::u16* __restrict__ y, long long y_stride,
            mo::u8* __restrict__ q, float* __restrict__ sf, int sf_ld, int pow2, int split) {
  const long long g = (long long)blockIdx.x * kNormWarpsPerBlock + (threadIdx.x >> 5);
  const int row = (int)(g / split);
  const int part = (int)(g - (long long)row * split);
  if (row >= rows) return;  // whole warps leave together
  const int steps = (n + 255) / 256;
  const int per = (steps + split - 1) / split;
  const int s0 = part * per;
  const int s1 = min(steps, s0 + per);
  if (s0 >= s1) return;  // an empty part (the host avoids them): whole warps leave together
  const int lane = threadIdx.x & 31;
  const mo::u16* xr = x + (size_t)row * x_stride;
  float rs = 1.0f;
  if (do_norm) {
    double ss = 0.0;
    for (int c = lane * 8; c < n; c += 256) {
      float f[8];
      mo::unpack8(__ldg(reinterpret_cast<const uint4*>(xr + c)), f);
#pragma unroll
      for (int i = 0; i < 8; i++) ss += (double)f[i] * (double)f[i];
    }
    rs = mo::rms_factor(mo::warp_sum_f64(ss), n, f64_from_bits(eps_bits));
  }
  for (int st = s0; st < s1; st++) {  // uniform trip count: every lane reaches the shuffles in quant8
    const int c = st * 256 + lane * 8;
    const bool valid = c < n;
    float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (valid) {
      mo::unpack8(__ldg(reinterpret_cast<const uint4*>(xr + c)), f);
      if (do_norm) {
#pragma unroll
        for (int i = 0; i < 8; i++) f[i] = mo::norm_value(f[i], rs, w, c + i);
      }
    }
    mo::store_row_step(f, valid, lane, row, c, n, y, y_stride, q, sf, sf_ld, pow2 != 0);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// RoPE: x bf16, row r's head h starts at r * row_stride + h * head_stride; the pairs sit at rope_off + 2i, 2i + 1.
extern "C" __global__ void __launch_bounds__(256) mo_rope(mo::u16* __restrict__ x, const int* __restrict__ pos,
                                                          const float* __restrict__ freqs, int rows, int heads,
                                                          long long row_stride, int head_stride, int rope_off,
                                                          int half, int inverse) {
  extern __shared__ float cs[];  // [half] cos, then [half] sin
  const int r = blockIdx.x;  // blockIdx.y: this block's share of the row's pairs (the host splits a row at few rows)
  if (r >= rows) return;
  const int t = pos[r];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    // rope.ts: ang = fround(t * f_i) (torch.outer in fp32), then fround(Math.cos / Math.sin) of it.
    const float ang = __fmul_rn((float)t, __ldg(freqs + i));
    cs[i] = __double2float_rn(cos((double)ang));
    const float s = __double2float_rn(sin((double)ang));
    cs[half + i] = inverse ? -s : s;
  }
  __syncthreads();
  mo::u16* xr = x + (size_t)r * row_stride + rope_off;
  for (int k = blockIdx.y * blockDim.x + threadIdx.x; k < heads * half; k += gridDim.y * blockDim.x) {
    const int h = k / half;
    const int i = k - h * half;
    unsigned int* p = reinterpret_cast<unsigned int*>(xr + (size_t)h * head_stride + 2 * i);
    const unsigned int pair = *p;
    const float a = megamoe::bf16_lo_to_f32(pair);
    const float b = megamoe::bf16_hi_to_f32(pair);
    const float c = cs[i];
    const float s = cs[half + i];
    const float re = mo::bf16_round(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)));
    const float im = mo::bf16_round(__fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)));
    *p = (__float_as_uint(re) >> 16) | (__float_as_uint(im) & 0xffff0000u);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// hc_pre / hc_head. Hs bf16 [rows, HC, D] (stream j of token r at (r * HC + j) * D), fn f32 [MIX, HC * D],
// base f32 [MIX], scale f32 [3] (head: [1]). Outputs: post f32 [rows, HC], comb f32 [rows, HC, HC] (hc_pre only;
// comb[j, k] = source j, destination k), y bf16 [rows, D] (normed by norm_w when given), optional FP8 of y.
// src_rows (int32 [rows], optional): output row r reads token src_rows[r] of hs [hs_rows, HC, D] (a gather, e.g. the
// last positions); an index outside [0, hs_rows) gives NaN outputs for that row. part (f64 [rows, n_chunks, MIX + 1],
// optional): the mixing logits and the sum of squares as mo_hc_*_mix's per-chunk partials, else computed in place.
namespace {

// Block-wide sums of NV f64 values per thread, in a fixed order (warp butterflies, then warps in order).
template <int NV, int WARPS>
__device__ __forceinline__ void block_sum_f64(double (&v)[NV], double* red /* [WARPS][NV] */, double* out /* [NV] */) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const double s = mo::warp_sum_f64(v[k]);
    if (lane == 0) red[warp * NV + k] = s;
  }
  __syncthreads();
  for (int k = threadIdx.x; k < NV; k += blockDim.x) {
    double s = 0.0;
    for (int w = 0; w < WARPS; w++) s += red[w * NV + k];
    out[k] = s;
  }
  __syncthreads();
}

// model.ts sinkhorn on the HC x HC matrix (f32 values held in f64, as the CPU's Float64Array), element e = j * HC + k
// (row j, column k) by the calling thread when `own` (one thread per element of each matrix the block works on), c
// its starting value; returns its final value. Each thread performs its element's operations exactly as model.ts's
// loop does (a row's sums over k ascending, a column's over j ascending; rows, and columns, are independent), so the
// result is that loop's bit for bit; buf (this matrix's own) ping-pongs between the steps, one block barrier each:
// every thread of the block calls it.
template <int kUnused = 0>  // a template: HC <= 5 (sinkhorn_warp) instantiates none, without an unused-function warning
__device__ double sinkhorn_block(double c, int iters, double eps, double (*buf)[kHc * kHc], int e, bool own) {
  const int j = e / kHc;
  const int k = e - j * kHc;
  // The sum of this element's row (or column) in buf[b], in model.ts's order.
  auto line_sum = [&](int b, bool row) {
    double s = 0.0;
    for (int i = 0; i < kHc; i++) s += buf[b][row ? j * kHc + i : i * kHc + k];
    return s;
  };
  if (own) buf[0][e] = c;
  __syncthreads();
  // The first row normalisation is a softmax.
  if (own) {
    double mx = -INFINITY;
    for (int i = 0; i < kHc; i++) mx = fmax(mx, buf[0][j * kHc + i]);
    c = (double)__double2float_rn(exp(c - mx));
    buf[1][e] = c;
  }
  __syncthreads();
  if (own) {
    const double s = (double)__double2float_rn(line_sum(1, true));
    const float d = __double2float_rn(__ddiv_rn(c, s));
    c = (double)__double2float_rn(__dadd_rn((double)d, eps));
    buf[0][e] = c;
  }
  __syncthreads();
  int b = 0;
  for (int it = 0; it < iters; it++) {
    for (int row = it > 0 ? 1 : 0; row >= 0; row--) {  // rows (from the second iteration), then columns
      if (own) {
        const double den = (double)__double2float_rn(__dadd_rn((double)__double2float_rn(line_sum(b, row != 0)), eps));
        c = (double)__double2float_rn(__ddiv_rn(c, den));
        buf[b ^ 1][e] = c;
      }
      __syncthreads();
      b ^= 1;
    }
  }
  return c;
}

// sinkhorn_block's operations for a matrix held by kE = HC^2 consecutive lanes of one warp (HC^2 <= 32: lane
// base + e holds element e), the other elements' values fetched by shuffles instead of through shared memory, so
// no block barrier: every value read is the one sinkhorn_block reads from buf (the element's value after the previous
// step), and every sum adds the same values in the same order (row j: k ascending; column k: j ascending), so the
// result is the same bit for bit. The whole warp calls it (full-warp shuffles); lanes outside a matrix pass anything.
__device__ double sinkhorn_warp(double c0, int iters, double eps, int e, int base) {
  // Every value a step reads is an f32 held in f64 (each step ends rounding to f32), so the state travels as a float:
  // one shuffle instead of two, and the divisions are f32's. For f32 operands the f64 quotient rounded to f32 IS the
  // correctly rounded f32 quotient (double rounding is innocuous for +-*/ when 53 >= 2 x 24 + 2 bits), so
  // __fdiv_rn(c, d) gives __double2float_rn(__ddiv_rn(c, d))'s bits at a fraction of its latency (20 iterations of
  // two dependent steps: the Sinkhorn was half of mo_hc_pre's time at one row, docs/GPU-MODEL.md).
  const int j = e / kHc;
  const int k = e - j * kHc;
  auto line_sum = [&](float v, bool row) {
    double s = 0.0;
    for (int i = 0; i < kHc; i++) s += (double)__shfl_sync(mo::kFull, v, base + (row ? j * kHc + i : i * kHc + k));
    return s;
  };
  // The first row normalisation is a softmax.
  const float cin = __double2float_rn(c0);  // exact: c0 is an f32 value
  double mx = -INFINITY;
  for (int i = 0; i < kHc; i++) mx = fmax(mx, (double)__shfl_sync(mo::kFull, cin, base + j * kHc + i));
  float c = __double2float_rn(exp(c0 - mx));
  {
    const float d = __fdiv_rn(c, __double2float_rn(line_sum(c, true)));
    c = __double2float_rn(__dadd_rn((double)d, eps));
  }
  for (int it = 0; it < iters; it++) {
    for (int row = it > 0 ? 1 : 0; row >= 0; row--) {  // rows (from the second iteration), then columns
      const float den = __double2float_rn(__dadd_rn((double)__double2float_rn(line_sum(c, row != 0)), eps));
      c = __fdiv_rn(c, den);
    }
  }
  return (double)c;
}

// "dot8_f64's chain" (the kernels' dot products, as before they shared loads between rows): acc + fn[0..8) . f[0..8)
// in f64, columns in order, a = fma((double)w[i], (double)f[i], a) for i = 0..7 (bf16 x f32 products are exact in
// f64, so fma == the CPU's multiply-then-add).
__device__ __forceinline__ double sumsq8_f64(const float (&f)[8], double a) {
#pragma unroll
  for (int i = 0; i < 8; i++) a += (double)f[i] * (double)f[i];
  return a;
}

// Eight f32 hc_fn weights from p (16-byte aligned), widened to f64 (exact): two 16-byte loads.
__device__ __forceinline__ void load_w8_f64(const float* p, double (&wd)[8]) {
  const float4 w0 = __ldg(reinterpret_cast<const float4*>(p));
  const float4 w1 = __ldg(reinterpret_cast<const float4*>(p + 4));
  wd[0] = (double)w0.x; wd[1] = (double)w0.y; wd[2] = (double)w0.z; wd[3] = (double)w0.w;
  wd[4] = (double)w1.x; wd[5] = (double)w1.y; wd[6] = (double)w1.z; wd[7] = (double)w1.w;
}

// The input row of output row r (src_rows[r] when given). An index outside [0, hs_rows) reads row 0 and sets bad:
// the row's outputs become NaN instead of a read out of bounds.
__device__ __forceinline__ int hc_src_row(const int* __restrict__ src_rows, int r, int hs_rows, bool& bad) {
  const int src = src_rows ? src_rows[r] : r;
  bad = src < 0 || src >= hs_rows;
  return bad ? 0 : src;
}

// The split mixing logits for small T (mo_hc_pre_mix / mo_hc_head_mix): block (chunk, group, z) takes columns
// [chunk * kMixCols, +kMixCols) of the 4D rows r = z * RT .. z * RT + RT - 1 (those < rows; 8 columns per thread)
// and logits [group * kMixLogits, +kMixLogits); group 0 also sums the squares. Its f64 partials go to
// part[r, chunk, 0..kMix] (index kMix: the squares), summed over the block in block_sum_f64's fixed order; hc_body
// adds the chunks in ascending order. RT (1, 2, 4 or 8 rows per block, the host's hcMixRowsPerBlock) only shares the
// weight loads and their f64 conversions between rows: each (row, chunk, logit) is still one dot8_f64 chain from 0.0
// over the thread's 8 columns in order (fma(w, x, acc) on the same exactly converted operands), then the same block
// sum, so the partials are the same bits for every RT (each block re-read hc_fn's slice per row before: the L2 reads
// of 1.5 MB per row at flash limited batch 64).
constexpr int kMixThreads = 128;
constexpr int kMixCols = kMixThreads * 8;
constexpr int kMixLogits = 4;

template <bool kHead, int RT>
__device__ __forceinline__ void hc_mix_body(const mo::u16* __restrict__ hs, const float* __restrict__ fn, int D,
                                            const int* __restrict__ src_rows, int hs_rows, double* __restrict__ part,
                                            int rows) {
  constexpr int kMix = kHead ? kHc : kMixPre;
  constexpr int kNV = kMix + 1;
  constexpr int kL = kMixLogits + 1;  // this block's logits, then the squares
  constexpr int kV = RT * kL;
  constexpr int kWarps = kMixThreads / 32;
  __shared__ double red[kWarps * kV];
  __shared__ double tot[kV];
  const int chunk = blockIdx.x;
  const int j0 = blockIdx.y * kMixLogits;
  const int r0 = blockIdx.z * RT;
  const int W = kHc * D;
  double acc[kV];
#pragma unroll
  for (int k = 0; k < kV; k++) acc[k] = 0.0;
  const int c = chunk * kMixCols + threadIdx.x * 8;
  if (c < W) {
    double wd[kMixLogits][8];
#pragma unroll
    for (int l = 0; l < kMixLogits; l++) {
      if (j0 + l < kMix) load_w8_f64(fn + (size_t)(j0 + l) * W + c, wd[l]);
    }
#pragma unroll
    for (int s = 0; s < RT; s++) {
      if (r0 + s < rows) {
        bool bad;  // unused: hc_body makes that row's logits NaN
        const mo::u16* xr = hs + (size_t)hc_src_row(src_rows, r0 + s, hs_rows, bad) * W;
        float f[8];
        mo::unpack8(__ldg(reinterpret_cast<const uint4*>(xr + c)), f);
        if (blockIdx.y == 0) acc[s * kL + kMixLogits] = sumsq8_f64(f, 0.0);
        double x[8];
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = (double)f[i];
#pragma unroll
        for (int l = 0; l < kMixLogits; l++) {
          if (j0 + l < kMix) {
            double a = 0.0;
#pragma unroll
            for (int i = 0; i < 8; i++) a = fma(wd[l][i], x[i], a);  // dot8_f64's chain
            acc[s * kL + l] = a;
          }
        }
      }
    }
  }
  block_sum_f64<kV, kWarps>(acc, red, tot);
  for (int k = threadIdx.x; k < kV; k += kMixThreads) {
    const int s = k / kL;
    const int l = k - s * kL;
    if (r0 + s >= rows) continue;
    double* out = part + ((size_t)(r0 + s) * gridDim.x + chunk) * kNV;
    if (l < kMixLogits) {
      if (j0 + l < kMix) out[j0 + l] = tot[k];
    } else if (blockIdx.y == 0) {
      out[kMix] = tot[k];
    }
  }
}

template <bool kHead>
__device__ __forceinline__ void hc_mix_entry(const mo::u16* __restrict__ hs, const float* __restrict__ fn, int D,
                                             const int* __restrict__ src_rows, int hs_rows, double* __restrict__ part,
                                             int rows, int rpb) {
  if (rpb >= 8) hc_mix_body<kHead, 8>(hs, fn, D, src_rows, hs_rows, part, rows);
  else if (rpb >= 4) hc_mix_body<kHead, 4>(hs, fn, D, src_rows, hs_rows, part, rows);
  else if (rpb >= 2) hc_mix_body<kHead, 2>(hs, fn, D, src_rows, hs_rows, part, rows);
  else hc_mix_body<kHead, 1>(hs, fn, D, src_rows, hs_rows, part, rows);
}

// The tiled mixing logits for many rows (mo_hc_pre_mix_tiled / mo_hc_head_mix_tiled, prefill chunks): block
// (chunk, z) takes rows z * kTileRows .. + kTileRows - 1 and columns [chunk * chunk_cols, + chunk_cols) of the 4D
// row, all kMix logits, on the f64 tensor cores (WMMA m8n8k4: rows are M, logits N, columns K). Each 64-column stage
// is converted once into shared memory (x bf16 -> f64, the weights f32 -> f64: exact), so a block reads its slice
// of hc_fn once for 32 rows and converts every value once; the one-block path re-read hc_fn per 4 rows and converted
// x once per pass of 8 logits. The f64 stages are double-buffered: each thread converts stage s + 1 into one buffer
// while the warps' MMAs read stage s from the other, one barrier a stage (with one buffer, convert / barrier / MMAs
// / barrier, a stage took ~3300 cycles; its MMAs need ~800 at the DMMA pipe's peak: docs/GPU-MODEL.md "Session
// 13"). x streams in through a ring of kTileXRing raw stages (cp.async), the weights (L2-resident, shared by every
// row tile) one stage ahead in registers. Warp w takes k-steps w and w + 8 of every stage for all 4 m-tiles x kNT n-tiles (4 kNT
// independent accumulators, 4 + kNT fragment loads per k-step); the 8 warps' sums are then added pairwise in a fixed
// tree (w += w + 4, w += w + 2, w += w + 1) and part[r, chunk, j] is written as the split kernel's (hc_body adds the
// chunks in ascending order). The f64 sums run in another fixed order than the other two paths (so: run-to-run
// identical; against the CPU equal up to the order of exact-product f64 additions, far below the f32 rounding that
// follows, as those paths are). Squares: thread t sums x^2 of row t / 8, columns 8 (t % 8) + 64 s (s the stage,
// ascending), then the 8 threads of a row in order.
// Dynamic shared memory (the launcher's hcTiledSmemBytes): 32 bytes of alignment slack, two f64 stages
// [kTileRows + kNPad, kTileLd], the raw x ring [kTileXRing, kTileThreads] x 16 bytes, the squares [kTileRows, 8] f64.
constexpr int kTileRows = 32;
constexpr int kTileCols = 64;
constexpr int kTileThreads = 256;
constexpr int kTileLd = kTileCols + 4;  // doubles per shared row: 16-byte multiple (WMMA ldm), rows 2 banks apart
constexpr int kTileXRing = 3;           // raw x stages in flight (bf16, 16 bytes a thread)

template <bool kHead>
__device__ __forceinline__ void hc_mix_tiled_body(const mo::u16* __restrict__ hs, const float* __restrict__ fn, int D,
                                                  const int* __restrict__ src_rows, int hs_rows, double* __restrict__ part,
                                                  int rows, int chunk_cols, unsigned char* smem_raw) {
  using namespace nvcuda;
  constexpr int kMix = kHead ? kHc : kMixPre;
  constexpr int kNV = kMix + 1;
  constexpr int kNT = (kMix + 7) / 8;  // n-tiles of 8 logits
  constexpr int kNPad = kNT * 8;
  constexpr int kMT = kTileRows / 8;   // m-tiles of 8 rows
  constexpr int kWarps = kTileThreads / 32;
  constexpr int kKSteps = kTileCols / 4;
  constexpr int kW4 = kMix * kTileCols / 4;  // float4 loads of a stage's weights
  constexpr int kWPer = (kW4 + kTileThreads - 1) / kTileThreads;
  constexpr int kRed = kTileRows * kNPad;    // doubles of one warp's sums in the reduction
  constexpr int kStage = (kTileRows + kNPad) * kTileLd;  // doubles of one f64 stage
  static_assert(kTileRows * kTileCols / 8 == kTileThreads, "one 8-column x load per thread and stage");
  static_assert(kKSteps % kWarps == 0, "the warps share a stage's k-steps evenly");
  static_assert(kWarps / 2 * kRed <= 2 * kStage, "the reduction fits the stage buffers");
  double* buf = reinterpret_cast<double*>((reinterpret_cast<unsigned long long>(smem_raw) + 31) & ~31ull);  // [2][kStage]
  uint4* xraw = reinterpret_cast<uint4*>(buf + 2 * kStage);                                             // [kTileXRing][kTileThreads]
  double (*sq)[8] = reinterpret_cast<double (*)[8]>(xraw + kTileXRing * kTileThreads);                 // [kTileRows][8]
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int W = kHc * D;
  const int r0 = blockIdx.y * kTileRows;
  const int c_begin = blockIdx.x * chunk_cols;
  const int c_end = min(W, c_begin + chunk_cols);
  // this thread's x slot: row xr of the tile, columns xc .. xc + 7 of each stage
  const int xr = tid >> 3;
  const int xc = (tid & 7) * 8;
  bool bad;  // unused: hc_body makes a bad row's logits NaN
  const mo::u16* xrow = r0 + xr < rows ? hs + (size_t)hc_src_row(src_rows, r0 + xr, hs_rows, bad) * W : nullptr;
  for (int i = tid; i < (kNPad - kMix) * kTileLd; i += kTileThreads) {  // padding logits, in both stages
    buf[kTileRows * kTileLd + kMix * kTileLd + i] = 0.0;
    buf[kStage + kTileRows * kTileLd + kMix * kTileLd + i] = 0.0;
  }

  float4 wv[kWPer];
  // x of the stage at c0 into ring slot `slot` (zero past the chunk or the rows; a group is committed either way, so
  // that wait_group counts stages)
  auto issue_x = [&](int c0, int slot) {
    const int c = c0 + xc;
    const bool ok = xrow && c < c_end;
    cp_async16<false>(&xraw[slot * kTileThreads + tid], reinterpret_cast<const uint4*>(ok ? xrow + c : hs), ok);
    cp_async_commit();
  };
  auto load_w = [&](int c0) {
#pragma unroll
    for (int k = 0; k < kWPer; k++) {
      const int i = tid + k * kTileThreads;
      const int l = i / (kTileCols / 4);
      const int cc = c0 + (i - l * (kTileCols / 4)) * 4;
      wv[k] = i < kW4 && cc < c_end ? __ldg(reinterpret_cast<const float4*>(fn + (size_t)l * W + cc)) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  double ssq = 0.0;
  // this thread's x (ring slot `slot`, landed) and weights (wv) of one stage -> f64 stage `st`
  auto convert = [&](int slot, double* st) {
    float f[8];
    mo::unpack8(xraw[slot * kTileThreads + tid], f);
    ssq = sumsq8_f64(f, ssq);
    double* dst = st + xr * kTileLd + xc;
#pragma unroll
    for (int i = 0; i < 8; i++) dst[i] = (double)f[i];
    double* ws = st + kTileRows * kTileLd;
#pragma unroll
    for (int k = 0; k < kWPer; k++) {
      const int i = tid + k * kTileThreads;
      if (i < kW4) {
        const int l = i / (kTileCols / 4);
        double* wd = ws + l * kTileLd + (i - l * (kTileCols / 4)) * 4;
        wd[0] = (double)wv[k].x; wd[1] = (double)wv[k].y; wd[2] = (double)wv[k].z; wd[3] = (double)wv[k].w;
      }
    }
  };

  wmma::fragment<wmma::accumulator, 8, 8, 4, double> acc[kMT][kNT];
#pragma unroll
  for (int m = 0; m < kMT; m++)
#pragma unroll
    for (int n = 0; n < kNT; n++) wmma::fill_fragment(acc[m][n], 0.0);
  // stage 0 into f64 stage 0; stages 1 and 2 in flight
  issue_x(c_begin, 0);
  issue_x(c_begin + kTileCols, 1);
  load_w(c_begin);
  cp_async_wait<1>();
  convert(0, buf);
  issue_x(c_begin + 2 * kTileCols, 2);
  if (c_begin + kTileCols < c_end) load_w(c_begin + kTileCols);
  __syncthreads();
  int cur = 0;   // f64 stage of this iteration
  int slot = 1;  // ring slot of the next stage's x
  for (int c0 = c_begin; c0 < c_end; c0 += kTileCols) {
    if (c0 + kTileCols < c_end) {
      // the next stage into the other f64 stage (its last readers, the MMAs of the previous iteration, are past the
      // barrier that ended it); slot - 1's x (this stage's, converted last iteration) takes the stage 3 ahead
      cp_async_wait<1>();
      convert(slot, buf + (cur ^ 1) * kStage);
      issue_x(c0 + 3 * kTileCols, slot == 0 ? kTileXRing - 1 : slot - 1);
      slot = slot == kTileXRing - 1 ? 0 : slot + 1;
      if (c0 + 2 * kTileCols < c_end) load_w(c0 + 2 * kTileCols);
    }
    const double* xs = buf + cur * kStage;
    const double* ws = xs + kTileRows * kTileLd;
#pragma unroll
    for (int ks = warp; ks < kKSteps; ks += kWarps) {
      wmma::fragment<wmma::matrix_b, 8, 8, 4, double, wmma::col_major> b[kNT];  // (k, n) = ws[n * ld + k]
#pragma unroll
      for (int n = 0; n < kNT; n++) wmma::load_matrix_sync(b[n], ws + n * 8 * kTileLd + ks * 4, kTileLd);
#pragma unroll
      for (int m = 0; m < kMT; m++) {
        wmma::fragment<wmma::matrix_a, 8, 8, 4, double, wmma::row_major> a;
        wmma::load_matrix_sync(a, xs + m * 8 * kTileLd + ks * 4, kTileLd);
#pragma unroll
        for (int n = 0; n < kNT; n++) wmma::mma_sync(acc[m][n], a, b[n], acc[m][n]);
      }
    }
    cur ^= 1;
    __syncthreads();  // this stage's MMAs are done with it; the next one is converted
  }
  sq[xr][tid & 7] = ssq;
  // the warps' sums, pairwise in a fixed tree: warp w (< h) adds warp w + h's, h = 4, 2, 1
#pragma unroll
  for (int h = kWarps / 2; h >= 1; h /= 2) {
    __syncthreads();
    if (warp >= h && warp < 2 * h) {
      double* dst = buf + (warp - h) * kRed;
#pragma unroll
      for (int m = 0; m < kMT; m++)
#pragma unroll
        for (int n = 0; n < kNT; n++) wmma::store_matrix_sync(dst + m * 8 * kNPad + n * 8, acc[m][n], kNPad, wmma::mem_row_major);
    }
    __syncthreads();
    if (warp < h) {
      const double* src = buf + warp * kRed;
#pragma unroll
      for (int m = 0; m < kMT; m++)
#pragma unroll
        for (int n = 0; n < kNT; n++) {
          wmma::fragment<wmma::accumulator, 8, 8, 4, double> o;
          wmma::load_matrix_sync(o, src + m * 8 * kNPad + n * 8, kNPad, wmma::mem_row_major);
#pragma unroll
          for (int i = 0; i < o.num_elements; i++) acc[m][n].x[i] += o.x[i];
        }
    }
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int m = 0; m < kMT; m++)
#pragma unroll
      for (int n = 0; n < kNT; n++) wmma::store_matrix_sync(buf + m * 8 * kNPad + n * 8, acc[m][n], kNPad, wmma::mem_row_major);
  }
  __syncthreads();
  for (int k = tid; k < kTileRows * kNV; k += kTileThreads) {
    const int r = k / kNV;
    const int j = k - r * kNV;
    if (r0 + r >= rows) continue;
    double v;
    if (j < kMix) {
      v = buf[r * kNPad + j];
    } else {
      v = 0.0;
#pragma unroll
      for (int t = 0; t < 8; t++) v += sq[r][t];
    }
    part[((size_t)(r0 + r) * gridDim.x + blockIdx.x) * kNV + j] = v;
  }
}

// pre_j / the head's weights: fround(fround(sigmoid(fround(fround(m * scale) + base))) + hc_eps).
__device__ __forceinline__ float pre_weight(float m, float scale, float base, double hc_eps) {
  const float z = __fadd_rn(__fmul_rn(m, scale), base);
  const float sg = __double2float_rn(mo::sigmoid_f64(z));
  return __double2float_rn(__dadd_rn((double)sg, hc_eps));
}

// hc_pre / hc_head for R consecutive output rows (tokens) per block, R = 1, 2 or 4 (the host's tokens per block,
// row-ops.ts hcTokensPerBlock: more where there are many rows). R > 1 only changes which loads and conversions are
// shared, never an f64 sum: phase 1's thread t still accumulates, for each (row, logit), the products of columns
// 8t + 2048i (i ascending, the 8 columns in order) with one fma chain from 0.0, exactly as R = 1 (fma(w, x, acc),
// w the f32 weight and x the bf16 value, both converted to f64 once and reused for every row / logit they meet:
// exact conversions, so the operands are the same), then block_sum_f64 (warp butterflies, the 8 warps in order);
// the logits go in passes of kG (each pass a separate set of fma chains, so its grouping changes no sum), the
// squares in the first. Each weight fetched once serves R rows: R x fewer reads of hc_fn (1.5 MB per row at flash,
// from L2: the limit at large T) and f32 -> f64 conversions. Phases 2-4 are per row as before (the Sinkhorns of the
// R rows side by side, one thread per element: for HC <= 5 one warp's lanes per matrix and shuffles, no barrier).
template <bool kHead, int R, bool kPart>
__device__ __forceinline__ void hc_body(const mo::u16* __restrict__ hs, const float* __restrict__ fn,
                                        const float* __restrict__ base, const float* __restrict__ scale, int D,
                                        double norm_eps, double hc_eps, int iters, float* __restrict__ post,
                                        float* __restrict__ comb, mo::u16* __restrict__ y, const float* __restrict__ norm_w,
                                        mo::u8* __restrict__ q, float* __restrict__ sf, int sf_ld, int pow2,
                                        const int* __restrict__ src_rows, int hs_rows,
                                        const double* __restrict__ part, int n_chunks, int rows) {
  constexpr int kMix = kHead ? kHc : kMixPre;
  constexpr int kNV = kMix + 1;  // the dot products, then the sum of squares
  constexpr int kG = kMix < 8 ? kMix : 8;  // logits per pass of phase 1
  constexpr int kGV = kG + 1;              // per row and pass: kG logits, then the squares (first pass)
  constexpr int kPV = R * kGV;             // f64 values a pass sums per thread
  static_assert(R == 1 || R == 2 || R == 4, "hc rows per block: 1, 2 or 4");
  __shared__ double red[kHcWarps * (kPV > kHcWarps ? kPV : kHcWarps)];
  __shared__ double pass_s[kPV];
  __shared__ double tot[R][kNV];
  __shared__ float mix_s[R][kMix];
  __shared__ float pre_s[R][kHc];
  __shared__ double ss_y;
  extern __shared__ float yrow[];  // [D] when norm_w is given
  const int r0 = blockIdx.x * R;  // output rows r0 .. r0 + R - 1 (those < rows); the input row is src_rows[r] when
                                  // given (hc_head: each sequence's last token)
  const int W = kHc * D;
  const int tid = threadIdx.x;

  // 1. sum of squares over the 4D values and the kMix dot products fn . X, f64 (model.ts: linear, then ss): the split
  // kernel's partials added (chunks in ascending order) when given (R = 1), else summed here (thread t: columns
  // 8t + 2048i, i ascending; then block_sum_f64).
  if constexpr (kPart) {
    // 16 chunks' loads in flight at a time (a loop of one load per add was a chain of L2 round trips at one row),
    // added in ascending chunk order from 0.0 as before.
    constexpr int kBatch = 16;
    for (int k = tid; k < kNV; k += kHcThreads) {
      const double* p = part + (size_t)r0 * n_chunks * kNV + k;
      double s = 0.0;
      for (int c0 = 0; c0 < n_chunks; c0 += kBatch) {
        double v[kBatch];
#pragma unroll
        for (int c = 0; c < kBatch; c++) v[c] = c0 + c < n_chunks ? p[(size_t)(c0 + c) * kNV] : 0.0;
#pragma unroll
        for (int c = 0; c < kBatch; c++)
          if (c0 + c < n_chunks) s += v[c];
      }
      tot[0][k] = s;
    }
    __syncthreads();
  } else {
    const mo::u16* xr[R];
#pragma unroll
    for (int s = 0; s < R; s++) {
      bool bad;  // phase 2 makes that row's logits NaN
      xr[s] = hs + (size_t)hc_src_row(src_rows, r0 + s < rows ? r0 + s : r0, hs_rows, bad) * W;
    }
    for (int j0 = 0; j0 < kMix; j0 += kG) {
      double acc[kPV];
#pragma unroll
      for (int k = 0; k < kPV; k++) acc[k] = 0.0;
      for (int c = tid * 8; c < W; c += kHcThreads * 8) {
        double x[R][8];
#pragma unroll
        for (int s = 0; s < R; s++) {
          float f[8];
          mo::unpack8(__ldg(reinterpret_cast<const uint4*>(xr[s] + c)), f);
          if (j0 == 0) acc[s * kGV + kG] = sumsq8_f64(f, acc[s * kGV + kG]);
#pragma unroll
          for (int i = 0; i < 8; i++) x[s][i] = (double)f[i];
        }
#pragma unroll
        for (int l = 0; l < kG; l++) {
          if (j0 + l < kMix) {
            double wd[8];
            load_w8_f64(fn + (size_t)(j0 + l) * W + c, wd);
#pragma unroll
            for (int s = 0; s < R; s++) {
              double a = acc[s * kGV + l];
#pragma unroll
              for (int i = 0; i < 8; i++) a = fma(wd[i], x[s][i], a);  // dot8_f64's chain
              acc[s * kGV + l] = a;
            }
          }
        }
      }
      block_sum_f64<kPV, kHcWarps>(acc, red, pass_s);  // ends with a barrier; the next pass writes pass_s after one
      for (int k = tid; k < kPV; k += kHcThreads) {
        const int s = k / kGV;
        const int l = k - s * kGV;
        if (l < kG) {
          if (j0 + l < kMix) tot[s][j0 + l] = pass_s[k];
        } else if (j0 == 0) {
          tot[s][kMix] = pass_s[k];
        }
      }
    }
    __syncthreads();
  }

  // 2. the mixing coefficients (model.ts hcMix / hcHead): logit j of row s by one thread, then pre_j / post_j by one
  // thread each and the Sinkhorn's element e of row s by thread s * HC^2 + e.
  for (int k = tid; k < R * kMix; k += kHcThreads) {
    const int s = k / kMix;
    const int j = k - s * kMix;
    if (r0 + s < rows) {
      bool bad;
      hc_src_row(src_rows, r0 + s, hs_rows, bad);
      const float rs = mo::rms_factor(tot[s][kMix], W, norm_eps);
      mix_s[s][j] = bad ? __int_as_float(0x7fc00000) : __fmul_rn(__double2float_rn(tot[s][j]), rs);  // mixAll is f32
    }
  }
  __syncthreads();
  for (int k = tid; k < R * kHc; k += kHcThreads) {
    const int s = k / kHc;
    const int j = k - s * kHc;
    if (r0 + s < rows) pre_s[s][j] = pre_weight(mix_s[s][j], __ldg(scale), __ldg(base + j), hc_eps);
  }
  // hc_pre with HC^2 <= 32: the Sinkhorn warps (the first kSkWarps) run their matrices while the others do phases 3-4,
  // which need pre_s but not comb (the Sinkhorn's dependent chain was ~40% of a one-row launch, docs/GPU-MODEL.md).
  // The workers then meet at named barrier 1; the arithmetic of every phase is unchanged, so are the bits. The CPU
  // emulator has no named barriers: there (kSkWarps = 0) the Sinkhorn runs first, as before.
  constexpr int kSkPer = kHc * kHc <= 32 ? 32 / (kHc * kHc) : 1;
#ifdef MEGAMOE_EMU
  constexpr int kSkWarps = 0;
#else
  constexpr int kSkWarps = !kHead && kHc * kHc <= 32 ? (R + kSkPer - 1) / kSkPer : 0;
#endif
  constexpr int kWorkWarps = kHcWarps - kSkWarps;
  auto sync_workers = [&]() {
#ifndef MEGAMOE_EMU
    if constexpr (kSkWarps > 0) {
      asm volatile("bar.sync 1, %0;" ::"r"(kWorkWarps * 32) : "memory");
      return;
    }
#endif
    __syncthreads();
  };
  if constexpr (kSkWarps > 0) __syncthreads();  // pre_s for the workers, mix_s for the Sinkhorn warps
  if constexpr (!kHead) {
    constexpr int kE = kHc * kHc;
    for (int k = tid; k < R * kHc; k += kHcThreads) {
      const int s = k / kHc;
      const int e = k - s * kHc;
      if (r0 + s < rows) {
        const float z = __fadd_rn(__fmul_rn(mix_s[s][kHc + e], __ldg(scale + 1)), __ldg(base + kHc + e));
        post[(size_t)(r0 + s) * kHc + e] = __fmul_rn(2.0f, __double2float_rn(mo::sigmoid_f64(z)));
      }
    }
    if constexpr (kE <= 32) {
      // Matrices of kE lanes, 32 / kE per warp (row slot s: warp s / per, lanes (s % per) * kE + e), no barrier.
      constexpr int kPer = 32 / kE;
      const int lane = tid & 31;
      const int g = lane / kE;
      const int s = (tid >> 5) * kPer + g;
      const int e = lane - g * kE;
      const bool own = g < kPer && s < R && r0 + s < rows;
      if ((tid >> 5) * kPer < R) {  // a warp holding a matrix: all its lanes take part in the shuffles
        const double c0 = own ? (double)__fadd_rn(__fmul_rn(mix_s[s][2 * kHc + e], __ldg(scale + 2)), __ldg(base + 2 * kHc + e)) : 0.0;
        const double c = sinkhorn_warp(c0, iters, hc_eps, own ? e : 0, own ? g * kE : 0);
        if (own) comb[(size_t)(r0 + s) * kE + e] = __double2float_rn(c);
      }
      if (kSkWarps > 0 && (tid >> 5) < kSkWarps) return;  // the workers do the rest
    } else {
      static_assert(kE <= 32 || R * kE <= kHcThreads, "one thread per Sinkhorn element of every row of the block");
      __shared__ double sk_buf[R][2][kE];
      const int s = tid / kE;
      const int e = tid - s * kE;
      const bool own = s < R && r0 + s < rows;
      const double c0 = own ? (double)__fadd_rn(__fmul_rn(mix_s[s][2 * kHc + e], __ldg(scale + 2)), __ldg(base + 2 * kHc + e)) : 0.0;
      const double c = sinkhorn_block(c0, iters, hc_eps, sk_buf[own ? s : 0], e, own);
      if (own) comb[(size_t)(r0 + s) * kE + e] = __double2float_rn(c);
    }
  }
  if constexpr (kSkWarps == 0) __syncthreads();

  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int worker = warp - kSkWarps;  // this warp's index among the kWorkWarps doing phases 3-4
  const bool normed = norm_w != nullptr;
  for (int s = 0; s < R; s++) {
    const int r = r0 + s;
    if (r >= rows) break;  // uniform across the block
    if (s > 0) sync_workers();
    bool bad;
    const mo::u16* xr = hs + (size_t)hc_src_row(src_rows, r, hs_rows, bad) * W;

    // 3. y = bf16(sum_j pre_j Hs_j) in f64, j ascending; worker w takes 256-column steps w, w + kWorkWarps, ... (8
    // per lane), the layout store_row_step's fused quantization needs.
    double ssy = 0.0;
    for (int c0 = worker * 256; c0 < D; c0 += kWorkWarps * 256) {
      const int c = c0 + lane * 8;
      const bool valid = c < D;
      float out[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (valid) {
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < kHc; j++) {
          float f[8];
          mo::unpack8(__ldg(reinterpret_cast<const uint4*>(xr + (size_t)j * D + c)), f);
          const double p = (double)pre_s[s][j];
#pragma unroll
          for (int i = 0; i < 8; i++) a[i] = __dadd_rn(a[i], __dmul_rn(p, (double)f[i]));
        }
#pragma unroll
        for (int i = 0; i < 8; i++) out[i] = mo::bf16_round_f64(a[i]);
      }
      if (normed) {
        if (valid) {
#pragma unroll
          for (int i = 0; i < 8; i++) { yrow[c + i] = out[i]; ssy += (double)out[i] * (double)out[i]; }
        }
      } else {
        mo::store_row_step(out, valid, lane, r, c, D, y, D, q, sf, sf_ld, pow2 != 0);
      }
    }
    if (!normed) continue;

    // 4. fused RMSNorm (+ act_quant) of y, from shared memory (each thread reads back the columns it wrote).
    {
      const double t = mo::warp_sum_f64(ssy);
      if (lane == 0) red[warp] = t;
      sync_workers();
      if (tid == kSkWarps * 32) {
        double u = 0.0;
        for (int w = kSkWarps; w < kHcWarps; w++) u += red[w];
        ss_y = u;
      }
      sync_workers();
    }
    const float rs = mo::rms_factor(ss_y, D, norm_eps);
    for (int c0 = worker * 256; c0 < D; c0 += kWorkWarps * 256) {
      const int c = c0 + lane * 8;
      const bool valid = c < D;
      float out[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (valid) {
#pragma unroll
        for (int i = 0; i < 8; i++) out[i] = mo::norm_value(yrow[c + i], rs, norm_w, c + i);
      }
      mo::store_row_step(out, valid, lane, r, c, D, y, D, q, sf, sf_ld, pow2 != 0);
    }
  }
}

// The rows per block the kernel runs for the host's tpb (1 with the split path's partials; the host passes 1, 2, 4).
__device__ __forceinline__ int hc_rows_per_block(const double* part, int tpb) { return part || tpb <= 1 ? 1 : tpb == 2 ? 2 : 4; }

template <bool kHead>
__device__ __forceinline__ void hc_entry(const mo::u16* __restrict__ hs, const float* __restrict__ fn,
                                         const float* __restrict__ base, const float* __restrict__ scale, int D,
                                         double norm_eps, double hc_eps, int iters, float* __restrict__ post,
                                         float* __restrict__ comb, mo::u16* __restrict__ y, const float* __restrict__ norm_w,
                                         mo::u8* __restrict__ q, float* __restrict__ sf, int sf_ld, int pow2,
                                         const int* __restrict__ src_rows, int hs_rows,
                                         const double* __restrict__ part, int n_chunks, int rows, int tpb) {
#define MO_HC_BODY_ARGS hs, fn, base, scale, D, norm_eps, hc_eps, iters, post, comb, y, norm_w, q, sf, sf_ld, pow2, \
                        src_rows, hs_rows, part, n_chunks, rows
  if (part) {
    hc_body<kHead, 1, true>(MO_HC_BODY_ARGS);
    return;
  }
  switch (hc_rows_per_block(part, tpb)) {
    case 1: hc_body<kHead, 1, false>(MO_HC_BODY_ARGS); break;
    case 2: hc_body<kHead, 2, false>(MO_HC_BODY_ARGS); break;
    default: hc_body<kHead, 4, false>(MO_HC_BODY_ARGS); break;
  }
#undef MO_HC_BODY_ARGS
}

}  // namespace

// tpb: output rows per block (1, 2 or 4; 1 with part), grid ceil(rows / tpb).
#define MO_HC_PARAMS                                                                                              \
  const mo::u16 *__restrict__ hs, const float *__restrict__ fn, const float *__restrict__ base,                    \
      const float *__restrict__ scale, int rows, int D, unsigned long long norm_eps_bits,                           \
      unsigned long long hc_eps_bits, int iters, float *__restrict__ post, float *__restrict__ comb,                \
      mo::u16 *__restrict__ y, const float *__restrict__ norm_w, mo::u8 *__restrict__ q, float *__restrict__ sf,    \
      int sf_ld, int pow2, const int *__restrict__ src_rows, int hs_rows, const double *__restrict__ part,          \
      int n_chunks, int tpb

#define MO_HC_ARGS                                                                                                \
  hs, fn, base, scale, D, f64_from_bits(norm_eps_bits), f64_from_bits(hc_eps_bits), iters, post, comb, y, norm_w, q, \
      sf, sf_ld, pow2, src_rows, hs_rows, part, n_chunks, rows, tpb

extern "C" __global__ void __launch_bounds__(kHcThreads) mo_hc_pre(MO_HC_PARAMS) {
  if ((long long)blockIdx.x * hc_rows_per_block(part, tpb) >= rows) return;
  hc_entry<false>(MO_HC_ARGS);
}

// (kHcThreads, 1): without the 1, ptxas stops mo_hc_head at 128 registers and spills (4 rows per block).
extern "C" __global__ void __launch_bounds__(kHcThreads, 1) mo_hc_head(MO_HC_PARAMS) {
  if ((long long)blockIdx.x * hc_rows_per_block(part, tpb) >= rows) return;
  hc_entry<true>(MO_HC_ARGS);
}

// mo_hc_pre / mo_hc_head after a mixing-logits kernel (part given, one row per block): the same phases 2-4 with
// only the partials' sum for phase 1, a separate entry so that it is compiled alone. The all-paths entries above
// need 254 / 162 registers (one 256-thread block per SM), which at 4096 rows made phases 2-4 one block per SM at a
// time: 252 us per launch (ncu, session 11).
extern "C" __global__ void __launch_bounds__(kHcThreads) mo_hc_pre_fin(MO_HC_PARAMS) {
  if ((long long)blockIdx.x >= rows) return;
  hc_body<false, 1, true>(hs, fn, base, scale, D, f64_from_bits(norm_eps_bits), f64_from_bits(hc_eps_bits), iters, post, comb, y,
                          norm_w, q, sf, sf_ld, pow2, src_rows, hs_rows, part, n_chunks, rows);
}

extern "C" __global__ void __launch_bounds__(kHcThreads) mo_hc_head_fin(MO_HC_PARAMS) {
  if ((long long)blockIdx.x >= rows) return;
  hc_body<true, 1, true>(hs, fn, base, scale, D, f64_from_bits(norm_eps_bits), f64_from_bits(hc_eps_bits), iters, post, comb, y,
                         norm_w, q, sf, sf_ld, pow2, src_rows, hs_rows, part, n_chunks, rows);
}

// The split mixing logits ahead of mo_hc_pre / mo_hc_head (small T): grid (ceil(4D / kMixCols),
// ceil(kMix / kMixLogits), ceil(rows / rpb)), rpb rows per block (1, 2, 4, 8), part f64 [rows, gridDim.x, kMix + 1].
#define MO_HC_MIX_PARAMS                                                                                          \
  const mo::u16 *__restrict__ hs, const float *__restrict__ fn, int D, const int *__restrict__ src_rows,           \
      int hs_rows, double *__restrict__ part, int rows, int rpb

extern "C" __global__ void __launch_bounds__(kMixThreads) mo_hc_pre_mix(MO_HC_MIX_PARAMS) {
  hc_mix_entry<false>(hs, fn, D, src_rows, hs_rows, part, rows, rpb);
}

extern "C" __global__ void __launch_bounds__(kMixThreads) mo_hc_head_mix(MO_HC_MIX_PARAMS) {
  hc_mix_entry<true>(hs, fn, D, src_rows, hs_rows, part, rows, rpb);
}

// The tiled mixing logits ahead of mo_hc_pre / mo_hc_head (many rows): grid (ceil(4D / chunk_cols),
// ceil(rows / kTileRows)), kTileThreads threads, chunk_cols a multiple of kTileCols; part f64 [rows, gridDim.x, kMix + 1].
#define MO_HC_MIX_TILED_PARAMS                                                                                    \
  const mo::u16 *__restrict__ hs, const float *__restrict__ fn, int D, const int *__restrict__ src_rows,           \
      int hs_rows, double *__restrict__ part, int rows, int chunk_cols

extern "C" __global__ void __launch_bounds__(kTileThreads) mo_hc_pre_mix_tiled(MO_HC_MIX_TILED_PARAMS) {
  extern __shared__ float mo_tiled_smem[];
  hc_mix_tiled_body<false>(hs, fn, D, src_rows, hs_rows, part, rows, chunk_cols, reinterpret_cast<unsigned char*>(mo_tiled_smem));
}

extern "C" __global__ void __launch_bounds__(kTileThreads) mo_hc_head_mix_tiled(MO_HC_MIX_TILED_PARAMS) {
  extern __shared__ float mo_tiled_smem[];
  hc_mix_tiled_body<true>(hs, fn, D, src_rows, hs_rows, part, rows, chunk_cols, reinterpret_cast<unsigned char*>(mo_tiled_smem));
}

// ---------------------------------------------------------------------------------------------------------------
// hc_post: f bf16 [rows, D], R bf16 [rows, HC, D], post f32 [rows, HC], comb f32 [rows, HC, HC] -> out bf16
// [rows, HC, D] (may be R itself: each thread reads its columns of every stream before writing them).
extern "C" __global__ void __launch_bounds__(256) mo_hc_post(const uint4* __restrict__ f, const uint4* R,
                                                             const float* __restrict__ post,
                                                             const float* __restrict__ comb, int rows, int D,
                                                             uint4* out) {
  const int chunks = D / 8;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)rows * chunks) return;
  const int r = (int)(idx / chunks);
  const int c = (int)(idx - (long long)r * chunks);
  float fv[8];
  mo::unpack8(__ldg(f + (size_t)r * chunks + c), fv);
  float rv[kHc][8];
#pragma unroll
  for (int j = 0; j < kHc; j++) mo::unpack8(R[((size_t)r * kHc + j) * chunks + c], rv[j]);
#pragma unroll
  for (int k = 0; k < kHc; k++) {
    const double pk = (double)__ldg(post + r * kHc + k);
    float o[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
      double acc = __dmul_rn(pk, (double)fv[i]);
#pragma unroll
      for (int j = 0; j < kHc; j++) acc = __dadd_rn(acc, __dmul_rn((double)__ldg(comb + ((size_t)r * kHc + j) * kHc + k), (double)rv[j][i]));
      o[i] = mo::bf16_round_f64(acc);
    }
    out[((size_t)r * kHc + k) * chunks + c] = mo::pack8(o);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The MTP input (model.ts mtpNow): out[t, k] = bf16(e[t] + h[t, k]) for the hc streams k, e = e_proj(enorm(embed)) bf16
// [rows, D] (rows e_stride apart), h = h_proj(hnorm(streams)) bf16 [rows * HC, D]; the f64 sum of two bf16 is exact.
extern "C" __global__ void __launch_bounds__(256) mo_mtp_combine(const uint4* __restrict__ e, long long e_stride,
                                                                 const uint4* __restrict__ h, int rows, int D,
                                                                 uint4* __restrict__ out) {
  const int chunks = D / 8;
  const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (long long)rows * kHc * chunks) return;
  const long long rk = idx / chunks;  // token * HC + stream
  const int c = (int)(idx - rk * chunks);
  const int r = (int)(rk / kHc);
  float ev[8], hv[8], o[8];
  mo::unpack8(__ldg(e + (size_t)r * (e_stride / 8) + c), ev);
  mo::unpack8(__ldg(h + (size_t)rk * chunks + c), hv);
#pragma unroll
  for (int i = 0; i < 8; i++) o[i] = mo::bf16_round_f64(__dadd_rn((double)ev[i], (double)hv[i]));
  out[(size_t)rk * chunks + c] = mo::pack8(o);
}

// ---------------------------------------------------------------------------------------------------------------
// model.ts qHeadRenorm, one warp per head of d values (contiguous bf16): ss = sum of bf16(q_i^2) (f64),
// rs = bf16(1 / sqrt(bf16(bf16(ss / d) + eps))), q_i = bf16(q_i rs). The CPU sums in index order, the warp in a
// tree; both are exact (so equal) while the bf16 squares of one head span less than ~2^44 in magnitude (53-bit
// f64 sums of 8-bit significands), i.e. for any real activations.
extern "C" __global__ void __launch_bounds__(kNormWarpsPerBlock * 32)
mo_q_renorm(mo::u16* __restrict__ q, int heads, int d, unsigned long long eps_bits) {
  const int head = blockIdx.x * kNormWarpsPerBlock + (threadIdx.x >> 5);
  if (head >= heads) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  mo::u16* h = q + (size_t)head * d;
  // the first kHeld chunks of 8 values a lane stay in registers between the two passes (d <= 1024: one read of the
  // row); a longer row's later chunks are read again for the second
  constexpr int kHeld = 4;
  uint4 held[kHeld];
  double ss = 0.0;
  auto sum_squares = [&](const uint4 v) {
    float f[8];
    mo::unpack8(v, f);
#pragma unroll
    for (int i = 0; i < 8; i += 2) {  // f32 products: exact, then bf16; summed in index order
      const unsigned p = bf16cvt::pack_rn<true>(__fmul_rn(f[i], f[i]), __fmul_rn(f[i + 1], f[i + 1]));
      ss += (double)mo::bf16_bits_to_f32(p & 0xffffu);
      ss += (double)mo::bf16_bits_to_f32(p >> 16);
    }
  };
#pragma unroll
  for (int j = 0; j < kHeld; j++) {
    const int c = lane * 8 + 256 * j;
    if (c < d) sum_squares(held[j] = *reinterpret_cast<const uint4*>(h + c));
  }
  for (int c = lane * 8 + 256 * kHeld; c < d; c += 256) sum_squares(*reinterpret_cast<const uint4*>(h + c));
  ss = mo::warp_sum_f64(ss);
  const double mean = (double)mo::bf16_round_f64(__ddiv_rn(ss, (double)d));
  const double t = (double)mo::bf16_round_f64(__dadd_rn(mean, f64_from_bits(eps_bits)));
  const float rs = mo::bf16_round_f64(__ddiv_rn(1.0, __dsqrt_rn(t)));
  auto scale = [&](const uint4 v, int c) {
    float f[8];
    mo::unpack8(v, f);
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = bf16cvt::pack_rn<true>(__fmul_rn(f[2 * i], rs), __fmul_rn(f[2 * i + 1], rs));
    *reinterpret_cast<uint4*>(h + c) = make_uint4(w[0], w[1], w[2], w[3]);
  };
#pragma unroll
  for (int j = 0; j < kHeld; j++) {
    const int c = lane * 8 + 256 * j;
    if (c < d) scale(held[j], c);
  }
  for (int c = lane * 8 + 256 * kHeld; c < d; c += 256) scale(*reinterpret_cast<const uint4*>(h + c), c);
}
