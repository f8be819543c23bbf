#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "core/check.h"

namespace msa::cpu {

template <class T>
void embedding_forward(const int32_t* tokens, const T* table, T* out, int64_t N, int64_t V,
                       int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const int32_t token = tokens[n];
    MSA_CHECK(token >= 0 && token < V, "embedding_forward: tokens[%d] = %d outside [0, %d)", n,
              token, V);
    std::copy(table + token * D, table + (token + 1) * D, out + n * D);
  }
}

template <class T>
void embedding_backward(const T* dout, const int32_t* tokens, T* dtable, int64_t N, int64_t V,
                        int64_t D) {
  for (int64_t n = 0; n < N; ++n) {
    const int32_t token = tokens[n];
    MSA_CHECK(token >= 0 && token < V, "embedding_backward: tokens[%d] = %d outside [0, %d)", n,
              token, V);
    T* row = dtable + token * D;
    const T* d_row = dout + n * D;
    for (int64_t i = 0; i < D; ++i) row[i] += d_row[i];
  }
}

template void embedding_forward<float>(const int32_t*, const float*, float*, int64_t, int64_t,
                                       int64_t);
template void embedding_forward<double>(const int32_t*, const double*, double*, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<float>(const float*, const int32_t*, float*, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<double>(const double*, const int32_t*, double*, int64_t, int64_t,
                                         int64_t);

}  // namespace msa::cpu
