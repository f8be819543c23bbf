// CUDA dense causal GQA attention (contract in kernels/attention.h): bf16 q, k, v, out, dq, dk,
// dv; f32 lse.
#pragma once

#include "core/tensor.h"
#include "kernels/cpu/attention.h"

namespace msa::cuda {

// cuDNN fused flash attention (attention_cudnn.cc). Return false, having done nothing, when cuDNN
// has no engine for the shape; the caller then uses the fallback below.
bool cudnn_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                             Tensor& out, Tensor& lse, const cpu::AttentionDims& dims);
bool cudnn_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, double scale,
                              Tensor& dq, Tensor& dk, Tensor& dv, const cpu::AttentionDims& dims);

// Hand-written kernels (attention_fallback.cu): one warp per query row (forward, dQ) or per key
// row (dK, dV), f32 accumulation, CUDA cores. Correct for any shape with d <= 256; slow.
void fallback_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                Tensor& out, Tensor& lse, const cpu::AttentionDims& dims);
void fallback_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& out, const Tensor& lse,
                                 double scale, Tensor& dq, Tensor& dk, Tensor& dv,
                                 const cpu::AttentionDims& dims);

// MSA_ATTENTION=fallback forces the fallback kernels (tests compare the two paths).
bool attention_fallback_forced();

}  // namespace msa::cuda
