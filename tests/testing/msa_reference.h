// An independent plain-loop reference of MSA (DESIGN.md section 4) for tests, header-only, in
// double precision. It calls none of the code under test: every quantity is written out from the
// spec with explicit loops over explicit token sets, for clarity rather than speed (keep T in the
// hundreds). Device-agnostic: it takes values (std::vector<double>, e.g. from values(tensor) of a
// tensor on any device and of any dtype) and returns values; a GPU test rounds its inputs to the
// device dtype, reads them back with values() and compares the device results with these.
//
// Layouts are the kernels' (kernels/README.md): q [batch, T, H, d], k and v [batch, T, G, d],
// lse [batch, H, T], iq [batch, T, G, dI], ik [batch, T, dI]. A "row" is (b, t, g) with index
// (b T + t) G + g, as in BlockSelection.
//
//   S_{t,g,s} = iq_{t,g} . ik_s / sqrt(dI)                         token score (s <= t)
//   M_{t,g,j} = max over s in block j, s <= t, of S_{t,g,s}        block score (NaN never wins)
//   selection = c(t) + top-(topk-1) blocks j < c(t) by M, ties to the lower index
//   U_{t,g}    = tokens s <= t of the selected blocks (sparse) or all s <= t (dense)
//   attention: out/lse of head h over U_{t,g(h)}, scale `scale`
//   P_s = (1/r) sum_{h in g} exp(scale q_{t,h}.k_s - lse_{t,h}),  Q = softmax_U(S)
//   KL_{t,g} = sum_{s in U, P_s > 0} P_s (log P_s - log Q_s),  loss = mean over all rows
//   dS_s = weight (Q_s - P_s) / n_rows; diq_{t,g} += dS_s ik_s / sqrt(dI);
//   dik_s += dS_s iq_{t,g} / sqrt(dI).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "kernels/msa.h"

namespace msa::test::ref {

struct Sizes {
  int64_t batch = 1, T = 1, H = 1, G = 1, d = 1, dI = 1;
  int64_t block_size = 1, topk = 1;

  int64_t r() const { return H / G; }
  int64_t num_blocks() const { return (T + block_size - 1) / block_size; }
  int64_t rows() const { return batch * T * G; }
  int64_t row(int64_t b, int64_t t, int64_t g) const { return (b * T + t) * G + g; }
};

// Per row: selected block indices, ascending.
using Selection = std::vector<std::vector<int64_t>>;
// Per row: the token set U, ascending.
using TokenSets = std::vector<std::vector<int64_t>>;

// The values of a tensor on any device, of any dtype, as doubles.
inline std::vector<double> values(const Tensor& t) { return t.to_double_vector(); }

// The selection held in a BlockSelection (any device): the first counts[row] indices of each row.
inline Selection selection_of(const BlockSelection& sel) {
  const std::vector<double> idx = sel.indices.to_double_vector();
  const std::vector<double> cnt = sel.counts.to_double_vector();
  Selection out(cnt.size());
  for (size_t row = 0; row < cnt.size(); ++row)
    for (int64_t i = 0; i < static_cast<int64_t>(cnt[row]); ++i)
      out[row].push_back(static_cast<int64_t>(idx[row * sel.topk + i]));
  return out;
}

// A CPU BlockSelection holding `selection` (each row sorted ascending, -1 padded).
inline BlockSelection to_block_selection(const Selection& selection, const Sizes& z) {
  BlockSelection sel = BlockSelection::allocate(z.batch, z.T, z.G, static_cast<int>(z.block_size),
                                                static_cast<int>(z.topk), Device::kCPU);
  int32_t* idx = sel.indices.data<int32_t>();
  int32_t* cnt = sel.counts.data<int32_t>();
  for (int64_t row = 0; row < z.rows(); ++row) {
    std::vector<int64_t> blocks = selection[row];
    std::sort(blocks.begin(), blocks.end());
    cnt[row] = static_cast<int32_t>(blocks.size());
    for (int64_t i = 0; i < z.topk; ++i)
      idx[row * z.topk + i] =
          i < static_cast<int64_t>(blocks.size()) ? static_cast<int32_t>(blocks[i]) : -1;
  }
  return sel;
}

// S_{t,g,s}.
inline double token_score(const std::vector<double>& iq, const std::vector<double>& ik,
                          const Sizes& z, int64_t b, int64_t t, int64_t g, int64_t s) {
  double dot = 0;
  for (int64_t e = 0; e < z.dI; ++e)
    dot += iq[((b * z.T + t) * z.G + g) * z.dI + e] * ik[(b * z.T + s) * z.dI + e];
  return dot / std::sqrt(static_cast<double>(z.dI));
}

// M_{t,g,j} for j = 0..c(t) (the local block's max runs over s <= t only).
inline std::vector<double> block_scores(const std::vector<double>& iq,
                                        const std::vector<double>& ik, const Sizes& z, int64_t b,
                                        int64_t t, int64_t g) {
  const int64_t c = t / z.block_size;
  std::vector<double> M(c + 1, -std::numeric_limits<double>::infinity());
  for (int64_t s = 0; s <= t; ++s) {
    const double x = token_score(iq, ik, z, b, t, g, s);
    if (x > M[s / z.block_size]) M[s / z.block_size] = x;
  }
  return M;
}

// {c} plus the top-(topk - 1) of the scores[0..c) (ties to the lower index), ascending.
inline std::vector<int64_t> top_blocks(const std::vector<double>& scores, int64_t c, int64_t topk) {
  std::vector<std::pair<double, int64_t>> ranked;  // (-score, j): ascending = best first
  for (int64_t j = 0; j < c; ++j) ranked.push_back({-scores[j], j});
  std::sort(ranked.begin(), ranked.end());
  std::vector<int64_t> out;
  for (int64_t i = 0; i < std::min<int64_t>(topk - 1, c); ++i) out.push_back(ranked[i].second);
  out.push_back(c);
  std::sort(out.begin(), out.end());
  return out;
}

// The reference selection from max-pooled token scores.
inline Selection select_blocks(const std::vector<double>& iq, const std::vector<double>& ik,
                               const Sizes& z) {
  Selection out(z.rows());
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g)
        out[z.row(b, t, g)] =
            top_blocks(block_scores(iq, ik, z, b, t, g), t / z.block_size, z.topk);
  return out;
}

// How far `selection` is from a valid top-k of the exact scores, for kernels whose scores round
// (bf16 / f32): max over rows of (best score of an unselected eligible block) - (worst score of a
// selected non-local block), floored at 0. 0 = a valid top-k up to ties. +infinity when a row is
// malformed (wrong count, not ascending, duplicates, local block c(t) missing or not last, a block
// out of range).
inline double selection_violation(const Selection& selection, const std::vector<double>& iq,
                                  const std::vector<double>& ik, const Sizes& z) {
  const double kInf = std::numeric_limits<double>::infinity();
  double worst = 0;
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g) {
        const std::vector<int64_t>& sel = selection[z.row(b, t, g)];
        const int64_t c = t / z.block_size;
        if (static_cast<int64_t>(sel.size()) != std::min(z.topk, c + 1)) return kInf;
        if (sel.back() != c) return kInf;
        for (size_t i = 0; i + 1 < sel.size(); ++i)
          if (sel[i] < 0 || sel[i] >= sel[i + 1]) return kInf;
        const std::vector<double> M = block_scores(iq, ik, z, b, t, g);
        std::vector<char> chosen(c + 1, 0);
        for (int64_t j : sel) chosen[j] = 1;
        double min_in = kInf, max_out = -kInf;
        for (int64_t j = 0; j < c; ++j) {
          if (chosen[j]) {
            min_in = std::min(min_in, M[j]);
          } else {
            max_out = std::max(max_out, M[j]);
          }
        }
        if (min_in < kInf && max_out > -kInf) worst = std::max(worst, max_out - min_in);
      }
  return worst;
}

// U_{t,g}: the tokens s <= t of each row's selected blocks.
inline TokenSets sparse_token_sets(const Selection& selection, const Sizes& z) {
  TokenSets U(z.rows());
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g) {
        const int64_t row = z.row(b, t, g);
        for (int64_t j : selection[row])
          for (int64_t s = j * z.block_size; s < (j + 1) * z.block_size && s <= t; ++s)
            U[row].push_back(s);
        std::sort(U[row].begin(), U[row].end());
      }
  return U;
}

// U_{t,g} = {0, ..., t} (dense causal attention, warm-up mode).
inline TokenSets dense_token_sets(const Sizes& z) {
  TokenSets U(z.rows());
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g)
        for (int64_t s = 0; s <= t; ++s) U[z.row(b, t, g)].push_back(s);
  return U;
}

inline double qk(const std::vector<double>& q, const std::vector<double>& k, const Sizes& z,
                 int64_t b, int64_t t, int64_t h, int64_t s) {
  const int64_t g = h / z.r();
  double dot = 0;
  for (int64_t e = 0; e < z.d; ++e)
    dot += q[((b * z.T + t) * z.H + h) * z.d + e] * k[((b * z.T + s) * z.G + g) * z.d + e];
  return dot;
}

struct Attention {
  std::vector<double> out;  // [batch, T, H, d]
  std::vector<double> lse;  // [batch, H, T]
};

// Softmax attention of every head h over U_{t, h / r}.
inline Attention attention(const std::vector<double>& q, const std::vector<double>& k,
                           const std::vector<double>& v, const TokenSets& U, const Sizes& z,
                           double scale) {
  Attention a;
  a.out.assign(z.batch * z.T * z.H * z.d, 0.0);
  a.lse.assign(z.batch * z.H * z.T, 0.0);
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t h = 0; h < z.H; ++h) {
        const int64_t g = h / z.r();
        const std::vector<int64_t>& u = U[z.row(b, t, g)];
        std::vector<double> logit;
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t s : u) {
          logit.push_back(scale * qk(q, k, z, b, t, h, s));
          max = std::max(max, logit.back());
        }
        double sum = 0;
        for (double x : logit) sum += std::exp(x - max);
        a.lse[(b * z.H + h) * z.T + t] = max + std::log(sum);
        double* out = &a.out[((b * z.T + t) * z.H + h) * z.d];
        for (size_t i = 0; i < u.size(); ++i) {
          const double p = std::exp(logit[i] - max) / sum;
          for (int64_t e = 0; e < z.d; ++e) out[e] += p * v[((b * z.T + u[i]) * z.G + g) * z.d + e];
        }
      }
  return a;
}

struct RowDistributions {
  std::vector<double> P, Q;  // over the row's U, in U's order
};

// Teacher P and student Q of row (b, t, g) over u = U_{t,g}.
inline RowDistributions teacher_student(const std::vector<double>& q, const std::vector<double>& k,
                                        const std::vector<double>& lse,
                                        const std::vector<double>& iq,
                                        const std::vector<double>& ik,
                                        const std::vector<int64_t>& u, const Sizes& z, double scale,
                                        int64_t b, int64_t t, int64_t g) {
  RowDistributions r;
  for (int64_t s : u) {
    double p = 0;
    for (int64_t h = g * z.r(); h < (g + 1) * z.r(); ++h)
      p += std::exp(scale * qk(q, k, z, b, t, h, s) - lse[(b * z.H + h) * z.T + t]);
    r.P.push_back(p / static_cast<double>(z.r()));
  }
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t s : u) max = std::max(max, token_score(iq, ik, z, b, t, g, s));
  double sum = 0;
  for (int64_t s : u) sum += std::exp(token_score(iq, ik, z, b, t, g, s) - max);
  for (int64_t s : u) r.Q.push_back(std::exp(token_score(iq, ik, z, b, t, g, s) - max) / sum);
  return r;
}

struct IndexLoss {
  double loss = 0;             // mean of row_kl
  std::vector<double> row_kl;  // [batch, T, G]
  std::vector<double> diq;     // [batch, T, G, dI], gradient of weight * loss
  std::vector<double> dik;     // [batch, T, dI]
};

// The token-level distillation loss over the token sets U (sparse or dense) and its gradients.
inline IndexLoss index_loss(const std::vector<double>& q, const std::vector<double>& k,
                            const std::vector<double>& lse, const std::vector<double>& iq,
                            const std::vector<double>& ik, const TokenSets& U, const Sizes& z,
                            double scale, double weight) {
  IndexLoss L;
  L.row_kl.assign(z.rows(), 0.0);
  L.diq.assign(z.rows() * z.dI, 0.0);
  L.dik.assign(z.batch * z.T * z.dI, 0.0);
  const double n_rows = static_cast<double>(z.rows());
  const double inv_sqrt_dI = 1.0 / std::sqrt(static_cast<double>(z.dI));
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g) {
        const int64_t row = z.row(b, t, g);
        const std::vector<int64_t>& u = U[row];
        const RowDistributions pq = teacher_student(q, k, lse, iq, ik, u, z, scale, b, t, g);
        double kl = 0;
        for (size_t i = 0; i < u.size(); ++i)
          if (!(pq.P[i] <= 0)) kl += pq.P[i] * (std::log(pq.P[i]) - std::log(pq.Q[i]));  // NaN: NaN
        L.row_kl[row] = kl;
        L.loss += kl / n_rows;
        for (size_t i = 0; i < u.size(); ++i) {
          const double dS = weight * (pq.Q[i] - pq.P[i]) / n_rows;
          for (int64_t e = 0; e < z.dI; ++e) {
            L.diq[row * z.dI + e] += dS * ik[(b * z.T + u[i]) * z.dI + e] * inv_sqrt_dI;
            L.dik[(b * z.T + u[i]) * z.dI + e] += dS * iq[row * z.dI + e] * inv_sqrt_dI;
          }
        }
      }
  return L;
}

// The "oracle" selection of the block recall: per row, c(t) plus the top-(topk - 1) earlier
// blocks by the dense causal attention mass averaged over the group's heads (ties to the lower
// index).
inline Selection attention_oracle(const std::vector<double>& q, const std::vector<double>& k,
                                  const Sizes& z, double scale) {
  const TokenSets U = dense_token_sets(z);
  // Dense lse from the reference attention (v is not needed: pass k as a dummy of the right size).
  const Attention dense = attention(q, k, k, U, z, scale);
  Selection out(z.rows());
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t)
      for (int64_t g = 0; g < z.G; ++g) {
        const int64_t c = t / z.block_size;
        std::vector<double> mass(c + 1, 0.0);
        for (int64_t h = g * z.r(); h < (g + 1) * z.r(); ++h)
          for (int64_t s = 0; s <= t; ++s)
            mass[s / z.block_size] +=
                std::exp(scale * qk(q, k, z, b, t, h, s) - dense.lse[(b * z.H + h) * z.T + t]) /
                static_cast<double>(z.r());
        out[z.row(b, t, g)] = top_blocks(mass, c, z.topk);
      }
  return out;
}

// The query positions of a recall: (batch row, t) pairs.
using Queries = std::vector<std::pair<int64_t, int64_t>>;

// The sampling of the strided recalls (kernels/msa.h), for every batch row b: position t is
// sampled when it is its window's (w = t / stride) phase, floor(stride * frac(w * 0.618...)),
// into it.
inline Queries strided_queries(const Sizes& z, int64_t stride) {
  Queries out;
  for (int64_t b = 0; b < z.batch; ++b)
    for (int64_t t = 0; t < z.T; ++t) {
      const int64_t w = t / stride;
      const double x = static_cast<double>(w) * 0.6180339887498949;
      if (stride == 1 || t - w * stride == static_cast<int64_t>((x - std::floor(x)) * stride))
        out.emplace_back(b, t);
    }
  return out;
}

// Block recall (kernels/msa.h): mean over rows (b, t, g) of the queries (every g) of
// |selected ∩ oracle| / |oracle|.
inline double block_recall(const Selection& selection, const std::vector<double>& q,
                           const std::vector<double>& k, const Sizes& z, double scale,
                           const Queries& queries) {
  const Selection oracle = attention_oracle(q, k, z, scale);
  double sum = 0;
  int64_t n = 0;
  for (const auto& [b, t] : queries)
    for (int64_t g = 0; g < z.G; ++g) {
      const int64_t row = z.row(b, t, g);
      int64_t hits = 0;
      for (int64_t j : selection[row])
        hits += std::count(oracle[row].begin(), oracle[row].end(), j);
      sum += static_cast<double>(hits) / static_cast<double>(oracle[row].size());
      ++n;
    }
  return n > 0 ? sum / static_cast<double>(n) : 1.0;
}

// The same over the strided sample (strided_queries) of every batch row.
inline double block_recall(const Selection& selection, const std::vector<double>& q,
                           const std::vector<double>& k, const Sizes& z, double scale,
                           int64_t stride) {
  return block_recall(selection, q, k, z, scale, strided_queries(z, stride));
}

// Index recall (kernels/msa.h): mean over the queries (b, t) and every head h of the dense causal
// attention probability, softmax over s <= t of scale q_{t,h}.k_s, that falls on tokens of the
// blocks selected for row (b, t, g(h)).
inline double index_recall(const Selection& selection, const std::vector<double>& q,
                           const std::vector<double>& k, const Sizes& z, double scale,
                           const Queries& queries) {
  double sum = 0;
  int64_t n = 0;
  for (const auto& [b, t] : queries)
    for (int64_t h = 0; h < z.H; ++h) {
      const int64_t g = h / z.r();
      const std::vector<int64_t>& blocks = selection[z.row(b, t, g)];
      std::vector<double> score(t + 1);
      double max = -std::numeric_limits<double>::infinity();
      for (int64_t s = 0; s <= t; ++s) {
        score[s] = scale * qk(q, k, z, b, t, h, s);
        max = std::max(max, score[s]);
      }
      double total = 0, inside = 0;
      for (int64_t s = 0; s <= t; ++s) {
        const double p = std::exp(score[s] - max);
        total += p;
        if (std::count(blocks.begin(), blocks.end(), s / z.block_size) > 0) inside += p;
      }
      sum += inside / total;
      ++n;
    }
  return n > 0 ? sum / static_cast<double>(n) : 1.0;
}

}  // namespace msa::test::ref
