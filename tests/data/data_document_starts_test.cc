// Document starts for --pack_documents (data/document_starts.h): a document starts at a window's
// first token and after every EOS; the EOS id comes from msa-data's metadata file; the shard
// source's batches carry each row's starts and the same tokens and targets as without packing.
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "data/document_starts.h"
#include "data/shard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "train/batch_source.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kEos = 3;

TEST(DataDocumentStartsTest, StartAtZeroAndAfterEveryEos) {
  const std::vector<int32_t> t = {5, 3, 7, 8, 3, 3, 9, 3};
  EXPECT_EQ(document_starts(t, kEos), (std::vector<int64_t>{0, 2, 5, 6}));
  // An EOS at the last position starts nothing inside the window.
  EXPECT_EQ(document_starts(std::vector<int32_t>{3}, kEos), (std::vector<int64_t>{0}));
  EXPECT_EQ(document_starts(std::vector<int32_t>{3, 4}, kEos), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(document_starts(std::vector<int32_t>{4, 4, 4}, kEos), (std::vector<int64_t>{0}));
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/docstarts_" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Two shards of documents of lengths 1..9 (content ids 10.., each followed by kEos), as msa-data
// writes them, with the metadata file `metadata_json` (none when empty).
std::string make_packed_corpus(const std::string& name, const std::string& metadata_json) {
  const std::string dir = fresh_dir(name);
  for (int s = 0; s < 2; ++s) {
    std::vector<uint32_t> tokens;
    for (int doc = 0; tokens.size() < 150; ++doc) {
      for (int i = 0; i < 1 + (doc * 7 + s) % 9; ++i) tokens.push_back(10 + (doc + i) % 50);
      tokens.push_back(kEos);
    }
    EXPECT_TRUE(
        write_shard(dir + "/train-0000" + std::to_string(s) + ".tok", tokens, TokenWidth::kU16)
            .ok());
  }
  if (!metadata_json.empty()) write_text(dir + "/train.json", metadata_json);
  return dir;
}

TEST(DataDocumentStartsTest, EosIdComesFromTheMetadataFile) {
  const std::string dir = make_packed_corpus("meta_ok", R"({"eos_id": 3, "vocab_size": 64})");
  absl::StatusOr<int32_t> eos = shards_eos_id({dir + "/train-00000.tok", dir + "/train-00001.tok"});
  ASSERT_TRUE(eos.ok()) << eos.status();
  EXPECT_EQ(*eos, kEos);
}

TEST(DataDocumentStartsTest, RefusedWithoutAnEosId) {
  const std::string none = make_packed_corpus("meta_none", "");
  absl::Status s = shards_eos_id({none + "/train-00000.tok"}).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("--pack_documents"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(none + "/train.json"));

  const std::string null_eos = make_packed_corpus("meta_null", R"({"eos_id": null})");
  s = shards_eos_id({null_eos + "/train-00000.tok"}).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("--pack_documents"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("names no eos_id"));

  s = shards_eos_id({null_eos + "/other.tok"}).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("'" + null_eos + "/other.tok' is not named so"));

  // Two sets of shards whose metadata disagree.
  const std::string a = make_packed_corpus("meta_a", R"({"eos_id": 3})");
  const std::string b = make_packed_corpus("meta_b", R"({"eos_id": 4})");
  s = shards_eos_id({a + "/train-00000.tok", b + "/train-00000.tok"}).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("disagree on the EOS id"));

  // An eos_id no token of the vocabulary can be: no document would ever end.
  const std::string big = make_packed_corpus("meta_big", R"({"eos_id": 99999})");
  s = shards_eos_id({big + "/train-00000.tok"}, /*vocab_size=*/64).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("eos_id 99999 is not below --vocab_size=64"));
  EXPECT_TRUE(shards_eos_id({big + "/train-00000.tok"}).ok()) << "no vocabulary to check against";

  // A truncated metadata file is said to be broken JSON (it was "not a JSON object").
  const std::string cut = make_packed_corpus("meta_cut", R"({"eos_id": 3)");
  s = shards_eos_id({cut + "/train-00000.tok"}).status();
  EXPECT_THAT(std::string(s.message()), HasSubstr("--pack_documents"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(cut + "/train.json: not valid JSON"));

  // A directory where the metadata file belongs: a message naming it, not an uncaught
  // std::ios_base::failure from the stream read.
  const std::string as_dir = make_packed_corpus("meta_dir", "");
  ASSERT_EQ(::mkdir((as_dir + "/train.json").c_str(), 0755), 0);
  s = shards_eos_id({as_dir + "/train-00000.tok"}).status();
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr(as_dir + "/train.json: a directory, not a file"));

  // Through the shard source, with the flag named.
  auto source = make_shard_source(none + "/*.tok", 64, 2, 16, 0.0, 1, DataLayout{}, false,
                                  /*pack_documents=*/true);
  EXPECT_FALSE(source.ok());
  EXPECT_THAT(std::string(source.status().message()), HasSubstr("--pack_documents"));
}

// The batches of a packing source: the same tokens and targets as without packing (the target of
// an EOS, the next document's first token, stays a target), and per row the starts at 0 and after
// each EOS, found here by scanning the row independently.
TEST(DataDocumentStartsTest, ShardSourceBatchesCarryEachRowsDocumentStarts) {
  const std::string dir = make_packed_corpus("source", R"({"eos_id": 3})");
  const int64_t batch = 3, T = 16;
  auto packed = make_shard_source(dir + "/*.tok", 64, batch, T, 0.1, 9, DataLayout{}, false, true);
  auto plain = make_shard_source(dir + "/*.tok", 64, batch, T, 0.1, 9, DataLayout{}, false, false);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_THAT((*packed)->describe(), HasSubstr("documents packed: EOS 3"));
  int64_t split_rows = 0, eos_targets = 0;
  for (int64_t step = 1; step <= 6; ++step) {
    const Batch p = (*packed)->get(step, 0), u = (*plain)->get(step, 0);
    EXPECT_TRUE(u.doc_starts.empty());
    EXPECT_EQ(p.tokens.to_double_vector(), u.tokens.to_double_vector());
    EXPECT_EQ(p.targets.to_double_vector(), u.targets.to_double_vector());
    ASSERT_EQ(static_cast<int64_t>(p.doc_starts.size()), batch);
    const int32_t* tok = p.tokens.data<int32_t>();
    const int32_t* tgt = p.targets.data<int32_t>();
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int64_t> expected = {0};
      for (int64_t t = 1; t < T; ++t)
        if (tok[b * T + t - 1] == kEos) expected.push_back(t);
      EXPECT_EQ(p.doc_starts[b], expected) << "step " << step << " row " << b;
      split_rows += expected.size() > 1;
      for (int64_t t = 0; t + 1 < T; ++t) {
        if (tok[b * T + t] != kEos) continue;
        EXPECT_EQ(tgt[b * T + t], tok[b * T + t + 1]);  // the next document's first token
        ++eos_targets;
      }
    }
    // The model's view of the batch.
    const std::shared_ptr<const DocumentSegments> docs = batch_documents(p);
    ASSERT_NE(docs, nullptr);
    EXPECT_EQ(docs->batch(), batch);
    EXPECT_EQ(docs->seq_len(), T);
  }
  EXPECT_GT(split_rows, 0);  // documents of <= 10 tokens: most windows hold several
  EXPECT_GT(eos_targets, 0);
}

// The held-out split under data parallelism: each dp rank reads its own rows of a validation
// batch, and distinct_batches() counts whole batches of batch x dp distinct windows (a partial
// last one would read windows again), through the context-parallel wrapper too.
TEST(DataDocumentStartsTest, HeldOutBatchesAreSplitOverDataParallelRanks) {
  const std::string dir = make_packed_corpus("held_out_dp", R"({"eos_id": 3})");
  const int64_t T = 8;
  auto whole = make_shard_source(dir + "/*.tok", 64, 4, T, 0.5, 9, DataLayout{}, true);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t batches = (*whole)->distinct_batches();
  ASSERT_GT(batches, 1);
  const Batch w = (*whole)->get(2, 0);
  for (int rank = 0; rank < 2; ++rank) {
    DataLayout layout;
    layout.dp_rank = rank;
    layout.dp_size = 2;
    auto half = make_shard_source(dir + "/*.tok", 64, 2, T, 0.5, 9, layout, true);
    ASSERT_TRUE(half.ok()) << half.status();
    EXPECT_EQ((*half)->distinct_batches(), batches);
    const Batch h = (*half)->get(2, 0);
    const std::vector<double> all = w.tokens.to_double_vector(), mine = h.tokens.to_double_vector();
    EXPECT_EQ(mine,
              std::vector<double>(all.begin() + rank * 2 * T, all.begin() + (rank + 1) * 2 * T))
        << "rank " << rank << " reads rows " << 2 * rank << ".." << 2 * rank + 1
        << " of the one-rank batch";
  }
  auto cp = make_context_shard_source(*std::move(whole), 0, 2);
  EXPECT_EQ(cp->distinct_batches(), batches);
  // A split smaller than one global batch holds no whole batch (it used to say 1, and the
  // evaluation counted windows twice); a training source has no limit.
  auto huge = make_shard_source(dir + "/*.tok", 64, 4 * batches + 4, T, 0.5, 9, DataLayout{}, true);
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_EQ((*huge)->distinct_batches(), 0);
  auto training = make_shard_source(dir + "/*.tok", 64, 4, T, 0.5, 9, DataLayout{}, false);
  ASSERT_TRUE(training.ok()) << training.status();
  EXPECT_EQ((*training)->distinct_batches(), -1);
}

}  // namespace
}  // namespace msa
