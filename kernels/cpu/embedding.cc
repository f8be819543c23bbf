#include "kernels/cpu/embedding.h"

#include <algorithm>

namespace msa::cpu {

template <class T>
void embedding_forward(const int32_t* tokens, const T* table, T* out, int64_t N, int64_t V,
                       int64_t D, int64_t vocab_begin) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row = static_cast<int64_t>(tokens[n]) - vocab_begin;
    if (row >= 0 && row < V)
      std::copy(table + row * D, table + (row + 1) * D, out + n * D);
    else
      std::fill(out + n * D, out + (n + 1) * D, T(0));
  }
}

template <class T>
void embedding_backward(const T* dout, const int32_t* tokens, T* dtable, int64_t N, int64_t V,
                        int64_t D, int64_t vocab_begin) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row = static_cast<int64_t>(tokens[n]) - vocab_begin;
    if (row < 0 || row >= V) continue;
    T* d_table_row = dtable + row * D;
    const T* d_row = dout + n * D;
    for (int64_t i = 0; i < D; ++i) d_table_row[i] += d_row[i];
  }
}

#define MSA_INSTANTIATE(T)                                                                     \
  template void embedding_forward<T>(const int32_t*, const T*, T*, int64_t, int64_t, int64_t,  \
                                     int64_t);                                                 \
  template void embedding_backward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int64_t, \
                                      int64_t);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
