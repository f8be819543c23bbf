// Token embedding lookup.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace msa {

// tokens i32 [N] (each in [0, V)), table [V, D], out [N, D].
void embedding_forward(const Tensor& tokens, const Tensor& table, Tensor& out);

// dtable [V, D] accumulates dout's rows at the tokens' indices.
void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dtable);

// Vocabulary-parallel versions (model/tensor_parallel.h): table / dtable [V, D] hold the rows
// [vocab_begin, vocab_begin + V) of the full vocabulary and tokens are global ids. A token outside
// those rows gives a zero row of out (the caller sums out over the slices) and adds nothing.
void embedding_forward(const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& tokens, int64_t vocab_begin,
                        Tensor& dtable);

}  // namespace msa
