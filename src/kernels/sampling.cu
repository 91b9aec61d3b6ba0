// Token sampling on the GPU, one 1024-thread block per row of logits, with src/generate/sampler.ts's semantics and
// random stream: the same seed gives the same uniforms (xoshiro128**, one per non-greedy draw, state in device
// memory), and the draw is the CPU's inverse CDF over the same candidates in the same order with the same f64
// arithmetic. Modes (chosen on the host from the parameters, exactly as Sampler.sample branches):
//   0 greedy   argmax, lowest id among equal logits; no uniform drawn.
//   1 full     temperature only: w_i = exp((l_i - max) * invT) over the whole vocabulary in id order.
//   2 top-k    the k best (logit desc, id asc; k <= kMaxCand), optionally top-p within them, best-first order.
//   3 top-p    nucleus over the whole vocabulary: the smallest best-first prefix reaching topP of the total mass,
//              drawn in id order. The prefix is searched among the kMaxCand best tokens (sorted, exact f64 as the
//              CPU); a wider nucleus is cut by wide_cut (a radix select by mass in fixed point, then f64 over the
//              ties at the cut key) and drawn like mode 1 over the kept tokens.
// Where the CPU sums sequentially over the whole vocabulary (mode 1's CDF, mode 3's total mass, a wide nucleus's
// CDF) this kernel sums per thread chunk and then over chunks in order: the f64 results differ in the last bits, so
// a draw can differ from the CPU's only when u (or the top-p target) falls within that rounding (~1e-13 relative) of
// a CDF step; a wide nucleus's cut key also within 2^-40 * V of one (wide_cut). Modes 0 and 2 and the narrow mode 3
// run the CPU's exact sequence of f64 operations (one thread, <= kMaxCand terms).
// status per row: 0 ok, 1 a NaN logit (token -1), 2 every logit -inf (token -1).
#include "common.cuh"

namespace {
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxCand = 2048;  // candidates held in shared memory (sort keys + f64 weights: 32 KB)

typedef unsigned int u32;
typedef unsigned long long u64;

// Order-preserving key of an f32 (larger logit -> larger key); -0 maps to +0's key, as JS compares them equal.
__device__ __forceinline__ u32 order_key(float f) {
  u32 b = __float_as_uint(f);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u32 rotl(u32 x, int k) { return (x << k) | (x >> (32 - k)); }

// util/rng.ts Rng.uniform(): xoshiro128** nextU32 / 2^32.
__device__ __forceinline__ double next_uniform(u32* s) {
  const u32 result = rotl(s[1] * 5u, 7) * 9u;
  const u32 t = s[1] << 9;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 11);
  return (double)result / 4294967296.0;
}

// sampler.ts weights: Math.exp((l - max) * invT) in f64.
__device__ __forceinline__ double weight(float l, float mx, double inv_t) { return exp(__dmul_rn(__dsub_rn((double)l, (double)mx), inv_t)); }

struct Smem {
  u64 cand[kMaxCand];      // sort keys: (order_key << 32) | (~id), then (id << 32) | rank for the id-order pass
  double w[kMaxCand];      // weights of the sorted candidates
  u32 hist[256];
  double red[kWarps];
  float redv[kWarps];
  int redi[kWarps];
  int flag[kWarps];
  double chunk[kThreads];  // per-thread chunk sums, then their exclusive prefixes
  int eq_prefix[kThreads];
  float mx;
  int arg;
  int nan_seen;
  u32 prefix;
  int remaining;
  int count;
  u64 fix_remaining;
  int cut;
  double target;
};

// Descending bitonic sort of n (a power of two <= kMaxCand) u64 keys; `asc` flips it.
__device__ void bitonic(u64* s, int n, bool asc) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
        const int lo = 2 * stride * (i / stride) + (i % stride);
        const int hi = lo + stride;
        const bool desc = ((lo & size) == 0) != asc;
        const u64 a = s[lo], b = s[hi];
        if (desc ? (a < b) : (a > b)) { s[lo] = b; s[hi] = a; }
      }
      __syncthreads();
    }
  }
}

__device__ __forceinline__ int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// The k best tokens (logit desc, id asc) into sm.cand[0, k), sorted; k <= kMaxCand, k <= V.
__device__ void top_candidates(const float* __restrict__ l, int V, int k, Smem& sm) {
  const int tid = threadIdx.x;
  // Radix select of the k-th largest key, 8 bits at a time (integer counts: deterministic).
  if (tid == 0) { sm.prefix = 0; sm.remaining = k; }
  u32 mask = 0;
  for (int pass = 0; pass < 4; pass++) {
    const int shift = 24 - 8 * pass;
    for (int i = tid; i < 256; i += blockDim.x) sm.hist[i] = 0;
    __syncthreads();
    const u32 prefix = sm.prefix;
    for (int i = tid; i < V; i += blockDim.x) {
      const u32 key = order_key(__ldg(l + i));
      if ((key & mask) == prefix) atomicAdd(&sm.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid == 0) {
      int cum = 0;
      for (int d = 255; d >= 0; d--) {
        const int h = (int)sm.hist[d];
        if (cum + h >= sm.remaining) { sm.prefix = prefix | ((u32)d << shift); sm.remaining -= cum; break; }
        cum += h;
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const u32 tau = sm.prefix;
  const int need_eq = sm.remaining;  // ties at tau to take, lowest ids first
  // Ties in id order: thread chunks are contiguous id ranges, counted then prefixed in thread order.
  const int C = (V + kThreads - 1) / kThreads;
  const int lo = tid * C, hi = min(V, lo + C);
  int eq = 0;
  for (int i = lo; i < hi; i++) eq += order_key(__ldg(l + i)) == tau;
  sm.eq_prefix[tid] = eq;
  if (tid == 0) sm.count = 0;
  __syncthreads();
  if (tid == 0) {
    int run = 0;
    for (int t = 0; t < kThreads; t++) { const int e = sm.eq_prefix[t]; sm.eq_prefix[t] = run; run += e; }
  }
  __syncthreads();
  int rank = sm.eq_prefix[tid];
  for (int i = lo; i < hi; i++) {
    const u32 key = order_key(__ldg(l + i));
    bool take = key > tau;
    if (key == tau) { take = rank < need_eq; rank++; }
    if (take) {
      const int pos = atomicAdd(&sm.count, 1);  // slot order is irrelevant: the sort below is a total order
      sm.cand[pos] = ((u64)key << 32) | (u64)(0xffffffffu - (u32)i);
    }
  }
  __syncthreads();
  const int n = pow2_at_least(k);
  for (int i = k + tid; i < n; i += blockDim.x) sm.cand[i] = 0;  // below every real key
  __syncthreads();
  bitonic(sm.cand, n, false);
}

__device__ __forceinline__ int cand_id(u64 c) { return (int)(0xffffffffu - (u32)(c & 0xffffffffu)); }

// Inverse-CDF draw in id order over the kept tokens {i : key_i > tau, or key_i == tau and i <= cut_id} (all of them
// for tau = 0): per-thread chunk sums (contiguous ids), exclusive prefixes in thread order by one thread, then the one
// thread whose chunk holds u = uniform * total walks it (sampler.ts sampleFull / the id-order nucleus draw).
__device__ void draw_id_order(const float* __restrict__ l, int V, float mx, double inv_t, u32 tau, int cut_id, u32* rng,
                              Smem& sm, int* token) {
  const int tid = threadIdx.x;
  const int C = (V + kThreads - 1) / kThreads;
  const int lo = tid * C, hi = min(V, lo + C);
  auto kept = [&](int i, u32 key) { return key > tau || (key == tau && i <= cut_id); };
  double s = 0.0;
  for (int i = lo; i < hi; i++) {
    const float v = __ldg(l + i);
    if (kept(i, order_key(v))) s = __dadd_rn(s, weight(v, mx, inv_t));
  }
  sm.chunk[tid] = s;
  __syncthreads();
  if (tid == 0) {
    double run = 0.0;
    for (int t = 0; t < kThreads; t++) { const double c = sm.chunk[t]; sm.chunk[t] = run; run = __dadd_rn(run, c); }
    sm.red[0] = __dmul_rn(next_uniform(rng), run);  // u = uniform * total
    sm.red[1] = run;
  }
  __syncthreads();
  const double u = sm.red[0];
  const double start = sm.chunk[tid];
  const double end = tid + 1 < kThreads ? sm.chunk[tid + 1] : sm.red[1];
  if (start <= u && u < end) {  // exactly one thread (chunks without mass have start == end)
    double cum = start; int pick = -1; int last = -1;
    for (int i = lo; i < hi; i++) {
      const float v = __ldg(l + i);
      if (!kept(i, order_key(v))) continue;
      const double w = weight(v, mx, inv_t);
      if (w > 0) last = i;
      cum = __dadd_rn(cum, w);
      if (u < cum) { pick = i; break; }
    }
    *token = pick >= 0 ? pick : last;
  }
  __syncthreads();
}

// The cut of a nucleus wider than kMaxCand (mode 3): the (key tau, id cut_id) of the token whose best-first prefix
// first reaches target. The key comes from a radix select by mass in 2^-40 fixed point (integer atomics: exact and
// deterministic); the ties at that key are then walked in id order with f64 sums, as the CPU. Fixed point can place
// the cut one key off only when a prefix mass lies within V * 2^-40 of the target.
__device__ void wide_cut(const float* __restrict__ l, int V, float mx, double inv_t, double target, Smem& sm,
                         u32* tau_out, int* cut_out) {
  const int tid = threadIdx.x;
  const double kFix = 1099511627776.0;  // 2^40: weights are <= 1, so V * 2^40 < 2^64
  u64* hist = reinterpret_cast<u64*>(sm.cand);  // the candidates are not needed any more
  if (tid == 0) { sm.prefix = 0; sm.fix_remaining = (u64)(target * kFix); }
  u32 mask = 0;
  for (int pass = 0; pass < 4; pass++) {
    const int shift = 24 - 8 * pass;
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const u32 prefix = sm.prefix;
    for (int i = tid; i < V; i += blockDim.x) {
      const float v = __ldg(l + i);
      const u32 key = order_key(v);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], (u64)(weight(v, mx, inv_t) * kFix));
    }
    __syncthreads();
    if (tid == 0) {
      u64 total = 0;
      int lowest = -1;
      for (int d = 0; d < 256; d++) { total += hist[d]; if (lowest < 0 && hist[d] > 0) lowest = d; }
      u64 rem = sm.fix_remaining;
      if (rem > total) rem = total;  // truncation left the fixed-point mass a hair under the target
      if (rem == 0) rem = 1;
      u64 cum = 0;
      int chosen = lowest < 0 ? 0 : lowest;
      for (int d = 255; d >= 0; d--) {
        if (cum + hist[d] >= rem && hist[d] > 0) { chosen = d; break; }
        cum += hist[d];
      }
      sm.prefix = prefix | ((u32)chosen << shift);
      sm.fix_remaining = rem - cum;
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  const u32 tau = sm.prefix;
  // Exact f64 mass above tau, then tau's ties in id order until the target is reached.
  const int C = (V + kThreads - 1) / kThreads;
  const int lo = tid * C, hi = min(V, lo + C);
  double above = 0.0, ties = 0.0;
  for (int i = lo; i < hi; i++) {
    const float v = __ldg(l + i);
    const u32 key = order_key(v);
    if (key > tau) above = __dadd_rn(above, weight(v, mx, inv_t));
    else if (key == tau) ties = __dadd_rn(ties, weight(v, mx, inv_t));
  }
  sm.chunk[tid] = ties;
  for (int o = 16; o > 0; o >>= 1) above += __shfl_xor_sync(0xffffffffu, above, o);
  if ((tid & 31) == 0) sm.red[tid >> 5] = above;
  __syncthreads();
  if (tid == 0) {
    double cum = 0.0;
    for (int w = 0; w < kWarps; w++) cum = __dadd_rn(cum, sm.red[w]);
    int holder = -1;
    for (int t = 0; t < kThreads; t++) {
      const double c = sm.chunk[t];
      sm.chunk[t] = cum;
      if (holder < 0 && c > 0 && __dadd_rn(cum, c) >= target) holder = t;
      cum = __dadd_rn(cum, c);
    }
    sm.arg = holder;  // the thread whose chunk holds the crossing tie (-1: take every tie)
    sm.cut = 0x7fffffff;
  }
  __syncthreads();
  if (tid == sm.arg) {
    double cum = sm.chunk[tid];
    int cut = hi - 1;
    for (int i = lo; i < hi; i++) {
      const float v = __ldg(l + i);
      if (order_key(v) != tau) continue;
      cum = __dadd_rn(cum, weight(v, mx, inv_t));
      if (cum >= target) { cut = i; break; }
    }
    sm.cut = cut;
  }
  __syncthreads();
  *tau_out = tau;
  *cut_out = sm.cut;
  __syncthreads();
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads, 1)
mo_sample(const float* __restrict__ logits, long long row_stride, int V, int rows, const int* __restrict__ mode,
          const int* __restrict__ topk, const double* __restrict__ topp, const double* __restrict__ inv_temp,
          u32* __restrict__ rng, int* __restrict__ tokens, int* __restrict__ status, const int* __restrict__ param_row) {
  __shared__ Smem sm;
  const int r = blockIdx.x;
  if (r >= rows) return;
  // The parameters and random state of logit row r: row param_row[r] (a model's sequence slot), or row r. A negative
  // entry skips the row: no draw, its token and status untouched.
  const int p = param_row ? param_row[r] : r;
  if (p < 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float* l = logits + (size_t)r * row_stride;

  // Argmax (lowest id among equal values) and NaN detection: sampler.ts argmax.
  float bv = -INFINITY; int bi = -1; int nan = 0;
  auto visit = [&](float v, int i) {
    if (v != v) nan = 1;
    else if (bi < 0 || v > bv) { bv = v; bi = i; }  // ascending i per thread: the first maximum stays
  };
  const int nt = blockDim.x;
  if ((V & 3) == 0 && (reinterpret_cast<unsigned long long>(l) & 15u) == 0) {
    // 16-byte loads, four in flight per thread (a greedy row is this pass alone: one f32 load at a time, dependent
    // compares between them, took 55 us for V = 129280 on an H200, docs/GPU-MODEL.md). Each thread still visits its
    // ids in ascending order.
    const float4* l4 = reinterpret_cast<const float4*>(l);
    const int V4 = V >> 2;
    int i = tid;
    for (; i + 3 * nt < V4; i += 4 * nt) {
      float4 q[4];
#pragma unroll
      for (int u = 0; u < 4; u++) q[u] = __ldg(l4 + i + u * nt);
#pragma unroll
      for (int u = 0; u < 4; u++) {
        const int b = 4 * (i + u * nt);
        visit(q[u].x, b); visit(q[u].y, b + 1); visit(q[u].z, b + 2); visit(q[u].w, b + 3);
      }
    }
    for (; i < V4; i += nt) {
      const float4 q = __ldg(l4 + i);
      visit(q.x, 4 * i); visit(q.y, 4 * i + 1); visit(q.z, 4 * i + 2); visit(q.w, 4 * i + 3);
    }
  } else {
    for (int i = tid; i < V; i += nt) visit(__ldg(l + i), i);
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }
  }
  nan = __any_sync(0xffffffffu, nan);
  if (lane == 0) { sm.redv[warp] = bv; sm.redi[warp] = bi; sm.flag[warp] = nan; }
  __syncthreads();
  if (tid == 0) {
    float v = -INFINITY; int i = -1; int anynan = 0;
    for (int w = 0; w < kWarps; w++) {
      anynan |= sm.flag[w];
      const int oi = sm.redi[w];
      if (oi >= 0 && (i < 0 || sm.redv[w] > v || (sm.redv[w] == v && oi < i))) { v = sm.redv[w]; i = oi; }
    }
    sm.mx = v; sm.arg = i; sm.nan_seen = anynan;
  }
  __syncthreads();
  const int m = mode[p];
  if (sm.nan_seen) { if (tid == 0) { tokens[r] = -1; status[r] = 1; } return; }
  if (m == 0) { if (tid == 0) { tokens[r] = sm.arg; status[r] = 0; } return; }
  const float mx = sm.mx;
  if (mx == -INFINITY) { if (tid == 0) { tokens[r] = -1; status[r] = 2; } return; }
  const double inv_t = inv_temp[p];

  if (m == 1) {  // temperature only: the whole vocabulary in id order
    draw_id_order(l, V, mx, inv_t, 0u, 0x7fffffff, rng + 4 * p, sm, tokens + r);
    if (tid == 0) status[r] = 0;
    return;
  }

  // Modes 2 and 3: the best k candidates, sorted best-first, and their weights.
  const int k = m == 2 ? topk[p] : min(V, kMaxCand);
  top_candidates(l, V, k, sm);
  for (int j = tid; j < k; j += blockDim.x) sm.w[j] = weight(__ldg(l + cand_id(sm.cand[j])), mx, inv_t);
  // Mode 3's total mass is over the whole vocabulary (block sum in a fixed order).
  double part = 0.0;
  if (m == 3) {
    for (int i = tid; i < V; i += blockDim.x) part = __dadd_rn(part, weight(__ldg(l + i), mx, inv_t));
    for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
    if (lane == 0) sm.red[warp] = part;
  }
  __syncthreads();
  const double top_p = topp[p];
  if (m == 2) {
    if (tid == 0) {
      double mass = 0.0;
      for (int j = 0; j < k; j++) mass = __dadd_rn(mass, sm.w[j]);
      int keep = k; double total = mass;
      if (top_p < 1.0) {
        const double target = __dmul_rn(top_p, mass);
        double cum = 0.0;
        for (int j = 0; j < k; j++) { cum = __dadd_rn(cum, sm.w[j]); if (cum >= target) { keep = j + 1; break; } }
        total = 0.0;
        for (int j = 0; j < keep; j++) total = __dadd_rn(total, sm.w[j]);
      }
      const double u = __dmul_rn(next_uniform(rng + 4 * p), total);
      double cum = 0.0; int pick = -1;
      for (int j = 0; j < keep; j++) { cum = __dadd_rn(cum, sm.w[j]); if (u < cum) { pick = j; break; } }
      if (pick < 0) { for (int j = keep - 1; j >= 0; j--) if (sm.w[j] > 0) { pick = j; break; } }
      if (pick < 0) pick = 0;
      tokens[r] = cand_id(sm.cand[pick]);
      status[r] = 0;
    }
    return;
  }

  // Mode 3: the nucleus = the smallest best-first prefix reaching topP * mass, then drawn in id order.
  if (tid == 0) {
    double mass = 0.0;
    for (int w = 0; w < kWarps; w++) mass = __dadd_rn(mass, sm.red[w]);
    const double target = __dmul_rn(top_p, mass);
    double cum = 0.0; int keep = -1;
    for (int j = 0; j < k; j++) { cum = __dadd_rn(cum, sm.w[j]); if (cum >= target) { keep = j + 1; break; } }
    sm.count = keep;
    sm.target = target;
  }
  __syncthreads();
  const int keep = sm.count;
  if (keep < 0) {  // wider than the candidates: the exact cut over the whole vocabulary, then the id-order draw
    u32 tau; int cut;
    wide_cut(l, V, mx, inv_t, sm.target, sm, &tau, &cut);
    draw_id_order(l, V, mx, inv_t, tau, cut, rng + 4 * p, sm, tokens + r);
    if (tid == 0) status[r] = 0;
    return;
  }
  const int n = pow2_at_least(keep);
  // Re-key the kept prefix by id (ascending), carrying the best-first rank to find each weight.
  for (int j = tid; j < n; j += blockDim.x) sm.cand[j] = j < keep ? (((u64)cand_id(sm.cand[j]) << 32) | (u64)j) : ~0ull;
  __syncthreads();
  bitonic(sm.cand, n, true);
  if (tid == 0) {
    double total = 0.0;
    for (int j = 0; j < keep; j++) total = __dadd_rn(total, sm.w[(int)(sm.cand[j] & 0xffffffffu)]);
    const double u = __dmul_rn(next_uniform(rng + 4 * p), total);
    double cum = 0.0; int pick = -1;
    for (int j = 0; j < keep; j++) {
      cum = __dadd_rn(cum, sm.w[(int)(sm.cand[j] & 0xffffffffu)]);
      if (u < cum) { pick = j; break; }
    }
    if (pick < 0) { for (int j = keep - 1; j >= 0; j--) if (sm.w[(int)(sm.cand[j] & 0xffffffffu)] > 0) { pick = j; break; } }
    if (pick < 0) pick = 0;
    tokens[r] = (int)(sm.cand[pick] >> 32);
    status[r] = 0;
  }
}
