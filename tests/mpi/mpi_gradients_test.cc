// The gradients and the global gradient norm of one training step on every layout the world allows
// (run under mpirun -np 2 and -np 4: dp = world; dp = world/2 x tp = 2; tp = 4 at np 4) equal one
// rank's on the same global batch, for dense, MSA and hybrid layer stacks, in every MSA phase, with
// and without gradient accumulation. Comparing parameters after one AdamW step would not do: its
// first update is ~lr * sign(g), so a gradient off by a constant factor (a sum where a mean was
// due, a replicated gradient summed twice over tp) moves every parameter exactly as the right one.
//
// Tolerance: 1e-5 relative L2 per tensor, in f32 (the model has no f64 path). A layout changes
// only the order of the additions (the data-parallel all-reduce of per-rank partial sums instead of
// one sum over the global batch; the tp all-reduces of partial input and replicated-parameter
// gradients), so each element differs by a few units of f32 rounding (u = 6e-8) of the terms it
// sums; over a tensor, whose norm its larger elements dominate, that stays near 1e-7 to 1e-6
// (measured: at most 1.4e-6, a q/k norm at np 4; the tests print their worst cases). Every bug this
// test is for is an O(1) relative error: a factor dp or tp, or a missing partial sum.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/communicator.h"
#include "gtest/gtest.h"
#include "model/parameters.h"
#include "tests/testing/mpi_stacks.h"
#include "tests/testing/parallel_training.h"

namespace msa {
namespace {

using test::kStacks;
using test::max_over_ranks;
using test::phases_of;
using test::rel_diffs_over_ranks;
using test::Stack;
using test::stack_name;
using test::tiny;
using test::trains_in;
using test::world_rank;
using test::world_size;

constexpr double kTol = 1e-5;
// The norm is dominated by the largest gradients, whose rounding is relatively the smallest
// (measured: at most 6.5e-8); it must resolve a replicated tensor counted twice or not summed over
// dp, whose share of the squares is only 1.6e-4 in the dense stack (moving the norm by 8e-5).
constexpr double kNormTol = 1e-6;

// The tensor-parallel sizes this world allows for tiny(): tp divides the world and n_kv_heads.
std::vector<int> tp_sizes() {
  std::vector<int> out;
  for (int tp : {1, 2, 4})
    if (world_size() % tp == 0 && tiny(Stack::kDense).n_kv_heads % tp == 0) out.push_back(tp);
  return out;
}

ProcessGroups groups_or_die(int tp) {
  auto g = make_process_groups(tp, 1, false);
  EXPECT_TRUE(g.ok()) << g.status();
  return std::move(*g);
}

// The parameters that train in `phase` (the trainer's warm-up filter) and their specs by name.
std::map<std::string, ParamSpec> specs_by_name(const ModelConfig& c) {
  std::map<std::string, ParamSpec> out;
  for (const ParamSpec& s : model_param_specs(c)) out[s.name] = s;
  return out;
}

// One case of the matrix: a layout, a stack, a phase and a number of micro-batches.
struct Case {
  const ProcessGroups* groups;
  Stack stack;
  test::Phase phase;
  int grad_accum;
  std::string describe() const {
    return absl::StrFormat("%s; %s; phase %s; grad_accum %d", groups->describe(), stack_name(stack),
                           test::phase_name(phase), grad_accum);
  }
};

// Runs `check` on every case; 2 sequences per data-parallel rank, the reference rank alone with
// the whole global batch (2 * dp sequences).
template <typename Check>
void for_every_case(bool tensor_parallel_only, Check check) {
  for (int tp : tp_sizes()) {
    if (tensor_parallel_only && tp == 1) continue;
    const ProcessGroups groups = groups_or_die(tp);
    for (Stack stack : kStacks)
      for (test::Phase phase : phases_of(tiny(stack)))
        for (int grad_accum : {1, 2}) check(Case{&groups, stack, phase, grad_accum});
  }
}

test::StepGradients single_rank(const Case& k) {
  return test::step_gradients(tiny(k.stack), nullptr, 2 * k.groups->dp_size, k.phase, k.grad_accum);
}
test::StepGradients parallel(const Case& k, bool zero1 = false) {
  return test::step_gradients(tiny(k.stack), k.groups, 2, k.phase, k.grad_accum, Device::kCPU,
                              zero1);
}

TEST(MpiGradientsTest, EveryParametersFullGradientMatchesOneRank) {
  test::Worst worst;
  for_every_case(false, [&](const Case& k) {
    test::expect_same_step(parallel(k), single_rank(k), tiny(k.stack), k.phase, kTol, k.describe(),
                           worst);
  });
  if (world_rank() == 0)
    std::printf("worst gradient relative L2 difference %.3g (%s)\n", worst.rel,
                worst.where.c_str());
}

// Packed documents (--pack_documents) on every layout: each document of a row attends, selects
// blocks and runs the index loss on its own on every tp rank's heads, and the index loss keeps its
// mean over all rows. Documents of 5 (shorter than a block of 8), 8, 27 (4 blocks, top-3: sparse)
// and 8 tokens in each 48-token row.
TEST(MpiGradientsTest, PackedDocumentsGradientsMatchOneRank) {
  const std::vector<int64_t> starts = {0, 5, 13, 40};
  for (int tp : tp_sizes()) {
    const ProcessGroups groups = groups_or_die(tp);
    for (Stack stack : {Stack::kMsa, Stack::kHybridQwenStyle})
      for (test::Phase phase : {test::Phase::kSparse, test::Phase::kDenseAttention}) {
        const Case k{&groups, stack, phase, 1};
        const ModelConfig c = tiny(stack);
        const test::StepGradients one = test::step_gradients(c, nullptr, 2 * groups.dp_size, phase,
                                                             1, Device::kCPU, false, starts);
        const test::StepGradients many =
            test::step_gradients(c, &groups, 2, phase, 1, Device::kCPU, false, starts);
        for (const auto& [name, rel] : rel_diffs_over_ranks(many.grads, one.grads))
          EXPECT_LT(rel, kTol) << name << "; " << k.describe() << "; documents packed";
        EXPECT_LT(max_over_ranks(test::rel_diff(many.metrics.index_loss, one.metrics.index_loss)),
                  kTol)
            << k.describe() << "; documents packed";
        // Not vacuous: the documents change the gradients.
        const test::StepGradients unpacked = single_rank(k);
        double moved = 0;
        for (const auto& [name, rel] : rel_diffs_over_ranks(unpacked.grads, one.grads))
          moved = std::max(moved, rel);
        EXPECT_GT(moved, 1e-2) << k.describe();
      }
  }
}

// Norm weights, the q/k norms and the shared index key W_IK are whole on every tp rank; each
// rank's backward computes a part of their gradient (its heads', its FFN columns', its KV
// groups'), which must be summed over tp exactly once. Checked on each tp rank's own copy.
TEST(MpiGradientsTest, ReplicatedGradientsAreSummedOnceOverTensorParallelRanks) {
  for_every_case(true, [&](const Case& k) {
    const ModelConfig c = tiny(k.stack);
    const auto specs = specs_by_name(c);
    const test::StepGradients one = single_rank(k);
    const test::StepGradients many = parallel(k);
    std::map<std::string, Tensor> a, b;
    for (const auto& [name, spec] : specs) {
      if (spec.tp_split != TpSplit::kReplicated || !trains_in(spec, k.phase)) continue;
      a[name] = many.grads.at(name);
      b[name] = one.grads.at(name);
    }
    int index_keys = 0;
    for (const auto& [name, rel] : rel_diffs_over_ranks(a, b)) {
      EXPECT_GT(test::l2_norm({{name, b.at(name)}}), 0.0) << name << "; " << k.describe();
      EXPECT_LT(rel, kTol) << name << " (replicated); " << k.describe();
      index_keys += name.find("index_wk") != std::string::npos;
    }
    // Every MSA layer's W_IK was among them; the norms too outside the frozen-backbone phase.
    int msa_layers = 0;
    for (int l = 0; l < c.n_layers; ++l) msa_layers += c.layer_kind(l) == AttentionKind::kMsa;
    EXPECT_EQ(index_keys, msa_layers) << k.describe();
    if (k.phase != test::Phase::kFrozenBackboneWarmup) {
      EXPECT_GE(a.size(), static_cast<size_t>(2 * c.n_layers + 1)) << k.describe();
    }
  });
}

// The norm the trainer clips with (StepMetrics::grad_norm): the L2 norm over every trained
// parameter's full gradient, each replicated one counted once, with and without ZeRO-1 (whose
// norm sums squares over the gradient shards instead).
TEST(MpiGradientsTest, GlobalGradientNormMatchesOneRankWithAndWithoutZero1) {
  double worst_seen = 0, min_share = 1;
  std::string worst_where;
  for_every_case(false, [&](const Case& k) {
    const auto specs = specs_by_name(tiny(k.stack));
    const test::StepGradients one = single_rank(k);
    auto trained = [&](const std::string& n) { return trains_in(specs.at(n), k.phase); };
    auto replicated = [&](const std::string& n) {
      return trained(n) && specs.at(n).tp_split == TpSplit::kReplicated;
    };
    const double norm = test::l2_norm(one.grads, trained);
    EXPECT_LT(test::rel_diff(one.metrics.grad_norm, norm), 1e-6) << k.describe();
    // A replicated gradient counted tp times, or missing, moves the norm by about half its share
    // of the squares: make sure that share is far above the tolerance.
    if (k.groups->tp_size > 1) {
      const double share = std::pow(test::l2_norm(one.grads, replicated) / norm, 2);
      EXPECT_GT(share, 20 * kNormTol) << k.describe();
      min_share = std::min(min_share, share);
    }
    for (bool zero1 : {false, true}) {
      const test::StepGradients many = parallel(k, zero1);
      const double rel =
          max_over_ranks(test::rel_diff(many.metrics.grad_norm, one.metrics.grad_norm));
      EXPECT_LT(rel, kNormTol) << many.metrics.grad_norm << " vs " << one.metrics.grad_norm
                               << (zero1 ? "; zero1" : "") << "; " << k.describe();
      if (rel > worst_seen || !std::isfinite(rel)) {
        worst_seen = rel;
        worst_where = k.describe() + (zero1 ? "; zero1" : "");
      }
    }
  });
  if (world_rank() == 0)
    std::printf(
        "worst gradient norm relative difference %.3g (%s); smallest replicated share %.3g\n",
        worst_seen, worst_where.c_str(), min_share);
}

}  // namespace
}  // namespace msa
