// CPU reference embedding lookup (contract in kernels/embedding.h). T is float or double.
#pragma once

#include <cstdint>

namespace msa::cpu {

// out [N, D] row n = table row tokens[n]; tokens must lie in [0, V) (checked).
template <class T>
void embedding_forward(const int32_t* tokens, const T* table, T* out, int64_t N, int64_t V,
                       int64_t D);

// dtable [V, D] row tokens[n] += dout row n, in the order n = 0, 1, ...
template <class T>
void embedding_backward(const T* dout, const int32_t* tokens, T* dtable, int64_t N, int64_t V,
                        int64_t D);

}  // namespace msa::cpu
