// Token shards: round trip, and every malformed file rejected with a message
// naming the file and the problem.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/text_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace msa {
namespace {

using ::testing::HasSubstr;

std::string temp_path(const std::string& name) {
  return std::string(::testing::TempDir()) + "/" + name;
}

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(DataShardTest, RoundTripsUint16AndUint32) {
  for (TokenWidth w : {TokenWidth::kU16, TokenWidth::kU32}) {
    std::vector<uint32_t> tokens;
    for (uint32_t i = 0; i < 1000; ++i)
      tokens.push_back((i * 7919u) % (w == TokenWidth::kU16 ? 65536u : 200000u));
    const std::string path = temp_path("roundtrip.tok");
    ASSERT_TRUE(write_shard(path, tokens, w).ok());
    auto r = ShardReader::open(path);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ((*r)->size(), 1000);
    EXPECT_EQ((*r)->width(), w);
    for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ((*r)->token(i), tokens[i]);
    std::vector<int32_t> out(10);
    (*r)->read(990, 10, out.data());
    EXPECT_EQ(static_cast<uint32_t>(out[9]), tokens[999]);
    EXPECT_EQ(read_bytes(path).size(), 32 + 1000 * static_cast<size_t>(w));
  }
}

TEST(DataShardTest, WrongMagicIsRejected) {
  const std::string path = temp_path("magic.tok");
  ASSERT_TRUE(write_shard(path, {1, 2, 3}, TokenWidth::kU16).ok());
  auto bytes = read_bytes(path);
  bytes[0] = 'X';
  write_bytes(path, bytes);
  auto r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("wrong magic"));
}

TEST(DataShardTest, TokenCountPastEndOfFileIsRejected) {
  const std::string path = temp_path("truncated.tok");
  ASSERT_TRUE(write_shard(path, std::vector<uint32_t>(100, 5), TokenWidth::kU16).ok());
  auto bytes = read_bytes(path);
  bytes.resize(bytes.size() - 3);  // the header still says 100 tokens
  write_bytes(path, bytes);
  auto r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("header says 100 tokens"));
}

TEST(DataShardTest, TruncatedHeaderAndBadWidthAreRejected) {
  const std::string path = temp_path("short.tok");
  write_bytes(path, {'M', 'S', 'A'});
  auto r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("shorter than the 32-byte header"));

  ASSERT_TRUE(write_shard(path, {1, 2}, TokenWidth::kU16).ok());
  auto bytes = read_bytes(path);
  bytes[12] = 3;  // 3-byte tokens do not exist
  write_bytes(path, bytes);
  r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("unsupported token width 3"));
}

TEST(DataShardTest, TokenIdBeyondVocabIsRejectedWithItsPosition) {
  const std::string path = temp_path("vocab.tok");
  ASSERT_TRUE(write_shard(path, {1, 2, 300, 4}, TokenWidth::kU16).ok());
  auto r = ShardReader::open(path);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)->check_vocab(301).ok());
  absl::Status s = (*r)->check_vocab(257);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_THAT(std::string(s.message()), HasSubstr("token id 300 at position 2"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("vocab_size 257"));
}

TEST(DataShardTest, ByteTokenizerWritesDocumentsSeparatedByEos) {
  const std::string a = temp_path("doc_a.txt"), b = temp_path("doc_b.txt");
  write_bytes(a, {'h', 'i'});
  write_bytes(b, {'y', 'o', '!'});
  TextShardingOptions o;
  o.inputs = {a, b};
  o.output_dir = temp_path("text_shards");
  o.shard_tokens = 4;
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, 7);
  EXPECT_EQ(r->documents, 2);
  ASSERT_EQ(r->shards.size(), 2u);
  std::vector<uint32_t> all;
  for (const std::string& s : r->shards) {
    auto reader = ShardReader::open(s);
    ASSERT_TRUE(reader.ok());
    for (int64_t i = 0; i < (*reader)->size(); ++i) all.push_back((*reader)->token(i));
  }
  EXPECT_EQ(all, (std::vector<uint32_t>{'h', 'i', kByteEos, 'y', 'o', '!', kByteEos}));
}

}  // namespace
}  // namespace msa
