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

}  // namespace
