// Token shards: round trip, and every malformed file rejected with a message
// naming the file and the problem.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/synthetic.h"
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

// Bytes past the header's count (a smaller count than the data: the rest was read as nothing)
// and a non-zero reserved field are refused, naming what is wrong.
TEST(DataShardTest, ExtraBytesAndReservedFieldAreRejected) {
  const std::string path = temp_path("extra.tok");
  ASSERT_TRUE(write_shard(path, std::vector<uint32_t>(10, 5), TokenWidth::kU16).ok());
  const auto good = read_bytes(path);
  auto bytes = good;
  bytes[16] = 2;  // the header says 2 tokens, the file holds 10
  write_bytes(path, bytes);
  auto r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr(path + ": header says 2 tokens (4 bytes) but the file holds 20 bytes of "
                               "tokens (16 bytes too many"));
  bytes = good;
  bytes.push_back(0);  // one odd byte
  write_bytes(path, bytes);
  r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("(1 bytes too many"));
  bytes = good;
  bytes[24] = static_cast<char>(0xef);
  write_bytes(path, bytes);
  r = ShardReader::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("header field 'reserved'"));
  write_bytes(path, good);
  r = ShardReader::open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->size(), 10);
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
  o.overwrite = true;  // a rerun finds the shards of the last one
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

std::string fresh_dir(const std::string& name) {
  const std::string dir = temp_path(name);
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

// A directory given as a shard is refused by name ("is a directory"), not "mmap failed: No such
// device".
TEST(DataShardTest, DirectoryIsRefusedByName) {
  const std::string dir = fresh_dir("shard_dir_given");
  auto r = ShardReader::open(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(dir + ": is a directory"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("*.tok"));
}

// A directory given as a text input was one empty document; now it is an error naming it.
TEST(DataShardTest, TextInputDirectoryIsRefusedByName) {
  const std::string dir = fresh_dir("text_input_dir");
  const std::string a = dir + "/a.txt";
  write_bytes(a, {'h', 'i'});
  TextShardingOptions o;
  o.inputs = {a, dir};
  o.output_dir = dir + "/out";
  auto r = write_text_shards(o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("invalid --input: '" + dir + "'"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("is a directory"));
}

// Shards of an earlier run in the output directory are refused (a glob would mix them with the
// new ones) unless overwrite is set, which deletes them first.
TEST(DataShardTest, OutputHoldingShardsIsRefusedUnlessOverwrite) {
  const std::string dir = fresh_dir("text_stale_shards");
  const std::string a = dir + "/a.txt";
  write_bytes(a, std::vector<char>(10, 'x'));
  TextShardingOptions o;
  o.inputs = {a};
  o.output_dir = dir + "/out";
  o.shard_tokens = 2;  // 11 tokens: 6 shards
  auto first = write_text_shards(o);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->shards.size(), 6u);
  write_bytes(a, {'y'});
  o.shard_tokens = 4;  // 2 tokens: 1 shard
  auto refused = write_text_shards(o);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr(o.output_dir));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("already holds 6 token shard"));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--overwrite"));
  o.overwrite = true;
  auto second = write_text_shards(o);
  ASSERT_TRUE(second.ok()) << second.status();
  auto files = glob_files(o.output_dir + "/*.tok");
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(*files, second->shards);  // the 5 stale shards are gone
  // An output path that is a file is refused by name.
  o.output_dir = a;
  auto not_dir = write_text_shards(o);
  ASSERT_FALSE(not_dir.ok());
  EXPECT_THAT(std::string(not_dir.status().message()), HasSubstr("'" + a + "' exists and is not"));
}

TEST(DataShardTest, SyntheticDepthAndLengthAreRangeChecked) {
  SyntheticConfig c;
  c.seq_len = 256;
  c.depth = std::nan("");
  EXPECT_THAT(std::string(validate(c).message()), HasSubstr("invalid --depth"));
  c.depth = 0.5;
  EXPECT_TRUE(validate(c).ok());
  c.seq_len = int64_t{1} << 40;
  EXPECT_THAT(std::string(validate(c).message()), HasSubstr("invalid --seq_len"));
}

}  // namespace
}  // namespace msa
