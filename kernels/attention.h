// Dense causal grouped-query attention (the dense layers and the MSA identity baseline).
// o_{t,h} = sum_{s<=t} softmax_s(scale * q_{t,h} . k_{s,g(h)}) v_{s,g(h)}.
#pragma once

#include "core/tensor.h"

namespace msa {

// q [batch, T, H, d], k, v [batch, T, G, d] (H % G == 0), out [batch, T, H, d],
// lse [batch, H, T] = log sum_s exp(scale * q.k_s).
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                       Tensor& out, Tensor& lse);

// dq, dk, dv overwritten (same shapes as q, k, v).
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, double scale, Tensor& dq,
                        Tensor& dk, Tensor& dv);

}  // namespace msa
