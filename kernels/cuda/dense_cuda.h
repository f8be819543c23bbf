// CUDA implementations of the dense operations (contracts in kernels/*.h; the dispatchers there
// check shapes and devices before calling these). Activations and compute weights are bf16;
// parameter gradients, master weights, optimizer moments and statistics (rstd, lse) are f32.
// Everything is stream-ordered on the default stream.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace msa::cuda {

// cuBLASLt, bf16 inputs, f32 accumulation. y [N, M] bf16 = x W^T (+ bias through the epilogue).
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);
// dx bf16 overwritten, or accumulated into when dx_accumulate (beta = 1, the sum in f32 before
// the bf16 rounding); dw, dbias f32 accumulate (beta = 1 straight into the f32 gradient).
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                     Tensor& dbias, bool dx_accumulate);
// Plain GEMM used by benchmarks: c[M, N] (bf16) = a[M, K] b[N, K]^T, row-major.
void gemm_bf16_nt(const Tensor& a, const Tensor& b, Tensor& c);

void add(const Tensor& a, const Tensor& b, Tensor& out);  // out = a + b (out may be a or b)
void scale_inplace(Tensor& y, double a);                  // bf16 or f32

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw, const Tensor& residual);
void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& w, double eps,
                         Tensor& sum, Tensor& y, Tensor& rstd);

// x, y [batch, T, heads, d]; inv_freq: rope_inv_freq's table (at most 256 pairs; dims past
// 2 * pairs pass through); inverse = true rotates by -angle (the backward); token t sits at
// position position_offset + t (context parallelism). rope_kernels.cu.
void rope_rotate(const Tensor& x, const std::vector<double>& inv_freq, bool inverse,
                 int64_t position_offset, Tensor& y);

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);

// table bf16 [V, D]; dtable f32 [V, D] accumulates. vocab_begin: the first row this table holds
// (tensor parallelism); tokens outside [vocab_begin, vocab_begin + V) give zero rows / nothing.
void embedding_forward(const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& tokens, int64_t vocab_begin,
                        Tensor& dtable);

// Sum of the counted rows' losses (lse - logit[target]) and their count; lse f32 [N].
double cross_entropy_forward(const Tensor& logits, const Tensor& targets, int ignore_index,
                             Tensor& lse, int64_t* n_counted);
// Vocabulary slices (kernels/cross_entropy.h); slice_lse, target_logit, all_lse and lse are f32.
void cross_entropy_slice_forward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                 Tensor& slice_lse, Tensor& target_logit);
double cross_entropy_combine(const Tensor& all_lse, const Tensor& target_logit,
                             const Tensor& targets, int64_t vocab_size, int ignore_index,
                             Tensor& lse, int64_t* n_counted);
// logits hold the columns [vocab_begin, vocab_begin + V) (0 without tensor parallelism).
void cross_entropy_backward(const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, int ignore_index, int64_t n_counted, double dloss,
                            Tensor& dlogits);

struct AdamWStep {
  float lr, beta1, beta2, eps, weight_decay, grad_scale;
  float bias1, bias2;  // 1 - beta^step, computed in double on the host
};
// compute_copy (bf16, may be null) receives the updated parameter in the same pass.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWStep& h,
                  Tensor* compute_copy);
double sum_of_squares(const Tensor& t);  // f32 or bf16
std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors);  // one host sync

}  // namespace msa::cuda
