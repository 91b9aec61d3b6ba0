// The lightning indexer of V4-MODEL 4.5 on the GPU (ratio-4 layers): query preparation, scores over the visible
// compressed indexer keys (paged cache), and the top-k selection. Mirrors model.ts attention() (the qI / wI lines) and
// indexerTopk().
//
// attn_indexer_prepare: one CTA per (row, indexer head): qI = FP4sim(Hadamard(RoPE(qI))) in place, and the head
//   weight w = bf16(w * 1/(sqrt(di) sqrt(Hi))) (the scale comes from the host as one f32, as the CPU computes it).
// attn_indexer_scores: one CTA per (row, 32 visible keys): score[n] = bf16(sum_h bf16(w_h * relu(bf16(qI_h . k_n)))).
//   The dot products run in double: qI and k sit on the FP4 grid times power-of-two block scales, so the double sum is
//   exact, i.e. equal to the CPU's f64 sum, and so is the head sum of bf16 terms (any order). The scores therefore
//   match the CPU bit for bit and the selection is the same, ties included. (The inputs are exact in FP8 e4m3 given a
//   per-row scale, which is what lets a fast version use FP8 tensor cores: docs/GPU-ATTENTION.md.)
// attn_indexer_topk: one CTA per row: the top min(k, visible) scores, ties to the lower block index, written in
//   ascending block order (what the CPU returns), -1 after them. Radix select on the 16-bit bf16 keys (two 8-bit
//   passes), then an in-order compaction with block scans. visible <= k selects every visible block without scores.
#include "attn_common.cuh"

namespace {
constexpr int kPrepMaxDi = 1024;
constexpr int kScoreThreads = 256;
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kKeysPerCta = 32;
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

extern "C" __global__ void __launch_bounds__(kScoreThreads)
attn_indexer_scores(const uint16_t* __restrict__ qi,  // bf16 [rows, Hi, di] (prepared)
                    const uint16_t* __restrict__ w,   // bf16 [rows, Hi] (scaled)
                    uint16_t* idx_base, const int* __restrict__ idx_table, int table_stride, int block_rows,
                    int layer_slot, int layers,
                    const int* __restrict__ items, const int* __restrict__ row_item,
                    uint16_t* __restrict__ scores,    // bf16 bits [chunk rows, score_stride]
                    int score_stride, int row_begin, int Hi, int di, int ratio, int topk) {
  extern __shared__ __align__(16) unsigned char smem[];
  double* part = reinterpret_cast<double*>(smem);                                 // [warps, 32]
  float* qs = reinterpret_cast<float*>(part + kScoreWarps * kKeysPerCta);         // [Hi, di]
  float* ws = qs + (size_t)Hi * di;                                               // [Hi]
  float* ks = ws + Hi;                                                            // [32, di + 1]
  const int r = row_begin + blockIdx.x;
  const attn::Item it = attn::load_item(items, row_item[r]);
  const int T = it.pos + (r - it.row0);
  const int visible = (T + 1) / ratio;
  const int n0 = blockIdx.y * kKeysPerCta;
  if (visible <= topk || n0 >= visible) return;  // uniform per CTA; the top-k kernel takes every block then
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < Hi * di; i += blockDim.x) qs[i] = attn::bf16_to_f32(qi[(size_t)r * Hi * di + i]);
  for (int i = threadIdx.x; i < Hi; i += blockDim.x) ws[i] = attn::bf16_to_f32(w[(size_t)r * Hi + i]);
  const attn::Paged cache{idx_base, idx_table, table_stride, block_rows, layer_slot, layers, di};
  const int nkeys = min(kKeysPerCta, visible - n0);
  for (int e = threadIdx.x; e < kKeysPerCta * di; e += blockDim.x) {
    const int kk = e / di, i = e % di;
    ks[kk * (di + 1) + i] = kk < nkeys ? attn::bf16_to_f32(attn::paged_row(cache, it.slot, n0 + kk)[i]) : 0.f;
  }
  __syncthreads();
  double acc = 0.0;
  const float* kr = ks + lane * (di + 1);
  for (int h = warp; h < Hi; h += kScoreWarps) {
    const float* qh = qs + (size_t)h * di;
    double dot = 0.0;
    for (int i = 0; i < di; i++) dot += (double)qh[i] * (double)kr[i];
    const float rl = fmaxf(attn::bf16_round(__double2float_rn(dot)), 0.f);
    acc += (double)attn::bf16_round(__fmul_rn(ws[h], rl));
  }
  part[warp * kKeysPerCta + lane] = acc;
  __syncthreads();
  if (warp == 0 && lane < nkeys) {
    double s = 0.0;
    for (int j = 0; j < kScoreWarps; j++) s += part[j * kKeysPerCta + lane];
    scores[(size_t)blockIdx.x * score_stride + n0 + lane] = attn::f32_to_bf16_bits(__double2float_rn(s));
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
