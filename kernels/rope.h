// Rotary position embedding, "rotate half" convention (Hugging Face Llama/Qwen): for i < d/2,
//   y[i]       = x[i] cos(p f_i) - x[i + d/2] sin(p f_i)
//   y[i + d/2] = x[i + d/2] cos(p f_i) + x[i] sin(p f_i),   f_i = theta^(-2i/d),
// with p the token's position in its sequence (0..T-1).
#pragma once

#include "core/tensor.h"

namespace msa {

// x, y [batch, T, n_heads, d], d even. y may alias x (in place).
void rope_forward(const Tensor& x, double theta, Tensor& y);

// dx = R^T dy; dx may alias dy.
void rope_backward(const Tensor& dy, double theta, Tensor& dx);

}  // namespace msa
