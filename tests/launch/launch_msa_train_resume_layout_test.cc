// Resume at another data- or context-parallel layout, through the msa-train binary under its own
// mpirun: a run checkpointed at dp = 2 continues at dp = 1 (and 1 -> 2), one checkpointed at
// cp = 2 continues at cp = 1, with the same global batch, and ends where the uninterrupted run
// ends. (Context parallelism orders the sums differently too: each cp rank's share of the key
// gradients is reduce-scattered; the tolerances below cover it with the same margin.)
//
// What is exact and what is not: within one layout a resumed run is bit-identical to the
// uninterrupted one (docs/checkpoint.md, checked here for dp 2 -> 2 too). Across layouts the
// samples are the same (the sample cursor is global) but the gradient of the global batch is summed
// in another order: at dp = 2 each rank sums its half and the halves are all-reduced, at dp = 1 one
// rank sums all of it. Float addition is not associative, so the weights after the first resumed
// step differ in the last bits, and the difference grows a little with each step (more where
// MSA's top-k, a discrete choice, flips for a block whose scores tie within rounding; see
// tests/mpi/mpi_data_parallel_test.cc). Measured after 4 resumed steps (printed by each run): loss
// 6e-10..5e-9 relative, weights 2.3e-8 and moments 3.4e-7 relative (L2 per tensor). The
// tolerances, 1e-6 on each step's loss and 1e-5 on the final weights and moments, leave a
// margin of 30x for a flipped selection, and still catch a wrong sample (a repeated or skipped
// batch changes the loss by ~1e-2 relative) or a lost moment.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"
#include "tests/testing/parallel_training.h"
#include "train/checkpoint.h"

namespace msa {
namespace {

using test::CommandResult;

std::string fresh_dir(const std::string& name) { return test::fresh_dir("resume_layout_" + name); }

constexpr int kSteps = 8, kStop = 4, kGlobalBatch = 4;

// A layout: `ranks` processes, `cp` of them per data-parallel replica.
struct Layout {
  Layout(int ranks, int cp = 1) : ranks(ranks), cp(cp) {}  // NOLINT: an int is a dp layout
  int ranks, cp;
  int dp() const { return ranks / cp; }
  std::string name() const {
    return cp == 1 ? absl::StrFormat("dp %d", dp()) : absl::StrFormat("dp %d x cp %d", dp(), cp);
  }
};

// msa-train on `l.ranks` processes (each data-parallel replica with 1/dp of the global batch)
// into `dir`.
CommandResult train(const Layout& l, const std::string& dir, const std::string& extra) {
  const std::string args =
      "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 "
      "--n_kv_heads=2 --head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 "
      "--msa_topk=2 --msa_index_dim=8 --seq_len=64 --data=synthetic:kv-recall --seed=11 "
      "--lr=3e-3 --min_lr=3e-4 --warmup_steps=2 --dense_attention_steps=2 --recall_every=0 "
      "--log_every=1 --steps=" +
      std::to_string(kSteps) + " --batch_size=" + std::to_string(kGlobalBatch / l.dp()) +
      " --cp=" + std::to_string(l.cp) + " --checkpoint_dir=" + dir + " --metrics_jsonl=" + dir +
      "/metrics.jsonl " + extra;
  return test::mpirun_program(l.ranks, "msa-train", args);
}

std::vector<nlohmann::json> metrics(const std::string& dir) {
  std::ifstream f(dir + "/metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Interrupted at kStop on `first_ranks`, resumed on `second_ranks`: compared with the
// uninterrupted run on `straight_ranks`.
void check_resume(const Layout& straight_ranks, const Layout& first_ranks,
                  const Layout& second_ranks, bool bit_exact) {
  const std::string name = absl::StrFormat("%d_%d_to_%d_%d", first_ranks.ranks, first_ranks.cp,
                                           second_ranks.ranks, second_ranks.cp);
  const std::string straight = fresh_dir(name + "_straight"), split = fresh_dir(name + "_split");
  CommandResult a = train(straight_ranks, straight, "");
  ASSERT_EQ(a.exit_code, 0) << a.output;
  CommandResult b = train(first_ranks, split, "--exit_after_step=" + std::to_string(kStop));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  CommandResult c = train(second_ranks, split, "--resume");
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_NE(c.output.find("resumed from " + checkpoint_path(split, kStop)), std::string::npos)
      << c.output;
  EXPECT_NE(c.output.find(
                absl::StrFormat("world %d = %s x tp 1", second_ranks.ranks, second_ranks.name())),
            std::string::npos)
      << c.output;

  const auto x = metrics(straight), y = metrics(split);
  ASSERT_EQ(x.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(y.size(), static_cast<size_t>(kSteps));
  double worst_loss = 0;
  for (int s = 0; s < kSteps; ++s) {
    ASSERT_TRUE(std::isfinite(x[s]["loss"].get<double>())) << "step " << s + 1;
    worst_loss =
        std::max(worst_loss, std::abs(y[s]["loss"].get<double>() / x[s]["loss"].get<double>() - 1));
    EXPECT_EQ(x[s]["tokens"], y[s]["tokens"]) << "step " << s + 1;
    const bool same_first =
        first_ranks.ranks == straight_ranks.ranks && first_ranks.cp == straight_ranks.cp;
    if (bit_exact || (s < kStop && same_first)) {
      EXPECT_EQ(x[s].dump(), y[s].dump()) << "step " << s + 1;
    } else {
      const double lx = x[s]["loss"].get<double>(), ly = y[s]["loss"].get<double>();
      EXPECT_NEAR(ly, lx, 1e-6 * std::abs(lx)) << "step " << s + 1;
    }
  }

  auto end_a = load_checkpoint(checkpoint_path(straight, kSteps));
  auto end_b = load_checkpoint(checkpoint_path(split, kSteps));
  ASSERT_TRUE(end_a.ok()) << end_a.status();
  ASSERT_TRUE(end_b.ok()) << end_b.status();
  // The same samples were read: the global cursor and token count agree exactly.
  EXPECT_EQ(end_b->state.sample_cursor, int64_t{kSteps} * kGlobalBatch);
  EXPECT_EQ(end_b->state.sample_cursor, end_a->state.sample_cursor);
  EXPECT_EQ(end_b->state.tokens_seen, end_a->state.tokens_seen);
  EXPECT_EQ(end_b->state.seed, 11);
  if (bit_exact) {
    EXPECT_EQ(test::max_rel_diff(end_a->params, end_b->params), 0.0);
    EXPECT_EQ(test::max_rel_diff(end_a->m, end_b->m), 0.0);
    EXPECT_EQ(test::max_rel_diff(end_a->v, end_b->v), 0.0);
  } else {
    std::string worst;
    // Measured, for the tolerances' sake (printed by every run).
    std::printf("%s -> %s vs %s: loss rel diff %.3g, params %.3g, m %.3g, v %.3g\n",
                first_ranks.name().c_str(), second_ranks.name().c_str(),
                straight_ranks.name().c_str(), worst_loss,
                test::max_rel_diff(end_a->params, end_b->params),
                test::max_rel_diff(end_a->m, end_b->m), test::max_rel_diff(end_a->v, end_b->v));
    EXPECT_LT(test::max_rel_diff(end_a->params, end_b->params, &worst), 1e-5) << worst;
    EXPECT_LT(test::max_rel_diff(end_a->m, end_b->m, &worst), 1e-5) << worst;
    EXPECT_LT(test::max_rel_diff(end_a->v, end_b->v, &worst), 1e-5) << worst;
  }
}

TEST(MsaTrainResumeLayoutTest, TwoRanksResumedOnOneMatchTheTwoRankRun) {
  check_resume(/*straight=*/2, /*first=*/2, /*second=*/1, /*bit_exact=*/false);
}

TEST(MsaTrainResumeLayoutTest, OneRankResumedOnTwoMatchesTheOneRankRun) {
  check_resume(/*straight=*/1, /*first=*/1, /*second=*/2, /*bit_exact=*/false);
}

// Checkpoints hold full tensors whatever the layout: a context-parallel run continues on one rank.
TEST(MsaTrainResumeLayoutTest, ContextParallelRunResumedOnOneRankMatchesTheContextParallelRun) {
  check_resume(/*straight=*/Layout(2, 2), /*first=*/Layout(2, 2), /*second=*/1,
               /*bit_exact=*/false);
}

TEST(MsaTrainResumeLayoutTest, TwoRanksResumedOnTwoAreBitExact) {
  check_resume(/*straight=*/2, /*first=*/2, /*second=*/2, /*bit_exact=*/true);
}

// Validation on retrieval data measures the answer positions' recall on one rank; under context
// parallelism (rows split over ranks) it must validate without it, not abort.
TEST(MsaTrainResumeLayoutTest, ContextParallelRunValidatesOnRetrievalData) {
  const std::string dir = fresh_dir("cp_eval");
  const CommandResult r = train(Layout(2, 2), dir, "--eval_every=2 --eval_batches=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("val_loss"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace msa
