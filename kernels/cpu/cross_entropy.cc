// loss_n = lse_n - logit[n, target_n] with lse_n = log sum_v exp(logit[n, v]), computed as
// max + log sum exp(logit - max) so no exponential overflows. Row sums accumulate in double: a
// float sum over a vocabulary of 10^5 entries would lose several digits. Rows run in parallel;
// per-row losses are added in row order afterwards, so the loss does not depend on threads.
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/cpu/parallel.h"

namespace msa::cpu {
namespace {

void check_target(int32_t target, int64_t n, int64_t V, int ignore_index, const char* op) {
  MSA_CHECK(target == ignore_index || (target >= 0 && target < V),
            "%s: targets[%d] = %d is neither in [0, %d) nor ignore_index %d", op, n, target, V,
            ignore_index);
}

}  // namespace

template <class T>
double cross_entropy_forward(const T* logits, const int32_t* targets, T* lse, int64_t N, int64_t V,
                             int ignore_index, int64_t* n_counted) {
  std::vector<double> row_loss(N, 0.0);
  parallel_for(N, 4 * V, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = logits + n * V;
      const double max = *std::max_element(row, row + V);
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
      const double row_lse = max + std::log(sum);
      lse[n] = static_cast<T>(row_lse);
      const int32_t target = targets[n];
      check_target(target, n, V, ignore_index, "cross_entropy_forward");
      if (target != ignore_index) row_loss[n] = row_lse - static_cast<double>(row[target]);
    }
  });
  double total = 0;
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] == ignore_index) continue;
    total += row_loss[n];
    ++counted;
  }
  *n_counted = counted;
  return total;
}

template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int64_t N,
                            int64_t V, int ignore_index, int64_t n_counted, double dloss,
                            T* dlogits) {
  const double row_scale = n_counted > 0 ? dloss / static_cast<double>(n_counted) : 0.0;
  parallel_for(N, 4 * V, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = logits + n * V;
      T* d_row = dlogits + n * V;
      const int32_t target = targets[n];
      check_target(target, n, V, ignore_index, "cross_entropy_backward");
      if (target == ignore_index || row_scale == 0.0) {
        std::fill(d_row, d_row + V, T(0));
        continue;
      }
      const double row_lse = static_cast<double>(lse[n]);
      // Elementwise read-then-write: safe when dlogits aliases logits.
      for (int64_t v = 0; v < V; ++v) {
        const double p = std::exp(static_cast<double>(row[v]) - row_lse);
        d_row[v] = static_cast<T>(row_scale * (p - (v == target ? 1.0 : 0.0)));
      }
    }
  });
}

#define MSA_INSTANTIATE(T)                                                                      \
  template double cross_entropy_forward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int, \
                                           int64_t*);                                           \
  template void cross_entropy_backward<T>(const T*, const int32_t*, const T*, int64_t, int64_t, \
                                          int, int64_t, double, T*);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
