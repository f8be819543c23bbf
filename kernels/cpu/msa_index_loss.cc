// Index distillation loss (DESIGN.md section 4) and index recall.
//
// For a counted row (b, t, g) with block list J (sparse: the selected blocks
// minus the local one; dense-target: every block j < c(t)):
//   m_{h,j} = sum_{s in block j} exp(scale q_{t,h}.k_s - lse_{t,h})   (blocks
//   of J lie wholly
//             before t, so no causal cut is needed),
//   P_j = (1/r) sum_h m_{h,j} / sum_{j' in J} m_{h,j'},   Q = softmax_j(iq_t .
//   kbar_j / sqrt(dI)), KL = sum_j P_j (log P_j - log Q_j),  dKL/dscore_j = Q_j
//   - P_j.
// A head whose mass over J underflows to zero has no distribution to give and
// is left out of P's mean (P is uniform if every head underflows); with real
// data this does not happen. One task per (b, g) owns diq of its rows and dkbar
// of its blocks and adds in a fixed order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_ops.h"

namespace msa::cpu {
namespace {


// The row's block list J; returns false when the row does not count (|J| < 2).
bool row_blocks(bool dense_target, const int32_t* idx, int32_t count, int64_t c,
                std::vector<int64_t>& J) {
  J.clear();
  if (dense_target) {
    for (int64_t j = 0; j < c; ++j) J.push_back(j);
  } else {
    for (int32_t i = 0; i < count; ++i)
      if (idx[i] != c) J.push_back(idx[i]);
  }
  return J.size() >= 2;
}

}  // namespace

template <class T>
IndexLossSums msa_index_loss(bool dense_target, const T* q, const T* k, const T* lse,
                             const int32_t* indices, const int32_t* counts, const T* iq,
                             const T* kbar, double scale, double weight, T* diq, T* dkbar,
                             const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t dI = dims.index_dim, B = dims.block_size, K = dims.topk, r = H / G;
  const int64_t nb = dims.num_blocks();
  const T sc = static_cast<T>(scale);
  const T inv_sqrt_dI = T(1) / std::sqrt(static_cast<T>(dI));

  // Counted rows first: the mean's denominator scales every gradient.
  IndexLossSums sums;
  {
    std::vector<int64_t> J;
    for (int64_t row = 0; row < dims.batch * S * G; ++row) {
      const int64_t t = (row / G) % S;
      const int32_t* idx = dense_target ? nullptr : indices + row * K;
      if (row_blocks(dense_target, idx, dense_target ? 0 : counts[row], t / B, J)) ++sums.n_rows;
    }
  }
  const T grad_scale = sums.n_rows > 0 ? static_cast<T>(weight / sums.n_rows) : T(0);

  std::vector<double> kl_per_task(dims.batch * G, 0.0);
  parallel_for(
      dims.batch * G, r * S * S * d / std::max<int64_t>(1, G), [&](int64_t begin, int64_t end) {
        std::vector<int64_t> J;
        std::vector<T> mass, P, Q;
        for (int64_t bg = begin; bg < end; ++bg) {
          const int64_t b = bg / G, g = bg % G;
          for (int64_t j = 0; j < nb; ++j) {
            T* dkb = dkbar + ((b * nb + j) * G + g) * dI;
            std::fill(dkb, dkb + dI, T(0));
          }
          double kl_sum = 0;
          for (int64_t t = 0; t < S; ++t) {
            const int64_t row = (b * S + t) * G + g;
            T* diq_t = diq + row * dI;
            std::fill(diq_t, diq_t + dI, T(0));
            const int32_t* idx = dense_target ? nullptr : indices + row * K;
            if (!row_blocks(dense_target, idx, dense_target ? 0 : counts[row], t / B, J)) continue;
            const int64_t n = static_cast<int64_t>(J.size());
            P.assign(n, T(0));
            mass.assign(n, T(0));
            int64_t contributing = 0;
            for (int64_t h = g * r; h < (g + 1) * r; ++h) {
              const T* q_t = q + ((b * S + t) * H + h) * d;
              const T lse_t = lse[(b * H + h) * S + t];
              T total = 0;
              for (int64_t i = 0; i < n; ++i) {
                T m = 0;
                for (int64_t s = J[i] * B; s < (J[i] + 1) * B; ++s)
                  m += std::exp(sc * dot(q_t, k + ((b * S + s) * G + g) * d, d) - lse_t);
                mass[i] = m;
                total += m;
              }
              if (!(total > T(0))) continue;
              ++contributing;
              for (int64_t i = 0; i < n; ++i) P[i] += mass[i] / total;
            }
            for (int64_t i = 0; i < n; ++i)
              P[i] =
                  contributing > 0 ? P[i] / static_cast<T>(contributing) : T(1) / static_cast<T>(n);

            const T* iq_t = iq + row * dI;
            Q.resize(n);
            T max = -std::numeric_limits<T>::infinity();
            for (int64_t i = 0; i < n; ++i) {
              Q[i] = dot(iq_t, kbar + ((b * nb + J[i]) * G + g) * dI, dI) * inv_sqrt_dI;
              max = std::max(max, Q[i]);
            }
            T z = 0;
            for (int64_t i = 0; i < n; ++i) z += std::exp(Q[i] - max);
            const T log_z = max + std::log(z);
            T kl = 0;
            for (int64_t i = 0; i < n; ++i) {
              const T log_q = Q[i] - log_z;
              if (P[i] > T(0)) kl += P[i] * (std::log(P[i]) - log_q);
              Q[i] = std::exp(log_q);
            }
            kl_sum += static_cast<double>(kl);
            for (int64_t i = 0; i < n; ++i) {
              const T dscore = grad_scale * (Q[i] - P[i]) * inv_sqrt_dI;
              const T* kb = kbar + ((b * nb + J[i]) * G + g) * dI;
              T* dkb = dkbar + ((b * nb + J[i]) * G + g) * dI;
              for (int64_t e = 0; e < dI; ++e) {
                diq_t[e] += dscore * kb[e];
                dkb[e] += dscore * iq_t[e];
              }
            }
          }
          kl_per_task[bg] = kl_sum;
        }
      });
  for (double kl : kl_per_task) sums.kl_sum += kl;
  return sums;
}

template <class T>
double msa_index_recall_sum(const T* q, const T* k, const int32_t* indices, const int32_t* counts,
                            double scale, int64_t query_stride, int64_t* n_terms,
                            const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t B = dims.block_size, K = dims.topk, r = H / G;
  const T sc = static_cast<T>(scale);
  const int64_t stride = std::max<int64_t>(1, query_stride);
  const int64_t n_t = (S + stride - 1) / stride;
  std::vector<double> per_task(dims.batch * H, 0.0);
  parallel_for(dims.batch * H, n_t * S * d, [&](int64_t begin, int64_t end) {
    std::vector<T> z(S);
    std::vector<char> selected;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / r;
      double acc = 0;
      for (int64_t t = 0; t < S; t += stride) {
        const int64_t row = (b * S + t) * G + g;
        selected.assign(t / B + 1, 0);
        for (int32_t i = 0; i < counts[row]; ++i) selected[indices[row * K + i]] = 1;
        const T* q_t = q + ((b * S + t) * H + h) * d;
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s <= t; ++s) {
          z[s] = sc * dot(q_t, k + ((b * S + s) * G + g) * d, d);
          max = std::max(max, z[s]);
        }
        T total = 0, inside = 0;
        for (int64_t s = 0; s <= t; ++s) {
          const T e = std::exp(z[s] - max);
          total += e;
          if (selected[s / B]) inside += e;
        }
        acc += static_cast<double>(inside / total);
      }
      per_task[bh] = acc;
    }
  });
  double sum = 0;
  for (double x : per_task) sum += x;
  *n_terms = dims.batch * H * n_t;
  return sum;
}

#define MSA_INSTANTIATE(T)                                                                         \
  template IndexLossSums msa_index_loss<T>(bool, const T*, const T*, const T*, const int32_t*,     \
                                           const int32_t*, const T*, const T*, double, double, T*, \
                                           T*, const MsaDims&);                                    \
  template double msa_index_recall_sum<T>(const T*, const T*, const int32_t*, const int32_t*,      \
                                          double, int64_t, int64_t*, const MsaDims&);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
