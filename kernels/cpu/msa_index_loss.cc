// Token-level index distillation loss (DESIGN.md section 4), index recall, block recall and the
// index recall ceiling.
//
// Row (b, t, g) with support U (sparse: the tokens s <= t of the selected blocks; dense target:
// every s <= t):
//   P_s = (1/r) sum_{h in g} exp(scale q_{t,h}.k_s - lse_{t,h})      (teacher, a constant)
//   S_s = iq_{t,g}.ik_s / sqrt(dI),  log Q_s = S_s - logsumexp_U(S)  (student)
//   KL = sum_{s in U, P_s > 0} P_s (log P_s - log Q_s)                (0 log 0 = 0)
//   dS_s = weight (Q_s - P_s) / n_rows,  diq_t += dS_s ik_s / sqrt(dI),  dik_s += dS_s iq_t /
//   sqrt(dI).
// Every row counts (n_rows = batch T G): a row with |U| = 1 (t = 0) has P = Q = 1 and KL = 0.
// Determinism: one task per (b, g) owns diq of its rows and writes its dik contributions into its
// own scratch slice [T, dI]; a second pass sums the G slices of each (b, s) in group order. Both
// passes add in a fixed order, so the result is bit-identical under any thread count.
// With fewer queries than keys (a context-parallel shard), query t sits at position
// query_offset() + t; k, ik and dik span the keys, and n_rows counts this call's rows only.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/msa.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/vector_ops.h"

namespace msa::cpu {
namespace {

// The support U of row (t, selection idx[0..count)) in ascending order; dense: 0..t.
void row_support(bool dense_target, const int32_t* idx, int32_t count, int64_t t, int64_t B,
                 std::vector<int64_t>& U) {
  U.clear();
  if (dense_target) {
    for (int64_t s = 0; s <= t; ++s) U.push_back(s);
    return;
  }
  for (int32_t i = 0; i < count; ++i) {
    const int64_t j = idx[i];
    const int64_t s1 = std::min((j + 1) * B, t + 1);
    for (int64_t s = j * B; s < s1; ++s) U.push_back(s);
  }
}

}  // namespace

template <class T>
IndexLossSums msa_index_loss(bool dense_target, const T* q, const T* k, const T* lse,
                             const int32_t* indices, const int32_t* counts, const T* iq,
                             const T* ik, double scale, double weight, T* diq, T* dik,
                             const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t dI = dims.index_dim, B = dims.block_size, K = dims.topk, r = H / G;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const T sc = static_cast<T>(scale);
  const T inv_sqrt_dI = T(1) / std::sqrt(static_cast<T>(dI));
  const T inv_r = T(1) / static_cast<T>(r);

  IndexLossSums sums;
  sums.n_rows = dims.batch * S * G;
  const T grad_scale = sums.n_rows > 0 ? static_cast<T>(weight / sums.n_rows) : T(0);

  // scratch[(b G + g) Sk + s] = row s of dik from the rows of group g (then summed over g).
  std::vector<T> scratch(static_cast<size_t>(dims.batch * G * Sk * dI), T(0));
  std::vector<double> kl_per_task(dims.batch * G, 0.0);
  const int64_t support = dense_target ? off + S / 2 + 1 : std::min<int64_t>(Sk, K * B);
  parallel_for(dims.batch * G, S * support * (r * d + 2 * dI), [&](int64_t begin, int64_t end) {
    std::vector<int64_t> U;
    std::vector<T> P, Sc;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      T* dik_g = scratch.data() + bg * Sk * dI;
      double kl_sum = 0;
      for (int64_t t = 0; t < S; ++t) {
        const int64_t row = (b * S + t) * G + g;
        T* diq_t = diq + row * dI;
        std::fill(diq_t, diq_t + dI, T(0));
        row_support(dense_target, dense_target ? nullptr : indices + row * K,
                    dense_target ? 0 : counts[row], off + t, B, U);
        const int64_t n = static_cast<int64_t>(U.size());
        // Student: log Q = S - logsumexp(S).
        const T* iq_t = iq + row * dI;
        Sc.resize(n);
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t i = 0; i < n; ++i) {
          Sc[i] = dot(iq_t, ik + (b * Sk + U[i]) * dI, dI) * inv_sqrt_dI;
          max = std::max(max, Sc[i]);
        }
        T z = 0;
        for (int64_t i = 0; i < n; ++i) z += std::exp(Sc[i] - max);
        const T log_z = max + std::log(z);
        // Teacher: the group's heads' probabilities, averaged.
        P.assign(n, T(0));
        for (int64_t h = g * r; h < (g + 1) * r; ++h) {
          const T* q_t = q + ((b * S + t) * H + h) * d;
          const T lse_t = lse[(b * H + h) * S + t];
          for (int64_t i = 0; i < n; ++i)
            P[i] += std::exp(sc * dot(q_t, k + ((b * Sk + U[i]) * G + g) * d, d) - lse_t);
        }
        T kl = 0;
        for (int64_t i = 0; i < n; ++i) {
          P[i] *= inv_r;
          const T log_q = Sc[i] - log_z;
          // 0 log 0 = 0; a NaN teacher (a NaN key or query) makes the loss NaN, as it makes the
          // gradients: a finite loss must not hide it.
          if (!(P[i] <= T(0))) kl += P[i] * (std::log(P[i]) - log_q);
          const T ds = grad_scale * (std::exp(log_q) - P[i]) * inv_sqrt_dI;
          axpy(ds, ik + (b * Sk + U[i]) * dI, diq_t, dI);
          axpy(ds, iq_t, dik_g + U[i] * dI, dI);
        }
        kl_sum += static_cast<double>(kl);
      }
      kl_per_task[bg] = kl_sum;
    }
  });
  // dik[b, s] = sum over g (in order) of the groups' slices.
  parallel_for(dims.batch * Sk, G * dI, [&](int64_t begin, int64_t end) {
    for (int64_t bs = begin; bs < end; ++bs) {
      const int64_t b = bs / Sk, s = bs % Sk;
      T* out = dik + bs * dI;
      std::fill(out, out + dI, T(0));
      for (int64_t g = 0; g < G; ++g) {
        const T* src = scratch.data() + ((b * G + g) * Sk + s) * dI;
        for (int64_t e = 0; e < dI; ++e) out[e] += src[e];
      }
    }
  });
  for (double kl : kl_per_task) sums.kl_sum += kl;
  return sums;
}

template <class T>
OracleRecallSums msa_oracle_recall_sums(const T* q, const T* k, const int32_t* indices,
                                        const int32_t* counts, double scale,
                                        const RecallQueries& queries, const MsaDims& dims) {
  const int64_t S = dims.seq, H = dims.heads, G = dims.groups, d = dims.dim;
  const int64_t B = dims.block_size, K = dims.topk, r = H / G;
  const int64_t Sk = dims.keys(), off = dims.query_offset();
  const T sc = static_cast<T>(scale);
  const int64_t n_queries = queries.begin[dims.batch];
  // One task per (query, group) row: long sequences are measured at few queries of few
  // sequences, where a task per (sequence, group) left most threads idle. Each row's four values
  // land in its own slot and are summed below in the order of one loop over (b, g) then the
  // row's queries, whatever the threads did.
  std::vector<double> index_row(n_queries * G), block_row(n_queries * G),
      ceiling_row(n_queries * G), max_pool_row(n_queries * G);
  std::vector<int64_t> batch_of(n_queries);
  for (int64_t b = 0; b < dims.batch; ++b)
    for (int64_t n = queries.begin[b]; n < queries.begin[b + 1]; ++n) batch_of[n] = b;
  const int64_t mean_keys = std::max<int64_t>(1, Sk / 2);
  parallel_for(n_queries * G, r * mean_keys * d, [&](int64_t begin, int64_t end) {
    std::vector<T> z(Sk);
    std::vector<double> mass, p, peak;
    std::vector<int32_t> order;
    std::vector<char> oracle, selected;
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t n = ng / G, g = ng % G, b = batch_of[n];
      const int64_t i = queries.t[n];                        // the query's row
      const int64_t row = (b * S + i) * G + g, t = off + i;  // t: its position
      const int64_t c = t / B;
      // mass[j] = the group's mean dense attention probability inside block j <= c.
      mass.assign(c + 1, 0.0);
      p.assign(t + 1, 0.0);  // p[s]: the group's mean attention probability of token s
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        const T* q_t = q + ((b * S + i) * H + h) * d;
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t s = 0; s <= t; ++s) {
          z[s] = sc * dot(q_t, k + ((b * Sk + s) * G + g) * d, d);
          max = std::max(max, z[s]);
        }
        T total = 0;
        for (int64_t s = 0; s <= t; ++s) {
          z[s] = std::exp(z[s] - max);
          total += z[s];
        }
        for (int64_t s = 0; s <= t; ++s) {
          const double ps = static_cast<double>(z[s] / total) / r;
          mass[s / B] += ps;
          p[s] += ps;
        }
      }
      // Oracle: c plus the top-(K - 1) earlier blocks by mass, ties to the lower index.
      const int64_t want = std::min<int64_t>(K - 1, c);
      // order[0 .. want): the top-want earlier blocks by score, ties to the lower index.
      auto rank_earlier_blocks = [&](const std::vector<double>& score) {
        order.resize(c);
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + want, order.end(),
                          [&](int32_t a, int32_t bb) {
                            return score[a] > score[bb] || (score[a] == score[bb] && a < bb);
                          });
      };
      rank_earlier_blocks(mass);
      oracle.assign(c + 1, 0);
      oracle[c] = 1;
      for (int64_t e = 0; e < want; ++e) oracle[order[e]] = 1;
      selected.assign(c + 1, 0);
      int64_t hits = 0;
      for (int32_t e = 0; e < counts[row]; ++e) {
        const int32_t j = indices[row * K + e];
        if (j < 0 || j > c) continue;
        selected[j] = 1;
        if (oracle[j]) ++hits;
      }
      block_row[ng] = static_cast<double>(hits) / static_cast<double>(want + 1);
      // Index recall: the mass the selected blocks keep (the mean over the group's heads of
      // each head's mass inside them).
      double inside = 0;
      for (int64_t j = 0; j <= c; ++j)
        if (selected[j]) inside += mass[j];
      index_row[ng] = inside;
      // The ceiling: the mass the oracle blocks keep, the most any k blocks shared by the
      // group can keep (NaN attention stays NaN here, where the hit count would hide it).
      double kept = 0;
      for (int64_t j = 0; j <= c; ++j)
        if (oracle[j]) kept += mass[j];
      ceiling_row[ng] = kept;
      // The max-pool ceiling: the paper's rule (c plus the top-(K - 1) earlier blocks by their
      // largest token score, ties to the lower index) fed the scores the KL's optimum student
      // has, log p (+ a constant per row), i.e. ranking blocks by their largest p. The gap to
      // the ceiling is the rule's; the gap from the index recall down to it is the indexer's.
      peak.assign(c, -std::numeric_limits<double>::infinity());
      for (int64_t s = 0; s < c * B; ++s) peak[s / B] = std::max(peak[s / B], p[s]);
      rank_earlier_blocks(peak);
      double pooled = mass[c];
      for (int64_t e = 0; e < want; ++e) pooled += mass[order[e]];
      max_pool_row[ng] = pooled;
    }
  });
  OracleRecallSums sums;
  for (int64_t b = 0; b < dims.batch; ++b)
    for (int64_t g = 0; g < G; ++g) {
      double index_acc = 0, block_acc = 0, ceiling_acc = 0, max_pool_acc = 0;
      for (int64_t n = queries.begin[b]; n < queries.begin[b + 1]; ++n) {
        index_acc += index_row[n * G + g];
        block_acc += block_row[n * G + g];
        ceiling_acc += ceiling_row[n * G + g];
        max_pool_acc += max_pool_row[n * G + g];
      }
      sums.index_recall += index_acc;
      sums.block_recall += block_acc;
      sums.index_recall_ceiling += ceiling_acc;
      sums.max_pool_recall_ceiling += max_pool_acc;
    }
  sums.n_rows = n_queries * G;
  return sums;
}

#define MSA_INSTANTIATE(T)                                                                         \
  template IndexLossSums msa_index_loss<T>(bool, const T*, const T*, const T*, const int32_t*,     \
                                           const int32_t*, const T*, const T*, double, double, T*, \
                                           T*, const MsaDims&);                                    \
  template OracleRecallSums msa_oracle_recall_sums<T>(const T*, const T*, const int32_t*,          \
                                                      const int32_t*, double,                      \
                                                      const RecallQueries&, const MsaDims&);
MSA_INSTANTIATE(float)
MSA_INSTANTIATE(double)
#undef MSA_INSTANTIATE

}  // namespace msa::cpu
