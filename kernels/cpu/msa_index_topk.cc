// Exp-free top-k block selection (DESIGN.md section 4).
//
// Blocks are ranked by the raw dot product iq . kbar: the 1/sqrt(dI) of the
// score is a positive constant, so it cannot change the order, and leaving it
// out keeps rounding from creating ties that the exact scores do not have. Ties
// go to the lower block index. The local block c(t) is always selected; the
// output is sorted ascending, so c(t) is the last valid entry.
#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"

namespace msa::cpu {

template <class T>
void msa_index_topk(const T* iq, const T* kbar, int32_t* indices, int32_t* counts,
                    const MsaDims& dims) {
  const int64_t S = dims.seq, G = dims.groups, dI = dims.index_dim, B = dims.block_size;
  const int64_t K = dims.topk, nb = dims.num_blocks();
  const int64_t rows = dims.batch * S * G;
  parallel_for(rows, (S / B + 1) * dI, [&](int64_t begin, int64_t end) {
    std::vector<T> score(nb);
    std::vector<int32_t> order(nb);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t g = row % G, t = (row / G) % S, b = row / (G * S);
      const int64_t c = t / B;
      const T* q = iq + row * dI;
      for (int64_t j = 0; j < c; ++j) {
        const T* kb = kbar + ((b * nb + j) * G + g) * dI;
        T sum = 0;
        for (int64_t i = 0; i < dI; ++i) sum += q[i] * kb[i];
        score[j] = sum;
      }
      const int64_t want = std::min<int64_t>(K - 1, c);
      std::iota(order.begin(), order.begin() + c, 0);
      std::partial_sort(order.begin(), order.begin() + want, order.begin() + c,
                        [&](int32_t a, int32_t bb) {
                          return score[a] > score[bb] || (score[a] == score[bb] && a < bb);
                        });
      std::sort(order.begin(), order.begin() + want);
      int32_t* out = indices + row * K;
      for (int64_t i = 0; i < want; ++i) out[i] = order[i];
      out[want] = static_cast<int32_t>(c);
      for (int64_t i = want + 1; i < K; ++i) out[i] = -1;
      counts[row] = static_cast<int32_t>(want + 1);
    }
  });
}

template void msa_index_topk<float>(const float*, const float*, int32_t*, int32_t*, const MsaDims&);
template void msa_index_topk<double>(const double*, const double*, int32_t*, int32_t*,
                                     const MsaDims&);

}  // namespace msa::cpu
