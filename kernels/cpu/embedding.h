// CPU reference embedding lookup (contract in kernels/embedding.h). T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// table holds the rows [vocab_begin, vocab_begin + V) of the vocabulary. out [N, D] row n = table
// row tokens[n] - vocab_begin, or zeros when the token is outside the table's rows.
template <class T>
void embedding_forward(const int32_t* tokens, const T* table, T* out, int64_t N, int64_t V,
                       int64_t D, int64_t vocab_begin);

// dtable [V, D] row tokens[n] - vocab_begin += dout row n, in the order n = 0, 1, ...; tokens
// outside the table's rows add nothing.
template <class T>
void embedding_backward(const T* dout, const int32_t* tokens, T* dtable, int64_t N, int64_t V,
                        int64_t D, int64_t vocab_begin);

}  // namespace msa::cpu
