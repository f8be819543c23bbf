// Shared by the multi-rank gradient tests (tests/mpi/mpi_gradients_test.cc,
// tests/mpi/mpi_context_parallel_test.cc): the tiny layer stacks they compare, their MSA phases,
// and per-tensor differences maximized over the ranks.
#pragma once

#include <mpi.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_config.h"
#include "model/parameters.h"
#include "tests/testing/parallel_training.h"

namespace msa::test {

inline int world_size() {
  int n;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
inline int world_rank() {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

enum class Stack { kDense, kMsa, kHybrid, kHybridQwenStyle };

inline const char* stack_name(Stack s) {
  switch (s) {
    case Stack::kDense:
      return "dense";
    case Stack::kMsa:
      return "msa";
    case Stack::kHybrid:
      return "hybrid dense,msa";
    case Stack::kHybridQwenStyle:
      return "hybrid msa,dense with qkv bias, q/k norms, tied embeddings, index RoPE";
  }
  return "?";
}

// 4 KV groups so that tp = 4 fits (np 4); GQA with 2 query heads per group.
inline ModelConfig tiny(Stack s) {
  ModelConfig c;
  c.vocab_size = 96;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 4;
  c.ffn_dim = 64;
  const AttentionKind dense = AttentionKind::kDense, msa = AttentionKind::kMsa;
  switch (s) {
    case Stack::kDense:
      c.attention = {dense, dense};
      break;
    case Stack::kMsa:
      c.attention = {msa, msa};
      break;
    case Stack::kHybrid:
      c.attention = {dense, msa};
      break;
    case Stack::kHybridQwenStyle:
      // Replicated q/k norms whose gradients every tp rank computes in part, split biases, and a
      // head tied to the vocab-parallel embedding (two contributions to one gradient).
      c.attention = {msa, dense};
      c.qkv_bias = true;
      c.qk_norm = true;
      c.tied_embeddings = true;
      break;
  }
  c.msa.block_size = 8;
  c.msa.topk = 3;
  c.msa.index_dim = 8;
  // The option of RoPE on part of the index dims: cp shards rotate at their tokens' positions.
  if (s == Stack::kHybridQwenStyle) c.msa.index_rotary_dim = 4;
  return c;
}

inline constexpr Stack kStacks[] = {Stack::kDense, Stack::kMsa, Stack::kHybrid,
                                    Stack::kHybridQwenStyle};

// Whether parameter `s` trains in `phase` (the trainer's warm-up filter).
inline bool trains_in(const ParamSpec& s, Phase phase) {
  return phase != Phase::kFrozenBackboneWarmup || s.index_branch;
}

inline std::vector<Phase> phases_of(const ModelConfig& c) {
  if (!c.any_msa()) return {Phase::kSparse};  // the phases differ only in MSA layers
  return {Phase::kSparse, Phase::kDenseAttention, Phase::kFrozenBackboneWarmup};
}

// Each tensor's ||a - b|| / ||b||, the largest over all ranks (ranks other than 0 print nothing,
// and replicated tensors are each rank's own copy). +infinity for a NaN or an infinity.
inline std::map<std::string, double> rel_diffs_over_ranks(const std::map<std::string, Tensor>& a,
                                                          const std::map<std::string, Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  std::vector<double> rel;
  for (const auto& [name, t] : b) {
    const auto it = a.find(name);
    rel.push_back(it == a.end() ? std::numeric_limits<double>::infinity()
                                : max_rel_diff({{name, it->second}}, {{name, t}}));
  }
  MPI_Allreduce(MPI_IN_PLACE, rel.data(), static_cast<int>(rel.size()), MPI_DOUBLE, MPI_MAX,
                MPI_COMM_WORLD);
  std::map<std::string, double> out;
  size_t i = 0;
  for (const auto& [name, t] : b) out[name] = rel[i++];
  return out;
}

inline double max_over_ranks(double x) {
  if (!std::isfinite(x)) x = std::numeric_limits<double>::infinity();
  MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return x;
}

// The largest difference seen over a test's cases, and where (printed at its end).
struct Worst {
  double rel = 0;
  std::string where;
  void see(double r, const std::string& at) {
    if (r > rel || !std::isfinite(r)) {
      rel = r;
      where = at;
    }
  }
};

// `many` (a parallel layout's step) against `one` (one rank's on the same global batch) for
// config `c` in `phase`: every tensor that trains has a nonzero, finite reference gradient (the
// check is not vacuous); every parameter's full gradient within `tol` relative L2 on every rank;
// the losses the gradients are of (the LM loss a mean over the global batch's targets, each MSA
// layer's index loss a mean over its rows) within `tol`. `where` names the case in failures.
inline void expect_same_step(const StepGradients& many, const StepGradients& one,
                             const ModelConfig& c, Phase phase, double tol,
                             const std::string& where, Worst& worst) {
  std::map<std::string, ParamSpec> specs;
  for (const ParamSpec& s : model_param_specs(c)) specs[s.name] = s;
  ASSERT_EQ(many.grads.size(), specs.size()) << where;
  for (const auto& [name, g] : one.grads) {
    const double norm = l2_norm({{name, g}});
    if (trains_in(specs.at(name), phase)) {
      EXPECT_TRUE(std::isfinite(norm) && norm > 0) << name << " " << norm << "; " << where;
    }
  }
  for (const auto& [name, rel] : rel_diffs_over_ranks(many.grads, one.grads)) {
    EXPECT_LT(rel, tol) << name << "; " << where;
    worst.see(rel, name + "; " + where);
  }
  EXPECT_LT(max_over_ranks(rel_diff(many.metrics.lm_loss, one.metrics.lm_loss)), tol)
      << many.metrics.lm_loss << " vs " << one.metrics.lm_loss << "; " << where;
  if (c.any_msa()) {
    EXPECT_GT(one.metrics.index_loss, 0) << where;
    EXPECT_LT(max_over_ranks(rel_diff(many.metrics.index_loss, one.metrics.index_loss)), tol)
        << many.metrics.index_loss << " vs " << one.metrics.index_loss << "; " << where;
  }
}

}  // namespace msa::test
