// RMSNorm: y = x / sqrt(mean(x^2) + eps) * w, over the last dimension.
#pragma once

#include "core/tensor.h"

namespace msa {

// x [N, D], w [D], y [N, D], rstd [N] (1 / rms, kept for backward).
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);

// dx [N, D] overwritten; dw [D] accumulates (skipped if undefined).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor& dw);

}  // namespace msa
