// msa-train as a process: a crash between writing a checkpoint and renaming it
// leaves the previous checkpoint usable, and SIGTERM ends a run cleanly with a
// checkpoint.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/command.h"

namespace {

using ::testing::HasSubstr;

struct CommandResult {
  int exit_code;  // -signal when killed by a signal
  std::string output;
};

CommandResult run(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  if (WIFEXITED(status)) return {WEXITSTATUS(status), out};
  return {-1, out};
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

const std::string kTiny =
    msa::test::program_path("msa-train") +
    " --device=cpu --vocab_size=96 --d_model=32 --n_layers=2 "
    "--n_heads=4 "
    "--n_kv_heads=2 --head_dim=8 --ffn_dim=64 --msa_block_size=8 --msa_topk=3 "
    "--msa_index_dim=8 "
    "--seq_len=48 --batch_size=2 --data=synthetic:kv-recall --log_every=1 "
    "--recall_every=0";

TEST(MsaTrainPreemptionTest, CrashBeforeRenameKeepsThePreviousCheckpoint) {
  const std::string dir = fresh_dir("crash");
  CommandResult a =
      run(kTiny + " --steps=8 --exit_after_step=4 --checkpoint_every=2 --checkpoint_dir=" + dir);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_TRUE(exists(dir + "/ckpt-00000004.h5"));
  // The resumed run is killed (SIGKILL) after writing ckpt-6's temporary file,
  // before the rename.
  CommandResult b = run("MSA_TEST_CRASH_BEFORE_RENAME=1 " + kTiny +
                        " --steps=8 --checkpoint_every=2 --resume --checkpoint_dir=" + dir);
  EXPECT_NE(b.exit_code, 0) << b.output;
  EXPECT_THAT(b.output, HasSubstr("step     6/8"));
  EXPECT_TRUE(exists(dir + "/ckpt-00000006.h5.tmp"));
  EXPECT_FALSE(exists(dir + "/ckpt-00000006.h5"));
  CommandResult c = run(kTiny + " --steps=8 --checkpoint_every=2 --resume --checkpoint_dir=" + dir);
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_THAT(c.output, HasSubstr("resumed from " + dir + "/ckpt-00000004.h5 (step 4"));
  EXPECT_TRUE(exists(dir + "/ckpt-00000008.h5"));
}

// The last "loss" of a --metrics_jsonl file (full precision), or "" when it has none.
std::string last_loss(const std::string& path) {
  const CommandResult r = run("tail -n 1 '" + path + "'");
  const size_t at = r.output.find("\"loss\":");
  if (at == std::string::npos) return "";
  return r.output.substr(at, r.output.find_first_of(",}", at) - at);
}

// One command for every launch of a preemptible job: --auto_resume starts fresh in an empty
// directory, resumes after a preemption (the same losses as an uninterrupted run: the resume is
// bit-exact), and finds a finished run complete (exit 0).
TEST(MsaTrainPreemptionTest, AutoResumeStartsFreshResumesAndFindsTheRunComplete) {
  const std::string straight = fresh_dir("auto_straight"), dir = fresh_dir("auto");
  CommandResult s = run(kTiny + " --steps=6 --checkpoint_dir=" + straight +
                        " --metrics_jsonl=" + straight + "/m.jsonl");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string command = kTiny + " --steps=6 --checkpoint_every=2 --auto_resume " +
                              "--checkpoint_dir=" + dir + " --metrics_jsonl=" + dir + "/m.jsonl";
  CommandResult first = run(command + " --exit_after_step=3");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_THAT(first.output,
              HasSubstr("--auto_resume: no checkpoint in " + dir + ": starting a fresh run"));
  ASSERT_TRUE(exists(dir + "/ckpt-00000003.h5"));
  CommandResult second = run(command);
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_THAT(second.output, HasSubstr("--auto_resume: " + dir +
                                       " holds 2 checkpoint(s): resuming from the newest valid"));
  EXPECT_THAT(second.output, HasSubstr("resumed from " + dir + "/ckpt-00000003.h5 (step 3"));
  const std::string loss = last_loss(straight + "/m.jsonl");
  ASSERT_FALSE(loss.empty());
  EXPECT_EQ(last_loss(dir + "/m.jsonl"), loss);
  CommandResult third = run(command);
  EXPECT_EQ(third.exit_code, 0) << third.output;
  EXPECT_THAT(third.output, HasSubstr("the run is complete, nothing to train"));
  // With --resume a checkpoint is required (a flagfile's --auto_resume plus --resume).
  CommandResult both = run(kTiny + " --steps=6 --auto_resume --resume --checkpoint_dir=" +
                           fresh_dir("auto_resume_required"));
  EXPECT_NE(both.exit_code, 0);
  EXPECT_THAT(both.output, HasSubstr("--resume: no valid checkpoint in"));
  // Refused: an --init_from inside the directory (it would be resumed), no directory to look in.
  // With --init_from the directory's checkpoints must be of the run that started from it: this
  // directory's run started from scratch, and its own file is no new start either.
  CommandResult inside = run(command + " --init_from=" + dir + "/ckpt-00000006.h5");
  EXPECT_NE(inside.exit_code, 0);
  EXPECT_THAT(inside.output, HasSubstr("--checkpoint_dir=" + dir +
                                       " holds the checkpoints of a run that did not start from "
                                       "--init_from=" +
                                       dir + "/ckpt-00000006.h5"));
  EXPECT_THAT(inside.output, HasSubstr("started from scratch"));
  // A run started from a file: relaunched with it (spelled another way, from another directory),
  // it resumes; with another file it is refused.
  const std::string tuned = fresh_dir("auto_tuned");
  const std::string tune = kTiny + " --steps=4 --checkpoint_every=2 --auto_resume " +
                           "--checkpoint_dir=" + tuned + " --init_from=";
  CommandResult t1 =
      run("cd '" + straight + "' && " + tune + "ckpt-00000006.h5 --exit_after_step=2");
  ASSERT_EQ(t1.exit_code, 0) << t1.output;
  EXPECT_THAT(t1.output, HasSubstr("starting a fresh run from ckpt-00000006.h5"));
  CommandResult t2 = run(tune + straight + "/ckpt-00000006.h5");
  ASSERT_EQ(t2.exit_code, 0) << t2.output;
  EXPECT_THAT(t2.output, HasSubstr("resumed from " + tuned + "/ckpt-00000002.h5 (step 2"));
  CommandResult other = run(kTiny + " --steps=4 --auto_resume --checkpoint_dir=" + tuned +
                            " --init_from=" + dir + "/ckpt-00000006.h5");
  EXPECT_NE(other.exit_code, 0);
  EXPECT_THAT(other.output, HasSubstr(tuned + "/ckpt-00000004.h5 started from /"));
  EXPECT_THAT(other.output, HasSubstr("auto_straight/ckpt-00000006.h5)"));
  CommandResult nodir = run(kTiny + " --steps=6 --auto_resume");
  EXPECT_NE(nodir.exit_code, 0);
  EXPECT_THAT(nodir.output, HasSubstr("invalid --auto_resume: needs --checkpoint_dir"));
}

// Starts msa-train with `args` in the background (its log in dir/log), waits until the log matches
// the extended regex `started` (30 s at most), sends SIGTERM `after` seconds later and waits for
// the process: the output is "exit=<status> took=<seconds from the signal to the exit>", then the
// log.
CommandResult sigterm_when(const std::string& args, const std::string& dir,
                           const std::string& started, const std::string& after) {
  return run(kTiny + " " + args + " --checkpoint_dir=" + dir + " > " + dir +
             "/log 2>&1 & pid=$!; for i in $(seq 1 300); do grep -Eq '" + started + "' " + dir +
             "/log && break; sleep 0.1; done; sleep " + after +
             "; kill -TERM $pid; start=$(date +%s); wait $pid; "
             "echo exit=$? took=$(( $(date +%s) - start )); cat " +
             dir + "/log");
}

TEST(MsaTrainPreemptionTest, SigtermFinishesTheStepWritesACheckpointAndExitsZero) {
  const std::string dir = fresh_dir("sigterm");
  // A run far too long to finish; SIGTERM arrives once it has started stepping.
  CommandResult r = sigterm_when("--steps=1000000", dir, "step ", "0");
  EXPECT_THAT(r.output, HasSubstr("exit=0"));
  EXPECT_THAT(r.output, HasSubstr("stopped by signal 15"));
  EXPECT_THAT(r.output, HasSubstr("saved checkpoint " + dir + "/ckpt-"));
  // It resumes for one more step (--exit_after_step at or below the checkpoint's step would train
  // nothing).
  const size_t at = r.output.find("stopped by signal 15 after step ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const long long stopped = std::atoll(r.output.c_str() + at + 32);
  ASSERT_GE(stopped, 1) << r.output;
  CommandResult again =
      run(kTiny + " --steps=1000000 --exit_after_step=" + std::to_string(stopped + 1) +
          " --resume --checkpoint_dir=" + dir);
  EXPECT_THAT(again.output, HasSubstr("resumed from " + dir + "/ckpt-"));
  EXPECT_THAT(again.output, HasSubstr("exiting after step " + std::to_string(stopped + 1)));
}

// A signal during an evaluation ends it at the next batch: the checkpoint follows at once instead
// of after the whole evaluation (a long one outlived a scheduler's grace period). The evaluation
// here would read 100000 batches.
TEST(MsaTrainPreemptionTest, SigtermDuringAnEvaluationEndsIt) {
  const std::string dir = fresh_dir("sigterm_eval");
  CommandResult r =
      sigterm_when("--steps=1000000 --eval_every=2 --eval_batches=100000", dir, "step +2/", "0.5");
  EXPECT_THAT(r.output, HasSubstr("exit=0"));
  EXPECT_THAT(r.output, HasSubstr("eval       2 | skipped: stopping on a signal"));
  EXPECT_THAT(r.output, HasSubstr("saved checkpoint " + dir + "/ckpt-00000002.h5"));
  const size_t took = r.output.find("took=");
  ASSERT_NE(took, std::string::npos);
  EXPECT_LT(std::stoi(r.output.substr(took + 5)), 30) << r.output;
}

}  // namespace
