// Exp-free top-k block selection over max-pooled token scores (DESIGN.md section 4).
//
// Row (b, t, g): the candidate blocks j < c(t) lie wholly before t, so their block score is the
// max over all tokens s of block j of the raw dot iq_{t,g} . ik_s. The 1/sqrt(dI) of the token
// score is a positive constant: multiplying by it (and rounding) can only merge distinct scores
// into ties, never reverse an order, so ranking the raw dots selects what the exact scaled scores
// select, without rounding-made ties. NaN dots never win a max (a NaN-only block scores -inf): the
// ranking stays a strict order and every eligible block can still be chosen, as on the GPU.
// Ties go to the lower block index. The local block c(t) is always selected; the output is sorted
// ascending, so c(t) is the last valid entry. Each row costs t * dI multiply-adds and keeps only
// its n_b block maxima (no T x n_b buffer). With fewer queries than keys, query t sits at
// position query_offset() + t and the block grid is the keys' (global) one.
#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_ops.h"

namespace msa::cpu {

template <class T>
void msa_index_topk(const T* iq, const T* ik, int32_t* indices, int32_t* counts,
                    const MsaDims& dims) {
  const int64_t S = dims.seq, G = dims.groups, dI = dims.index_dim, B = dims.block_size;
  const int64_t K = dims.topk, nb = dims.num_blocks();
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const int64_t rows = dims.batch * S * G;
  parallel_for(rows, (off + S / 2 + 1) * dI, [&](int64_t begin, int64_t end) {
    std::vector<T> score(nb);
    std::vector<int32_t> order(nb);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = off + (row / G) % S, b = row / (G * S);  // t: the query's position
      const int64_t c = t / B;
      const T* q = iq + row * dI;
      for (int64_t j = 0; j < c; ++j) {
        T best = -std::numeric_limits<T>::infinity();
        for (int64_t s = j * B; s < (j + 1) * B; ++s) {
          const T x = dot(q, ik + (b * Sk + s) * dI, dI);
          if (x > best) best = x;  // false for NaN: a NaN dot never wins
        }
        score[j] = best;
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
