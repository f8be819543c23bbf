// CUDA MSA kernels: the CUDA-core index top-k and block-sparse attention forward and backward
// (DESIGN.md section 4, "GPU execution").
//
// This is the first, correctness-first generation (CUDA cores, f32 accumulation, no tensor cores):
// - The index top-k for f32 inputs (and for bf16 with MSA_TOPK=reference or sizes the tensor-core
//   indexer of msa_indexer_topk.cu does not take): one warp per (sequence, query, group) row; lane
//   l scores the eligible blocks j = l, l + 32, ... (each the max over its B tokens of the raw dot
//   iq . ik_s) and keeps its best in a sorted list, merged across the warp by shuffles; the
//   T x n_b scores never touch global memory. Dots use round-to-nearest multiplies and adds in
//   index order (no FMA contraction) and the block max skips NaN dots, exactly the CPU reference's
//   arithmetic, so f32 inputs give the CPU's selection bit for bit, ties included.
// - The forward is query-outer: one warp per (query, head); 32 keys at a time, one per lane, with
//   an online-softmax merge; each lane owns d/32 output dimensions.
// - The backward computes dQ per query (warp per (query, head)) and dK/dV per key with no atomics:
//   an inverted selection (one bit per (query, key block) pair, built with atomicOr) lists the
//   queries that selected the key's block; the key's warp visits them in ascending order and
//   accumulates in registers; results are deterministic.
// - The forward also emits each selected block's attention mass (nullable block_mass).
// - Fewer queries than keys (context parallelism): query t sits at key position t + off, off =
//   Tk - Tq (AttnDims); k, v, dk, dv have Tk rows, blocks and causal limits are key positions.
// The KV-outer tensor-core kernels (msa_attention_kv_outer.cu, *_wgmma.cu) run the attention for
// the sizes they take; these stay as the reference the fast kernels are tested against.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/cuda/cuda_check.h"
#include "kernels/cuda/msa_cuda.h"

namespace msa::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxTopk = 32;
constexpr int kMaxDimPerLane = 8;  // head_dim <= 256

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return bf16_to_float(x); }
template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) {
  return float_to_bf16(x);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// ---- index top-k ---------------------------------------------------------------------------

// a ranks before b: higher score, ties to the lower block.
__device__ __forceinline__ bool better(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Puts (s, j) into lane list (top_s, top_i) of n entries, best first, keeping at most `want`.
__device__ __forceinline__ void lane_list_add(float* top_s, int* top_i, int& n, int want, float s,
                                              int j) {
  int p;
  if (n < want) {
    p = n++;
  } else if (want > 0 && better(s, j, top_s[want - 1], top_i[want - 1])) {
    p = want - 1;
  } else {
    return;
  }
  while (p > 0 && better(s, j, top_s[p - 1], top_i[p - 1])) {
    top_s[p] = top_s[p - 1];
    top_i[p] = top_i[p - 1];
    --p;
  }
  top_s[p] = s;
  top_i[p] = j;
}

// One warp per row (b, t, g) of iq [batch, S, G, dI] (ik [batch, Sk, dI], Sk >= S keys; query t
// sits at position offset + t, offset = Sk - S), the latest rows first (they have the most
// blocks); the row's index vector is staged in shared memory (f32).
template <class T>
__global__ void index_topk_reference_kernel(const T* iq, const T* ik, int32_t* indices,
                                            int32_t* counts, int64_t rows, int64_t S, int64_t Sk,
                                            int64_t offset, int64_t G, int64_t dI, int64_t B,
                                            int K) {
  extern __shared__ float q_smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (w >= rows) return;
  const int64_t row = rows - 1 - w;
  const int64_t t = offset + (row / G) % S, b = row / (G * S);  // t: the query's position
  const int64_t c = t / B;
  const int want = static_cast<int>(min(static_cast<int64_t>(K - 1), c));
  float* q = q_smem + warp * dI;
  for (int64_t e = lane; e < dI; e += kWarp) q[e] = to_f(iq[row * dI + e]);
  __syncwarp();

  float top_s[kMaxTopk];
  int top_i[kMaxTopk];
  int n = 0;
  for (int64_t j = lane; j < c && want > 0; j += kWarp) {
    float best = -INFINITY;  // a NaN-only block stays -inf, as on the CPU
    for (int64_t s = j * B; s < (j + 1) * B; ++s) {
      const T* k = ik + (b * Sk + s) * dI;
      float x = 0;
      for (int64_t e = 0; e < dI; ++e) x = __fadd_rn(x, __fmul_rn(q[e], to_f(k[e])));
      if (x > best) best = x;  // false for NaN: a NaN dot never wins
    }
    lane_list_add(top_s, top_i, n, want, best, static_cast<int>(j));
  }
  // Merge: `want` rounds of a warp-wide argmax over the lanes' heads. Exhausted lanes offer
  // (-inf, INT_MAX), which every real block beats (-inf scores included).
  int head = 0;
  int chosen[kMaxTopk];
  for (int r = 0; r < want; ++r) {
    const float s = head < n ? top_s[head] : -INFINITY;
    const int i = head < n ? top_i[head] : INT_MAX;
    float bs = s;
    int bi = i;
    for (int o = 16; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(os, oi, bs, bi)) {
        bs = os;
        bi = oi;
      }
    }
    if (head < n && i == bi) ++head;  // block indices are unique: exactly one lane pops
    chosen[r] = bi;
  }
  if (lane == 0) {
    for (int a = 1; a < want; ++a) {  // ascending block order
      const int x = chosen[a];
      int p = a;
      while (p > 0 && chosen[p - 1] > x) {
        chosen[p] = chosen[p - 1];
        --p;
      }
      chosen[p] = x;
    }
    int32_t* out = indices + row * K;
    for (int a = 0; a < want; ++a) out[a] = chosen[a];
    out[want] = static_cast<int32_t>(c);
    for (int a = want + 1; a < K; ++a) out[a] = -1;
    counts[row] = want + 1;
  }
}

// ---- sparse attention ----------------------------------------------------------------------

// S queries, Sk keys (the rows of k, v, dk, dv); query t sits at key position t + off
// (off = Sk - S, bottom-right aligned): blocks and causal limits are in key positions.
struct AttnDims {
  int64_t S, H, G, d, B, K;
  int64_t Sk, off;
};

// Calls fn(s0, n_valid) for each chunk of up to 32 consecutive keys the query at key position p
// attends to.
template <class Fn>
__device__ __forceinline__ void for_each_key_chunk(const int32_t* idx, int count, int64_t p,
                                                   int64_t B, Fn&& fn) {
  for (int i = 0; i < count; ++i) {
    const int64_t j = idx[i];
    const int64_t end = min((j + 1) * B, p + 1);
    for (int64_t s0 = j * B; s0 < end; s0 += kWarp) fn(s0, static_cast<int>(min(static_cast<int64_t>(kWarp), end - s0)));
  }
}

// block_mass (nullable) [batch, S, H, K]: for each selection slot, the attention mass of the
// block's attended keys, sum_s exp(z_s - lse); the slot's running max and partial sum are kept
// when the block ends and rescaled by the final lse (no second pass over K).
template <class T>
__global__ void attention_forward_kernel(const T* q, const T* k, const T* v, const int32_t* indices,
                                         const int32_t* counts, float scale, T* out, float* lse,
                                         float* block_mass, int64_t rows, AttnDims a) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= rows) return;
  const int64_t h = row % a.H, t = (row / a.H) % a.S, b = row / (a.H * a.S);
  const int64_t g = h / (a.H / a.G);
  const int64_t sel = (b * a.S + t) * a.G + g;
  float* qs = smem + warp * a.d;
  const T* qrow = q + ((b * a.S + t) * a.H + h) * a.d;
  for (int64_t e = lane; e < a.d; e += kWarp) qs[e] = to_f(qrow[e]);
  __syncwarp();
  const int per_lane = static_cast<int>((a.d + kWarp - 1) / kWarp);
  float acc[kMaxDimPerLane] = {0};
  float m = -FLT_MAX, l = 0;
  // Lane i keeps slot i's (max at the block's end, block sum relative to it).
  float slot_m = -FLT_MAX, slot_l = 0;
  const int32_t* idx = indices + sel * a.K;
  const int count = counts[sel];
  const int64_t p_t = t + a.off;  // the query's key position
  for (int i = 0; i < count; ++i) {
    const int64_t j = idx[i];
    const int64_t end = min((j + 1) * a.B, p_t + 1);
    float lb = 0;
    for (int64_t s0 = j * a.B; s0 < end; s0 += kWarp) {
      const int n = static_cast<int>(min(static_cast<int64_t>(kWarp), end - s0));
      float z = -FLT_MAX;
      if (lane < n) {
        const T* krow = k + ((b * a.Sk + s0 + lane) * a.G + g) * a.d;
        float dot = 0;
        for (int64_t e = 0; e < a.d; ++e) dot += qs[e] * to_f(krow[e]);
        z = dot * scale;
      }
      const float m_new = fmaxf(m, warp_max(z));
      const float corr = __expf(m - m_new);
      const float p = lane < n ? __expf(z - m_new) : 0.0f;
      const float psum = warp_sum(p);
      l = l * corr + psum;
      lb = lb * corr + psum;
      for (int e = 0; e < per_lane; ++e) acc[e] *= corr;
      for (int key = 0; key < n; ++key) {
        const float pk = __shfl_sync(0xffffffffu, p, key);
        const T* vrow = v + ((b * a.Sk + s0 + key) * a.G + g) * a.d;
        for (int e = 0; e < per_lane; ++e) {
          const int64_t dim = lane + e * kWarp;
          if (dim < a.d) acc[e] += pk * to_f(vrow[dim]);
        }
      }
      m = m_new;
    }
    if (lane == i) {
      slot_m = m;
      slot_l = lb;
    }
  }
  T* orow = out + ((b * a.S + t) * a.H + h) * a.d;
  for (int e = 0; e < per_lane; ++e) {
    const int64_t dim = lane + e * kWarp;
    if (dim < a.d) orow[dim] = from_f<T>(acc[e] / l);
  }
  const float row_lse = m + logf(l);
  if (lane == 0) lse[(b * a.H + h) * a.S + t] = row_lse;
  if (block_mass != nullptr && lane < a.K)
    block_mass[((b * a.S + t) * a.H + h) * a.K + lane] =
        lane < count ? slot_l * __expf(slot_m - row_lse) : 0.0f;
}

// D[b, h, t] = dout . out (the softmax backward's row term).
template <class T>
__global__ void row_dot_kernel(const T* dout, const T* out, float* D, int64_t rows, AttnDims a) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= rows) return;
  const int64_t h = row % a.H, t = (row / a.H) % a.S, b = row / (a.H * a.S);
  const int64_t off = ((b * a.S + t) * a.H + h) * a.d;
  float s = 0;
  for (int64_t e = lane; e < a.d; e += kWarp) s += to_f(dout[off + e]) * to_f(out[off + e]);
  s = warp_sum(s);
  if (lane == 0) D[(b * a.H + h) * a.S + t] = s;
}

template <class T>
__global__ void attention_backward_dq_kernel(const T* dout, const T* q, const T* k, const T* v,
                                             const float* lse, const float* D,
                                             const int32_t* indices, const int32_t* counts,
                                             float scale, T* dq, int64_t rows, AttnDims a) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (row >= rows) return;
  const int64_t h = row % a.H, t = (row / a.H) % a.S, b = row / (a.H * a.S);
  const int64_t g = h / (a.H / a.G);
  const int64_t sel = (b * a.S + t) * a.G + g;
  float* qs = smem + warp * 2 * a.d;
  float* dos = qs + a.d;
  const int64_t off = ((b * a.S + t) * a.H + h) * a.d;
  for (int64_t e = lane; e < a.d; e += kWarp) {
    qs[e] = to_f(q[off + e]);
    dos[e] = to_f(dout[off + e]);
  }
  __syncwarp();
  const float lse_t = lse[(b * a.H + h) * a.S + t], D_t = D[(b * a.H + h) * a.S + t];
  const int per_lane = static_cast<int>((a.d + kWarp - 1) / kWarp);
  float acc[kMaxDimPerLane] = {0};
  for_each_key_chunk(indices + sel * a.K, counts[sel], t + a.off, a.B, [&](int64_t s0, int n) {
    float ds = 0;
    if (lane < n) {
      const int64_t kv = ((b * a.Sk + s0 + lane) * a.G + g) * a.d;
      float qk = 0, dv = 0;
      for (int64_t e = 0; e < a.d; ++e) {
        qk += qs[e] * to_f(k[kv + e]);
        dv += dos[e] * to_f(v[kv + e]);
      }
      const float p = __expf(qk * scale - lse_t);
      ds = p * (dv - D_t);
    }
    for (int key = 0; key < n; ++key) {
      const float dsk = __shfl_sync(0xffffffffu, ds, key);
      const T* krow = k + ((b * a.Sk + s0 + key) * a.G + g) * a.d;
      for (int e = 0; e < per_lane; ++e) {
        const int64_t dim = lane + e * kWarp;
        if (dim < a.d) acc[e] += dsk * to_f(krow[dim]);
      }
    }
  });
  for (int e = 0; e < per_lane; ++e) {
    const int64_t dim = lane + e * kWarp;
    if (dim < a.d) dq[off + dim] = from_f<T>(acc[e] * scale);
  }
}

// Inverted selection: mask[b, g, c, j] holds one bit per key position of block c, set when the
// query at that position (query t at t + off) selected key block j (words = ceil(B / 32) per
// (c, j)). Built with atomicOr, so the result does not depend on the order rows are processed in.
__global__ void selection_mask_kernel(const int32_t* indices, const int32_t* counts, uint32_t* mask,
                                      int64_t rows, int64_t S, int64_t off, int64_t G, int64_t B,
                                      int64_t K, int64_t nb, int64_t words) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const int64_t g = row % G, t = (row / G) % S, b = row / (G * S);
  const int64_t p = t + off, c = p / B, bit = p % B;
  for (int i = 0; i < counts[row]; ++i) {
    const int64_t j = indices[row * K + i];
    atomicOr(mask + (((b * G + g) * nb + c) * nb + j) * words + bit / 32, 1u << (bit % 32));
  }
}

// One warp per key s of group g (every one of the Sk keys: zeros where no query selected its
// block): dk_s = scale sum ds q, dv_s = sum p dout over the (query, head) pairs that selected
// block(s) at positions >= s, found through the inverted mask and visited in ascending position
// (deterministic, no atomics): O(selected pairs + n_b) per key instead of a scan of every later
// query.
template <class T>
__global__ void attention_backward_dkdv_masked_kernel(const T* dout, const T* q, const T* k,
                                                      const T* v, const float* lse,
                                                      const float* D, const uint32_t* mask,
                                                      float scale, T* dk, T* dv, int64_t keys,
                                                      int64_t nb, int64_t words, AttnDims a) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t key = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + warp;
  if (key >= keys) return;
  const int64_t g = key % a.G, s = (key / a.G) % a.Sk, b = key / (a.G * a.Sk);
  const int64_t j = s / a.B, r = a.H / a.G;
  float* ks = smem + warp * 2 * a.d;
  float* vs = ks + a.d;
  const int64_t kv = ((b * a.Sk + s) * a.G + g) * a.d;
  for (int64_t e = lane; e < a.d; e += kWarp) {
    ks[e] = to_f(k[kv + e]);
    vs[e] = to_f(v[kv + e]);
  }
  __syncwarp();
  const int per_lane = static_cast<int>((a.d + kWarp - 1) / kWarp);
  float dk_acc[kMaxDimPerLane] = {0}, dv_acc[kMaxDimPerLane] = {0};
  // Query blocks from the key's own; none before the first query's (position a.off).
  for (int64_t c = max(j, a.off / a.B); c < nb; ++c) {
    const uint32_t* m = mask + (((b * a.G + g) * nb + c) * nb + j) * words;
    for (int64_t w = 0; w < words; ++w) {
      uint32_t bits = m[w];
      while (bits) {
        const int bit = __ffs(bits) - 1;
        bits &= bits - 1;
        // The query's key position (>= a.off) and index; causal: only the key's own and later
        // queries.
        const int64_t pq = c * a.B + w * 32 + bit;
        if (pq < s) continue;
        const int64_t tq = pq - a.off;
        for (int64_t h = g * r; h < (g + 1) * r; ++h) {
          const int64_t off = ((b * a.S + tq) * a.H + h) * a.d;
          float qk = 0, dov = 0;
          for (int64_t e = lane; e < a.d; e += kWarp) {
            qk += to_f(q[off + e]) * ks[e];
            dov += to_f(dout[off + e]) * vs[e];
          }
          qk = warp_sum(qk);
          dov = warp_sum(dov);
          const float p = __expf(qk * scale - lse[(b * a.H + h) * a.S + tq]);
          const float ds = p * (dov - D[(b * a.H + h) * a.S + tq]);
          for (int e = 0; e < per_lane; ++e) {
            const int64_t dim = lane + e * kWarp;
            if (dim < a.d) {
              dk_acc[e] += ds * scale * to_f(q[off + dim]);
              dv_acc[e] += p * to_f(dout[off + dim]);
            }
          }
        }
      }
    }
  }
  for (int e = 0; e < per_lane; ++e) {
    const int64_t dim = lane + e * kWarp;
    if (dim < a.d) {
      dk[kv + dim] = from_f<T>(dk_acc[e]);
      dv[kv + dim] = from_f<T>(dv_acc[e]);
    }
  }
}

template <class Fn>
void dispatch(DType dtype, const char* op, Fn&& fn) {
  if (dtype == DType::kBF16) {
    fn(bf16{});
  } else {
    MSA_CHECK(dtype == DType::kF32, "%s: CUDA MSA kernels take bf16 or f32 tensors, got %s", op,
              dtype_name(dtype));
    fn(float{});
  }
}

constexpr int kThreads = 128, kWarpsPerBlock = kThreads / kWarp;

unsigned blocks_for(int64_t warps) {
  return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

// The tensor-core indexer (msa_indexer_topk.cu): bf16, d_I and block size 16/32/64/128, topk <=
// 32; MSA_TOPK=reference turns it off (tests compare the two).
bool indexer_topk_mma_supported(const Tensor& iq, const Tensor& ik, const cpu::MsaDims& dims);
void indexer_topk_mma(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                      const cpu::MsaDims& dims);

void msa_index_topk(const Tensor& iq, const Tensor& ik, Tensor& indices, Tensor& counts,
                    const cpu::MsaDims& d) {
  MSA_CHECK(d.topk >= 1 && d.topk <= kMaxTopk, "msa_index_topk (CUDA): topk %d outside [1, %d]",
            d.topk, kMaxTopk);
  if (indexer_topk_mma_supported(iq, ik, d)) return indexer_topk_mma(iq, ik, indices, counts, d);
  const int64_t rows = d.batch * d.seq * d.groups;
  if (rows == 0) return;
  const size_t smem = kWarpsPerBlock * d.index_dim * sizeof(float);
  MSA_CHECK(smem <= 48 * 1024, "msa_index_topk (CUDA): index dim %d too large", d.index_dim);
  dispatch(iq.dtype(), "msa_index_topk", [&](auto zero) {
    using T = decltype(zero);
    index_topk_reference_kernel<T><<<blocks_for(rows), kThreads, smem>>>(
        iq.data<T>(), ik.data<T>(), indices.data<int32_t>(), counts.data<int32_t>(), rows, d.seq,
        d.keys(), d.query_offset(), d.groups, d.index_dim, d.block_size, static_cast<int>(d.topk));
    MSA_CUDA_CHECK_LAUNCH("index_topk_reference_kernel");
  });
}

void msa_sparse_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& indices, const Tensor& counts, double scale,
                                  Tensor& out, Tensor& lse, Tensor* block_mass,
                                  const cpu::MsaDims& d, SelectionCache* cache) {
  MSA_CHECK(d.topk <= kMaxTopk, "CUDA MSA attention: topk %d > %d", d.topk, kMaxTopk);
  if (block_mass != nullptr)
    check_dtype(*block_mass, DType::kF32, "msa_sparse_attention_forward (CUDA): block_mass");
  if (kv_outer_attention_supported(q, d)) {
    check_dtype(lse, DType::kF32, "msa_sparse_attention_forward (CUDA): lse");
    kv_outer_attention_forward(q, k, v, indices, counts, scale, out, lse, block_mass, d, cache);
    return;
  }
  MSA_CHECK(d.dim <= kWarp * kMaxDimPerLane, "CUDA MSA attention: head_dim %d > %d", d.dim,
            kWarp * kMaxDimPerLane);
  check_dtype(lse, DType::kF32, "msa_sparse_attention_forward (CUDA): lse");
  const AttnDims a{d.seq,        d.heads, d.groups, d.dim,
                   d.block_size, d.topk,  d.keys(), d.query_offset()};
  dispatch(q.dtype(), "msa_sparse_attention_forward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t rows = d.batch * d.seq * d.heads;
    const size_t smem = kWarpsPerBlock * d.dim * sizeof(float);
    attention_forward_kernel<T><<<blocks_for(rows), kThreads, smem>>>(
        q.data<T>(), k.data<T>(), v.data<T>(), indices.data<int32_t>(), counts.data<int32_t>(),
        static_cast<float>(scale), out.data<T>(), lse.data<float>(),
        block_mass != nullptr ? block_mass->data<float>() : nullptr, rows, a);
    MSA_CUDA_CHECK_LAUNCH("attention_forward_kernel");
  });
}

void msa_sparse_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                   const Tensor& v, const Tensor& out, const Tensor& lse,
                                   const Tensor& indices, const Tensor& counts, double scale,
                                   Tensor& dq, Tensor& dk, Tensor& dv, const cpu::MsaDims& d,
                                   SelectionCache* cache) {
  MSA_CHECK(d.dim <= kWarp * kMaxDimPerLane, "CUDA MSA attention: head_dim %d > %d", d.dim,
            kWarp * kMaxDimPerLane);
  check_dtype(lse, DType::kF32, "msa_sparse_attention_backward (CUDA): lse");
  const AttnDims a{d.seq,        d.heads, d.groups, d.dim,
                   d.block_size, d.topk,  d.keys(), d.query_offset()};
  Tensor D = Tensor::empty({d.batch, d.heads, d.seq}, DType::kF32, Device::kCUDA);
  if (kv_outer_attention_supported(q, d)) {
    const int64_t rows = d.batch * d.seq * d.heads;
    row_dot_kernel<bf16><<<blocks_for(rows), kThreads>>>(dout.data<bf16>(), out.data<bf16>(),
                                                         D.data<float>(), rows, a);
    MSA_CUDA_CHECK_LAUNCH("row_dot_kernel");
    kv_outer_attention_backward(dout, q, k, v, D, lse, indices, counts, scale, dq, dk, dv, d,
                                cache);
    return;
  }
  // The inverted selection for dK/dV: [batch, G, n_b, n_b, words] bits (n_b^2 B / 8 bytes per
  // sequence and group: 67 MB per group at 128K tokens with B = 128).
  const int64_t nb = d.num_blocks(), words = (d.block_size + 31) / 32;
  Tensor mask = Tensor::zeros({d.batch * d.groups * nb * nb * words}, DType::kI32, Device::kCUDA);
  {
    const int64_t rows = d.batch * d.seq * d.groups;
    if (rows > 0) {
      selection_mask_kernel<<<static_cast<unsigned>((rows + 255) / 256), 256>>>(
          indices.data<int32_t>(), counts.data<int32_t>(),
          reinterpret_cast<uint32_t*>(mask.raw_data()), rows, d.seq, d.query_offset(), d.groups,
          d.block_size, d.topk, nb, words);
      MSA_CUDA_CHECK_LAUNCH("selection_mask_kernel");
    }
  }
  dispatch(q.dtype(), "msa_sparse_attention_backward", [&](auto zero) {
    using T = decltype(zero);
    const int64_t rows = d.batch * d.seq * d.heads;
    row_dot_kernel<T><<<blocks_for(rows), kThreads>>>(dout.data<T>(), out.data<T>(),
                                                     D.data<float>(), rows, a);
    MSA_CUDA_CHECK_LAUNCH("row_dot_kernel");
    const size_t smem = kWarpsPerBlock * 2 * d.dim * sizeof(float);
    attention_backward_dq_kernel<T><<<blocks_for(rows), kThreads, smem>>>(
        dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<float>(), D.data<float>(),
        indices.data<int32_t>(), counts.data<int32_t>(), static_cast<float>(scale), dq.data<T>(),
        rows, a);
    MSA_CUDA_CHECK_LAUNCH("attention_backward_dq_kernel");
    const int64_t keys = d.batch * d.keys() * d.groups;
    attention_backward_dkdv_masked_kernel<T><<<blocks_for(keys), kThreads, smem>>>(
        dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<float>(), D.data<float>(),
        reinterpret_cast<const uint32_t*>(mask.raw_data()),
        static_cast<float>(scale), dk.data<T>(), dv.data<T>(), keys, nb, words, a);
    MSA_CUDA_CHECK_LAUNCH("attention_backward_dkdv_masked_kernel");
  });
}

}  // namespace msa::cuda
