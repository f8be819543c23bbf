// msa-train's command line: --help documents every flag with its default, and bad flags or
// configs exit non-zero with a one-line message naming the flag.
#include <cstdio>
#include <string>
#include <sys/wait.h>

#include "gtest/gtest.h"

namespace {

struct CommandResult {
  int exit_code;
  std::string output;
};

CommandResult run_msa_train(const std::string& args) {
  std::string cmd = std::string(MSA_BINARY_DIR) + "/msa-train " + args + " 2>&1";
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
  for (const char* flag :
       {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
        "attention", "msa_block_size", "msa_topk", "msa_index_dim", "msa_index_loss_weight",
        "steps", "batch_size", "seq_len", "lr", "seed", "device", "data", "index_warmup_steps"}) {
    EXPECT_NE(r.output.find(std::string("-") + flag + " ("), std::string::npos) << flag;
  }
  EXPECT_NE(r.output.find("default: \"msa\""), std::string::npos);
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

}  // namespace
