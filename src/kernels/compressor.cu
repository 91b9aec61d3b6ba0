// The compressor of V4-MODEL 4.4 / 4.8 on the GPU: pools each block of `ratio` tokens completed by this call into one
// compressed entry and writes it into the paged compressed cache; then keeps the last c * ratio tokens' a_t and
// g_t + ape in the sequence's compressor state for the next call. Mirrors model.ts compress() + poolBlock().
//
// Input: this call's projections a = wkv x, g = wgate x, f32 [rows, c * dc] (the plain fp32 linears, computed by the
// GEMM path), rows laid out item after item (attn::Item). Tokens of a candidate block that came in an earlier call
// are read from the state (which holds g with ape already added, like the CPU's CompressorCache.g).
//
// compress_pool: one CTA per (item, block completed in this call); a thread per channel pools in double (the CPU
// pools in f64: e_j = f32(exp(g_j - max)), sums of e and e * a), z = bf16(f32(sa) / f32(se)); then RMSNorm with the
// compressor's weight, RoPE at position nb * ratio on the last rd dims, and the QAT simulation (main: FP8 on the nope
// dims, block 64; indexer: Hadamard, then FP4 block 32). compress_state runs after it (same stream) so that pooling
// reads the state of the previous call, never this call's overwrites.
#include "attn_common.cuh"

namespace {
constexpr int kMaxDc = 512;
constexpr int kThreads = 256;
}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads)
attn_compress_pool(const float* __restrict__ a,      // [rows, width] this call's wkv x
                   const float* __restrict__ g,      // [rows, width] this call's wgate x (ape not added)
                   const float* __restrict__ ape,    // [ratio, width]
                   const float* __restrict__ norm_w, // [dc]
                   const float* __restrict__ freqs,  // [rd / 2] the layer's RoPE frequencies
                   const float* __restrict__ state,  // slot 0 of this layer's state: kv [slots, width], score [slots, width]
                   int state_stride,                 // f32 between slots
                   uint16_t* cache_base, const int* __restrict__ cache_table, int table_stride, int block_rows,
                   int layer_slot, int layers,
                   const int* __restrict__ items,
                   int ratio, int overlap, int dc, int rd, int indexer, float eps) {
  __shared__ float z[kMaxDc];
  __shared__ double tmp[kMaxDc];
  __shared__ double red[32];
  const attn::Item it = attn::load_item(items, blockIdx.x);
  const int nb = it.pos / ratio + blockIdx.y;
  if ((nb + 1) * ratio > it.pos + it.len) return;  // this block is not complete after this call (uniform per CTA)
  const int cw = overlap ? 2 : 1;
  const int width = cw * dc;
  const int slots = cw * ratio;
  const float* st_a = state + (size_t)it.slot * state_stride;
  const float* st_g = st_a + (size_t)slots * width;

  for (int ch = threadIdx.x; ch < dc; ch += blockDim.x) {
    // candidates (model.ts poolBlock order): block nb-1 on channels [0, dc) when overlapping, then block nb on
    // channels [dc, 2dc) (overlap) or [0, dc)
    const bool prev = overlap && nb > 0;
    const int m = (prev ? ratio : 0) + ratio;
    auto fetch = [&](int j, float& gv, float& av) {
      int p, col;
      if (prev && j < ratio) { p = (nb - 1) * ratio + j; col = ch; }
      else { p = nb * ratio + (j - (prev ? ratio : 0)); col = (overlap ? dc : 0) + ch; }
      if (p >= it.pos) {
        const size_t row = (size_t)(it.row0 + p - it.pos) * width + col;
        av = a[row];
        gv = __fadd_rn(g[row], ape[(size_t)(p % ratio) * width + col]);
      } else {
        const size_t s = (size_t)(p % slots) * width + col;
        av = st_a[s];
        gv = st_g[s];
      }
    };
    double mx = -INFINITY;
    for (int j = 0; j < m; j++) { float gv, av; fetch(j, gv, av); mx = fmax(mx, (double)gv); }
    double se = 0.0, sa = 0.0;
    for (int j = 0; j < m; j++) {
      float gv, av;
      fetch(j, gv, av);
      const float e = __double2float_rn(exp((double)gv - mx));
      se += (double)e;
      sa += (double)e * (double)av;  // e * a is exact in double, so an FMA here changes nothing
    }
    z[ch] = attn::bf16_round(__fdiv_rn(__double2float_rn(sa), __double2float_rn(se)));
  }
  __syncthreads();
  attn::rms_norm_shared(z, dc, norm_w, eps, red);
  const int nope = dc - rd;
  for (int i = threadIdx.x; i < rd / 2; i += blockDim.x) attn::rope_pair(z[nope + 2 * i], z[nope + 2 * i + 1], freqs, i, nb * ratio, false);
  __syncthreads();
  if (indexer) {
    attn::hadamard_shared(z, tmp, dc);
    for (int b = threadIdx.x; b < dc / 32; b += blockDim.x) attn::fp4_sim_block(z + 32 * b, 32);
  } else {
    for (int b = threadIdx.x; b < nope / 64; b += blockDim.x) attn::fp8_sim_block(z + 64 * b, 64);
  }
  __syncthreads();
  const attn::Paged cache{cache_base, cache_table, table_stride, block_rows, layer_slot, layers, dc};
  uint16_t* dst = attn::paged_row(cache, it.slot, nb);
  for (int i = threadIdx.x; i < dc; i += blockDim.x) dst[i] = attn::f32_to_bf16_bits(z[i]);
}

// The state update after pooling: the last min(len, slots) tokens of each item go to slot position mod slots
// (a, and g + ape). One CTA per (item, token of that tail).
extern "C" __global__ void __launch_bounds__(kThreads)
attn_compress_state(const float* __restrict__ a, const float* __restrict__ g, const float* __restrict__ ape,
                    float* __restrict__ state, int state_stride, const int* __restrict__ items,
                    int ratio, int overlap, int dc) {
  const attn::Item it = attn::load_item(items, blockIdx.x);
  const int cw = overlap ? 2 : 1;
  const int width = cw * dc;
  const int slots = cw * ratio;
  const int p0 = max(it.pos, it.pos + it.len - slots);
  const int p = p0 + blockIdx.y;
  if (p >= it.pos + it.len) return;
  float* st_a = state + (size_t)it.slot * state_stride;
  float* st_g = st_a + (size_t)slots * width;
  const size_t row = (size_t)(it.row0 + p - it.pos) * width;
  const size_t s = (size_t)(p % slots) * width;
  const size_t ap = (size_t)(p % ratio) * width;
  for (int i = threadIdx.x; i < width; i += blockDim.x) {
    st_a[s + i] = a[row + i];
    st_g[s + i] = __fadd_rn(g[row + i], ape[ap + i]);
  }
}
