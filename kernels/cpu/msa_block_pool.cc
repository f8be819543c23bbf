// Block-key pooling: kbar[b, j, g] = mean of ik[b, s, g] over the tokens s of
// block j. The last block may be partial, so each block divides by its own
// token count.
#include <algorithm>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"

namespace msa::cpu {

template <class T>
void msa_block_pool_forward(const T* ik, T* kbar, const MsaDims& dims) {
  const int64_t S = dims.seq, G = dims.groups, dI = dims.index_dim, B = dims.block_size;
  const int64_t nb = dims.num_blocks();
  parallel_for(dims.batch * nb, B * G * dI, [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj) {
      const int64_t b = bj / nb, j = bj % nb;
      const int64_t s0 = j * B, s1 = std::min(S, s0 + B);
      const T inv_len = T(1) / static_cast<T>(s1 - s0);
      T* out = kbar + (b * nb + j) * G * dI;
      std::fill(out, out + G * dI, T(0));
      for (int64_t s = s0; s < s1; ++s) {
        const T* row = ik + (b * S + s) * G * dI;
        for (int64_t i = 0; i < G * dI; ++i) out[i] += row[i];
      }
      for (int64_t i = 0; i < G * dI; ++i) out[i] *= inv_len;
    }
  });
}

template <class T>
void msa_block_pool_backward(const T* dkbar, T* dik, const MsaDims& dims) {
  const int64_t S = dims.seq, G = dims.groups, dI = dims.index_dim, B = dims.block_size;
  const int64_t nb = dims.num_blocks();
  parallel_for(dims.batch * S, G * dI, [&](int64_t begin, int64_t end) {
    for (int64_t bs = begin; bs < end; ++bs) {
      const int64_t b = bs / S, s = bs % S, j = s / B;
      const int64_t len = std::min(S, (j + 1) * B) - j * B;
      const T inv_len = T(1) / static_cast<T>(len);
      const T* src = dkbar + (b * nb + j) * G * dI;
      T* dst = dik + bs * G * dI;
      for (int64_t i = 0; i < G * dI; ++i) dst[i] = src[i] * inv_len;
    }
  });
}

template void msa_block_pool_forward<float>(const float*, float*, const MsaDims&);
template void msa_block_pool_forward<double>(const double*, double*, const MsaDims&);
template void msa_block_pool_backward<float>(const float*, float*, const MsaDims&);
template void msa_block_pool_backward<double>(const double*, double*, const MsaDims&);

}  // namespace msa::cpu
