// The selector measures of kernels/msa.h (index recall, block recall, index recall ceiling,
// max-pool ceiling) on the GPU, for the sampled (query, group) rows of cpu::msa_oracle_recall_sums
// (the definition and the f64 reference): the CPU pass costs T^2 / stride f64 multiply-adds per
// sequence and head, which at long lengths bounded the sample to a few dozen queries
// (bounded_recall_stride).
//
//   recall_mass_kernel: a CTA takes up to kRows (query, head) rows -- kRows / r sampled queries of
//     one sequence and all r heads of group g -- and streams the keys in tiles of kKeys through
//     shared memory (f32; every (row, key) score a thread's 4 x 4 piece of the tile). Pass 1:
//     each head's log-sum-exp over s <= t (online, combined across threads in a fixed order).
//     Pass 2: the scores again, p_h = exp(z - lse_h), the group's mean p = (1/r) sum_h p_h per
//     (query, key), and per (query, block) its mass sum_s p and peak max_s p, accumulated
//     into mass / peak [row (query, g)][block] in global memory (the CTA owns its rows).
//   recall_rows_kernel: a warp per row ranks the earlier blocks (by mass: the oracle; by peak: the
//     max-pool rule; ties to the lower index, k - 1 rounds of a warp argmax) and writes the four
//     values.
// Every sum runs in a fixed order (no atomics): the same inputs give the same values on every
// run. f32 throughout against the reference's f64: the values agree to ~1e-5, a ranking only
// where two blocks' masses tie to f32 rounding (or underflow to 0 together: blocks without any
// mass, which rank by index here). MSA_RECALL_CHUNK=N measures N queries per launch (tests; by
// default as many as keep the mass and peak scratch within 256 MiB).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "core/env_switch.h"
#include "kernels/cuda/kernel_dispatch.h"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kRows = 64;      // (query, head) rows per CTA
constexpr int kKeys = 64;      // keys per tile
constexpr int kThreads = 256;  // 16 x 16 threads, each 4 rows x 4 keys of a tile
constexpr int kRowWarps = 8;   // recall_rows_kernel: rows (warps) per CTA

template <int D>
struct MassSmem {
  static constexpr int kLd = D + 1;  // odd row pitch: the 16 key rows a warp reads hit 16 banks
  static constexpr int kLdP = kKeys + 1;
  static constexpr size_t kFloats = size_t(kRows) * kLd + size_t(kKeys) * kLd +
                                    size_t(kRows) * kLdP + 2 * size_t(kRows) * 16 + kRows;
  static constexpr size_t kBytes = kFloats * 4 + kRows * 4;
};

// Queries [first, first + count) of the chunk's list, all of sequence qbatch[first]; query n's
// local position qpos[n] (query row t at position off + t). mass / peak: [n - n0][g][nb].
template <int D>
__global__ void __launch_bounds__(kThreads)
    recall_mass_kernel(const bf16* __restrict__ q, const bf16* __restrict__ k,
                       const int32_t* __restrict__ tile_first,
                       const int32_t* __restrict__ tile_count, const int32_t* __restrict__ qbatch,
                       const int32_t* __restrict__ qpos, int64_t n0, int64_t Tq, int64_t Tk,
                       int64_t off, int64_t H, int64_t G, int r, float scale_log2, int B,
                       int64_t nb, float* __restrict__ mass, float* __restrict__ peak) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  using L = MassSmem<D>;
  constexpr int kLd = L::kLd, kLdP = L::kLdP;
  float* qs = reinterpret_cast<float*>(smem_raw);  // [kRows][kLd], scaled to log2 units
  float* ks = qs + kRows * kLd;                    // [kKeys][kLd]
  float* ps = ks + kKeys * kLd;                    // [kRows][kLdP]
  float* red_m = ps + kRows * kLdP;                // [kRows][16]
  float* red_l = red_m + kRows * 16;               // [kRows][16]
  float* lse = red_l + kRows * 16;                 // [kRows], log2 units
  int* pos = reinterpret_cast<int*>(lse + kRows);  // [kRows]: the row's position, -1: padding
  const int tid = threadIdx.x, tr = tid / 16, tk = tid % 16;
  const int64_t g = blockIdx.y;
  const int64_t first = tile_first[blockIdx.x];
  const int count = tile_count[blockIdx.x];
  const int64_t b = qbatch[first];
  const int rows = count * r;
  for (int i = tid; i < kRows * D; i += kThreads) {
    const int row = i / D, e = i % D;
    float x = 0.0f;
    if (row < rows) {
      const int64_t t = qpos[first + row / r], h = g * r + row % r;
      x = bf16_to_float(q[((b * Tq + t) * H + h) * D + e]) * scale_log2;
    }
    qs[row * kLd + e] = x;
  }
  for (int row = tid; row < kRows; row += kThreads)
    pos[row] = row < rows ? static_cast<int>(off + qpos[first + row / r]) : -1;
  int max_pos = 0;
  for (int n = 0; n < count; ++n) max_pos = max(max_pos, static_cast<int>(off + qpos[first + n]));
  const int n_kt = max_pos / kKeys + 1;
  __syncthreads();

  auto load_keys = [&](int kt) {
    for (int i = tid; i < kKeys * D; i += kThreads) {
      const int key = i / D, e = i % D;
      const int64_t s = static_cast<int64_t>(kt) * kKeys + key;
      ks[key * kLd + e] = s < Tk ? bf16_to_float(k[((b * Tk + s) * G + g) * D + e]) : 0.0f;
    }
  };
  // acc[i][c]: rows 4 tr + i, keys tk + 16 c of the tile (log2 units).
  auto scores = [&](float(&acc)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
#pragma unroll 4
    for (int e = 0; e < D; ++e) {
      float qv[4], kv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) qv[i] = qs[(4 * tr + i) * kLd + e];
#pragma unroll
      for (int c = 0; c < 4; ++c) kv[c] = ks[(tk + 16 * c) * kLd + e];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][c] = fmaf(qv[i], kv[c], acc[i][c]);
    }
  };

  // Pass 1: each row's log-sum-exp (log2 units) over its keys s <= pos.
  float m[4], l[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) m[i] = -INFINITY, l[i] = 0.0f;
  for (int kt = 0; kt < n_kt; ++kt) {
    load_keys(kt);
    __syncthreads();
    float acc[4][4];
    scores(acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int p = pos[4 * tr + i];
      float tmax = -INFINITY;
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int s = kt * kKeys + tk + 16 * c;
        acc[i][c] = s <= p ? acc[i][c] : -INFINITY;
        tmax = fmaxf(tmax, acc[i][c]);
      }
      if (tmax == -INFINITY) continue;
      const float mn = fmaxf(m[i], tmax);
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 4; ++c) sum += exp2f(acc[i][c] - mn);
      l[i] = l[i] * exp2f(m[i] - mn) + sum;  // m = -inf: 0
      m[i] = mn;
    }
    __syncthreads();  // every thread is done with the tile before the next load
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    red_m[(4 * tr + i) * 16 + tk] = m[i];
    red_l[(4 * tr + i) * 16 + tk] = l[i];
  }
  __syncthreads();
  for (int row = tid; row < kRows; row += kThreads) {
    float M = -INFINITY;
    for (int j = 0; j < 16; ++j) M = fmaxf(M, red_m[row * 16 + j]);
    float S = 0.0f;
    if (M != -INFINITY)
      for (int j = 0; j < 16; ++j) S += red_l[row * 16 + j] * exp2f(red_m[row * 16 + j] - M);
    // Padding rows: every p = 0. A real row always has key 0 (M = -inf only from -inf or NaN
    // inputs): NaN, as the reference's -inf - -inf gives.
    lse[row] = M != -INFINITY ? M + log2f(S) : pos[row] < 0 ? INFINITY : NAN;
  }
  __syncthreads();

  // Pass 2: p per (row, key), then per (query, block) the group's mean mass and peak.
  const float inv_r = 1.0f / static_cast<float>(r);
  for (int kt = 0; kt < n_kt; ++kt) {
    load_keys(kt);
    __syncthreads();  // the keys; the previous tile's reductions are done with ps
    float acc[4][4];
    scores(acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = 4 * tr + i, p = pos[row];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int s = kt * kKeys + tk + 16 * c;
        ps[row * kLdP + tk + 16 * c] = s <= p ? exp2f(acc[i][c] - lse[row]) : 0.0f;
      }
    }
    __syncthreads();
    // The group's mean per (query, key), into the query's first row (one thread per column).
    for (int w = tid; w < count * kKeys; w += kThreads) {
      const int n = w / kKeys, key = w % kKeys;
      float x = 0.0f;
      for (int h = 0; h < r; ++h) x += ps[(n * r + h) * kLdP + key];
      ps[n * r * kLdP + key] = x * inv_r;
    }
    __syncthreads();
    const int s0 = kt * kKeys, s_end = min(s0 + kKeys - 1, max_pos);
    const int j_lo = s0 / B, n_blk = s_end / B - j_lo + 1;
    for (int w = tid; w < count * n_blk; w += kThreads) {
      const int n = w / n_blk;
      const int j = j_lo + w % n_blk;
      const int lo = max(s0, j * B), hi = min(s0 + kKeys, (j + 1) * B);
      const float* x = ps + n * r * kLdP;
      float sum = 0.0f, top = 0.0f;
      for (int s = lo; s < hi; ++s) {
        sum += x[s - s0];
        top = fmaxf(top, x[s - s0]);
      }
      const int64_t at = ((first + n - n0) * G + g) * nb + j;
      mass[at] += sum;
      peak[at] = fmaxf(peak[at], top);
    }
    // The next iteration's load writes ks only; its barrier orders these reads of ps before
    // the next scores overwrite them.
  }
}

// (v, j) ranks before (w, i): larger value, ties to the lower index.
__device__ __forceinline__ bool ranks_before(float v, int j, float w, int i) {
  return v > w || (v == w && j < i);
}

// The top-`want` of blocks [0, c) by score into picks (lane 0's copy; `want` <= 31), each the best
// of those ranking after the previous pick. Returns the mass they hold.
__device__ float top_blocks(const float* score, const float* mass, int c, int want, int* picks,
                            int lane) {
  float prev_v = INFINITY, kept = 0.0f;
  int prev_j = -1;
  for (int e = 0; e < want; ++e) {
    float best_v = -INFINITY;
    int best_j = 0x7fffffff;
    for (int j = lane; j < c; j += 32) {
      const float v = score[j];
      if (ranks_before(prev_v, prev_j, v, j) && ranks_before(v, j, best_v, best_j))
        best_v = v, best_j = j;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, best_v, o);
      const int oj = __shfl_xor_sync(0xffffffffu, best_j, o);
      if (ranks_before(ov, oj, best_v, best_j)) best_v = ov, best_j = oj;
    }
    if (best_j == 0x7fffffff) {  // nothing left (NaN scores rank nowhere)
      if (lane == 0)
        for (; e < want; ++e) picks[e] = -1;
      break;
    }
    if (lane == 0) picks[e] = best_j;
    kept += mass[best_j];
    prev_v = best_v;
    prev_j = best_j;
  }
  return kept;
}

// A warp per chunk row (query n - n0, group g): out[row][4] = index recall, block recall, index
// recall ceiling, max-pool ceiling, as cpu::msa_oracle_recall_sums defines them.
__global__ void __launch_bounds__(kRowWarps * 32)
    recall_rows_kernel(const float* __restrict__ mass, const float* __restrict__ peak,
                       const int32_t* __restrict__ indices, const int32_t* __restrict__ counts,
                       const int32_t* __restrict__ qbatch, const int32_t* __restrict__ qpos,
                       int64_t n0, int64_t rows, int64_t Tq, int64_t off, int64_t G, int K, int B,
                       int64_t nb, double* __restrict__ out) {
  __shared__ int picks_s[kRowWarps][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kRowWarps) + warp;
  if (row >= rows) return;
  const int64_t n = n0 + row / G, g = row % G, b = qbatch[n], t = qpos[n];
  const int c = static_cast<int>((off + t) / B), want = min(K - 1, c);
  const float* ms = mass + row * nb;
  const float* pk = peak + row * nb;
  int* picks = picks_s[warp];
  const float ceiling = ms[c] + top_blocks(ms, ms, c, want, picks, lane);
  __syncwarp();
  // Index recall (distinct selected blocks' mass) and the oracle hits, in entry order.
  const int64_t srow = (b * Tq + t) * G + g;
  const int32_t* sel = indices + srow * K;
  const int cnt = counts[srow];
  float inside = 0.0f;
  int hits = 0;
  if (lane == 0) {
    for (int e = 0; e < cnt; ++e) {
      const int j = sel[e];
      if (j < 0 || j > c) continue;
      bool in_oracle = j == c;
      for (int x = 0; x < want; ++x) in_oracle |= picks[x] == j;
      hits += in_oracle;
      bool repeat = false;
      for (int x = 0; x < e; ++x) repeat |= sel[x] == j;
      if (!repeat) inside += ms[j];
    }
  }
  __syncwarp();
  const float pooled = ms[c] + top_blocks(pk, ms, c, want, picks, lane);
  if (lane == 0) {
    double* o = out + row * 4;
    o[0] = inside;
    o[1] = static_cast<double>(hits) / static_cast<double>(want + 1);
    o[2] = ceiling;
    o[3] = pooled;
  }
}

// Chunks hold at most this much of mass and peak (8 bytes per (query, group, block)).
constexpr size_t kScratchBytes = size_t(256) << 20;

}  // namespace

bool oracle_recall_cuda_supported(const Tensor& q, const Tensor& k, const cpu::MsaDims& d) {
  if (env_is("MSA_RECALL", "reference")) return false;
  const int64_t r = d.groups > 0 ? d.heads / d.groups : 0;
  return q.dtype() == DType::kBF16 && k.dtype() == DType::kBF16 && pow2_16_128(d.dim) && r >= 1 &&
         r <= kRows && d.topk >= 1 && d.topk <= 32 && d.groups <= 65535 &&
         d.keys() < (int64_t(1) << 30);
}

cpu::OracleRecallSums oracle_recall_sums(const Tensor& q, const Tensor& k, const Tensor& indices,
                                         const Tensor& counts, double scale,
                                         const cpu::RecallQueries& queries, const cpu::MsaDims& d) {
  const int64_t Tq = d.seq, Tk = d.keys(), off = d.query_offset(), H = d.heads, G = d.groups;
  const int64_t nb = d.num_blocks(), r = H / G;
  const int B = static_cast<int>(d.block_size), K = static_cast<int>(d.topk);
  const int64_t n_queries = queries.begin[d.batch];
  cpu::OracleRecallSums sums;
  sums.n_rows = n_queries * G;
  if (n_queries == 0) return sums;
  std::vector<int32_t> qb(n_queries), qt(n_queries);
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t n = queries.begin[b]; n < queries.begin[b + 1]; ++n) {
      qb[n] = static_cast<int32_t>(b);
      qt[n] = static_cast<int32_t>(queries.t[n]);
    }
  const Tensor qb_d = Tensor::from_vector(Shape{n_queries}, qb).to(Device::kCUDA);
  const Tensor qt_d = Tensor::from_vector(Shape{n_queries}, qt).to(Device::kCUDA);
  const int per_tile = static_cast<int>(kRows / r);
  int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(kScratchBytes / (size_t(G) * nb * 8)));
  if (const auto e = env_int("MSA_RECALL_CHUNK")) chunk = std::clamp<int64_t>(*e, 1, chunk);
  std::vector<double> rows(n_queries * G * 4);
  const float scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  for (int64_t n0 = 0; n0 < n_queries; n0 += chunk) {
    const int64_t n1 = std::min(n_queries, n0 + chunk);
    // Tiles: runs of up to per_tile consecutive queries of one sequence.
    std::vector<int32_t> first, count;
    for (int64_t n = n0; n < n1;) {
      int64_t e = n + 1;
      while (e < n1 && e - n < per_tile && qb[e] == qb[n]) ++e;
      first.push_back(static_cast<int32_t>(n));
      count.push_back(static_cast<int32_t>(e - n));
      n = e;
    }
    const int64_t n_tiles = static_cast<int64_t>(first.size());
    const Tensor first_d = Tensor::from_vector(Shape{n_tiles}, first).to(Device::kCUDA);
    const Tensor count_d = Tensor::from_vector(Shape{n_tiles}, count).to(Device::kCUDA);
    Tensor mass = Tensor::zeros({(n1 - n0) * G * nb}, DType::kF32, Device::kCUDA);
    Tensor peak = Tensor::zeros({(n1 - n0) * G * nb}, DType::kF32, Device::kCUDA);
    with_pow2(d.dim, [&](auto dd) {
      constexpr int kD = decltype(dd)::value;
      auto kernel = recall_mass_kernel<kD>;
      set_smem(kernel, MassSmem<kD>::kBytes);
      kernel<<<dim3(static_cast<unsigned>(n_tiles), static_cast<unsigned>(G)), kThreads,
               MassSmem<kD>::kBytes>>>(
          q.data<bf16>(), k.data<bf16>(), first_d.data<int32_t>(), count_d.data<int32_t>(),
          qb_d.data<int32_t>(), qt_d.data<int32_t>(), n0, Tq, Tk, off, H, G, static_cast<int>(r),
          scale_log2, B, nb, mass.data<float>(), peak.data<float>());
      MSA_CUDA_CHECK_LAUNCH("recall_mass_kernel");
    });
    const int64_t chunk_rows = (n1 - n0) * G;
    Tensor out = Tensor::empty({chunk_rows * 4}, DType::kF64, Device::kCUDA);
    recall_rows_kernel<<<static_cast<unsigned>((chunk_rows + kRowWarps - 1) / kRowWarps),
                         kRowWarps * 32>>>(mass.data<float>(), peak.data<float>(),
                                           indices.data<int32_t>(), counts.data<int32_t>(),
                                           qb_d.data<int32_t>(), qt_d.data<int32_t>(), n0,
                                           chunk_rows, Tq, off, G, K, B, nb, out.data<double>());
    MSA_CUDA_CHECK_LAUNCH("recall_rows_kernel");
    const Tensor host = out.to(Device::kCPU);
    std::memcpy(rows.data() + n0 * G * 4, host.data<double>(), chunk_rows * 4 * sizeof(double));
  }
  // The reference's order: sequences, then groups, then the sequence's queries.
  for (int64_t b = 0; b < d.batch; ++b)
    for (int64_t g = 0; g < G; ++g) {
      double acc[4] = {0, 0, 0, 0};
      for (int64_t n = queries.begin[b]; n < queries.begin[b + 1]; ++n)
        for (int v = 0; v < 4; ++v) acc[v] += rows[(n * G + g) * 4 + v];
      sums.index_recall += acc[0];
      sums.block_recall += acc[1];
      sums.index_recall_ceiling += acc[2];
      sums.max_pool_recall_ceiling += acc[3];
    }
  return sums;
}

}  // namespace msa::cuda
