// msa-eval refuses flag values that cannot be measured (--batch_size=0 hung, --samples=0 reported
// 0.0% as if measured) and directories where a file belongs, each with a one-line error naming
// the flag and a non-zero exit, before it loads anything; a valid run still reports.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/command.h"

namespace {

using ::testing::HasSubstr;

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run(const std::string& program, const std::string& args) {
  // `timeout` turns a hang (the old --batch_size=0) into a failure instead of a stuck test.
  FILE* pipe = popen(
      ("timeout 120 " + msa::test::program_path(program) + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  return {WEXITSTATUS(pclose(pipe)), out};
}

// Per process: ctest runs this binary's tests as concurrent processes.
std::string fresh_dir(const std::string& name) {
  const std::string dir =
      std::string(::testing::TempDir()) + "/" + name + "_" + std::to_string(getpid());
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

// A tiny MSA checkpoint, trained for one step (written once per test binary).
const std::string& tiny_checkpoint() {
  static const std::string path = [] {
    const std::string dir = fresh_dir("eval_cli_ckpt");
    CommandResult r =
        run("msa-train",
            "--device=cpu --vocab_size=96 --d_model=32 --n_layers=2 --n_heads=4 --n_kv_heads=2 "
            "--head_dim=8 --ffn_dim=64 --attention=msa,dense --msa_block_size=8 --msa_topk=2 "
            "--msa_index_dim=8 --seq_len=64 --batch_size=2 --steps=1 --data=synthetic:kv-recall "
            "--checkpoint_dir=" +
                dir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    FILE* p = popen(("ls " + dir + "/*.h5 | tail -1").c_str(), "r");
    char buf[4096] = {0};
    if (fgets(buf, sizeof(buf), p) == nullptr) buf[0] = 0;
    pclose(p);
    std::string file = buf;
    while (!file.empty() && file.back() == '\n') file.pop_back();
    return file;
  }();
  return path;
}

const char kCell[] = " --device=cpu --lengths=64 --depths=0.5 --recall_stride=0";

TEST(MsaEvalCliTest, CountFlagsAreValidatedByName) {
  const std::string ckpt = tiny_checkpoint();
  ASSERT_FALSE(ckpt.empty());
  const std::pair<const char*, const char*> cases[] = {
      {"batch_size", "0"},
      {"batch_size", "-4"},
      {"samples", "0"},
      {"samples", "-1"},
      {"pairs", "0"},
      {"recall_stride", "-1"},
      {"lengths", "0"},
      {"lengths", "-64"},
      {"depths", "nan"},
      {"depths", "inf"},
      {"samples", "4294967297"},
      {"batch_size", "9223372036854775807"},
  };
  for (const auto& [flag, value] : cases) {
    const std::string arg = std::string(" --") + flag + "=" + value;
    CommandResult r = run("msa-eval", "--checkpoint=" + ckpt + kCell + arg);
    EXPECT_EQ(r.exit_code, 1) << arg << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("invalid --") + flag + ":")) << arg;
    EXPECT_THAT(r.output, ::testing::Not(HasSubstr("accuracy"))) << arg;
  }
  // With --data, its own count flags too.
  const std::pair<const char*, const char*> data_cases[] = {
      {"seq_len", "-1"}, {"eval_windows", "0"}, {"position_buckets", "0,0"}, {"plot_size", "1x1"}};
  for (const auto& [flag, value] : data_cases) {
    const std::string arg = std::string(" --data='/nonexistent/*.tok' --") + flag + "=" + value;
    CommandResult r = run("msa-eval", "--checkpoint=" + ckpt + " --device=cpu" + arg);
    EXPECT_EQ(r.exit_code, 1) << arg << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(std::string("invalid --") + flag + ":")) << arg;
  }
}

// Flags that the chosen report does not read are refused, not ignored (a --plot that never
// appeared); a --recall_stride that samples nothing past the start (a recall of 1.0 that measures
// nothing) and lengths the task cannot fill are refused before anything is evaluated, naming the
// flags msa-eval takes.
TEST(MsaEvalCliTest, FlagsTheReportDoesNotReadOrCannotUseAreRefused) {
  const std::string ckpt = tiny_checkpoint();
  ASSERT_FALSE(ckpt.empty());
  const std::pair<std::string, std::string> cases[] = {
      {kCell + std::string(" --plot=x.png --csv=x.csv"),
       "invalid --csv, --plot: they belong to the perplexity (with --data) report"},
      {" --device=cpu --data='/nonexistent/*.tok' --lengths=64",
       "invalid --lengths: it belongs to the retrieval (without --data) report"},
      {" --device=cpu --lengths=64 --depths=0 --recall_stride=64",
       "invalid --recall_stride: 64 samples only position 0 of --lengths 64"},
      // Below the length, yet its second window starts past it (40 + 24 >= 64): position 0 again;
      // 39 + 24 < 64 samples two.
      {" --device=cpu --lengths=64 --depths=0 --recall_stride=40",
       "invalid --recall_stride: 40 samples only position 0 of --lengths 64, whose attention any "
       "selection keeps (a recall of 1.0 that measures nothing): use at most 39"},
      {" --device=cpu --lengths=64,8 --depths=0 --recall_stride=0",
       "invalid --lengths 8 (--depths 0, --pairs 4): the kv-recall task needs at least"},
      {" --device=cpu --lengths=64 --task=bogus", "invalid --task: unknown synthetic task 'bogus'"},
      // Outputs are checked before the evaluation (a bad path failed after all of it), and two
      // outputs on one file are refused (one replaced the other).
      {kCell + std::string(" --out_dir=/nonexistent/report"),
       "invalid --out_dir: '/nonexistent/report' cannot be created: '/nonexistent' does not "
       "exist"},
      {kCell + std::string(" --out_dir=/etc/hostname"),
       "invalid --out_dir: '/etc/hostname' is not a directory"},
      {kCell + std::string(" --out_dir=r --name=a/b"), "invalid --name: 'a/b'"},
      {" --device=cpu --data='/nonexistent/*.tok' --csv=same.out --plot=same.out",
       "invalid --plot: 'same.out' is also --csv's file"},
      {" --device=cpu --data='/nonexistent/*.tok' --plot=/nonexistent/p.png",
       "invalid --plot: '/nonexistent/p.png' cannot be created: '/nonexistent' does not exist"},
      {" --device=cpu --data='/nonexistent/*.tok' --csv=/etc/hostname/x.csv",
       "cannot be created: '/etc/hostname' is not a directory"},
      {" --device=cpu --data='/nonexistent/*.tok' --csv=/tmp",
       "invalid --csv: '/tmp' is a directory"},
      {" --device=cpu --data='/nonexistent/*.tok' --csv=x.csv/",
       "invalid --csv: 'x.csv/' names a directory, not a file"},
      // The logits dump writes nothing else: the report's flags beside it were ignored.
      {" --device=cpu --dump_logits_tokens=1,2,3 --lengths=128 --out_dir=r",
       "invalid --lengths, --out_dir: they belong to the retrieval report"},
      {" --device=cpu --data='/nonexistent/*.tok' --batch_size=4",
       "invalid --batch_size: it belongs to the retrieval (without --data) report"},
      // Accepted and ignored: --name without --out_dir wrote nothing, --pairs with the needle
      // task ran one fact, --seed beside the dump changed nothing; repeated rows, columns and
      // labels doubled the work into cells that could not be told apart.
      {kCell + std::string(" --name=foo"),
       "invalid --name: 'foo' names the report files written into --out_dir, which is not given"},
      {" --device=cpu --lengths=64 --depths=0.5 --recall_stride=0 --task=needle --pairs=7",
       "invalid --pairs: the needle task plants one fact"},
      {" --device=cpu --dump_logits_tokens=1,2,3 --seed=4",
       "invalid --seed: it belongs to the retrieval report"},
      {" --device=cpu --lengths=64,64 --depths=0.5 --recall_stride=0",
       "invalid --lengths: 64 is listed twice"},
      {" --device=cpu --lengths=64 --depths=0.5,0.5 --recall_stride=0",
       "invalid --depths: 0.5 is listed twice"},
      {",/elsewhere/x.h5 --labels=a,a --device=cpu --data='/nonexistent/*.tok'",
       "invalid --labels: 'a' names checkpoints 1 and 2: give each its own label\n"},
  };
  for (const auto& [args, message] : cases) {
    CommandResult r = run("msa-eval", "--checkpoint=" + ckpt + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(message)) << args;
    EXPECT_THAT(r.output, ::testing::Not(HasSubstr("accuracy"))) << args;
  }
  // Two outputs on one file, however spelled (through '..', with a trailing slash), and a file
  // in --out_dir's place.
  const std::string dir = fresh_dir("eval_cli_collide");
  const std::string base = dir.substr(dir.rfind('/') + 1);
  const std::pair<std::string, std::string> collisions[] = {
      {" --csv=" + dir + "/../" + base + "/x.csv --plot=" + dir + "/x.csv",
       "invalid --plot: '" + dir + "/x.csv' is also --csv's file"},
      {" --csv=" + dir + "/r/quality.md --out_dir=" + dir + "/r/", "is also --csv's file"},
      {" --csv=" + dir + "/r --out_dir=" + dir + "/r", "is --out_dir itself"},
  };
  std::system(("mkdir -p '" + dir + "/r'").c_str());
  for (const auto& [args, message] : collisions) {
    CommandResult r = run(
        "msa-eval", "--checkpoint=" + ckpt + " --device=cpu --data='/nonexistent/*.tok'" + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(message)) << args;
  }
}

TEST(MsaEvalCliTest, DirectoriesAreRefusedByName) {
  const std::string ckpt = tiny_checkpoint();
  ASSERT_FALSE(ckpt.empty());
  const std::string dir = fresh_dir("eval_cli_dir");
  CommandResult data = run("msa-eval", "--checkpoint=" + ckpt + " --device=cpu --data=" + dir);
  EXPECT_EQ(data.exit_code, 1) << data.output;
  EXPECT_THAT(data.output, HasSubstr("invalid --data: '" + dir + "' is a directory"));
  CommandResult checkpoint = run("msa-eval", "--checkpoint=" + dir + kCell);
  EXPECT_EQ(checkpoint.exit_code, 1) << checkpoint.output;
  EXPECT_THAT(checkpoint.output, HasSubstr("invalid --checkpoint: '" + dir + "' is a directory"));
  // A run's checkpoint directory: the hint names its newest file (it suggested a glob, which
  // --checkpoint does not take).
  const std::string run_dir = ckpt.substr(0, ckpt.rfind('/'));
  checkpoint = run("msa-eval", "--checkpoint=" + run_dir + kCell);
  EXPECT_EQ(checkpoint.exit_code, 1) << checkpoint.output;
  EXPECT_THAT(checkpoint.output,
              HasSubstr("is a directory (give one checkpoint file, e.g. the newest: '" + ckpt));
}

TEST(MsaEvalCliTest, ValidFlagsStillMeasure) {
  const std::string ckpt = tiny_checkpoint();
  ASSERT_FALSE(ckpt.empty());
  CommandResult r = run("msa-eval", "--checkpoint=" + ckpt + kCell + " --samples=2 --batch_size=1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("length 64 depth 0.50: accuracy"));
  // The MSA layer (layer 0; layer 1 is dense) has its recalls at the answer positions; with
  // --recall_stride=0 (kCell) the strided ones are not measured, so they get no columns (not
  // zeros that read as a selector keeping nothing).
  EXPECT_THAT(r.output, HasSubstr("|  all  | answer L0 | ans.block L0 | ans.ceiling L0\n"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("recall L0")));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("L1")));
  CommandResult off = run("msa-eval", "--checkpoint=" + ckpt + kCell +
                                          " --samples=2 --batch_size=1 --answer_recall=false");
  EXPECT_EQ(off.exit_code, 0) << off.output;
  EXPECT_THAT(off.output, ::testing::Not(HasSubstr("answer L0")));
  // A stride measures the strided four.
  CommandResult strided = run(
      "msa-eval", "--checkpoint=" + ckpt + kCell + " --samples=2 --batch_size=1 --recall_stride=4");
  EXPECT_EQ(strided.exit_code, 0) << strided.output;
  EXPECT_THAT(strided.output, HasSubstr("| recall L0 | block L0 | recall ceiling L0 | max-pool L0 "
                                        "| answer L0 | ans.block L0 | ans.ceiling L0\n"));
  // An --out_dir with a trailing slash, created by the run (the early path check refused it).
  const std::string out = fresh_dir("eval_cli_out") + "/report/";
  CommandResult written = run(
      "msa-eval", "--checkpoint=" + ckpt + kCell + " --samples=2 --batch_size=1 --out_dir=" + out);
  EXPECT_EQ(written.exit_code, 0) << written.output;
  EXPECT_TRUE(std::ifstream(out + "quality.md").good()) << written.output;
}

// A length whose forward pass cannot fit is refused before the model is built (2^31 - 1 tokens
// grew to 15 GB and on until the OOM killer), naming the flags.
TEST(MsaEvalCliTest, LengthsBeyondMemoryAreRefused) {
  const std::string ckpt = tiny_checkpoint();
  ASSERT_FALSE(ckpt.empty());
  CommandResult r = run("msa-eval", "--checkpoint=" + ckpt +
                                        " --device=cpu --lengths=64,2147483647 --depths=0.5 "
                                        "--recall_stride=0 --samples=1 --batch_size=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("not enough memory for 1 sequence(s) of 2147483647 tokens "
                                  "(--batch_size x the longest of --lengths)"));
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("accuracy")));
}

}  // namespace
