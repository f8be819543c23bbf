// Token embedding lookup.
#pragma once

#include "core/tensor.h"

namespace msa {

// tokens i32 [N] (each in [0, V)), table [V, D], out [N, D].
void embedding_forward(const Tensor& tokens, const Tensor& table, Tensor& out);

// dtable [V, D] accumulates dout's rows at the tokens' indices.
void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dtable);

}  // namespace msa
