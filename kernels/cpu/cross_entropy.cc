// loss_n = lse_n - logit[n, target_n] with lse_n = log sum_v exp(logit[n, v]), computed as
// max + log sum exp(logit - max) so no exponential overflows. Row sums accumulate in double: a
// float sum over a vocabulary of 10^5 entries would lose several digits. Rows run in parallel;
// per-row losses are added in row order afterwards, so the loss does not depend on threads.
// Vocabulary slices combine their log-sum-exps the same way: max over slices, then the sum of
// exp(lse_s - max).
#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <limits>
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

// log sum_v exp(row[v]) over V entries, in double.
template <class T>
double row_log_sum_exp(const T* row, int64_t V) {
  const double max = *std::max_element(row, row + V);
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - max);
  return max + std::log(sum);
}

}  // namespace

template <class T>
double cross_entropy_forward(const T* logits, const int32_t* targets, T* lse, int64_t N, int64_t V,
                             int ignore_index, int64_t* n_counted) {
  std::vector<double> row_loss(N, 0.0);
  parallel_for(N, 4 * V, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = logits + n * V;
      const double row_lse = row_log_sum_exp(row, V);
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
void cross_entropy_slice_forward(const T* logits, const int32_t* targets, T* slice_lse,
                                 T* target_logit, int64_t N, int64_t V, int64_t vocab_begin) {
  parallel_for(N, 4 * V, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = logits + n * V;
      slice_lse[n] = static_cast<T>(row_log_sum_exp(row, V));
      const int64_t col = static_cast<int64_t>(targets[n]) - vocab_begin;
      target_logit[n] = col >= 0 && col < V ? row[col] : T(0);
    }
  });
}

template <class T>
double cross_entropy_combine(const T* all_lse, const T* target_logit, const int32_t* targets,
                             T* lse, int64_t S, int64_t N, int64_t vocab_size, int ignore_index,
                             int64_t* n_counted) {
  double total = 0;
  int64_t counted = 0;
  for (int64_t n = 0; n < N; ++n) {
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t s = 0; s < S; ++s) max = std::max(max, static_cast<double>(all_lse[s * N + n]));
    double sum = 0;
    for (int64_t s = 0; s < S; ++s) sum += std::exp(static_cast<double>(all_lse[s * N + n]) - max);
    const double row_lse = max + std::log(sum);
    lse[n] = static_cast<T>(row_lse);
    const int32_t target = targets[n];
    check_target(target, n, vocab_size, ignore_index, "cross_entropy_combine");
    if (target == ignore_index) continue;
    total += row_lse - static_cast<double>(target_logit[n]);
    ++counted;
  }
  *n_counted = counted;
  return total;
}

template <class T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int64_t N,
                            int64_t V, int64_t vocab_begin, int ignore_index, int64_t n_counted,
                            double dloss, T* dlogits) {
  const double row_scale = n_counted > 0 ? dloss / static_cast<double>(n_counted) : 0.0;
  parallel_for(N, 4 * V, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = logits + n * V;
      T* d_row = dlogits + n * V;
      const int32_t target = targets[n];
      MSA_CHECK(target == ignore_index || target >= 0,
                "cross_entropy_backward: targets[%d] = %d is neither >= 0 nor ignore_index %d", n,
                target, ignore_index);
      if (target == ignore_index || row_scale == 0.0) {
        std::fill(d_row, d_row + V, T(0));
        continue;
      }
      const double row_lse = static_cast<double>(lse[n]);
      const int64_t col = static_cast<int64_t>(target) - vocab_begin;  // may be outside [0, V)
      // Elementwise read-then-write: safe when dlogits aliases logits.
      for (int64_t v = 0; v < V; ++v) {
        const double p = std::exp(static_cast<double>(row[v]) - row_lse);
        d_row[v] = static_cast<T>(row_scale * (p - (v == col ? 1.0 : 0.0)));
      }
    }
  });
}

#define MSA_INSTANTIATE(T)                                                                         \
  template double cross_entropy_forward<T>(const T*, const int32_t*, T*, int64_t, int64_t, int,    \
                                           int64_t*);                                              \
  template void cross_entropy_backward<T>(const T*, const int32_t*, const T*, int64_t, int64_t,    \
                                          int64_t, int, int64_t, double, T*);                      \
  template void cross_entropy_slice_forward<T>(const T*, const int32_t*, T*, T*, int64_t, int64_t, \
                                               int64_t);                                           \
  template double cross_entropy_combine<T>(const T*, const T*, const int32_t*, T*, int64_t,        \
                                           int64_t, int64_t, int, int64_t*);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
