// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.
#pragma once

#include "core/tensor.h"

namespace msa {

// x [N, D], w [D], y [N, D], rstd [N] (1 / rms, kept for backward).
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);

// sum = a + b, then rmsnorm_forward(sum, w, eps, y, rstd): a residual add and the next block's
// norm in one pass over memory on the GPU (the same numbers as the two calls, bit for bit).
void add_rmsnorm_forward(const Tensor& a, const Tensor& b, const Tensor& w, double eps,
                         Tensor& sum, Tensor& y, Tensor& rstd);

// dx [N, D] overwritten; dw [D] accumulates (skipped if undefined). `residual` [N, D], when
// defined, is added to dx in the same pass (a skip connection's gradient; dx may be residual):
// the result equals rmsnorm_backward without it followed by add(dx, residual, dx).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw, const Tensor& residual = Tensor());

}  // namespace msa
