// Block-sparse causal GQA attention over a BlockSelection: the dense reference
// of kernels/cpu/attention.cc with the key range of query t restricted to its
// group's selected blocks (and to s <= t inside the local block). Same math,
// same recompute-from-lse backward:
//   p_s = exp(scale q_t.k_s - lse_t), D_t = dout_t . out_t, ds_s = p_s (dout_t
//   . v_s - D_t), dq_t = scale sum_s ds_s k_s,  dk_s += scale ds_s q_t,  dv_s
//   += p_s dout_t.
// The backward runs one task per (b, g) that owns dk, dv of the group and dq of
// its heads, and adds in a fixed order: deterministic under any thread count.
// With fewer queries than keys, query t sits at position query_offset() + t; k, v, dk, dv span
// the keys.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_ops.h"

namespace msa::cpu {
namespace {

// Calls fn(s) for every key token s that query t of row (b, t, g) attends to,
// in ascending order.
template <class Fn>
void for_each_selected_key(const int32_t* idx, int32_t count, int64_t t, int64_t B, Fn&& fn) {
  for (int32_t i = 0; i < count; ++i) {
    const int64_t j = idx[i];
    const int64_t s1 = std::min((j + 1) * B, t + 1);
    for (int64_t s = j * B; s < s1; ++s) fn(s);
  }
}

}  // namespace

template <class T>
void msa_sparse_attention_forward(const T* q, const T* k, const T* v, const int32_t* indices,
                                  const int32_t* counts, double scale, T* out, T* lse,
                                  const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t B = dims.block_size, K = dims.topk, r = H / G;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const T sc = static_cast<T>(scale);
  parallel_for(dims.batch * H, S * K * B * d, [&](int64_t begin, int64_t end) {
    std::vector<T> p(K * B);
    std::vector<int64_t> keys(K * B);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / r;
      for (int64_t t = 0; t < S; ++t) {
        const int64_t row = (b * S + t) * G + g;
        const T* q_t = q + ((b * S + t) * H + h) * d;
        int64_t n = 0;
        T max = -std::numeric_limits<T>::infinity();
        for_each_selected_key(indices + row * K, counts[row], off + t, B, [&](int64_t s) {
          keys[n] = s;
          p[n] = sc * dot(q_t, k + ((b * Sk + s) * G + g) * d, d);
          max = std::max(max, p[n]);
          ++n;
        });
        T sum = 0;
        for (int64_t i = 0; i < n; ++i) {
          p[i] = std::exp(p[i] - max);
          sum += p[i];
        }
        const T inv_sum = T(1) / sum;
        T* out_t = out + ((b * S + t) * H + h) * d;
        std::fill(out_t, out_t + d, T(0));
        for (int64_t i = 0; i < n; ++i)
          axpy(p[i] * inv_sum, v + ((b * Sk + keys[i]) * G + g) * d, out_t, d);
        lse[(b * H + h) * S + t] = max + std::log(sum);
      }
    }
  });
}

template <class T>
void msa_sparse_attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                                   const T* lse, const int32_t* indices, const int32_t* counts,
                                   double scale, T* dq, T* dk, T* dv, const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t B = dims.block_size, K = dims.topk, r = H / G;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const T sc = static_cast<T>(scale);
  parallel_for(dims.batch * G, r * S * K * B * d, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      auto kv_offset = [&](int64_t s) { return ((b * Sk + s) * G + g) * d; };
      for (int64_t s = 0; s < Sk; ++s) {
        std::fill(dk + kv_offset(s), dk + kv_offset(s) + d, T(0));
        std::fill(dv + kv_offset(s), dv + kv_offset(s) + d, T(0));
      }
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        for (int64_t t = 0; t < S; ++t) {
          const int64_t row = (b * S + t) * G + g;
          const int64_t q_offset = ((b * S + t) * H + h) * d;
          const T* q_t = q + q_offset;
          const T* dout_t = dout + q_offset;
          T* dq_t = dq + q_offset;
          std::fill(dq_t, dq_t + d, T(0));
          const T lse_t = lse[(b * H + h) * S + t];
          const T D_t = dot(dout_t, out + q_offset, d);
          for_each_selected_key(indices + row * K, counts[row], off + t, B, [&](int64_t s) {
            const T* k_s = k + kv_offset(s);
            const T p = std::exp(sc * dot(q_t, k_s, d) - lse_t);
            const T ds = p * (dot(dout_t, v + kv_offset(s), d) - D_t);
            axpy(sc * ds, k_s, dq_t, d);
            axpy(sc * ds, q_t, dk + kv_offset(s), d);
            axpy(p, dout_t, dv + kv_offset(s), d);
          });
        }
      }
    }
  });
}

#define MSA_INSTANTIATE(T)                                                                         \
  template void msa_sparse_attention_forward<T>(const T*, const T*, const T*, const int32_t*,      \
                                                const int32_t*, double, T*, T*, const MsaDims&);   \
  template void msa_sparse_attention_backward<T>(const T*, const T*, const T*, const T*, const T*, \
                                                 const T*, const int32_t*, const int32_t*, double, \
                                                 T*, T*, T*, const MsaDims&);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
