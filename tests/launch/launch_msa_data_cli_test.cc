// msa-data and msa-train on token shards, end to end: text -> shards -> training with validation;
// bad commands and shards that do not fit the model are one-line errors naming the problem.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::HasSubstr;

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run(const std::string& program, const std::string& args) {
  FILE* pipe =
      popen((std::string(MSA_BINARY_DIR) + "/" + program + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  return {WEXITSTATUS(pclose(pipe)), out};
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

const char kModel[] =
    "--attention=msa --d_model=32 --n_heads=4 --n_kv_heads=2 --head_dim=8 --ffn_dim=64 "
    "--msa_block_size=16 --msa_topk=4 --msa_index_dim=8 --seq_len=64 --batch_size=2 --device=cpu ";

TEST(MsaDataCliTest, TextShardsTrainWithValidation) {
  const std::string dir = fresh_dir("text_to_train");
  for (int i = 0; i < 3; ++i) {
    std::ofstream f(dir + "/doc" + std::to_string(i) + ".txt");
    for (int j = 0; j < 400; ++j)
      f << "document " << i << " line " << j << ": the quick brown fox\n";
  }
  CommandResult data =
      run("msa-data", "text --input=" + dir + "/doc0.txt," + dir + "/doc1.txt," + dir +
                          "/doc2.txt --output=" + dir + "/shards --shard_tokens=20000");
  ASSERT_EQ(data.exit_code, 0) << data.output;
  EXPECT_THAT(data.output, HasSubstr("3 documents"));
  CommandResult train =
      run("msa-train", std::string(kModel) +
                           "--vocab_size=257 --steps=6 --log_every=3 "
                           "--eval_every=3 --eval_batches=2 --val_fraction=0.05 --data='" +
                           dir + "/shards/*.tok'");
  ASSERT_EQ(train.exit_code, 0) << train.output;
  EXPECT_THAT(train.output, HasSubstr("validation windows"));
  EXPECT_THAT(train.output, HasSubstr("val_loss"));
}

TEST(MsaDataCliTest, ShardsThatDoNotFitTheModelAreOneLineErrors) {
  const std::string dir = fresh_dir("too_small_vocab");
  {
    std::ofstream f(dir + "/a.txt");
    for (int j = 0; j < 200; ++j) f << "some text " << j << "\n";
  }
  ASSERT_EQ(run("msa-data", "text --input=" + dir + "/a.txt --output=" + dir + "/shards").exit_code,
            0);
  // Bytes and EOS need vocab 257; a 128-token model cannot read them.
  CommandResult r = run("msa-train", std::string(kModel) + "--vocab_size=128 --steps=1 --data='" +
                                         dir + "/shards/*.tok'");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("invalid --data"));
  EXPECT_THAT(r.output, HasSubstr("is >= the model's vocab_size 128"));
  CommandResult none =
      run("msa-train", std::string(kModel) + "--steps=1 --data='" + dir + "/nothing/*.tok'");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.output, HasSubstr("no files match"));
  CommandResult bad = run("msa-data", "frobnicate");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("unknown command 'frobnicate'"));
}

// A directory where a file belongs is refused by name: as msa-data's text input (it was one empty
// document) and as msa-train's --data (it was "mmap failed: No such device").
TEST(MsaDataCliTest, DirectoriesAreRefusedByName) {
  const std::string dir = fresh_dir("dir_inputs");
  std::system(("mkdir -p '" + dir + "/docs'").c_str());
  { std::ofstream(dir + "/a.txt") << "some text\n"; }
  CommandResult data =
      run("msa-data", "text --input=" + dir + "/a.txt," + dir + "/docs --output=" + dir + "/out");
  EXPECT_EQ(data.exit_code, 1) << data.output;
  EXPECT_THAT(data.output, HasSubstr("invalid --input: '" + dir + "/docs' is a directory"));
  CommandResult train =
      run("msa-train", std::string(kModel) + "--vocab_size=257 --steps=1 --data=" + dir + "/docs");
  EXPECT_NE(train.exit_code, 0) << train.output;
  EXPECT_THAT(train.output, HasSubstr(dir + "/docs: is a directory"));
  EXPECT_THAT(train.output, ::testing::Not(HasSubstr("mmap failed")));
}

// Shards of an earlier run in --output are refused (a glob would mix them with the new ones);
// --overwrite deletes them first.
TEST(MsaDataCliTest, StaleShardsAreRefusedUnlessOverwrite) {
  const std::string dir = fresh_dir("stale_shards");
  {
    std::ofstream f(dir + "/a.txt");
    for (int j = 0; j < 100; ++j) f << "line " << j << "\n";
  }
  const std::string text = "text --input=" + dir + "/a.txt --output=" + dir + "/out";
  ASSERT_EQ(run("msa-data", text + " --shard_tokens=100").exit_code, 0);
  CommandResult again = run("msa-data", text + " --shard_tokens=100000");
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_THAT(again.output, HasSubstr("invalid --output: '" + dir + "/out' already holds"));
  EXPECT_THAT(again.output, HasSubstr("--overwrite"));
  CommandResult overwrite = run("msa-data", text + " --shard_tokens=100000 --overwrite");
  ASSERT_EQ(overwrite.exit_code, 0) << overwrite.output;
  EXPECT_THAT(overwrite.output, HasSubstr("in 1 shard(s)"));
  FILE* p = popen(("ls '" + dir + "/out' | wc -l").c_str(), "r");
  int files = -1;
  ASSERT_EQ(fscanf(p, "%d", &files), 1);
  pclose(p);
  EXPECT_EQ(files, 1);
  // The synthetic command refuses and overwrites the same way.
  const std::string synth = "synthetic --seq_len=64 --samples=2 --output=" + dir + "/out";
  CommandResult synth_refused = run("msa-data", synth);
  EXPECT_EQ(synth_refused.exit_code, 1) << synth_refused.output;
  EXPECT_THAT(synth_refused.output, HasSubstr("already holds 1 token shard"));
  EXPECT_EQ(run("msa-data", synth + " --overwrite").exit_code, 0);
}

}  // namespace
