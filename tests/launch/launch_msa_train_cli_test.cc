// msa-train's command line: --help documents every flag with its default, and bad flags or
// configs exit non-zero with a one-line message naming the flag.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"

namespace {

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run_msa_train(const std::string& args) {
  std::string cmd = msa::test::program_path("msa-train") + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  int status = pclose(pipe);
  return {WEXITSTATUS(status), out};
}

TEST(MsaTrainCliTest, HelpListsEveryFlagWithDefault) {
  CommandResult r = run_msa_train("--help");
  for (const char* flag : {"vocab_size",
                           "d_model",
                           "n_layers",
                           "n_heads",
                           "n_kv_heads",
                           "head_dim",
                           "ffn_dim",
                           "attention",
                           "msa_block_size",
                           "msa_topk",
                           "msa_index_dim",
                           "msa_index_loss_weight",
                           "steps",
                           "batch_size",
                           "seq_len",
                           "lr",
                           "seed",
                           "device",
                           "data",
                           "index_warmup_steps",
                           "dense_attention_fraction",
                           "dense_attention_steps",
                           "recall_every",
                           "deterministic",
                           "tp",
                           "cp"}) {
    EXPECT_NE(r.output.find(std::string("-") + flag + " ("), std::string::npos) << flag;
  }
  EXPECT_NE(r.output.find("default: \"msa\""), std::string::npos);
  // The index warm-up is on by default, as a fraction of --steps, and --help says so.
  EXPECT_NE(r.output.find("Index warm-up, on by default"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("default: 0.02"), std::string::npos);
}

TEST(MsaTrainCliTest, DefaultRunWarmsTheIndexUpWithDenseAttentionThenGoesSparse) {
  // 10 steps * 0.2 = steps 1..2 dense attention (the index warm-up), then sparse; the recall line
  // carries the index recall and the block recall of the MSA layer, the validation line the same
  // two at the answer positions.
  CommandResult r = run_msa_train(
      "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
      "--head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 --msa_topk=2 "
      "--msa_index_dim=8 --seq_len=48 --batch_size=2 --data=synthetic:kv-recall --steps=10 "
      "--dense_attention_fraction=0.2 --log_every=1 --recall_every=2 --recall_stride=4 "
      "--eval_every=5 --eval_batches=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("steps 1..2 index warm-up (dense attention, everything trains), "
                          "steps 3..10 sparse attention"),
            std::string::npos)
      << r.output;
  auto line_of = [&](int step) {
    const size_t at = r.output.find("step " + std::string(step < 10 ? "    " : "   ") +
                                    std::to_string(step) + "/10");
    EXPECT_NE(at, std::string::npos) << step << "\n" << r.output;
    return at == std::string::npos ? std::string()
                                   : r.output.substr(at, r.output.find('\n', at) - at);
  };
  EXPECT_NE(line_of(2).find("index warm-up (dense attention)"), std::string::npos) << line_of(2);
  EXPECT_EQ(line_of(3).find("warm-up"), std::string::npos) << line_of(3);
  EXPECT_NE(line_of(4).find("| recall "), std::string::npos) << line_of(4);
  EXPECT_NE(line_of(4).find("| block recall "), std::string::npos) << line_of(4);
  EXPECT_NE(line_of(4).find("| recall ceiling "), std::string::npos) << line_of(4);
  // The validation of a retrieval task adds the recalls at the answer positions (one MSA layer).
  const size_t eval = r.output.find("eval       5 | val_loss ");
  ASSERT_NE(eval, std::string::npos) << r.output;
  const std::string eval_line = r.output.substr(eval, r.output.find('\n', eval) - eval);
  EXPECT_NE(eval_line.find(" | answer recall 0."), std::string::npos) << eval_line;
  EXPECT_NE(eval_line.find(" | answer block recall "), std::string::npos) << eval_line;
  EXPECT_NE(eval_line.find(" | answer recall ceiling "), std::string::npos) << eval_line;
  EXPECT_EQ(eval_line.find("nan"), std::string::npos) << eval_line;
}

// On the CPU --deterministic changes nothing (every CPU kernel is deterministic already): it is
// accepted, says so, and two runs write identical metrics (full-precision losses and norms).
TEST(MsaTrainCliTest, DeterministicOnTheCpuIsAcceptedAndRepeatsBitForBit) {
  std::string metrics[2];
  for (int run = 0; run < 2; ++run) {
    const std::string path =
        ::testing::TempDir() + "/deterministic_cpu_" + std::to_string(run) + ".jsonl";
    std::remove(path.c_str());
    CommandResult r = run_msa_train(
        "--device=cpu --deterministic --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 "
        "--n_kv_heads=2 --head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 "
        "--msa_topk=2 --msa_index_dim=8 --seq_len=48 --batch_size=2 --data=synthetic:kv-recall "
        "--steps=4 --dense_attention_steps=2 --recall_every=0 --metrics_jsonl=" +
        path);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("deterministic: the CPU kernels are deterministic anyway"),
              std::string::npos)
        << r.output;
    FILE* f = std::fopen(path.c_str(), "r");
    ASSERT_NE(f, nullptr) << path;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) metrics[run].append(buf, n);
    std::fclose(f);
  }
  EXPECT_NE(metrics[0].find("\"step\":4"), std::string::npos) << metrics[0];
  EXPECT_EQ(metrics[0], metrics[1]);
}

// Context parallelism: shards that are not whole blocks and a layout the world does not allow are
// refused at start, naming the flags.
TEST(MsaTrainCliTest, ContextParallelLayoutsThatCannotRunAreRefusedNamingTheFlags) {
  const struct {
    const char* args;
    const char* message;
  } cases[] = {
      {"--cp=3 --cp_layout=contiguous --device=cpu --seq_len=256",
       "invalid --cp: --seq_len 256 is not a multiple of --cp 3"},
      {"--cp=3 --device=cpu --seq_len=256",  // zig-zag, the default
       "invalid --cp: --seq_len 256 is not a multiple of 2 x --cp = 6 (--cp_layout=zigzag: each "
       "rank holds two chunks"},
      {"--cp=4 --cp_layout=contiguous --device=cpu --seq_len=128 --msa_block_size=64",
       "invalid --cp: --seq_len / --cp = 128 / 4 = 32 tokens per rank is not a multiple of the MSA "
       "block size 64"},
      {"--cp=4 --device=cpu --seq_len=256 --msa_block_size=64",
       "invalid --cp: --seq_len / (2 x --cp) = 256 / 8 = 32 tokens per half-shard is not a "
       "multiple of the MSA block size 64 (a shard must hold whole blocks; --cp_layout=contiguous"},
      {"--cp=2 --cp_layout=zigzag --device=cpu --seq_len=384 --msa_block_size=64",
       "invalid --cp: --seq_len / (2 x --cp) = 384 / 4 = 96 tokens per half-shard is not a "
       "multiple "
       "of the MSA block size 64"},
      {"--cp=2 --cp_layout=spiral --device=cpu --seq_len=256",
       "invalid --cp_layout: 'spiral' (use contiguous or zigzag)"},
      // One process: cp 2 does not divide the world.
      {"--cp=2 --device=cpu --seq_len=256 --msa_block_size=64",
       "invalid --cp: --tp 1 x --cp 2 does not divide the world size 1"},
  };
  for (const auto& c : cases) {
    const CommandResult r = run_msa_train(std::string(c.args) + " --steps=1");
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.args << "\n" << r.output;
  }
}

TEST(MsaTrainCliTest, BadWarmupFractionNamesTheFlag) {
  CommandResult r = run_msa_train("--dense_attention_fraction=1.5 --steps=1 --device=cpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("invalid --dense_attention_fraction"), std::string::npos) << r.output;
}

TEST(MsaTrainCliTest, UnknownFlagFailsNamingIt) {
  CommandResult r = run_msa_train("--no_such_flag=3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no_such_flag"), std::string::npos) << r.output;
}

TEST(MsaTrainCliTest, HeadsNotDivisibleByKvHeadsNamesTheFlag) {
  CommandResult r = run_msa_train("--n_heads=6 --n_kv_heads=4 --steps=1 --device=cpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("invalid --n_kv_heads"), std::string::npos) << r.output;
}

TEST(MsaTrainCliTest, OddHeadDimNamesTheFlag) {
  CommandResult r = run_msa_train("--head_dim=7 --steps=1 --device=cpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("invalid --head_dim"), std::string::npos) << r.output;
}

TEST(MsaTrainCliTest, BadAttentionListNamesTheFlag) {
  CommandResult r = run_msa_train("--attention=dense,sparse --steps=1 --device=cpu");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("invalid --attention"), std::string::npos) << r.output;
}

// Hyperparameters that cannot be right are refused at startup, naming the flag, before any step
// (these were all accepted and trained on, into NaN weights, before issue 18).
TEST(MsaTrainCliTest, HyperparametersThatCannotBeRightAreRefusedNamingTheFlag) {
  const std::pair<const char*, const char*> cases[] = {
      {"lr", "inf"},
      {"lr", "nan"},
      {"lr", "0"},
      {"min_lr", "-1e-4"},
      {"min_lr", "inf"},
      {"min_lr", "1"},  // above --lr: the cosine "decay" would raise the LR
      {"adam_eps", "0"},
      {"adam_eps", "nan"},
      {"weight_decay", "nan"},
      {"weight_decay", "-0.1"},
      {"beta1", "1"},
      {"beta1", "-0.5"},
      {"beta2", "1.5"},
      {"beta2", "nan"},
      {"grad_clip", "-1"},
      {"grad_clip", "inf"},
      {"warmup_steps", "-3"},
      {"max_nonfinite_steps", "0"},
      // Its second window starts past the sequence (80 + 49 >= 128): only position 0, recall 1.0.
      {"recall_stride", "80 --seq_len=128 --recall_every=1"},
      {"msa_index_loss_weight", "inf"},
      // An odd index dimension under index RoPE: accepted, then aborted in step 1's rope kernel.
      {"msa_index_rotary_dim", "4 --msa_index_dim=5"},
  };
  for (const auto& [flag, value] : cases) {
    const std::string arg = std::string("--") + flag + "=" + value;
    CommandResult r = run_msa_train(
        arg + " --steps=1 --device=cpu --checkpoint_dir=" + ::testing::TempDir() + "/cli_refused");
    EXPECT_EQ(r.exit_code, 1) << arg << "\n" << r.output;
    EXPECT_NE(r.output.find(std::string("invalid --") + flag + ":"), std::string::npos)
        << arg << "\n"
        << r.output;
    EXPECT_EQ(r.output.find("step "), std::string::npos) << arg << " trained:\n" << r.output;
  }
}

// A run whose loss turns non-finite stops with a non-zero exit and says why, instead of training
// on and exiting 0.
TEST(MsaTrainCliTest, DivergingRunStopsWithANonZeroExit) {
  CommandResult r = run_msa_train(
      "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
      "--head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 --msa_topk=2 "
      "--msa_index_dim=8 --seq_len=48 --batch_size=2 --data=synthetic:kv-recall --steps=30 "
      "--lr=1e37 --min_lr=1e37 --warmup_steps=0 --log_every=1 --recall_every=0 "
      "--max_nonfinite_steps=2");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("not finite; the step was not applied"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("msa-train: training diverged: the loss or the gradient norm was not "
                          "finite for 2 steps in a row"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("step    30/30"), std::string::npos) << r.output;
  // The last step, the second non-finite one in a row, has its metrics line (it had none).
  const size_t last = r.output.rfind("NOT FINITE: step skipped");
  ASSERT_NE(last, std::string::npos) << r.output;
  const size_t first = r.output.find("NOT FINITE: step skipped");
  EXPECT_NE(first, last) << r.output;
}

// A streak of non-finite steps writes no checkpoint: with --checkpoint_every=1 --keep_last=2 the
// skipped steps' files used to push the good checkpoints out (and --resume took the newest, whose
// weights had just given a NaN gradient). Every checkpoint left is of an applied step, and the
// error names the newest one.
TEST(MsaTrainCliTest, SkippedStepsWriteNoCheckpoint) {
  const std::string dir = msa::test::fresh_dir("cli_skipped_steps");
  CommandResult r = run_msa_train(
      "--device=cpu --vocab_size=64 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
      "--head_dim=8 --ffn_dim=64 --seq_len=128 --batch_size=2 --msa_block_size=16 --msa_topk=4 "
      "--msa_index_dim=8 --steps=20 --lr=1e6 --warmup_steps=0 --min_lr=0 --log_every=1 "
      "--checkpoint_every=1 --keep_last=2 --checkpoint_dir=" +
      dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  ASSERT_NE(r.output.find("msa-train: training diverged"), std::string::npos) << r.output;
  // Which steps ran, and which of them were skipped, from the metrics lines.
  std::vector<int> skipped, applied;
  for (size_t at = r.output.find("\nstep "); at != std::string::npos;
       at = r.output.find("\nstep ", at + 1)) {
    const size_t end = r.output.find('\n', at + 1);
    const std::string line = r.output.substr(at + 1, end - at - 1);
    const int step = std::atoi(line.c_str() + 5);
    (line.find("NOT FINITE") != std::string::npos ? skipped : applied).push_back(step);
  }
  ASSERT_FALSE(applied.empty()) << r.output;
  ASSERT_GE(skipped.size(), 2u) << r.output;  // the streak ran past a checkpoint step
  const int newest = applied.back();
  char name[64];
  std::snprintf(name, sizeof(name), "/ckpt-%08d.h5", newest);
  EXPECT_NE(r.output.find("The newest checkpoint is " + dir + name), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no checkpoint at step " + std::to_string(skipped[0])), std::string::npos)
      << r.output;
  // The files left: the last two applied steps' (--keep_last=2), none of a skipped step.
  for (int step : skipped) {
    std::snprintf(name, sizeof(name), "/ckpt-%08d.h5", step);
    EXPECT_NE(std::system(("test -e '" + dir + name + "'").c_str()), 0) << name;
  }
  std::snprintf(name, sizeof(name), "/ckpt-%08d.h5", newest);
  EXPECT_EQ(std::system(("test -e '" + dir + name + "'").c_str()), 0) << name;
}

const std::string kResumeModel =
    "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
    "--head_dim=8 --ffn_dim=64 --seq_len=64 --batch_size=2 --msa_block_size=16 --msa_topk=2 "
    "--msa_index_dim=8 --log_every=1 --recall_every=0 ";

// A run whose last step is skipped still saves the steps it applied since its newest checkpoint
// (here: none was written before), under the last step's number, and says so.
TEST(MsaTrainCliTest, ASkippedLastStepKeepsTheAppliedSteps) {
  const std::string dir = msa::test::fresh_dir("cli_skipped_last");
  CommandResult r = run_msa_train(kResumeModel +
                                  "--steps=3 --lr=1e6 --min_lr=1e6 --warmup_steps=0 "
                                  "--msa_block_size=16 --checkpoint_dir=" +
                                  dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  ASSERT_NE(r.output.find("step     3/3"), std::string::npos) << r.output;
  ASSERT_NE(r.output.find("NOT FINITE"), std::string::npos) << "no step was skipped:\n" << r.output;
  EXPECT_NE(r.output.find("step 3 was not finite (not applied): the final checkpoint holds the "
                          "weights of step 2"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(std::system(("test -e '" + dir + "/ckpt-00000003.h5'").c_str()), 0) << r.output;
}

// A checkpoint written after a skipped step carries the streak of non-finite steps: the resumed
// run stops where the uninterrupted one does (it counted from 0 again, one step later or never).
TEST(MsaTrainCliTest, AResumedRunCountsTheCheckpointsNonFiniteStreak) {
  const std::string flags = kResumeModel +
                            "--steps=4 --lr=1e6 --min_lr=1e6 --warmup_steps=0 "
                            "--max_nonfinite_steps=2 --checkpoint_dir=";
  CommandResult straight = run_msa_train(flags + msa::test::fresh_dir("cli_streak_straight"));
  EXPECT_EQ(straight.exit_code, 1) << straight.output;
  const std::string diverged =
      "training diverged: the loss or the gradient norm was not finite for 2 steps in a row "
      "(steps 3..4;";
  ASSERT_NE(straight.output.find(diverged), std::string::npos) << straight.output;

  const std::string dir = msa::test::fresh_dir("cli_streak_split");
  CommandResult first = run_msa_train(flags + dir + " --exit_after_step=3");
  EXPECT_EQ(first.exit_code, 0) << first.output;
  ASSERT_NE(first.output.find("step 3 was not finite (not applied)"), std::string::npos)
      << first.output;
  CommandResult resumed = run_msa_train(flags + dir + " --resume");
  EXPECT_EQ(resumed.exit_code, 1) << resumed.output;
  EXPECT_NE(resumed.output.find(diverged), std::string::npos) << resumed.output;
}

// Raising --steps to continue a finished run (what its message suggests) keeps the checkpoint's
// index warm-up: its sparse steps do not go back to dense attention (the warm-up was recomputed
// from the new --steps: 2% of 6 -> 1 step became 2% of 400 -> 8, and steps 7 and 8 attended
// densely again).
TEST(MsaTrainCliTest, ResumeKeepsTheCheckpointsWarmUp) {
  const std::string dir = msa::test::fresh_dir("cli_resume_warmup");
  CommandResult first = run_msa_train(kResumeModel + "--steps=6 --checkpoint_dir=" + dir);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  ASSERT_NE(first.output.find("steps 1..1 index warm-up"), std::string::npos) << first.output;
  CommandResult more = run_msa_train(
      kResumeModel + "--steps=400 --exit_after_step=8 --resume --checkpoint_dir=" + dir);
  ASSERT_EQ(more.exit_code, 0) << more.output;
  EXPECT_NE(more.output.find("steps 1..1 index warm-up"), std::string::npos) << more.output;
  EXPECT_NE(more.output.find("step     7/400"), std::string::npos) << more.output;
  EXPECT_EQ(more.output.find("(dense attention)\n"), std::string::npos)  // no warm-up step ran
      << more.output;
  EXPECT_NE(more.output.find("flags changed from the checkpoint's run: --steps 6 -> 400"),
            std::string::npos)
      << more.output;
  // The same preemption-test command again trains nothing (it used to run one more step).
  CommandResult again = run_msa_train(
      kResumeModel + "--steps=400 --exit_after_step=8 --resume --checkpoint_dir=" + dir);
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find(">= --exit_after_step=8: nothing to train"), std::string::npos)
      << again.output;
  EXPECT_EQ(again.output.find("\nstep "), std::string::npos) << again.output;
  EXPECT_NE(std::system(("test -e '" + dir + "/ckpt-00000009.h5'").c_str()), 0);
  // An explicit change of the warm-up is a change: said, and run.
  CommandResult longer = run_msa_train(
      kResumeModel +
      "--steps=400 --exit_after_step=9 --dense_attention_steps=12 --resume --checkpoint_dir=" +
      dir);
  EXPECT_EQ(longer.exit_code, 0) << longer.output;
  EXPECT_NE(longer.output.find("the index warm-up (dense attention) was 1 steps and is now 12"),
            std::string::npos)
      << longer.output;
  EXPECT_NE(longer.output.find("index warm-up (dense attention)\n"), std::string::npos)
      << longer.output;
}

// A resumed run on other data flags is refused (the sample cursor counts the old data's
// windows) unless --new_data, which starts the new data from its first sample.
TEST(MsaTrainCliTest, ResumeOnOtherDataNeedsNewData) {
  const std::string dir = msa::test::fresh_dir("cli_resume_data");
  ASSERT_EQ(run_msa_train(kResumeModel + "--steps=4 --checkpoint_dir=" + dir).exit_code, 0);
  for (const char* change : {"--seq_len=32", "--data=synthetic:needle"}) {
    CommandResult r =
        run_msa_train(kResumeModel + "--steps=6 --resume " + change + " --checkpoint_dir=" + dir);
    EXPECT_EQ(r.exit_code, 1) << change << "\n" << r.output;
    EXPECT_NE(r.output.find("was written by a run on other data"), std::string::npos)
        << change << "\n"
        << r.output;
    EXPECT_EQ(r.output.find("\nstep "), std::string::npos) << change << "\n" << r.output;
  }
  CommandResult r = run_msa_train(
      kResumeModel + "--steps=6 --resume --seq_len=32 --new_data --checkpoint_dir=" + dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--resume --new_data: --seq_len 64 -> 32"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("step     6/6"), std::string::npos) << r.output;
}

// Ranks started with different flags: rank 0 (the one that prints) names the value, whichever
// rank differs (it could only say "config hash mismatch").
TEST(MsaTrainCliTest, RanksWithDifferentFlagsNameTheValue) {
  msa::test::forget_own_mpi_job();
  const std::string train = msa::test::program_path("msa-train") + " " + kResumeModel +
                            "--steps=2 --data=synthetic:kv-recall ";
  CommandResult r;
  {
    const msa::test::CommandResult c = msa::test::run_command(
        "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun --oversubscribe --allow-run-as-root -np 1 " +
        train + "--lr=0.003 : -np 1 " + train + "--lr=0.001");
    r = {c.exit_code, c.output};
  }
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("run.lr: 0.003 on rank 0 vs 0.001 on rank 1"), std::string::npos)
      << r.output;
}

// A needle is one fact whatever --synthetic_pairs says: a change of it is no change of the data
// (it was refused as other data, and is not printed as a change either).
TEST(MsaTrainCliTest, ResumedNeedleRunIgnoresSyntheticPairs) {
  const std::string dir = msa::test::fresh_dir("cli_resume_needle");
  const std::string needle = kResumeModel + "--data=synthetic:needle --checkpoint_dir=" + dir + " ";
  ASSERT_EQ(run_msa_train(needle + "--steps=2").exit_code, 0);
  CommandResult r = run_msa_train(needle + "--steps=3 --resume --synthetic_pairs=2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step     3/3"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("synthetic_pairs"), std::string::npos) << r.output;
}

// Shards regenerated under the same --data glob are other data too (more windows: another order,
// and the held-out split moves over trained windows); they were read as the same without a word.
TEST(MsaTrainCliTest, ResumeNoticesRegeneratedShardsUnderTheSameGlob) {
  const std::string dir = msa::test::fresh_dir("cli_resume_shards");
  const std::string synthetic = "synthetic --seq_len=64 --output=" + dir + "/data --samples=";
  ASSERT_EQ(msa::test::run_program("msa-data", synthetic + "40").exit_code, 0);
  const std::string flags = kResumeModel + "--data='" + dir +
                            "/data/*.tok' --val_fraction=0.1 --checkpoint_dir=" + dir + "/ckpt ";
  ASSERT_EQ(run_msa_train(flags + "--steps=2").exit_code, 0);
  // The same shards again: resumed as they are.
  CommandResult same = run_msa_train(flags + "--steps=3 --resume");
  EXPECT_EQ(same.exit_code, 0) << same.output;
  ASSERT_EQ(msa::test::run_program("msa-data", synthetic + "60 --overwrite").exit_code, 0);
  CommandResult r = run_msa_train(flags + "--steps=4 --resume");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("was written by a run on other data (the shards behind --data: 1 "
                          "shard(s), 2561 tokens"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("-> 1 shard(s), 3841 tokens"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("\nstep "), std::string::npos) << r.output;
  r = run_msa_train(flags + "--steps=4 --resume --new_data");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step     4/4"), std::string::npos) << r.output;
  // Rebuilt to the same sizes with another seed: msa-data's metadata file tells.
  ASSERT_EQ(msa::test::run_program("msa-data", synthetic + "60 --seed=7 --overwrite").exit_code, 0);
  r = run_msa_train(flags + "--steps=5 --resume");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("msa-data's metadata beside the shards: hash"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("the shards behind --data"), std::string::npos) << r.output;
  // The shards alone (a copy without the metadata file) are not compared by their metadata.
  ASSERT_EQ(std::remove((dir + "/data/kv-recall.json").c_str()), 0);
  r = run_msa_train(flags + "--steps=5 --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step     5/5"), std::string::npos) << r.output;
}

// Text shards rebuilt byte for byte from the same input named another way (./a.txt, an absolute
// path, another node's copy) are the same data: the metadata's input and tokenizer paths are not
// hashed (the resume was refused, and --new_data trained the first samples again).
TEST(MsaTrainCliTest, ResumeTakesTextShardsRebuiltFromTheSameInputNamedAnotherWay) {
  const std::string dir = msa::test::fresh_dir("cli_resume_text");
  std::string text;
  for (int i = 0; i < 400; ++i) text += "line " + std::to_string(i % 37) + " of the text\n";
  std::ofstream(dir + "/a.txt") << text;
  auto build = [&](const std::string& input) {
    return msa::test::run_program("msa-data", "text --input=" + input + " --output=" + dir +
                                                  "/data --shard_tokens=4000 --overwrite")
        .exit_code;
  };
  ASSERT_EQ(build(dir + "/a.txt"), 0);
  const std::string flags =
      "--device=cpu --vocab_size=257 --d_model=32 --n_layers=2 "
      "--n_heads=4 --n_kv_heads=2 --head_dim=8 --ffn_dim=64 "
      "--attention=dense --seq_len=32 --batch_size=2 --recall_every=0 "
      "--data='" +
      dir + "/data/*.tok' --checkpoint_dir=" + dir + "/ckpt ";
  ASSERT_EQ(run_msa_train(flags + "--steps=2").exit_code, 0);
  ASSERT_EQ(build(dir + "/./a.txt"), 0);
  CommandResult r = run_msa_train(flags + "--steps=3 --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("step     3/3"), std::string::npos) << r.output;
  // Other bytes of the same size (the lines in another order): other data.
  std::string reversed;
  for (int i = 399; i >= 0; --i) reversed += "line " + std::to_string(i % 37) + " of the text\n";
  ASSERT_EQ(reversed.size(), text.size());
  std::ofstream(dir + "/b.txt") << reversed;
  ASSERT_EQ(build(dir + "/b.txt"), 0);
  r = run_msa_train(flags + "--steps=4 --resume");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("msa-data's metadata beside the shards"), std::string::npos) << r.output;
}

// ---- 64-bit integer flags and the memory check (issue 18)
// --------------------------------------------------------------------------

const std::string kTinyModel =
    "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
    "--head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 --msa_topk=2 "
    "--msa_index_dim=8 --data=synthetic:kv-recall --recall_every=0 ";

// --metrics_jsonl carries the validation at full precision beside the steps (it reached stdout
// only), and a file that cannot be written is said once on stderr (the lines were lost without a
// word) while training goes on.
TEST(MsaTrainCliTest, MetricsCarryTheValidationAndWriteFailuresAreSaid) {
  const std::string path = ::testing::TempDir() + "/metrics_with_eval.jsonl";
  std::remove(path.c_str());
  CommandResult r = run_msa_train(kTinyModel +
                                  "--steps=4 --seq_len=48 --batch_size=2 --eval_every=2 "
                                  "--eval_batches=1 --metrics_jsonl=" +
                                  path);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(path);
  int steps = 0, evals = 0;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) {
      ++evals;
      EXPECT_EQ(j["kind"], "validation") << line;
      EXPECT_TRUE(j["val_loss"].is_number_float()) << line;
      EXPECT_GT(j["val_tokens"].get<int64_t>(), 0) << line;
      EXPECT_TRUE(j.contains("val_answer_index_recall")) << line;  // kv-recall with an MSA layer
      EXPECT_EQ(j["step"].get<int64_t>() % 2, 0) << line;
    } else {
      ++steps;
      EXPECT_TRUE(j.contains("loss")) << line;
    }
  }
  EXPECT_EQ(steps, 4);
  EXPECT_EQ(evals, 2);
  r = run_msa_train(kTinyModel + "--steps=2 --seq_len=48 --batch_size=2 --metrics_jsonl=/dev/full");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("msa-train: writing --metrics_jsonl '/dev/full' failed"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("failed", r.output.find("failed") + 1), std::string::npos) << r.output;
}

// A stray word is refused: `--qk_norm false` turned qk_norm on and dropped the "false".
TEST(MsaTrainCliTest, StrayArgumentsAreRefused) {
  CommandResult r = run_msa_train(kTinyModel + "--steps=1 --seq_len=48 --qk_norm false");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("msa-train: unexpected argument 'false'"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("step "), std::string::npos) << r.output;
}

// Flags accepted and then ignored or misreported, refused naming the flag msa-train takes: an index
// warm-up past --steps froze the backbone for the whole run; --eval_every on synthetic:repeat
// "validated" on the training batch; --init_allow_missing_index without --init_from did nothing;
// the synthetic task's errors named msa-data's --pairs / --depth.
TEST(MsaTrainCliTest, FlagsThatWouldDoNothingOrNameAnotherProgramsFlagsAreRefused) {
  const std::pair<std::string, std::string> cases[] = {
      {"--steps=3 --index_warmup_steps=4",
       "invalid --index_warmup_steps: 4 is past --steps=3: the backbone would never train"},
      {"--steps=3 --data=synthetic:repeat --eval_every=1",
       "invalid --eval_every: --data=synthetic:repeat has no validation data"},
      {"--steps=3 --init_allow_missing_index",
       "invalid --init_allow_missing_index: needs --init_from"},
      {"--steps=3 --synthetic_pairs=9", "invalid --synthetic_pairs: 9 is not in [1, 8]"},
      {"--steps=3 --synthetic_depth=1.5", "invalid --synthetic_depth: 1.5 must be finite and <= 1"},
  };
  for (const auto& [args, message] : cases) {
    CommandResult r = run_msa_train(kTinyModel + "--seq_len=48 " + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("step "), std::string::npos) << args << " trained:\n" << r.output;
  }
}

// The --recall_stride check applies where recall is measured: a dense model, or a run whose
// --recall_every is past --steps, trains at any --seq_len.
TEST(MsaTrainCliTest, RecallStrideIsCheckedOnlyWhereRecallIsMeasured) {
  for (const char* args : {"--attention=dense --recall_every=1", "--recall_every=5"}) {
    CommandResult r =
        run_msa_train(kTinyModel + "--data=synthetic:repeat --seq_len=16 --steps=2 " + args);
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
  }
}

// --steps=0 trained nothing, wrote no checkpoint and exited 0: refused.
TEST(MsaTrainCliTest, ZeroStepsAreRefused) {
  CommandResult r = run_msa_train(kTinyModel + "--steps=0 --seq_len=48");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("invalid --steps: 0 is < 1"), std::string::npos) << r.output;
}

// Integer flags parse as 64 bits: a value past 2^31 for a count held in 32 bits is refused
// naming the flag and the value, never wrapped (4294967297 used to become 1).
TEST(MsaTrainCliTest, IntegerFlagsPastTwoToThe31AreRefusedNotWrapped) {
  for (const char* flag : {"n_layers", "n_heads", "n_kv_heads", "head_dim", "msa_block_size",
                           "msa_topk", "msa_index_dim", "grad_accum", "log_every", "recall_every",
                           "max_nonfinite_steps", "synthetic_pairs", "tp", "gpu"}) {
    const std::string arg = std::string("--") + flag + "=4294967297";
    CommandResult r = run_msa_train(kTinyModel + arg + " --steps=1 --seq_len=48 --batch_size=2");
    EXPECT_EQ(r.exit_code, 1) << arg << "\n" << r.output;
    EXPECT_NE(r.output.find(std::string("invalid --") + flag +
                            ": 4294967297 is out of range (this count is at most 2147483647)"),
              std::string::npos)
        << arg << "\n"
        << r.output;
    EXPECT_EQ(r.output.find("step "), std::string::npos) << arg << " trained:\n" << r.output;
  }
}

// Counts a run may legitimately make large are 64-bit all the way: --steps=2^32 + 1 is accepted
// and printed as given (the run stops after step 1 here).
TEST(MsaTrainCliTest, StepsPastTwoToThe31AreAccepted) {
  const std::string dir = msa::test::fresh_dir("cli_steps_past_2_31");
  CommandResult r = run_msa_train(kTinyModel +
                                  "--steps=4294967297 --exit_after_step=1 --seq_len=48 "
                                  "--batch_size=2 --dense_attention_steps=0 --log_every=1 "
                                  "--checkpoint_dir=" +
                                  dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("steps 1..4294967297"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("/4294967297"), std::string::npos) << r.output;
}

// --exit_after_step stops a run so that --resume continues it: without a checkpoint to continue
// from it would only throw the steps away.
TEST(MsaTrainCliTest, ExitAfterStepWithoutACheckpointDirIsRefused) {
  CommandResult r = run_msa_train(kTinyModel + "--steps=4 --exit_after_step=2 --seq_len=48");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("invalid --exit_after_step: needs --checkpoint_dir"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("step "), std::string::npos) << r.output;
}

TEST(MsaTrainCliTest, NegativeAndOverflowingCountsNameTheFlag) {
  const std::pair<const char*, const char*> cases[] = {
      {"--batch_size=-4294967296", "invalid --batch_size: -4294967296 is < 1"},
      {"--seq_len=-4294967296", "invalid --seq_len: -4294967296 is < 2"},
      {"--steps=-1", "invalid --steps: -1 is < 1"},
      {"--keep_last=-4294967296 --checkpoint_dir=/tmp/unused", "invalid --keep_last"},
      {"--eval_batches=4294967297", "invalid --eval_batches: 4294967297 is not in [1, 2147483647]"},
      {"--batch_size=4294967296 --seq_len=4294967296",
       "invalid --batch_size: --batch_size x --seq_len x --grad_accum = 4294967296 x 4294967296"},
      {"--steps=9223372036854775807 --batch_size=2 --seq_len=48",
       "invalid --steps: 9223372036854775807 steps"},
  };
  for (const auto& [args, expected] : cases) {
    CommandResult r = run_msa_train(kTinyModel + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << args << "\n" << r.output;
  }
}

// Before allocating, msa-train logs its memory estimate and refuses a run that cannot fit, with
// the numbers and what to try, instead of dying in an allocation.
TEST(MsaTrainCliTest, MemoryEstimateIsLoggedAndARunThatCannotFitIsRefused) {
  CommandResult ok = run_msa_train(kTinyModel + "--steps=1 --seq_len=48 --batch_size=2");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("msa-train: memory estimate per rank ~"), std::string::npos)
      << ok.output;
  EXPECT_NE(ok.output.find("GiB free"), std::string::npos) << ok.output;

  // 2^32 tokens per sequence: terabytes of activations.
  CommandResult big = run_msa_train(kTinyModel + "--steps=1 --seq_len=4294967296 --batch_size=2");
  EXPECT_EQ(big.exit_code, 1) << big.output;
  EXPECT_NE(big.output.find("msa-train: not enough memory: the run needs ~"), std::string::npos)
      << big.output;
  EXPECT_NE(big.output.find("on this node's CPU memory (MemAvailable)"), std::string::npos)
      << big.output;
  EXPECT_NE(big.output.find("--recompute=full"), std::string::npos) << big.output;
  EXPECT_NE(big.output.find("--skip_memory_check"), std::string::npos) << big.output;
  EXPECT_EQ(big.output.find("step "), std::string::npos) << big.output;

  // Beyond any addressable size the run is refused even with --skip_memory_check.
  CommandResult absurd = run_msa_train(
      kTinyModel + "--steps=1 --seq_len=1099511627776 --batch_size=1048576 --skip_memory_check");
  EXPECT_EQ(absurd.exit_code, 1) << absurd.output;
  EXPECT_NE(absurd.output.find("beyond any addressable memory"), std::string::npos)
      << absurd.output;
}

}  // namespace
