// msa-data synthetic's shards: each query is followed by its answer (the shards held no answer at
// all: the token after a query was the next query), whole samples per shard so that window i is
// sample i, and a failed run keeps the output's old shards (they were deleted before the write).
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/synthetic_shards.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

using ::testing::HasSubstr;

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/synthetic_shards_" + name;
  std::system(("rm -rf '" + dir + "'").c_str());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

std::vector<uint32_t> read_tokens(const std::string& path) {
  auto shard = ShardReader::open(path);
  EXPECT_TRUE(shard.ok()) << shard.status();
  if (!shard.ok()) return {};
  std::vector<uint32_t> out;
  for (int64_t i = 0; i < (*shard)->size(); ++i) out.push_back((*shard)->token(i));
  return out;
}

// Checks one stored sample against the task's rules, found from its tokens alone: the facts
// F(k, v) = 16 + 8 k + v sit before the queries, and the token after each query Q(k) = 80 + k is
// the answer A(v) = 88 + v of the fact with key k.
void expect_queries_answered(const std::vector<uint32_t>& sample, int pairs,
                             const std::string& at) {
  const int64_t L = static_cast<int64_t>(sample.size());
  std::map<int, int> fact_value;  // key -> value
  for (int64_t t = 0; t < L - 2 * pairs; ++t) {
    const uint32_t x = sample[t];
    ASSERT_LT(x, static_cast<uint32_t>(kSyntheticQueryBase)) << at << " t=" << t;
    if (x >= static_cast<uint32_t>(kSyntheticFactBase)) {
      const int key = (x - kSyntheticFactBase) / kSyntheticValues;
      EXPECT_EQ(fact_value.count(key), 0u) << at << ": key " << key << " twice";
      fact_value[key] = (x - kSyntheticFactBase) % kSyntheticValues;
    }
  }
  EXPECT_EQ(static_cast<int>(fact_value.size()), pairs) << at;
  std::map<int, int> asked;
  for (int i = 0; i < pairs; ++i) {
    const uint32_t q = sample[L - 2 * pairs + 2 * i], a = sample[L - 2 * pairs + 2 * i + 1];
    ASSERT_GE(q, static_cast<uint32_t>(kSyntheticQueryBase)) << at << " query " << i;
    ASSERT_LT(q, static_cast<uint32_t>(kSyntheticAnswerBase)) << at << " query " << i;
    const int key = static_cast<int>(q) - kSyntheticQueryBase;
    ASSERT_EQ(fact_value.count(key), 1u) << at << ": query of key " << key << " without its fact";
    EXPECT_EQ(a, static_cast<uint32_t>(kSyntheticAnswerBase + fact_value[key]))
        << at << " query " << i;
    ++asked[key];
  }
  EXPECT_EQ(static_cast<int>(asked.size()), pairs) << at << ": every key asked once";
}

TEST(SyntheticShardsTest, EveryQueryIsFollowedByItsAnswer) {
  for (const SyntheticTask task : {SyntheticTask::kKvRecall, SyntheticTask::kNeedle})
    for (const double depth : {-1.0, 0.0, 0.5, 1.0})
      for (const int64_t L : {int64_t{25}, int64_t{64}, int64_t{301}}) {
        SyntheticConfig c;
        c.task = task;
        c.seq_len = L;
        c.pairs = 4;
        c.depth = depth;
        c.seed = 7;
        ASSERT_TRUE(validate_synthetic_shard_sample(c).ok());
        const int pairs = task == SyntheticTask::kNeedle ? 1 : 4;
        for (uint64_t i = 0; i < 20; ++i) {
          const std::vector<uint32_t> s = synthetic_shard_sample(c, i);
          ASSERT_EQ(static_cast<int64_t>(s.size()), L);
          expect_queries_answered(s, pairs,
                                  absl::StrFormat("%s depth %g L %d sample %d",
                                                  synthetic_task_name(task), depth, L, i));
        }
      }
}

TEST(SyntheticShardsTest, TooShortSamplesAreRefusedNamingTheFlag) {
  SyntheticConfig c;
  c.pairs = 4;
  c.seq_len = 4 * 4 + 2 * 4;  // one short of the facts' span and four query-answer pairs
  const absl::Status s = validate_synthetic_shard_sample(c);
  EXPECT_THAT(std::string(s.message()), HasSubstr("invalid --seq_len=24"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("at least 25 tokens"));
  c.seq_len = 10;  // shorter than the task's own layout too: the shard's length is the one named
  EXPECT_THAT(std::string(validate_synthetic_shard_sample(c).message()),
              HasSubstr("at least 25 tokens"));
  c.seq_len = 25;
  EXPECT_TRUE(validate_synthetic_shard_sample(c).ok());
  c.pairs = 9;
  EXPECT_THAT(std::string(validate_synthetic_shard_sample(c).message()),
              HasSubstr("invalid --pairs=9"));
}

// Whole samples per shard, back to back, plus one filler token: window w of a shard (tokens
// [w L, w L + L], docs/data.md's sampler) is sample w, in sample order over the sorted shards.
TEST(SyntheticShardsTest, ShardsHoldWholeSamplesInOrder) {
  SyntheticShardingOptions o;
  o.config.seq_len = 40;
  o.config.seed = 3;
  o.samples = 11;
  o.shard_tokens = 130;  // 3 samples per shard: 4 shards, the last with 2
  o.output_dir = fresh_dir("order") + "/out";
  int64_t last_progress = 0;
  auto r = write_synthetic_shards(o, [&](int64_t done, int64_t total) {
    EXPECT_EQ(done, last_progress + 1);
    EXPECT_EQ(total, 11);
    last_progress = done;
  });
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(last_progress, 11);
  ASSERT_EQ(r->shards.size(), 4u);
  EXPECT_EQ(r->shards[0], o.output_dir + "/kv-recall-00000.tok");
  int64_t sample = 0, tokens = 0;
  for (const std::string& path : r->shards) {
    const std::vector<uint32_t> t = read_tokens(path);
    tokens += static_cast<int64_t>(t.size());
    const int64_t windows = (static_cast<int64_t>(t.size()) - 1) / 40;
    ASSERT_EQ(windows * 40 + 1, static_cast<int64_t>(t.size())) << path;
    EXPECT_EQ(windows, path == r->shards.back() ? 2 : 3) << path;
    for (int64_t w = 0; w < windows; ++w, ++sample) {
      const std::vector<uint32_t> expected =
          synthetic_shard_sample(o.config, static_cast<uint64_t>(sample));
      EXPECT_EQ(std::vector<uint32_t>(t.begin() + w * 40, t.begin() + w * 40 + 40), expected)
          << path << " window " << w;
    }
    EXPECT_LT(t.back(), static_cast<uint32_t>(kSyntheticFiller)) << path;
  }
  EXPECT_EQ(sample, 11);
  EXPECT_EQ(tokens, r->tokens);
}

// A run that fails while writing leaves the output's old shards (and no staging directory); the
// old code deleted them before it wrote anything.
// The metadata file says how the shards were made (msa-train's resume fingerprint reads it), and
// a file of that name that is not msa-data's is not replaced without --overwrite.
TEST(SyntheticShardsTest, MetadataDescribesTheShardsAndForeignFilesAreKept) {
  SyntheticShardingOptions o;
  o.config.seq_len = 64;
  o.config.seed = 11;
  o.samples = 3;
  o.output_dir = fresh_dir("metadata") + "/out";
  auto r = write_synthetic_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->metadata, o.output_dir + "/kv-recall.json");
  std::ifstream in(r->metadata);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["written_by"], "msa-data synthetic");
  EXPECT_EQ(j["seed"], 11);
  EXPECT_EQ(j["samples"], 3);
  EXPECT_EQ(j["seq_len"], 64);
  EXPECT_EQ(j["shards"], nlohmann::json::array({"kv-recall-00000.tok"}));

  o.output_dir = fresh_dir("foreign");
  std::ofstream(o.output_dir + "/tokenizer.json") << "{\"model\": {}}";
  o.prefix = "tokenizer";
  const absl::Status s = write_synthetic_shards(o).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("exists and is not msa-data's metadata"));
  std::ifstream kept(o.output_dir + "/tokenizer.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(kept), {}), "{\"model\": {}}");
  // Nor is one whose written_by is not a string (reading it as one threw), and text's metadata
  // is msa-data's: replaced.
  std::ofstream(o.output_dir + "/tokenizer.json") << "{\"written_by\": [\"msa-data\"]}";
  EXPECT_THAT(std::string(write_synthetic_shards(o).status().message()),
              HasSubstr("exists and is not msa-data's metadata"));
  std::ofstream(o.output_dir + "/tokenizer.json") << "{\"written_by\": \"msa-data text\"}";
  const absl::Status replaced = write_synthetic_shards(o).status();
  EXPECT_TRUE(replaced.ok()) << replaced;
  std::ifstream now(o.output_dir + "/tokenizer.json");
  EXPECT_EQ(nlohmann::json::parse(now)["written_by"], "msa-data synthetic");
}

TEST(SyntheticShardsTest, FailedRunKeepsTheOldShards) {
  SyntheticShardingOptions o;
  o.config.seq_len = 64;
  o.samples = 4;
  o.output_dir = fresh_dir("keep") + "/out";
  auto first = write_synthetic_shards(o);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::vector<uint32_t> before = read_tokens(first->shards[0]);

  o.overwrite = true;
  o.prefix = "no_such_dir/x";  // the shard cannot be created inside the staging directory
  const absl::Status s = write_synthetic_shards(o).status();
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("no_such_dir/x-00000.tok"));
  EXPECT_EQ(read_tokens(first->shards[0]), before);
  FILE* p = popen(("ls -A '" + o.output_dir + "'").c_str(), "r");
  char line[256];
  std::vector<std::string> names;
  while (fgets(line, sizeof line, p)) names.emplace_back(line);
  pclose(p);
  EXPECT_EQ(names, (std::vector<std::string>{"kv-recall-00000.tok\n", "kv-recall.json\n"}));

  // Without --overwrite the old shards are refused, as for msa-data text.
  o.overwrite = false;
  o.prefix = "";
  EXPECT_THAT(std::string(write_synthetic_shards(o).status().message()), HasSubstr("--overwrite"));
  // With it, a good run replaces them.
  o.overwrite = true;
  o.config.seed = 99;
  auto second = write_synthetic_shards(o);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(read_tokens(second->shards[0]).size(), before.size());
  EXPECT_NE(read_tokens(second->shards[0]), before);
}

}  // namespace
}  // namespace msa
