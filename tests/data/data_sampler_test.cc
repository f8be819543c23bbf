// The window sampler: epochs cover every window exactly once, ranks read
// disjoint samples, windows never leave their shard, and sampling is a pure
// function of (seed, sample number).
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/synthetic.h"
#include "data/window_sampler.h"
#include "gtest/gtest.h"

namespace msa {
namespace {

// Three shards whose token i encodes (shard, position): 1000 * shard +
// position.
std::string make_corpus(const std::vector<int>& sizes) {
  const std::string dir = std::string(::testing::TempDir()) + "/corpus_" +
                          std::to_string(sizes.size()) + "_" + std::to_string(sizes[0]);
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<uint32_t> tokens;
    for (int i = 0; i < sizes[s]; ++i) tokens.push_back(1000 * s + i);
    EXPECT_TRUE(
        write_shard(dir + "/part-" + std::to_string(s) + ".tok", tokens, TokenWidth::kU16).ok());
  }
  return dir + "/part-*.tok";
}

TEST(DataSamplerTest, PermutationIsABijection) {
  for (int64_t n : {1, 2, 3, 17, 64, 1000}) {
    IndexPermutation p(n, 42);
    std::set<int64_t> seen;
    for (int64_t i = 0; i < n; ++i) seen.insert(p(i));
    EXPECT_EQ(static_cast<int64_t>(seen.size()), n);
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), n - 1);
  }
}

TEST(DataSamplerTest, WindowsStayInsideTheirShardAndMatchTheTokens) {
  const std::string glob = make_corpus({53, 40, 9});
  auto s = WindowSampler::open(glob, 8, 10000, 0.0, 1);
  ASSERT_TRUE(s.ok()) << s.status();
  // floor((n - 1) / 8) windows per shard: 6 + 4 + 1.
  ASSERT_EQ((*s)->num_windows(), 11);
  std::vector<int32_t> w(9);
  for (int64_t i = 0; i < 11; ++i) {
    (*s)->read_window(i, w.data());
    const int shard = w[0] / 1000;
    for (int j = 0; j < 9; ++j) {
      EXPECT_EQ(w[j] / 1000, shard) << "window " << i << " crosses a shard boundary";
      EXPECT_EQ(w[j], w[0] + j) << "window " << i << " is not contiguous";
    }
    EXPECT_EQ((w[0] % 1000) % 8, 0);
  }
}

// The held-out count is the ceiling of the double product val_fraction x windows, kept as it is
// (0.07 x 100 = 7.000000000000001 holds out 8, not 7): a resumed run's split must not move under
// a change of rule, or a window it trained on would become validation.
TEST(DataSamplerTest, ValidationCountIsTheCeilingOfTheDoubleProduct) {
  const std::string corpus = make_corpus({401});  // 100 windows of 4 + 1 tokens
  for (const auto& [fraction, expected] :
       std::vector<std::pair<double, int64_t>>{{0.07, 8}, {0.14, 15}, {0.071, 8}, {0.05, 5}}) {
    auto s = WindowSampler::open(corpus, 4, 10000, fraction, 7);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ((*s)->num_windows(), 100);
    EXPECT_EQ((*s)->num_val_windows(), expected) << fraction;
  }
}

TEST(DataSamplerTest, EachEpochCoversEveryTrainingWindowOnce) {
  auto s = WindowSampler::open(make_corpus({101, 77}), 4, 10000, 0.1, 7);
  ASSERT_TRUE(s.ok()) << s.status();
  const int64_t W = (*s)->num_train_windows();
  ASSERT_EQ((*s)->num_windows(), 25 + 19);
  ASSERT_EQ((*s)->num_val_windows(), 5);
  std::vector<int64_t> epoch0, epoch1;
  for (int64_t n = 0; n < W; ++n) epoch0.push_back((*s)->train_window(n));
  for (int64_t n = W; n < 2 * W; ++n) epoch1.push_back((*s)->train_window(n));
  std::vector<int64_t> sorted0 = epoch0, sorted1 = epoch1;
  std::sort(sorted0.begin(), sorted0.end());
  std::sort(sorted1.begin(), sorted1.end());
  for (int64_t i = 0; i < W; ++i) {
    ASSERT_EQ(sorted0[i], i);
    ASSERT_EQ(sorted1[i], i);
  }
  EXPECT_NE(epoch0, epoch1) << "epochs should be shuffled differently";
  // Validation windows are the held-out tail, never trained on.
  for (int64_t i = 0; i < 5; ++i) EXPECT_GE((*s)->val_window(i), W);
}

TEST(DataSamplerTest, DataParallelRanksReadDisjointSamples) {
  for (int dp : {1, 2, 4}) {
    std::set<int64_t> numbers;
    int64_t count = 0;
    for (int64_t step = 1; step <= 5; ++step)
      for (int micro = 0; micro < 2; ++micro)
        for (int rank = 0; rank < dp; ++rank)
          for (int64_t i = 0; i < 3; ++i, ++count)
            numbers.insert(sample_number(step, micro, 2, rank, dp, 3, i));
    EXPECT_EQ(static_cast<int64_t>(numbers.size()), count);
    EXPECT_EQ(*numbers.rbegin(), count - 1) << "numbers are consecutive over the global batch";
  }
}

// A run of 3 steps x 2 ranks x batch 4 (samples 0..23) resumed on 1 rank with batch 3 and 2
// micro-batches: the resumed steps read 24, 25, ... consecutively, none of 0..23 again.
TEST(DataSamplerTest, ResumeAtAnotherGlobalBatchContinuesFromTheCursor) {
  std::set<int64_t> before, after;
  for (int64_t step = 1; step <= 3; ++step)
    for (int rank = 0; rank < 2; ++rank)
      for (int64_t i = 0; i < 4; ++i) before.insert(sample_number(step, 0, 1, rank, 2, 4, i));
  ASSERT_EQ(static_cast<int64_t>(before.size()), 24);
  const int64_t cursor = *before.rbegin() + 1;
  for (int64_t step = 4; step <= 6; ++step)
    for (int micro = 0; micro < 2; ++micro)
      for (int64_t i = 0; i < 3; ++i)
        after.insert(sample_number(step, micro, 2, 0, 1, 3, i, /*base_step=*/3, cursor));
  EXPECT_EQ(static_cast<int64_t>(after.size()), 18);
  EXPECT_EQ(*after.begin(), 24) << "the first resumed sample is the cursor";
  EXPECT_EQ(*after.rbegin(), 24 + 18 - 1) << "consecutive, nothing skipped";
  // Without the base (the old rule: step x global batch) step 4 would restart at sample 18.
  EXPECT_EQ(sample_number(4, 0, 2, 0, 1, 3, 0), 18);
  // The same global batch: identical to the uninterrupted run's numbers.
  for (int rank = 0; rank < 2; ++rank)
    for (int64_t i = 0; i < 4; ++i)
      EXPECT_EQ(sample_number(4, 0, 1, rank, 2, 4, i, 3, cursor), sample_number(4, 0, 1, rank, 2, 4, i));
}

TEST(DataSamplerTest, SamplingIsAPureFunctionOfSeedAndSampleNumber) {
  const std::string glob = make_corpus({200});
  auto a = WindowSampler::open(glob, 4, 10000, 0.0, 3);
  auto b = WindowSampler::open(glob, 4, 10000, 0.0, 3);
  auto c = WindowSampler::open(glob, 4, 10000, 0.0, 4);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  std::vector<int64_t> wa, wb, wc;
  for (int64_t n = 0; n < 100; ++n) {
    wa.push_back((*a)->train_window(n));
    wb.push_back((*b)->train_window(n));
    wc.push_back((*c)->train_window(n));
  }
  EXPECT_EQ(wa, wb);
  EXPECT_NE(wa, wc);
}

TEST(DataSamplerTest, TooLittleDataAndBadVocabAreClearErrors) {
  auto s = WindowSampler::open(make_corpus({5}), 8, 10000, 0.0, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("too little data for --seq_len=8"),
            std::string::npos)
      << s.status();
  s = WindowSampler::open(make_corpus({300}), 8, 100, 0.0, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("is >= the model's vocab_size 100"),
            std::string::npos)
      << s.status();
  s = WindowSampler::open("/nonexistent/*.tok", 8, 100, 0.0, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("no files match"), std::string::npos);
}

// Samplers over the same files share one mapping per shard (the training and validation sources
// each kept their own, halving what vm.max_map_count allows), check the vocabulary against the
// shard's largest token found once, and open a file replaced since anew.
TEST(DataSamplerTest, SamplersShareEachShardsMappingUntilTheFileChanges) {
  const std::string glob = make_corpus({300, 200});
  auto a = WindowSampler::open(glob, 8, 10000, 0.1, 1);
  auto b = WindowSampler::open(glob, 8, 10000, 0.1, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->shards().size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ((*a)->shards()[i].get(), (*b)->shards()[i].get()) << i;
  // Shard 1 holds tokens up to 1199: a vocabulary of 1100 fits shard 0 only, by name.
  auto small = WindowSampler::open(glob, 8, 1100, 0.1, 1);
  ASSERT_FALSE(small.ok());
  EXPECT_NE(std::string(small.status().message()).find("part-1.tok: token id 1100 at position 100"),
            std::string::npos)
      << small.status();
  // Rewritten (another size): read anew, not from the old mapping.
  const std::string part1 = glob.substr(0, glob.rfind('/')) + "/part-1.tok";
  ASSERT_TRUE(write_shard(part1, std::vector<uint32_t>(100, 7), TokenWidth::kU16).ok());
  auto c = WindowSampler::open(glob, 8, 10000, 0.1, 1);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE((*c)->shards()[1].get(), (*a)->shards()[1].get());
  EXPECT_EQ((*c)->shards()[1]->size(), 100);
  EXPECT_EQ((*c)->shards()[1]->token(5), 7u);
  EXPECT_EQ((*c)->shards()[0].get(), (*a)->shards()[0].get());
}

TEST(DataSyntheticTest, AnswersAreTheValuesOfTheQueriedFacts) {
  for (SyntheticTask task : {SyntheticTask::kKvRecall, SyntheticTask::kNeedle}) {
    SyntheticConfig c;
    c.task = task;
    c.seq_len = 200;
    c.pairs = 5;
    c.seed = 9;
    ASSERT_TRUE(validate(c).ok());
    for (uint64_t i = 0; i < 50; ++i) {
      const SyntheticSample s = make_synthetic_sample(c, i);
      const size_t pairs = task == SyntheticTask::kNeedle ? 1 : 5;
      ASSERT_EQ(s.answer_positions.size(), pairs);
      ASSERT_EQ(s.fact_positions.size(), pairs);
      int counted = 0;
      for (int64_t t = 0; t < c.seq_len; ++t) {
        if (s.targets[t] == -100) continue;
        ++counted;
        const int key = s.tokens[t] - kSyntheticQueryBase;
        ASSERT_GE(key, 0);
        ASSERT_LT(key, kSyntheticKeys);
        // Exactly one earlier fact about this key, and its value is the answer.
        int found = 0;
        for (int64_t p = 0; p < t; ++p) {
          const int f = s.tokens[p] - kSyntheticFactBase;
          if (f >= 0 && f < kSyntheticKeys * kSyntheticValues && f / kSyntheticValues == key) {
            ++found;
            EXPECT_EQ(s.targets[t], kSyntheticAnswerBase + f % kSyntheticValues);
          }
        }
        EXPECT_EQ(found, 1);
      }
      EXPECT_EQ(counted, static_cast<int>(pairs));
      EXPECT_EQ(make_synthetic_sample(c, i).tokens, s.tokens) << "not deterministic";
    }
  }
}

TEST(DataSyntheticTest, DepthPlacesTheNeedle) {
  SyntheticConfig c;
  c.task = SyntheticTask::kNeedle;
  c.seq_len = 101;
  for (double depth : {0.0, 0.5, 1.0}) {
    c.depth = depth;
    const SyntheticSample s = make_synthetic_sample(c, 0);
    // 99 = seq_len - 1 query - 1 needle: the room before the query.
    EXPECT_EQ(s.fact_positions[0], static_cast<int64_t>(depth * 99 + 0.5));
  }
  c.seq_len = 2;
  EXPECT_FALSE(validate(c).ok());
}

}  // namespace
}  // namespace msa
