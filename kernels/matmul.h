// Linear layers: y = x W^T (+ b), W stored [out, in] as in PyTorch / Hugging Face.
#pragma once

#include "core/tensor.h"

namespace msa {

// x [N, K], w [M, K], bias [M] or undefined, y [N, M].
void linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& y);

// dy [N, M]. dx [N, K] is overwritten (skipped if undefined); dw [M, K] and dbias [M] accumulate
// (each skipped if undefined).
void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& w, Tensor& dx, Tensor& dw,
                     Tensor& dbias);

// Elementwise helpers used by the model: y += x (same shape), and y = a * x (scale in place).
void add_inplace(Tensor& y, const Tensor& x);
void scale_inplace(Tensor& y, double a);

}  // namespace msa
