// Dense causal grouped-query attention (the dense layers and the MSA identity baseline).
// o_{t,h} = sum_{s<=t} softmax_s(scale * q_{t,h} . k_{s,g(h)}) v_{s,g(h)}.
#pragma once

#include "core/tensor.h"

namespace msa {

// q [batch, T, H, d], k, v [batch, T, G, d] (H % G == 0), out [batch, T, H, d],
// lse [batch, H, T] = log sum_s exp(scale * q.k_s).
//
// Fewer queries than keys (CPU and CUDA; context parallelism): q, out [batch, Tq, H, d], lse
// [batch, H, Tq] with k, v [batch, Tk, G, d], Tq <= Tk: query i sits at position Tk - Tq + i and
// attends to the keys s <= Tk - Tq + i (bottom-right causal alignment, as FlashAttention and cuDNN
// align seqlen_q < seqlen_kv). Its rows equal rows Tk - Tq .. Tk - 1 of the full computation.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                       Tensor& out, Tensor& lse);

// dq, dk, dv overwritten (same shapes as q, k, v): with Tq < Tk, dk and dv hold these queries'
// contributions only (summing them over the query shards of a sequence gives the full gradient).
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, double scale, Tensor& dq,
                        Tensor& dk, Tensor& dv);

}  // namespace msa
