// Tensor parallelism (and tensor x data parallelism) over MPI, run under mpirun -np 2 and -np 4:
// every layout that the world size allows (np 2: tp 2; np 4: dp 2 x tp 2) trains exactly like one
// rank with the same global batch, with and without ZeRO-1, for a dense and an MSA model;
// checkpoints move between tp sizes; bad layouts and mismatched flags fail with clear errors.
// The gradients themselves (replicated ones on every tp rank) and the gradient norm:
// mpi_gradients_test.cc.
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/communicator.h"
#include "data/synthetic_shards.h"
#include "gtest/gtest.h"
#include "launch/train_program.h"
#include "model/tensor_parallel.h"
#include "model/transformer.h"
#include "nlohmann/json.hpp"
#include "tests/testing/gradcheck.h"
#include "tests/testing/parallel_training.h"
#include "train/batch_source.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace msa {
namespace {

int world_rank() {
  int r;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The tensor-parallel size used at this world size: 2 (np 2: dp 1 x tp 2; np 4: dp 2 x tp 2).
constexpr int kTp = 2;

enum class Variant { kDense, kMsa, kDenseQwenStyle };

ModelConfig tiny(Variant v) {
  ModelConfig c;
  c.vocab_size = 96;
  c.d_model = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 64;
  c.attention = {AttentionKind::kDense, AttentionKind::kDense};
  if (v == Variant::kMsa) c.attention = {AttentionKind::kMsa, AttentionKind::kMsa};
  if (v == Variant::kDenseQwenStyle) {
    // Split biases, per-head q/k norms whose gradients every tp rank computes in part, and a head
    // tied to the vocab-parallel embedding.
    c.qkv_bias = true;
    c.qk_norm = true;
    c.tied_embeddings = true;
  }
  c.msa.block_size = 8;
  c.msa.topk = 3;
  c.msa.index_dim = 8;
  return c;
}

using test::max_rel_diff;
using test::RunResult;
using test::train;

ProcessGroups groups_or_die(int tp) {
  auto g = make_process_groups(tp, 1, false);
  EXPECT_TRUE(g.ok()) << g.status();
  return std::move(*g);
}

void check_one_step(Variant v, bool zero1) {
  const ProcessGroups groups = groups_or_die(kTp);
  const ModelConfig c = tiny(v);
  const RunResult single = train(c, nullptr, false, 2 * groups.dp_size, 1);  // the global batch
  const RunResult parallel = train(c, &groups, zero1, 2, 1);
  EXPECT_NEAR(parallel.losses[0], single.losses[0], 1e-5 * std::abs(single.losses[0]))
      << groups.describe();
  EXPECT_LT(max_rel_diff(parallel.params, single.params), 1e-5) << groups.describe();
}

TEST(MpiTensorParallelTest, DenseOneStepMatchesOneRank) { check_one_step(Variant::kDense, false); }
TEST(MpiTensorParallelTest, MsaOneStepMatchesOneRank) { check_one_step(Variant::kMsa, false); }
TEST(MpiTensorParallelTest, DenseOneStepMatchesOneRankWithZero1) {
  check_one_step(Variant::kDense, true);
}
TEST(MpiTensorParallelTest, MsaOneStepMatchesOneRankWithZero1) {
  check_one_step(Variant::kMsa, true);
}
TEST(MpiTensorParallelTest, BiasQkNormTiedOneStepMatchesOneRank) {
  check_one_step(Variant::kDenseQwenStyle, false);
}

// The forward alone: the loss and the full logits (gathered from the vocabulary columns) equal
// one rank's, and the index loss of the MSA layers (a mean over KV groups split across ranks) and
// their recalls.
TEST(MpiTensorParallelTest, ForwardLogitsAndIndexLossMatchOneRank) {
  const ProcessGroups groups = groups_or_die(kTp);
  const ModelConfig c = tiny(Variant::kMsa);
  auto data =
      make_synthetic_source("kv-recall", c.vocab_size, 2, 48, 3, -1, 7, DataLayout{}, false);
  ASSERT_TRUE(data.ok());
  const Batch b = (*data)->get(1, 0);
  // Recalls over every 4th query and at the answers (the counted targets): each rank measures its
  // KV groups, the transformer averages over the ranks.
  ForwardOptions options;
  options.recall_query_stride = 4;
  const int32_t* labels = b.targets.data<int32_t>();
  for (int64_t i = 0; i < b.targets.numel(); ++i)
    if (labels[i] != kIgnoreIndex) options.answer_positions.push_back({i / 48, i % 48});
  Transformer one(c, DType::kF32, Device::kCPU);
  one.params().initialize(9);
  const ForwardResult r1 = one.forward(b.tokens, b.targets, options);
  const TensorParallel tp = tensor_parallel_of(groups.tp.get());
  Transformer split(c, DType::kF32, Device::kCPU, tp);
  split.params().initialize(9, tp.rank, tp.size);
  const ForwardResult r2 = split.forward(b.tokens, b.targets, options);
  EXPECT_NEAR(r2.lm_loss, r1.lm_loss, 1e-6 * r1.lm_loss);
  EXPECT_NEAR(r2.index_loss, r1.index_loss, 1e-5 * r1.index_loss);
  EXPECT_GT(r1.index_loss, 0);
  EXPECT_EQ(r2.n_targets, r1.n_targets);
  ASSERT_EQ(r2.index_recall.size(), 2u);
  ASSERT_EQ(r2.answer_index_recall.size(), 2u);
  EXPECT_LT(test::max_scaled_diff(r2.index_recall, r1.index_recall), 1e-6);
  EXPECT_LT(test::max_scaled_diff(r2.block_recall, r1.block_recall), 1e-6);
  EXPECT_LT(test::max_scaled_diff(r2.answer_index_recall, r1.answer_index_recall), 1e-6);
  EXPECT_LT(test::max_scaled_diff(r2.answer_block_recall, r1.answer_block_recall), 1e-6);
  ASSERT_EQ(r2.index_recall_ceiling.size(), 2u);
  ASSERT_EQ(r2.answer_index_recall_ceiling.size(), 2u);
  EXPECT_LT(test::max_scaled_diff(r2.index_recall_ceiling, r1.index_recall_ceiling), 1e-6);
  EXPECT_LT(test::max_scaled_diff(r2.answer_index_recall_ceiling, r1.answer_index_recall_ceiling),
            1e-6);
  const Tensor logits =
      tp_gather(split.logits().view({-1, c.vocab_size / tp.size}).clone(), TpSplit::kCols, tp.comm);
  ASSERT_EQ(logits.numel(), one.logits().numel());
  EXPECT_LT(test::max_scaled_diff(logits.view(one.logits().shape()), one.logits()), 1e-5);
}

// Replicated parameters (norms, W_IK) get the same summed gradient and the same update on every
// tp rank, so they stay bit-identical across the ranks of a replica for a whole run.
TEST(MpiTensorParallelTest, ReplicatedParametersStayIdenticalAcrossTensorParallelRanks) {
  const ProcessGroups groups = groups_or_die(kTp);
  const ModelConfig c = tiny(Variant::kMsa);
  const TensorParallel tp = tensor_parallel_of(groups.tp.get());
  Transformer model(c, DType::kF32, Device::kCPU, tp);
  model.params().initialize(3, tp.rank, tp.size);
  OptimizerConfig oc;
  oc.dp = groups.dp.get();
  oc.tp = groups.tp.get();
  AdamW optimizer(model.params(), oc);
  auto data = make_synthetic_source("kv-recall", c.vocab_size, 2, 48, 3, -1, 11,
                                    DataLayout{1, groups.dp_rank, groups.dp_size}, false);
  ASSERT_TRUE(data.ok());
  TrainerConfig tc;
  tc.steps = 8;
  tc.lr.max_lr = 3e-3;
  tc.lr.total_steps = 8;
  tc.quiet = true;
  tc.dp = groups.dp.get();
  tc.index_warmup_steps = 2;
  tc.dense_attention_steps = 2;
  Trainer trainer(model, optimizer, **data, tc);
  ASSERT_TRUE(trainer.run(1).ok());
  int checked = 0;
  for (const Parameter& p : model.params().all()) {
    if (p.spec.tp_split != TpSplit::kReplicated) continue;
    const int64_t n = p.value.numel();
    Tensor all = Tensor::empty({tp.size * n}, p.value.dtype());
    groups.tp->all_gather(p.value.view({n}).clone(), all);
    const std::vector<double> v = all.to_double_vector();
    for (int r = 1; r < tp.size; ++r)
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(v[r * n + i], v[i]) << p.spec.name << "[" << i << "] differs on tp rank " << r;
    checked += p.spec.name.find("index_wk") != std::string::npos;
  }
  EXPECT_EQ(checked, 2);
}

// All three phases: index warm-up (only the index branches train), dense attention, sparse.
TEST(MpiTensorParallelTest, TwentyStepsReproduceTheSingleRankLossCurve) {
  const ProcessGroups groups = groups_or_die(kTp);
  const ModelConfig c = tiny(Variant::kMsa);
  const RunResult single = train(c, nullptr, false, 2 * groups.dp_size, 20, 2, 3, 3);
  const RunResult parallel = train(c, &groups, /*zero1=*/groups.dp_size > 1, 2, 20, 2, 3, 3);
  ASSERT_EQ(parallel.losses.size(), 20u);
  for (int s = 0; s < 20; ++s)
    EXPECT_NEAR(parallel.losses[s], single.losses[s], 1e-4 * std::abs(single.losses[s]))
        << "step " << s + 1 << ", " << groups.describe();
  EXPECT_LT(max_rel_diff(parallel.params, single.params), 1e-4);
}

TrainProgramOptions program(const std::string& dir, int tp, int64_t batch, int steps, bool zero1) {
  TrainProgramOptions o;
  o.model = tiny(Variant::kMsa);
  o.attention_spec = "msa,msa";
  o.device = "cpu";
  o.data = "synthetic:kv-recall";
  o.synthetic_pairs = 3;
  o.batch_size = batch;
  o.seq_len = 48;
  o.seed = 5;
  o.trainer.steps = steps;
  o.trainer.lr.max_lr = 3e-3;
  o.trainer.lr.min_lr = 3e-4;
  o.trainer.lr.warmup_steps = 2;
  o.trainer.lr.total_steps = steps;
  o.trainer.quiet = true;
  o.checkpoint_dir = dir;
  o.tp = tp;
  o.zero1 = zero1;
  return o;
}

// Straight 6 steps at one layout vs 3 steps at it and 3 resumed at the other; the global batch
// stays 2 * world / 2 sequences (2 per rank at tp 2, 1 per rank at tp 1).
void check_resume_across_tp(const std::string& base, int tp_from, int tp_to, bool zero1) {
  auto batch_at = [](int tp) { return tp == kTp ? 2 : 1; };
  ASSERT_TRUE(
      run_train_program(program(base + "/straight", tp_from, batch_at(tp_from), 6, zero1)).ok());
  TrainProgramOptions first = program(base + "/split", tp_from, batch_at(tp_from), 6, zero1);
  first.exit_after_step = 3;
  ASSERT_TRUE(run_train_program(first).ok());
  TrainProgramOptions second = program(base + "/split", tp_to, batch_at(tp_to), 6, zero1);
  second.resume = true;
  const absl::Status s = run_train_program(second);
  ASSERT_TRUE(s.ok()) << s;
  // Rank 0's checks in a lambda: a failed ASSERT returns from it, not past the barrier the other
  // ranks wait in.
  if (world_rank() == 0)
    [&] {
      auto a = load_checkpoint(checkpoint_path(base + "/straight", 6));
      auto b = load_checkpoint(checkpoint_path(base + "/split", 6));
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_LT(max_rel_diff(b->params, a->params), 1e-5) << tp_from << " -> " << tp_to;
      EXPECT_LT(max_rel_diff(b->m, a->m), 1e-4) << tp_from << " -> " << tp_to;
    }();
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(MpiTensorParallelTest, CheckpointsMoveBetweenTensorParallelSizes) {
  const int n = world_size();
  const std::string base =
      std::string(::testing::TempDir()) + "/mpi_tp_ckpt_np" + std::to_string(n);
  if (world_rank() == 0) std::system(("rm -rf '" + base + "' && mkdir -p '" + base + "'").c_str());
  MPI_Barrier(MPI_COMM_WORLD);
  check_resume_across_tp(base + "/tp2_to_tp1", kTp, 1, /*zero1=*/false);
  check_resume_across_tp(base + "/tp1_to_tp2", 1, kTp, /*zero1=*/true);
}

void expect_error(const TrainProgramOptions& o, const std::string& needle) {
  const absl::Status s = run_train_program(o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
}

TEST(MpiTensorParallelTest, LayoutsThatDoNotFitFailNamingTheFlag) {
  TrainProgramOptions o = program("", kTp, 2, 1, false);
  o.model.n_kv_heads = 1;
  expect_error(o, "invalid --tp: 2 does not divide n_kv_heads");
  o = program("", kTp, 2, 1, false);
  o.model.ffn_dim = 65;
  expect_error(o, "invalid --tp: 2 does not divide ffn_dim");
  o = program("", kTp, 2, 1, false);
  o.model.vocab_size = 97;
  expect_error(o, "invalid --tp: 2 does not divide vocab_size");
  o = program("", 3, 2, 1, false);
  o.model.n_kv_heads = 3;
  o.model.n_heads = 3;
  o.model.ffn_dim = 63;
  expect_error(o, "invalid --tp: 3 does not divide the world size");
  // tp x cp past int: 2 x (2^31 - 1) wrapped to -2, which "divided" the world and trained a
  // nonsense layout (dp -1) at loss 0.
  o = program("", kTp, 2, 1, false);
  o.cp = 2147483647;
  expect_error(o, "invalid --cp: --tp 2 x --cp 2147483647 does not divide the world size");
}

// A setup step that fails on one rank only (here rank 0's metrics file, which only it opens) ends
// the run on every rank: the others learn it before their next collective instead of waiting in
// it for a rank that left (mpirun hung until killed).
TEST(MpiTensorParallelTest, ASetupFailureOnOneRankStopsEveryRank) {
  TrainProgramOptions o = program("", kTp, 2, 1, false);
  o.metrics_jsonl = "/nonexistent-dir/metrics.jsonl";
  if (world_rank() == 0)
    expect_error(o, "invalid --metrics_jsonl: cannot open '/nonexistent-dir/metrics.jsonl'");
  else
    expect_error(o, "1 other rank(s) failed during setup");
}

TEST(MpiTensorParallelTest, MismatchedFlagsAcrossRanksFail) {
  TrainProgramOptions o = program("", kTp, 2, 1, false);
  if (world_rank() == world_size() - 1) o.trainer.lr.max_lr = 1e-3;
  // Every rank names the value (rank 0 prints the error): the lowest differing rank's flags
  // against rank 0's.
  expect_error(
      o, absl::StrFormat("run.lr: %s on rank 0 vs 0.001 on rank %d",
                         nlohmann::json(program("", kTp, 2, 1, false).trainer.lr.max_lr).dump(),
                         world_size() - 1));
  o = program("", kTp, 2, 1, false);
  if (world_rank() == 1) o.tp = 1;
  expect_error(o, "layout.tp: 2 on rank 0 vs 1 on rank 1");
  // Flags that decide collectives beyond the model and the schedule (ranks given different values
  // hung in the recall or the evaluation all-reduces).
  o = program("", kTp, 2, 1, false);
  o.trainer.recall_every = world_rank() == 0 ? 2 : 3;
  expect_error(o, "config hash mismatch");
  o = program("", kTp, 2, 1, false);
  o.eval_every = 1;
  o.eval_batches = world_rank() == 0 ? 2 : 3;
  expect_error(o, "config hash mismatch");
  // A value refused on some ranks only (after the hash): the others went on and waited.
  o = program("", kTp, 2, 1, false);
  o.trainer.log_every = world_rank() == 0 ? 1 : 0;
  expect_error(o, "config hash mismatch");
}

// Each rank picks the newest valid checkpoint on its own: ranks that see different files under
// the same --checkpoint_dir (a node-local disk; here each rank's own working directory) must not
// resume from different ones: different steps paired gradients across steps, saved the mix, then
// hung; another run's file of the same step failed the checks after loading on some ranks only.
TEST(MpiTensorParallelTest, RanksThatFindDifferentNewestCheckpointsRefuseToResume) {
  namespace fs = std::filesystem;
  const std::string base =
      std::string(::testing::TempDir()) + "/mpi_tp_resume_np" + std::to_string(world_size());
  if (world_rank() == 0) std::system(("rm -rf '" + base + "' && mkdir -p '" + base + "'").c_str());
  MPI_Barrier(MPI_COMM_WORLD);
  TrainProgramOptions first = program(base + "/shared", kTp, 2, 4, false);
  first.checkpoint_every = 2;
  ASSERT_TRUE(run_train_program(first).ok());
  TrainProgramOptions other = program(base + "/other", kTp, 2, 4, false);
  other.seed = 6;
  ASSERT_TRUE(run_train_program(other).ok());

  // Rank 0 sees steps 2 and 4, the others step 2 only; then step 4 of the other run.
  for (const bool same_step : {false, true}) {
    const fs::path mine = base + "/rank" + std::to_string(world_rank()) + (same_step ? "s" : "");
    const std::string ck = (mine / "ck").string();
    fs::create_directories(ck);
    if (world_rank() == 0) {
      for (int64_t step : {2, 4})
        fs::copy_file(checkpoint_path(base + "/shared", step), checkpoint_path(ck, step));
    } else if (same_step) {
      fs::copy_file(checkpoint_path(base + "/other", 4), checkpoint_path(ck, 4));
    } else {
      fs::copy_file(checkpoint_path(base + "/shared", 2), checkpoint_path(ck, 2));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const fs::path cwd = fs::current_path();
    fs::current_path(mine);
    TrainProgramOptions resumed = program("ck", kTp, 2, 6, false);
    resumed.resume = true;
    const absl::Status s = run_train_program(resumed);
    fs::current_path(cwd);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(std::string(s.message())
                  .find(same_step ? "--resume: the ranks found different newest valid checkpoints "
                                    "in --checkpoint_dir=ck (rank 0: step 4; rank 1: step 4 of "
                                    "another run or state)"
                                  : "--resume: the ranks found different newest valid checkpoints "
                                    "in --checkpoint_dir=ck (rank 0: step 4; rank 1: step 2)"),
              std::string::npos)
        << s;
    // Nothing was trained or written.
    EXPECT_FALSE(fs::exists(checkpoint_path(ck, 6)));
  }
}

// Ranks that read different shards under the same --data (node-local copies; here each rank's
// own working directory) are refused at start: each drew its samples from its own copy.
TEST(MpiTensorParallelTest, RanksThatReadDifferentShardsAreRefused) {
  namespace fs = std::filesystem;
  const std::string base =
      std::string(::testing::TempDir()) + "/mpi_tp_data_np" + std::to_string(world_size());
  if (world_rank() == 0) std::system(("rm -rf '" + base + "' && mkdir -p '" + base + "'").c_str());
  MPI_Barrier(MPI_COMM_WORLD);
  const fs::path cwd = fs::current_path();
  for (const bool same : {true, false}) {
    const fs::path mine = base + (same ? "/same" : "/differ") + std::to_string(world_rank());
    fs::create_directories(mine);
    SyntheticShardingOptions shards;
    shards.config.seq_len = 48;
    shards.samples = same ? 12 : 12 + world_rank();  // rank 0 holds the fewest
    shards.output_dir = (mine / "data").string();
    ASSERT_TRUE(write_synthetic_shards(shards).ok());
    MPI_Barrier(MPI_COMM_WORLD);
    fs::current_path(mine);
    TrainProgramOptions o = program("", kTp, 2, 1, false);
    o.data = "data/*.tok";
    const absl::Status s = run_train_program(o);
    fs::current_path(cwd);
    if (same) {
      EXPECT_TRUE(s.ok()) << s;
    } else {
      ASSERT_FALSE(s.ok());
      EXPECT_NE(std::string(s.message())
                    .find("invalid --data: the ranks read different shards under 'data/*.tok' "
                          "(this rank: 1 shard(s), " +
                          std::to_string((12 + world_rank()) * 48 + 1) + " tokens"),
                std::string::npos)
          << s;
    }
  }
}

}  // namespace
}  // namespace msa
