// What a resume compares of msa-data's metadata: the fields that decide the tokens, not where the
// inputs and the tokenizer were read from; checkpoints from before the content hash (a bare hash
// of the whole files) still resume on unchanged files.
#include <string>

#include "gtest/gtest.h"
#include "train/batch_source.h"

namespace msa {
namespace {

TEST(DataMetadataTest, ContentLeavesOutOnlyThePathsWhereTheContentHashStandsForThem) {
  const std::string a =
      R"({"tokenizer": "byte-level", "tokenizer_path": "/x/tok.json", "vocab_size": 257,
          "inputs": [{"path": "a.txt", "format": "text", "bytes": 10, "fnv1a64": "0123"}]})";
  const std::string moved =
      R"({"tokenizer": "byte-level", "tokenizer_path": "/y/tok.json", "vocab_size": 257,
          "inputs": [{"path": "./a.txt", "format": "text", "bytes": 10, "fnv1a64": "0123"}]})";
  const std::string other_bytes =
      R"({"tokenizer": "byte-level", "tokenizer_path": "/x/tok.json", "vocab_size": 257,
          "inputs": [{"path": "a.txt", "format": "text", "bytes": 10, "fnv1a64": "4567"}]})";
  EXPECT_EQ(metadata_content(a), metadata_content(moved));
  EXPECT_NE(metadata_content(a), metadata_content(other_bytes));
  // Files from before the content hash: the path is all that tells two inputs of one size apart.
  const std::string old_a = R"({"inputs": [{"path": "a.txt", "format": "text", "bytes": 10}]})";
  const std::string old_b = R"({"inputs": [{"path": "b.txt", "format": "text", "bytes": 10}]})";
  EXPECT_NE(metadata_content(old_a), metadata_content(old_b));
  EXPECT_EQ(metadata_content("not json"), "not json");
}

TEST(DataMetadataTest, ComparesByContentAndAcceptsTheOldWholeFileHash) {
  const std::string now = "content 0123456789abcdef, file fedcba9876543210";
  EXPECT_TRUE(same_data_metadata(now, now));
  EXPECT_TRUE(same_data_metadata("content 0123456789abcdef, file 1111111111111111", now));
  EXPECT_FALSE(same_data_metadata("content 0123456789abcdee, file 1111111111111111", now));
  // Byte-identical metadata files are the same data even where the content hash's definition
  // changed (files without input hashes keep their paths in it).
  EXPECT_TRUE(same_data_metadata("content 1111111111111111, file fedcba9876543210", now));
  // A checkpoint written before the content hash recorded the whole files' hash alone.
  EXPECT_TRUE(same_data_metadata("fedcba9876543210", now));
  EXPECT_FALSE(same_data_metadata("0123456789abcdef", now));
}

}  // namespace
}  // namespace msa
