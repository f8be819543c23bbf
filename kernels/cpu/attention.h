// CPU reference dense causal GQA attention (contract in kernels/attention.h). T is float or
// double. q, out, dout, dq [batch, seq, H, d]; k, v, dk, dv [batch, keys(), G, d];
// lse [batch, H, seq]. Query i sits at position keys() - seq + i (bottom-right causal alignment).
#pragma once

#include <cstdint>

namespace msa::cpu {

struct AttentionDims {
  int64_t batch, seq, heads, groups, dim;  // heads % groups == 0; seq = query tokens
  int64_t kv_seq = 0;                      // key tokens (>= seq); 0: as many as queries
  int64_t keys() const { return kv_seq > 0 ? kv_seq : seq; }
  int64_t query_offset() const { return keys() - seq; }  // position of query 0
};

template <class T>
void attention_forward(const T* q, const T* k, const T* v, double scale, T* out, T* lse,
                       const AttentionDims& dims);

// dq, dk, dv overwritten.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, double scale, T* dq, T* dk, T* dv, const AttentionDims& dims);

}  // namespace msa::cpu
