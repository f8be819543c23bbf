// msa-train --pack_documents end to end: msa-data writes byte-level shards of many short JSONL
// documents (EOS 256 in the metadata), msa-train trains on them with the documents of each window
// kept apart (training and validation), which changes the loss from the first step; runs without
// an EOS id (synthetic data, shards without metadata) are refused naming the flag; under --cp=2
// the packed run matches one rank's.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/command.h"

namespace {

using msa::test::CommandResult;
using msa::test::fresh_dir;
using msa::test::mpirun_program;
using msa::test::run_program;
using ::testing::HasSubstr;

// Byte-level shards of 300 JSONL documents of 10..60 bytes: a 64-token window holds several.
std::string make_shards(const std::string& name) {
  const std::string dir = fresh_dir(name);
  {
    std::ofstream f(dir + "/docs.jsonl");
    for (int i = 0; i < 300; ++i)
      f << R"({"text": ")" << std::string(10 + (i * 17) % 51, static_cast<char>('a' + i % 26))
        << " " << i << R"("})"
        << "\n";
  }
  const CommandResult data =
      run_program("msa-data", "text --input=" + dir + "/docs.jsonl --output=" + dir + "/shards");
  EXPECT_EQ(data.exit_code, 0) << data.output;
  return dir + "/shards";
}

const char kRun[] =
    "--attention=dense,msa --d_model=32 --n_heads=4 --n_kv_heads=2 --head_dim=8 --ffn_dim=64 "
    "--msa_block_size=16 --msa_topk=2 --msa_index_dim=8 --seq_len=64 --batch_size=2 "
    "--device=cpu --vocab_size=257 --steps=4 --dense_attention_steps=1 --log_every=1 "
    "--recall_every=2 --recall_stride=4 --eval_every=4 --eval_batches=2 --val_fraction=0.05 ";

std::vector<nlohmann::json> metrics(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("val_loss")) out.push_back(std::move(j));  // the steps' lines
  }
  return out;
}

TEST(MsaTrainPackedTest, TrainsOnMsaDataShardsWithDocumentsKeptApart) {
  const std::string shards = make_shards("packed_train");
  const std::string dir = fresh_dir("packed_train_runs");
  const CommandResult packed =
      run_program("msa-train", std::string(kRun) + "--pack_documents --data='" + shards +
                                   "/*.tok' --metrics_jsonl=" + dir + "/packed.jsonl");
  ASSERT_EQ(packed.exit_code, 0) << packed.output;
  EXPECT_THAT(packed.output, HasSubstr("documents packed: EOS 256"));
  EXPECT_THAT(packed.output, HasSubstr("val_loss"));
  const CommandResult plain =
      run_program("msa-train", std::string(kRun) + "--data='" + shards +
                                   "/*.tok' --metrics_jsonl=" + dir + "/plain.jsonl");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_THAT(plain.output, ::testing::Not(HasSubstr("documents packed")));
  const std::vector<nlohmann::json> p = metrics(dir + "/packed.jsonl"),
                                    u = metrics(dir + "/plain.jsonl");
  ASSERT_EQ(p.size(), 4u);
  ASSERT_EQ(u.size(), 4u);
  for (int s = 0; s < 4; ++s) ASSERT_TRUE(std::isfinite(p[s]["loss"].get<double>())) << s;
  // Same weights and windows at step 1: only the document boundaries differ.
  EXPECT_GT(std::abs(p[0]["loss"].get<double>() - u[0]["loss"].get<double>()), 1e-6)
      << p[0].dump() << "\n"
      << u[0].dump();
}

// Under context parallelism (mpirun -np 2 --cp=2: each rank 32 of the 64 tokens, documents
// spanning the shards; contiguous and zig-zag) the packed run is the one-rank packed run: the same
// samples and documents, gradients summed in another order, so every step's loss agrees to f32
// rounding (1e-5 relative; a document boundary or a RoPE position lost at the shard edge moves it
// by >1e-3).
TEST(MsaTrainPackedTest, ContextParallelPackedRunMatchesOneRank) {
  const std::string shards = make_shards("packed_cp");
  const std::string dir = fresh_dir("packed_cp_runs");
  const std::string run = std::string(kRun) + "--pack_documents --eval_every=0 --data='" + shards +
                          "/*.tok' --metrics_jsonl=" + dir;
  const CommandResult one = run_program("msa-train", run + "/one.jsonl");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  for (const char* layout : {"contiguous", "zigzag"}) {
    const std::string name = std::string("/cp_") + layout + ".jsonl";
    const CommandResult cp =
        mpirun_program(2, "msa-train", run + name + " --cp=2 --cp_layout=" + std::string(layout));
    ASSERT_EQ(cp.exit_code, 0) << cp.output;
    EXPECT_THAT(cp.output, HasSubstr(std::string("cp 2 (") + layout + ")"));
    const std::vector<nlohmann::json> a = metrics(dir + "/one.jsonl"), b = metrics(dir + name);
    ASSERT_EQ(a.size(), 4u);
    ASSERT_EQ(b.size(), 4u);
    for (int s = 0; s < 4; ++s) {
      const double la = a[s]["loss"].get<double>(), lb = b[s]["loss"].get<double>();
      EXPECT_LT(std::abs(lb - la) / la, 1e-5)
          << layout << " step " << s + 1 << ": " << lb << " vs " << la;
      const double ia = a[s]["index_loss"].get<double>(), ib = b[s]["index_loss"].get<double>();
      EXPECT_LT(std::abs(ib - ia) / ia, 1e-5)
          << layout << " step " << s + 1 << ": " << ib << " vs " << ia;
    }
  }
}

TEST(MsaTrainPackedTest, RefusedWithoutAnEosIdNamingTheFlag) {
  const CommandResult synthetic =
      run_program("msa-train", std::string(kRun) + "--pack_documents --data=synthetic:kv-recall");
  EXPECT_EQ(synthetic.exit_code, 1) << synthetic.output;
  EXPECT_THAT(synthetic.output, HasSubstr("--pack_documents"));

  const std::string shards = make_shards("packed_no_metadata");
  std::remove((shards + "/train.json").c_str());
  const CommandResult no_metadata = run_program(
      "msa-train", std::string(kRun) + "--pack_documents --data='" + shards + "/*.tok'");
  EXPECT_EQ(no_metadata.exit_code, 1) << no_metadata.output;
  EXPECT_THAT(no_metadata.output, HasSubstr("--pack_documents"));
  EXPECT_THAT(no_metadata.output, HasSubstr(shards + "/train.json"));
}

TEST(MsaTrainPackedTest, HelpDocumentsTheFlag) {
  const CommandResult r = run_program("msa-train", "--help");
  EXPECT_THAT(r.output, HasSubstr("-pack_documents ("));
  EXPECT_THAT(r.output, HasSubstr("msa-data metadata file"));
}

}  // namespace
