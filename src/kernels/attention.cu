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
// The straightforward version: no tensor cores, keys re-read from L1/L2 per head group. docs/GPU-ATTENTION.md says
// what a fast version changes.
#include "attn_common.cuh"

namespace {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// hpb * d <= kMaxGroupDims, so a thread's output pairs fit in registers (kMaxPairs per thread).
constexpr int kMaxGroupDims = 8192;
constexpr int kMaxPairs = kMaxGroupDims / 2 / kThreads;
constexpr int kMaxDimsPerLane = 16;  // d <= 512
}  // namespace

// In-place FP8 QAT simulation of the nope dims of fresh kv rows [rows, d] (ops.ts fp8SimInPlace, block 64).
extern "C" __global__ void __launch_bounds__(128)
attn_kv_fp8_sim(uint16_t* kv, int rows, int d, int nope) {
  const int nblk = nope / 64;
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  if (id >= rows * nblk) return;
  uint16_t* p = kv + (size_t)(id / nblk) * d + (id % nblk) * 64;
  float x[64];
#pragma unroll
  for (int i = 0; i < 64; i++) x[i] = attn::bf16_to_f32(p[i]);
  attn::fp8_sim_block(x, 64);
#pragma unroll
  for (int i = 0; i < 64; i++) p[i] = attn::f32_to_bf16_bits(x[i]);
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
  for (int h = warp; h < hpb; h += kWarps) {
    float* s = sc + (size_t)h * max_keys;
    float mx = -INFINITY;
    for (int k = lane; k < nk; k += 32) mx = fmaxf(mx, s[k]);
    mx = attn::warp_max(mx);
    double se = 0.0;
    for (int k = lane; k < nk; k += 32) {
      const float e = s[k] == -INFINITY ? 0.f : __double2float_rn(exp((double)s[k] - (double)mx));
      s[k] = e;
      se += (double)e;
    }
    se = attn::warp_sum(se);
    const float den = __fadd_rn(__double2float_rn(se), __double2float_rn(exp((double)sink[h0 + h] - (double)mx)));
    __syncwarp();
    for (int k = lane; k < nk; k += 32) s[k] = attn::bf16_round(__fdiv_rn(s[k], den));
  }
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
