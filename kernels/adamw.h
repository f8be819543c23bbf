// AdamW (decoupled weight decay), one step on one parameter tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace msa {

struct AdamWHyper {
  double lr = 3e-4;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;  // 0 for norms and biases (the caller decides)
  double grad_scale = 1.0;    // grads are multiplied by this first (gradient clipping)
  int64_t step = 1;           // 1-based, for bias correction
};

// param, grad, m, v: f32 (the master copy), same shape, same device. m, v updated in place.
//   g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   param -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps) + lr * wd * param
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h);
// The same, also writing the updated parameter rounded to compute_copy's dtype (bf16 compute
// weights on the GPU) in the same pass.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h,
                  Tensor& compute_copy);

// Sum of squares of all elements (f32 or f64 result as double); for global-norm clipping.
double sum_of_squares(const Tensor& t);
// Sums of squares of several tensors of one device, one result each (on the GPU: one host
// synchronization for all of them instead of one per tensor).
std::vector<double> sums_of_squares(const std::vector<Tensor>& tensors);

}  // namespace msa
