// Dense causal GQA attention, O(seq^2 d) per head, no T x T matrix kept.
//
// Forward, per (sequence b, head h), per query t: scores z_s = scale q_t . k_s for s <= t,
// p_s = exp(z_s - lse_t) with lse_t = log sum_s exp(z_s), out_t = sum_s p_s v_s.
// Backward, with the probabilities recomputed from lse (nothing of size T x T is stored):
//   dp_s = dout_t . v_s,  D_t = sum_s p_s dp_s = dout_t . out_t,  ds_s = p_s (dp_s - D_t),
//   dq_t = scale sum_s ds_s k_s,  dk_s += scale ds_s q_t,  dv_s += p_s dout_t.
// The backward runs one task per (b, KV group g): the task owns dk, dv of group g and dq of the
// group's query heads, and adds into them in a fixed order, so it is deterministic under threads.
// Inner loops run over the head dimension, which is contiguous in every tensor.
// Queries may be fewer than keys (a context-parallel shard): query t sits at position
// off + t, off = keys - queries, and attends to the keys s <= off + t.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_ops.h"

namespace msa::cpu {

template <class T>
void attention_forward(const T* q, const T* k, const T* v, double scale, T* out, T* lse,
                       const AttentionDims& dims) {
  const int64_t batch = dims.batch, seq = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const int64_t heads_per_group = H / G;
  const T sc = static_cast<T>(scale);
  parallel_for(batch * H, seq * Sk * d, [&](int64_t begin, int64_t end) {
    std::vector<T> p(Sk);  // scores, then probabilities, of one query
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / heads_per_group;
      auto q_at = [&](int64_t t) { return q + ((b * seq + t) * H + h) * d; };
      auto kv_offset = [&](int64_t s) { return ((b * Sk + s) * G + g) * d; };
      for (int64_t t = 0; t < seq; ++t) {
        const T* q_t = q_at(t);
        const int64_t last = off + t;  // the query's position: keys 0..last
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s <= last; ++s) {
          p[s] = sc * dot(q_t, k + kv_offset(s), d);
          max = std::max(max, p[s]);
        }
        T sum = 0;
        for (int64_t s = 0; s <= last; ++s) {
          p[s] = std::exp(p[s] - max);
          sum += p[s];
        }
        const T inv_sum = T(1) / sum;
        T* out_t = out + ((b * seq + t) * H + h) * d;
        std::fill(out_t, out_t + d, T(0));
        for (int64_t s = 0; s <= last; ++s) axpy(p[s] * inv_sum, v + kv_offset(s), out_t, d);
        lse[(b * H + h) * seq + t] = max + std::log(sum);
      }
    }
  });
}

template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, double scale, T* dq, T* dk, T* dv,
                        const AttentionDims& dims) {
  const int64_t batch = dims.batch, seq = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const int64_t heads_per_group = H / G;
  const T sc = static_cast<T>(scale);
  parallel_for(batch * G, heads_per_group * seq * Sk * d, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      auto kv_offset = [&](int64_t s) { return ((b * Sk + s) * G + g) * d; };
      for (int64_t s = 0; s < Sk; ++s) {
        std::fill(dk + kv_offset(s), dk + kv_offset(s) + d, T(0));
        std::fill(dv + kv_offset(s), dv + kv_offset(s) + d, T(0));
      }
      for (int64_t h = g * heads_per_group; h < (g + 1) * heads_per_group; ++h) {
        for (int64_t t = 0; t < seq; ++t) {
          const int64_t q_offset = ((b * seq + t) * H + h) * d;
          const T* q_t = q + q_offset;
          const T* dout_t = dout + q_offset;
          T* dq_t = dq + q_offset;
          std::fill(dq_t, dq_t + d, T(0));
          const T lse_t = lse[(b * H + h) * seq + t];
          const T D_t = dot(dout_t, out + q_offset, d);
          for (int64_t s = 0; s <= off + t; ++s) {
            const T* k_s = k + kv_offset(s);
            const T* v_s = v + kv_offset(s);
            const T p = std::exp(sc * dot(q_t, k_s, d) - lse_t);
            const T ds = p * (dot(dout_t, v_s, d) - D_t);
            axpy(sc * ds, k_s, dq_t, d);
            axpy(sc * ds, q_t, dk + kv_offset(s), d);
            axpy(p, dout_t, dv + kv_offset(s), d);
          }
        }
      }
    }
  });
}

#define MSA_INSTANTIATE(T)                                                                        \
  template void attention_forward<T>(const T*, const T*, const T*, double, T*, T*,                \
                                     const AttentionDims&);                                       \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, \
                                      double, T*, T*, T*, const AttentionDims&);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
