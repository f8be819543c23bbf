// SwiGLU gate: out = silu(gate) * up, silu(z) = z * sigmoid(z).
#pragma once

#include "core/tensor.h"

namespace msa {

// gate, up, out [N, F].
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& out);

// dgate, dup [N, F] overwritten.
void swiglu_backward(const Tensor& dout, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);

}  // namespace msa
