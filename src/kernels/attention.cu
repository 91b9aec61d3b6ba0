// Sparse attention with sink over the sliding window + compressed keys (V4-MODEL 4.6 / 4.7), decode and prefill in one
// kernel, reading the paged caches of src/gpu-model/kv-cache.ts; plus the two small kernels around it: the kv FP8
// simulation (V4-MODEL 4.2, before attention) and the window-ring store (after attention). Mirrors model.ts
// attention() and attendHead().
//
// Rows are laid out item after item (attn::Item: one item = one sequence's new tokens at positions P..P+L-1), so a
// decode batch is many items of one row and a prefill is one item of many rows; chunked prefill is the general case.
// Window key p of a query at T: positions max(0, T-win+1)..T, from this call's fresh kv rows when p >= P, else from the
// ring (row p mod win). Compressed keys: entries 0..(T+1)/ratio - 1 (ratio != 4), or the indexer's picks (ratio 4).
//
// attn_sparse: one CTA per (row, group of `hpb` heads), the key list shared by the group's heads (one K = V head):
//   1. the key row addresses into shared memory;
//   2. scores s = f32(sigma * f32(q . k)) (f32 dot: the one place the GPU's sums differ from the CPU's f64 ones);
//   3. per head m = max s (sink excluded), e = f32(exp(s - m)), denom = f32(f32(sum e) + f32(exp(sink - m))),
//      p = bf16(e / denom) (model.ts attendHead's rounding points);
//   4. o = bf16(sum p k) in f32, key order = list order; inverse RoPE on the last rd dims at T; bf16 out.
// attn_sparse is the straightforward version on CUDA cores (keys re-read from L1/L2 per head group): the reference,
// and the fallback where the tensor-core attn_sparse_mma1/2/4 (below, same arguments and rounding points) does not
// apply (d not 64/128/256/512, or 16 heads' scores do not fit shared memory). The launcher (src/gpu-model/attention.ts
// chooseSparseKernel) picks; docs/GPU-ATTENTION.md describes both.
#include "attn_common.cuh"
#include "attn_mma.cuh"

namespace {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// hpb * d <= kMaxGroupDims, so a thread's output pairs fit in registers (kMaxPairs per thread).
constexpr int kMaxGroupDims = 8192;
constexpr int kMaxPairs = kMaxGroupDims / 2 / kThreads;
constexpr int kMaxDimsPerLane = 16;  // d <= 512

// Step 3 of both kernels for one head, by one warp (model.ts attendHead's rounding points): the scores s[0, nk) become
// p = bf16(e / denom) with m = max s, e = f32(exp(s - m)) (0 for a -inf score), denom = f32(f32(sum e) +
// f32(exp(sink - m))); s[nk, n_out) become 0 (the tensor-core kernel's key padding; n_out = nk: none).
__device__ __forceinline__ void softmax_with_sink(float* s, int nk, int n_out, float sink, int lane) {
  float mx = -INFINITY;
  for (int k = lane; k < nk; k += 32) mx = fmaxf(mx, s[k]);
  mx = attn::warp_max(mx);
  // four keys a lane at once: their exps are independent chains; the sum still takes them in key order
  double se = 0.0;
  for (int k0 = lane; k0 < nk; k0 += 128) {
    float e[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const int k = k0 + 32 * u;
      e[u] = k >= nk || s[k] == -INFINITY ? 0.f : __double2float_rn(exp((double)s[k] - (double)mx));
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      if (k0 + 32 * u >= nk) break;
      s[k0 + 32 * u] = e[u];
      se += (double)e[u];
    }
  }
  se = attn::warp_sum(se);
  const float den = __fadd_rn(__double2float_rn(se), __double2float_rn(exp((double)sink - (double)mx)));
  __syncwarp();
  for (int k = lane; k < n_out; k += 32) s[k] = k < nk ? attn::bf16_round(__fdiv_rn(s[k], den)) : 0.f;
}

// softmax_with_sink of two heads at once (rows s0 and s1, the same keys): the same operations per head, their
// dependent chains (the double exp, the shuffle reductions) interleaved so one warp keeps both in flight.
__device__ __forceinline__ void softmax_with_sink2(float* s0, float* s1, int nk, int n_out, float sink0, float sink1,
                                                   int lane) {
  float m0 = -INFINITY, m1 = -INFINITY;
  for (int k = lane; k < nk; k += 32) { m0 = fmaxf(m0, s0[k]); m1 = fmaxf(m1, s1[k]); }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float a = __shfl_xor_sync(0xffffffffu, m0, o), b = __shfl_xor_sync(0xffffffffu, m1, o);
    m0 = fmaxf(m0, a); m1 = fmaxf(m1, b);
  }
  double e0 = 0.0, e1 = 0.0;
  for (int k0 = lane; k0 < nk; k0 += 64) {  // two keys of each head a lane at once (four exp chains)
    float y0[2], y1[2];
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int k = k0 + 32 * u;
      const float x0 = k < nk ? s0[k] : -INFINITY, x1 = k < nk ? s1[k] : -INFINITY;
      y0[u] = x0 == -INFINITY ? 0.f : __double2float_rn(exp((double)x0 - (double)m0));
      y1[u] = x1 == -INFINITY ? 0.f : __double2float_rn(exp((double)x1 - (double)m1));
    }
#pragma unroll
    for (int u = 0; u < 2; u++) {
      if (k0 + 32 * u >= nk) break;
      s0[k0 + 32 * u] = y0[u]; s1[k0 + 32 * u] = y1[u];
      e0 += (double)y0[u]; e1 += (double)y1[u];
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const double a = __shfl_xor_sync(0xffffffffu, e0, o), b = __shfl_xor_sync(0xffffffffu, e1, o);
    e0 += a; e1 += b;
  }
  const float d0 = __fadd_rn(__double2float_rn(e0), __double2float_rn(exp((double)sink0 - (double)m0)));
  const float d1 = __fadd_rn(__double2float_rn(e1), __double2float_rn(exp((double)sink1 - (double)m1)));
  __syncwarp();
  for (int k = lane; k < n_out; k += 32) {
    s0[k] = k < nk ? attn::bf16_round(__fdiv_rn(s0[k], d0)) : 0.f;
    s1[k] = k < nk ? attn::bf16_round(__fdiv_rn(s1[k], d1)) : 0.f;
  }
}
}  // namespace

// In-place FP8 QAT simulation of the nope dims of fresh kv rows [rows, d] (ops.ts fp8SimInPlace, block 64): one warp
// per 64-value block, two values per lane. The block's amax is a max (any order gives the same value, NaNs ignored as
// by fp8_sim_block's fmaxf chain) and each value is scaled and rounded on its own, so this is fp8_sim_block's result
// bit for bit. (One thread per block ran its 64 divisions and e4m3 roundings in series: ~10 us a launch at one row,
// docs/GPU-MODEL.md "Session 4".)
extern "C" __global__ void __launch_bounds__(128)
attn_kv_fp8_sim(uint16_t* kv, int rows, int d, int nope) {
  const int nblk = nope / 64;
  const int block = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  const int lane = threadIdx.x & 31;
  if (block >= rows * nblk) return;  // whole warps
  unsigned* p = reinterpret_cast<unsigned*>(kv + (size_t)(block / nblk) * d + (block % nblk) * 64) + lane;
  const unsigned pair = *p;
  float x0 = attn::bf16_to_f32((uint16_t)(pair & 0xffffu));
  float x1 = attn::bf16_to_f32((uint16_t)(pair >> 16));
  float amax = fmaxf(fmaxf(0.f, fabsf(x0)), fabsf(x1));
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = attn::pow2_ceil(__fmul_rn(fmaxf(amax, 1e-4f), 1.0f / 448.0f));
  x0 = __fmul_rn(attn::e4m3_round(__fdiv_rn(x0, s)), s);
  x1 = __fmul_rn(attn::e4m3_round(__fdiv_rn(x1, s)), s);
  *p = (unsigned)attn::f32_to_bf16_bits(x0) | ((unsigned)attn::f32_to_bf16_bits(x1) << 16);
}

// The ring update after attention: the last min(L, win) new rows of each item go to ring row position mod win.
extern "C" __global__ void __launch_bounds__(128)
attn_window_store(const uint16_t* __restrict__ kv, int d, int win,
                  uint16_t* win_base, const int* __restrict__ win_table, int win_table_stride, int block_rows,
                  int layer_slot, int layers, const int* __restrict__ items) {
  const attn::Item it = attn::load_item(items, blockIdx.x);
  const int p = max(it.pos, it.pos + it.len - win) + blockIdx.y;
  if (p >= it.pos + it.len) return;
  const attn::Paged ring{win_base, win_table, win_table_stride, block_rows, layer_slot, layers, d};
  const uint16_t* src = kv + (size_t)(it.row0 + p - it.pos) * d;
  uint16_t* dst = attn::paged_row(ring, it.slot, p % win);
  for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void __launch_bounds__(kThreads)
attn_sparse(const uint16_t* __restrict__ q,        // bf16 [rows, H, d] (renormed, rotated)
            const uint16_t* __restrict__ kv,       // bf16 [rows, d] this call's K = V rows (FP8-simulated)
            uint16_t* win_base, const int* __restrict__ win_table, int win_table_stride,
            uint16_t* comp_base, const int* __restrict__ comp_table, int comp_table_stride,
            int block_rows, int win_layer_slot, int win_layers, int comp_layer_slot, int comp_layers,
            const int* __restrict__ picks,         // int32 [rows, pick_stride] (ratio-4 layers) or null
            int pick_stride,
            const int* __restrict__ items, const int* __restrict__ row_item,
            const float* __restrict__ sink,        // f32 [H]
            const float* __restrict__ freqs,       // f32 [rd / 2]
            uint16_t* __restrict__ out,            // bf16 [rows, H, d]
            int H, int d, int rd, int win, int ratio, int topk, int hpb, int max_keys, float sigma) {
  extern __shared__ __align__(16) unsigned char smem[];
  const uint16_t** keys = reinterpret_cast<const uint16_t**>(smem);                 // [max_keys]
  float* qs = reinterpret_cast<float*>(smem + (size_t)max_keys * sizeof(void*));   // [hpb, d]
  float* sc = qs + (size_t)hpb * d;                                                 // [hpb, max_keys]

  const int r = blockIdx.x;
  const int h0 = blockIdx.y * hpb;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const attn::Item it = attn::load_item(items, row_item[r]);
  const int T = it.pos + (r - it.row0);

  // 1. key list: window (ascending positions), then compressed entries (ascending, or the picks in their order)
  const int nw = min(T + 1, win);
  const int w0 = T - nw + 1;
  int visible = 0, nc = 0;
  if (ratio > 0) {
    visible = (T + 1) / ratio;
    nc = picks ? min(topk, visible) : visible;
  }
  const int nk = min(nw + nc, max_keys);  // the launcher sizes max_keys from the same rule; min() only guards memory
  const attn::Paged ring{win_base, win_table, win_table_stride, block_rows, win_layer_slot, win_layers, d};
  const attn::Paged comp{comp_base, comp_table, comp_table_stride, block_rows, comp_layer_slot, comp_layers, d};
  for (int k = threadIdx.x; k < nk; k += blockDim.x) {
    const uint16_t* ptr;
    if (k < nw) {
      const int p = w0 + k;
      ptr = p >= it.pos ? kv + (size_t)(it.row0 + p - it.pos) * d : attn::paged_row(ring, it.slot, p % win);
    } else {
      const int j = k - nw;
      const int n = picks ? picks[(size_t)r * pick_stride + j] : j;
      ptr = (n >= 0 && n < visible) ? attn::paged_row(comp, it.slot, n) : nullptr;  // -1 / invisible: masked
    }
    keys[k] = ptr;
  }
  for (int i = threadIdx.x; i < hpb * d; i += blockDim.x) {
    qs[i] = attn::bf16_to_f32(q[((size_t)r * H + h0) * d + i]);
  }
  __syncthreads();

  // 2. scores: a warp per key, a lane per d/32 dims (pairs: 4-byte loads)
  const int pairs_per_lane = d / 64;
  for (int k = warp; k < nk; k += kWarps) {
    const uint16_t* kp = keys[k];
    if (!kp) {
      if (lane == 0) for (int h = 0; h < hpb; h++) sc[(size_t)h * max_keys + k] = -INFINITY;
      continue;
    }
    float kr[kMaxDimsPerLane];
#pragma unroll
    for (int j = 0; j < kMaxDimsPerLane / 2; j++) {
      if (j < pairs_per_lane) {
        const unsigned w = reinterpret_cast<const unsigned*>(kp)[lane + 32 * j];
        kr[2 * j] = __uint_as_float(w << 16);
        kr[2 * j + 1] = __uint_as_float(w & 0xffff0000u);
      }
    }
    for (int h = 0; h < hpb; h++) {
      const float* qh = qs + (size_t)h * d;
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < kMaxDimsPerLane / 2; j++) {
        if (j < pairs_per_lane) {
          const int i = 2 * (lane + 32 * j);
          s = fmaf(qh[i], kr[2 * j], s);
          s = fmaf(qh[i + 1], kr[2 * j + 1], s);
        }
      }
      s = attn::warp_sum(s);
      if (lane == 0) sc[(size_t)h * max_keys + k] = __fmul_rn(s, sigma);
    }
  }
  __syncthreads();

  // 3. softmax with sink, a warp per head: probabilities overwrite the scores
  for (int h = warp; h < hpb; h += kWarps) softmax_with_sink(sc + (size_t)h * max_keys, nk, nk, sink[h0 + h], lane);
  __syncthreads();

  // 4. P.V: thread t owns dim pair (t mod d/2) of heads t/(d/2), t/(d/2) + 256/(d/2), ... (d/2 divides 256)
  const int half = d / 2;
  const int pi = threadIdx.x % half;
  const int hstep = kThreads / half;
  float acc[2 * kMaxPairs];
#pragma unroll
  for (int j = 0; j < 2 * kMaxPairs; j++) acc[j] = 0.f;
  for (int k = 0; k < nk; k++) {
    const uint16_t* kp = keys[k];
    if (!kp) continue;
    const unsigned w = reinterpret_cast<const unsigned*>(kp)[pi];
    const float k0 = __uint_as_float(w << 16), k1 = __uint_as_float(w & 0xffff0000u);
#pragma unroll
    for (int j = 0; j < kMaxPairs; j++) {
      const int h = threadIdx.x / half + j * hstep;
      if (h < hpb) {
        const float p = sc[(size_t)h * max_keys + k];
        acc[2 * j] = fmaf(p, k0, acc[2 * j]);
        acc[2 * j + 1] = fmaf(p, k1, acc[2 * j + 1]);
      }
    }
  }
  const int nope = d - rd;
#pragma unroll
  for (int j = 0; j < kMaxPairs; j++) {
    const int h = threadIdx.x / half + j * hstep;
    if (h < hpb) {
      float o0 = attn::bf16_round(acc[2 * j]), o1 = attn::bf16_round(acc[2 * j + 1]);
      if (2 * pi >= nope) attn::rope_pair(o0, o1, freqs, pi - nope / 2, T, true);  // de-rotate by the query position
      unsigned* dst = reinterpret_cast<unsigned*>(out + ((size_t)r * H + h0 + h) * d);
      dst[pi] = (unsigned)attn::f32_to_bf16_bits(o0) | ((unsigned)attn::f32_to_bf16_bits(o1) << 16);
    }
  }
}

// ---- attn_sparse_mma1/2/4: the same computation on tensor cores (mma.sync m16n8k16 bf16 -> f32) -----------------------
// One CTA per (row, group of hpb heads); the group's heads, padded to 16-row m-tiles (MT = ceil(hpb / 16) of them), are
// the M dimension of both products, the row's key list is shared by them. 256 threads = 8 warps. Shared memory (the
// launcher's attentionMmaSmemBytes): key row pointers [nk16], QP m-tiles of the group's queries bf16 (16 QP x D
// values, fragment-major: one 16-byte load per mma A operand, below), scores / probabilities f32 [16 MT, ss]
// (ss = max_keys rounded up to 32, + 8: conflict-free float2 fragment loads), and for D < 512 the P.V partials of the
// key-split warps.
//   S = Q K^T: in passes of QP m-tiles (QP = MT but in the "s" entries, attn_sparse_mma2s / 4s: half the m-tiles'
//     queries in shared memory, where that brings two CTAs per SM, at the price of reading the keys once more); n-tiles
//     of 8 keys round-robin over the warps, each over all D dims and the pass's m-tiles (a key fragment feeds QP
//     mmas; with QP = 1, two n-tiles a step: two independent mma chains); key fragments come straight from global
//     memory (16-byte loads, the K dimension permuted within each 32-dim chunk identically on the A and B side, which a
//     dot product does not see), D/32 loads in flight per n-tile. s = f32(sigma * f32(q . k)); masked keys and the
//     padding to 16 keys -> -inf.
//   softmax: exactly the scalar kernel's (a warp per head, double exp, f32 denominator, p = bf16(e / denom)), after
//     all scores exist (two passes, not an online softmax: the rounding points of model.ts attendHead).
//   O = P V: warp w owns dims [64 (w mod D/64), +64) (8 n-tiles, the N index permuted so each lane's accumulators are
//     16 consecutive dims of one head row: one V fragment register pair per n-tile from four 16-byte key-row loads)
//     and the k-tiles (16 keys) w / (D/64), + 8 / (D/64), ...; the next k-tile's loads are issued before this one's
//     mmas. For D < 512 the key-split partials are summed through shared memory in a fixed order. Then bf16(o),
//     inverse RoPE at T, bf16 out (16-byte stores).
// f32 accumulation order differs from the scalar kernel's (and the CPU's f64): occasional one-ulp bf16 flips of p or o,
// within SPEC 5's calc_diff bound.
namespace {
constexpr int kMmaThreads = 256;
constexpr int kMmaWarps = kMmaThreads / 32;

struct SparseArgs {
  const uint16_t* q;
  const uint16_t* kv;
  attn::Paged ring, comp;
  const int* picks;
  int pick_stride;
  const int* items;
  const int* row_item;
  const float* sink;
  const float* freqs;
  uint16_t* out;
  int H, rd, win, ratio, topk, hpb, max_keys;
  float sigma;
};

__device__ __forceinline__ uint4 load_row16(const uint16_t* row, int elem) {
  if (!row) return uint4{0u, 0u, 0u, 0u};
  return *reinterpret_cast<const uint4*>(row + elem);
}

// b0 / b1 of the P.V fragment for n-tile q: dim slot q of keys (u, v) and (w, x)
__device__ __forceinline__ unsigned word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
__device__ __forceinline__ unsigned pair_lo(unsigned a, unsigned b) { return (a & 0xffffu) | (b << 16); }
__device__ __forceinline__ unsigned pair_hi(unsigned a, unsigned b) { return (a >> 16) | (b & 0xffff0000u); }

template <int D, int MT, int QP>
__device__ __forceinline__ void sparse_mma_body(const SparseArgs& A, unsigned char* smem) {
  static_assert(MT % QP == 0, "whole passes of m-tiles");
  constexpr int kRows = 16 * MT;
  constexpr int kNc = D / 32;  // 32-dim chunks of a query row (two mmas each)
  const int max_keys = A.max_keys;
  const int nk16cap = (max_keys + 15) & ~15;
  const int ss = ((max_keys + 31) & ~31) + 8;
  const uint16_t** keys = reinterpret_cast<const uint16_t**>(smem);                           // [nk16cap]
  uint4* qs = reinterpret_cast<uint4*>(smem + (size_t)nk16cap * sizeof(void*));              // [QP, D / 32, 2, 32] fragments
  float* sc = reinterpret_cast<float*>(qs + (size_t)QP * kNc * 64);                            // [kRows, ss]
  float* red = sc + (size_t)kRows * ss;                                                       // [512/D - 1, kRows, D]

  const int r = blockIdx.x;
  const int h0 = blockIdx.y * A.hpb;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const attn::Item it = attn::load_item(A.items, A.row_item[r]);
  const int T = it.pos + (r - it.row0);

  // 1. key list (as attn_sparse), null past the end up to a multiple of 16
  const int nw = min(T + 1, A.win);
  const int w0 = T - nw + 1;
  int visible = 0, nc = 0;
  if (A.ratio > 0) {
    visible = (T + 1) / A.ratio;
    nc = A.picks ? min(A.topk, visible) : visible;
  }
  const int nk = min(nw + nc, max_keys);
  const int nk16 = (nk + 15) & ~15;
  for (int k = threadIdx.x; k < nk16; k += kMmaThreads) {
    const uint16_t* ptr = nullptr;
    if (k < nw) {
      const int p = w0 + k;
      ptr = p >= it.pos ? A.kv + (size_t)(it.row0 + p - it.pos) * D : attn::paged_row(A.ring, it.slot, p % A.win);
    } else if (k < nk) {
      const int j = k - nw;
      const int n = A.picks ? A.picks[(size_t)r * A.pick_stride + j] : j;
      ptr = (n >= 0 && n < visible) ? attn::paged_row(A.comp, it.slot, n) : nullptr;  // -1 / invisible: masked
    }
    keys[k] = ptr;
  }

  // 2. S = Q K^T, scores into sc; per pass the pass's queries first
  constexpr int kBatch = kNc < 8 ? kNc : 8;
#pragma unroll 1
  for (int mq = 0; mq < MT; mq += QP) {  // first m-tile of the pass
    if (mq > 0) __syncthreads();  // every warp is done with the previous pass's queries
    // fragment-major: unit (m-tile, 32-dim chunk c, lane 4g + t) holds the A registers of the chunk's two mmas, rows
    // g and g + 8 of the m-tile, 16-byte chunk 4c + t (qa, qb): {qa.x, qb.x, qa.y, qb.y}, {qa.z, qb.z, qa.w, qb.w}
    for (int i = threadIdx.x; i < QP * kNc * 32; i += kMmaThreads) {
      const int ln = i & 31, c = (i >> 5) % kNc, m = (i >> 5) / kNc;
      const int head = mq * 16 + m * 16 + (ln >> 2), ch = 4 * c + (ln & 3);
      uint4 qa{0u, 0u, 0u, 0u}, qb{0u, 0u, 0u, 0u};
      if (head < A.hpb) qa = reinterpret_cast<const uint4*>(A.q + ((size_t)r * A.H + h0 + head) * D)[ch];
      if (head + 8 < A.hpb) qb = reinterpret_cast<const uint4*>(A.q + ((size_t)r * A.H + h0 + head + 8) * D)[ch];
      qs[((m * kNc + c) * 2) * 32 + ln] = uint4{qa.x, qb.x, qa.y, qb.y};
      qs[((m * kNc + c) * 2 + 1) * 32 + ln] = uint4{qa.z, qb.z, qa.w, qb.w};
    }
    __syncthreads();  // the queries (and, on the first pass, the key list)
    // kNT n-tiles a step (warp w: n-tiles w, w + 8, ... as before, kNT at a time): with one m-tile a pass the mmas of
    // one n-tile are a single dependent chain, so two n-tiles interleave two chains on the same query fragments.
    // Each accumulator sums in the same order either way.
    constexpr int kNT = QP == 1 ? 2 : 1;
    constexpr int kB = kBatch / kNT > 0 ? kBatch / kNT : 1;
    const int ntiles = nk16 / 8;
    const uint4* qf = qs + lane;
    for (int nt = warp; nt < ntiles; nt += kNT * kMmaWarps) {
      const uint16_t* kp[kNT];
#pragma unroll
      for (int u = 0; u < kNT; u++) kp[u] = nt + u * kMmaWarps < ntiles ? keys[(nt + u * kMmaWarps) * 8 + g] : nullptr;
      float acc[kNT][QP][4];
#pragma unroll
      for (int u = 0; u < kNT; u++)
#pragma unroll
        for (int m = 0; m < QP; m++) acc[u][m][0] = acc[u][m][1] = acc[u][m][2] = acc[u][m][3] = 0.f;
#pragma unroll
      for (int c0 = 0; c0 < kNc; c0 += kB) {
        uint4 kb[kNT][kB];
#pragma unroll
        for (int j = 0; j < kB; j++)
#pragma unroll
          for (int u = 0; u < kNT; u++) kb[u][j] = load_row16(kp[u], (c0 + j) * 32 + 8 * t);
#pragma unroll
        for (int j = 0; j < kB; j++) {
#pragma unroll
          for (int m = 0; m < QP; m++) {
            const uint4 f0 = qf[((m * kNc + c0 + j) * 2) * 32], f1 = qf[((m * kNc + c0 + j) * 2 + 1) * 32];
#pragma unroll
            for (int u = 0; u < kNT; u++) {
              attn::mma_bf16_16816(acc[u][m], f0.x, f0.y, f0.z, f0.w, kb[u][j].x, kb[u][j].y);
              attn::mma_bf16_16816(acc[u][m], f1.x, f1.y, f1.z, f1.w, kb[u][j].z, kb[u][j].w);
            }
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kNT; u++) {
        if (nt + u * kMmaWarps >= ntiles) break;
        const int k0 = (nt + u * kMmaWarps) * 8 + 2 * t;
        const bool m0 = keys[k0] == nullptr, m1 = keys[k0 + 1] == nullptr;
#pragma unroll
        for (int m = 0; m < QP; m++) {
          float* sa = sc + (size_t)((mq + m) * 16 + g) * ss + k0;
          float* sb = sa + (size_t)8 * ss;
          sa[0] = m0 ? -INFINITY : __fmul_rn(acc[u][m][0], A.sigma);
          sa[1] = m1 ? -INFINITY : __fmul_rn(acc[u][m][1], A.sigma);
          sb[0] = m0 ? -INFINITY : __fmul_rn(acc[u][m][2], A.sigma);
          sb[1] = m1 ? -INFINITY : __fmul_rn(acc[u][m][3], A.sigma);
        }
      }
    }
  }
  __syncthreads();

  // the epilogue's inverse-RoPE cos / sin at T, once per CTA (every head of the row shares them; computed per (head,
  // pair) they were ~45% of a prefill CTA's samples: docs/GPU-ATTENTION.md), in the query tile, dead from here on
  // (rd / 2 pairs x 8 bytes <= 16 QP x D x 2 bytes). Published by the barrier after the softmax.
  float* rope_c = reinterpret_cast<float*>(qs);
  float* rope_s = rope_c + A.rd / 2;
  for (int i = threadIdx.x; i < A.rd / 2; i += kMmaThreads) attn::rope_cs(A.freqs, i, T, rope_c[i], rope_s[i]);

  // 3. softmax with sink, a warp per head (as attn_sparse); probabilities overwrite the scores, 0 past nk
  // heads warp, warp + 8, ... (kRows / kMmaWarps = 2 MT of them per warp), two at a time in the prefill entries (MT >=
  // 2); the decode entry (MT = 1) one at a time (decode steps were slower with the pair there in one of two calls:
  // docs/GPU-MODEL.md "Session 12")
  for (int h = warp; h < kRows; h += 2 * kMmaWarps) {
    const int h1 = h + kMmaWarps;
    float* s = sc + (size_t)h * ss;
    float* s1 = sc + (size_t)h1 * ss;
    if (MT >= 2 && h1 < A.hpb) {
      softmax_with_sink2(s, s1, nk, nk16, A.sink[h0 + h], A.sink[h0 + h1], lane);
      continue;
    }
    for (int hh = h; hh <= h1; hh += kMmaWarps) {
      float* sh = sc + (size_t)hh * ss;
      if (hh >= A.hpb) {  // padding rows of the m-tile
        for (int k = lane; k < nk16; k += 32) sh[k] = 0.f;
      } else {
        softmax_with_sink(sh, nk, nk16, A.sink[h0 + hh], lane);
      }
    }
  }
  __syncthreads();

  // 4. O = P V, MP m-tiles per pass over the keys (two passes at MT = 4: 64 accumulators a lane instead of 128, so the
  //    4-m-tile entry fits two CTAs per SM; each pass reloads the V fragments, from L2)
  constexpr int kSlabs = D / 64;
  constexpr int kSplit = kMmaWarps / kSlabs;
  constexpr int MP = MT < 2 ? MT : 2;
  const int slab = warp % kSlabs, split = warp / kSlabs;
  const int dim0 = slab * 64 + 8 * g;  // this lane's 8 dims of each V row it loads (n-tile q <-> dim dim0 + q)
  const int ktiles = nk16 / 16;
  const int dbase = slab * 64 + 16 * t;
  const int nope = D - A.rd;
#pragma unroll 1
  for (int mb = 0; mb < MT; mb += MP) {
    float acc[MP][8][4];
#pragma unroll
    for (int m = 0; m < MP; m++)
#pragma unroll
      for (int q = 0; q < 8; q++) acc[m][q][0] = acc[m][q][1] = acc[m][q][2] = acc[m][q][3] = 0.f;
    uint4 vu, vv, vw, vx;  // keys 2t, 2t+1, 2t+8, 2t+9 of the k-tile
    if (split < ktiles) {
      const int kb = split * 16 + 2 * t;
      vu = load_row16(keys[kb], dim0); vv = load_row16(keys[kb + 1], dim0);
      vw = load_row16(keys[kb + 8], dim0); vx = load_row16(keys[kb + 9], dim0);
    }
    for (int kt = split; kt < ktiles; kt += kSplit) {
      const uint4 cu = vu, cv = vv, cw = vw, cx = vx;
      if (kt + kSplit < ktiles) {  // the next k-tile's loads in flight during this one's mmas
        const int kb = (kt + kSplit) * 16 + 2 * t;
        vu = load_row16(keys[kb], dim0); vv = load_row16(keys[kb + 1], dim0);
        vw = load_row16(keys[kb + 8], dim0); vx = load_row16(keys[kb + 9], dim0);
      }
      unsigned b0[8], b1[8];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const unsigned u = word_of(cu, i), v = word_of(cv, i), w = word_of(cw, i), x = word_of(cx, i);
        b0[2 * i] = pair_lo(u, v); b1[2 * i] = pair_lo(w, x);
        b0[2 * i + 1] = pair_hi(u, v); b1[2 * i + 1] = pair_hi(w, x);
      }
      const int kc = kt * 16 + 2 * t;
#pragma unroll
      for (int m = 0; m < MP; m++) {
        const float* pa = sc + (size_t)((mb + m) * 16 + g) * ss + kc;
        const float* pb = pa + (size_t)8 * ss;
        const float2 a0 = *reinterpret_cast<const float2*>(pa), a2 = *reinterpret_cast<const float2*>(pa + 8);
        const float2 a1 = *reinterpret_cast<const float2*>(pb), a3 = *reinterpret_cast<const float2*>(pb + 8);
        const unsigned r0 = attn::pack_bf16x2_exact(a0.x, a0.y), r1 = attn::pack_bf16x2_exact(a1.x, a1.y);
        const unsigned r2 = attn::pack_bf16x2_exact(a2.x, a2.y), r3 = attn::pack_bf16x2_exact(a3.x, a3.y);
#pragma unroll
        for (int q = 0; q < 8; q++) attn::mma_bf16_16816(acc[m][q], r0, r1, r2, r3, b0[q], b1[q]);
      }
    }
    // lane holds, per m-tile, dims slab*64 + 16t + j of rows g (acc[..][j%8][j/8]) and g+8 (acc[..][j%8][2 + j/8])
    if constexpr (kSplit > 1) {  // the key-split warps' partials, summed in split order
      if (split > 0) {
#pragma unroll
        for (int m = 0; m < MP; m++)
#pragma unroll
          for (int hf = 0; hf < 2; hf++) {
            float* dst = red + ((size_t)(split - 1) * kRows + (mb + m) * 16 + g + 8 * hf) * D + dbase;
#pragma unroll
            for (int j = 0; j < 16; j++) dst[j] = acc[m][j % 8][2 * hf + j / 8];
          }
      }
      __syncthreads();
      if (split == 0) {
        for (int s = 1; s < kSplit; s++)
#pragma unroll
          for (int m = 0; m < MP; m++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
              const float* src = red + ((size_t)(s - 1) * kRows + (mb + m) * 16 + g + 8 * hf) * D + dbase;
#pragma unroll
              for (int j = 0; j < 16; j++) acc[m][j % 8][2 * hf + j / 8] += src[j];
            }
      }
    }
    if (split == 0) {
#pragma unroll
      for (int m = 0; m < MP; m++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
          const int row = (mb + m) * 16 + g + 8 * hf;
          if (row >= A.hpb) continue;
          unsigned w[8];  // bf16(o) pairs, then the inverse RoPE on the rope dims (its results are bf16 already)
#pragma unroll
          for (int j = 0; j < 8; j++) w[j] = attn::f32x2_to_bf16x2(acc[m][(2 * j) % 8][2 * hf + (2 * j) / 8], acc[m][(2 * j + 1) % 8][2 * hf + (2 * j + 1) / 8]);
          if (dbase + 16 > nope) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
              const int dim = dbase + 2 * j;
              if (dim < nope) continue;
              float a = __uint_as_float(w[j] << 16), b = __uint_as_float(w[j] & 0xffff0000u);
              attn::rope_rotate(a, b, rope_c[(dim - nope) / 2], rope_s[(dim - nope) / 2], true);
              w[j] = attn::f32x2_to_bf16x2(a, b);
            }
          }
          uint4* dst = reinterpret_cast<uint4*>(A.out + ((size_t)r * A.H + h0 + row) * D + dbase);
          dst[0] = uint4{w[0], w[1], w[2], w[3]};
          dst[1] = uint4{w[4], w[5], w[6], w[7]};
        }
    }
    if constexpr (kSplit > 1) {
      if (mb + MP < MT) __syncthreads();  // split 0 has read the partials before the next pass writes them
    }
  }
}

}  // namespace

namespace {
template <int MT, int QP = MT>
__device__ __forceinline__ void sparse_mma_dispatch(const SparseArgs& A, int d, unsigned char* smem) {
  switch (d) {
    case 512: sparse_mma_body<512, MT, QP>(A, smem); break;
    case 256: sparse_mma_body<256, MT, QP>(A, smem); break;
    case 128: sparse_mma_body<128, MT, QP>(A, smem); break;
    case 64: sparse_mma_body<64, MT, QP>(A, smem); break;
    default: break;  // the launcher never picks these kernels for other d
  }
}
}  // namespace

// Same arguments as attn_sparse; d in {64, 128, 256, 512}. One entry per m-tile count: attn_sparse_mma<MT> for
// hpb <= 16 MT (the launcher's chooseHeadsPerCtaMma / sparseMmaEntry), so a 16-head CTA is not held to the register
// count of the 4-m-tile one; attn_sparse_mma2s / 4s are the 2- and 4-m-tile ones with S in passes of half the
// m-tiles (where that alone brings two CTAs per SM: chooseSparseKernel).
// The three entries share attn_sparse's parameter list and one body (each name starts its line: the CPU emulator's
// build finds entries that way).
#define ATTN_SPARSE_MMA_PARAMS                                                                                     \
  const uint16_t *__restrict__ q, const uint16_t *__restrict__ kv, uint16_t *win_base,                             \
      const int *__restrict__ win_table, int win_table_stride, uint16_t *comp_base,                                \
      const int *__restrict__ comp_table, int comp_table_stride, int block_rows, int win_layer_slot,               \
      int win_layers, int comp_layer_slot, int comp_layers, const int *__restrict__ picks, int pick_stride,        \
      const int *__restrict__ items, const int *__restrict__ row_item, const float *__restrict__ sink,             \
      const float *__restrict__ freqs, uint16_t *__restrict__ out, int H, int d, int rd, int win, int ratio,       \
      int topk, int hpb, int max_keys, float sigma
#define ATTN_SPARSE_MMA_ARGS                                                                                       \
  SparseArgs{q, kv, attn::Paged{win_base, win_table, win_table_stride, block_rows, win_layer_slot, win_layers, d},   \
             attn::Paged{comp_base, comp_table, comp_table_stride, block_rows, comp_layer_slot, comp_layers, d},     \
             picks, pick_stride, items, row_item, sink, freqs, out, H, rd, win, ratio, topk, hpb, max_keys, sigma}

extern "C" __global__ void __launch_bounds__(kMmaThreads)
attn_sparse_mma1(ATTN_SPARSE_MMA_PARAMS) {
  extern __shared__ __align__(16) unsigned char smem[];
  sparse_mma_dispatch<1>(ATTN_SPARSE_MMA_ARGS, d, smem);
}

extern "C" __global__ void __launch_bounds__(kMmaThreads)
attn_sparse_mma2(ATTN_SPARSE_MMA_PARAMS) {
  extern __shared__ __align__(16) unsigned char smem[];
  sparse_mma_dispatch<2>(ATTN_SPARSE_MMA_ARGS, d, smem);
}

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2)  // two CTAs per SM (the launcher's reason to pick it)
attn_sparse_mma2s(ATTN_SPARSE_MMA_PARAMS) {
  extern __shared__ __align__(16) unsigned char smem[];
  sparse_mma_dispatch<2, 1>(ATTN_SPARSE_MMA_ARGS, d, smem);
}

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2)  // two CTAs per SM where shared memory allows
attn_sparse_mma4(ATTN_SPARSE_MMA_PARAMS) {
  extern __shared__ __align__(16) unsigned char smem[];
  sparse_mma_dispatch<4>(ATTN_SPARSE_MMA_ARGS, d, smem);
}

extern "C" __global__ void __launch_bounds__(kMmaThreads, 2)  // two CTAs per SM (the launcher's reason to pick it)
attn_sparse_mma4s(ATTN_SPARSE_MMA_PARAMS) {
  extern __shared__ __align__(16) unsigned char smem[];
  sparse_mma_dispatch<4, 2>(ATTN_SPARSE_MMA_ARGS, d, smem);
}
#undef ATTN_SPARSE_MMA_PARAMS
#undef ATTN_SPARSE_MMA_ARGS

// One warp, one mma.sync m16n8k16 through attn::mma_bf16_16816 (test/gpu-attn-mma.test.ts): the fragment layouts of
// attn_mma.cuh checked on the GPU (the real instruction) and on the CPU emulator (its shuffle emulation) alike.
// a bf16 [16, 16] row-major, b bf16 [8, 16] (B^T: column n's 16 k values contiguous), c, d f32 [16, 8].
namespace {
__device__ __forceinline__ unsigned ld_bf16x2(const uint16_t* p) { return (unsigned)p[0] | ((unsigned)p[1] << 16); }
}  // namespace
extern "C" __global__ void __launch_bounds__(32)
attn_mma_selftest(const uint16_t* __restrict__ a, const uint16_t* __restrict__ b, const float* __restrict__ c,
                  float* __restrict__ d) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  attn::mma_bf16_16816(acc, ld_bf16x2(a + g * 16 + 2 * t), ld_bf16x2(a + (g + 8) * 16 + 2 * t),
                       ld_bf16x2(a + g * 16 + 2 * t + 8), ld_bf16x2(a + (g + 8) * 16 + 2 * t + 8),
                       ld_bf16x2(b + g * 16 + 2 * t), ld_bf16x2(b + g * 16 + 2 * t + 8));
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}
