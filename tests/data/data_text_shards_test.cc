// msa-data text's pipeline with a small fake tokenizer: document framing (BOS/EOS), shard width,
// JSONL parsing, errors that name the file and line, all-or-nothing output, and shards that do
// not depend on the thread count.
#include <dirent.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/text_documents.h"
#include "data/text_tokenizer.h"
#include "data/window_sampler.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

using ::testing::HasSubstr;

// One id per Unicode code point: id = code point + 3 (ids 0..2 are specials). Encoding the word
// "FAIL" is an error, as a real tokenizer's would be.
class FakeTokenizer final : public HfTokenizer {
 public:
  FakeTokenizer(int64_t vocab, std::optional<uint32_t> bos, std::optional<uint32_t> eos,
                bool adds_bos)
      : vocab_(vocab), bos_(bos), eos_(eos), adds_bos_(adds_bos) {}
  absl::StatusOr<std::vector<uint32_t>> encode(std::string_view text) const override {
    if (text.find("FAIL") != std::string_view::npos)
      return absl::InvalidArgumentError("fake tokenizer cannot encode FAIL");
    std::vector<uint32_t> ids;
    for (size_t i = 0; i < text.size();) {
      const auto c = static_cast<unsigned char>(text[i]);
      const int len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      uint32_t cp = len == 1 ? c : c & (0xFF >> (len + 1));
      for (int k = 1; k < len; ++k)
        cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
      ids.push_back(cp + 3);
      i += static_cast<size_t>(len);
    }
    return ids;
  }
  int64_t vocab_size() const override { return vocab_; }
  std::optional<uint32_t> bos_id() const override { return bos_; }
  std::optional<uint32_t> eos_id() const override { return eos_; }
  bool adds_bos() const override { return adds_bos_; }
  bool adds_eos() const override { return false; }
  std::string describe() const override { return "fake code points"; }

 private:
  int64_t vocab_;
  std::optional<uint32_t> bos_, eos_;
  bool adds_bos_;
};

// ASCII fits below 131; every code point below 0x110003 (a uint32 vocabulary).
const FakeTokenizer kAscii(131, 1, 2, /*adds_bos=*/true);
const FakeTokenizer kUnicode(0x110003, 1, 2, /*adds_bos=*/true);

std::string fresh_dir(const std::string& name) {
  const std::string dir = std::string(::testing::TempDir()) + "/text_shards_" + name;
  std::system(("rm -rf '" + dir + "' && mkdir -p '" + dir + "'").c_str());
  return dir;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Every name in `dir` (hidden ones too) with its contents.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return files;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") files[name] = read_file(dir + "/" + name);
  }
  closedir(d);
  return files;
}

std::vector<uint32_t> read_tokens(const std::vector<std::string>& shards) {
  std::vector<uint32_t> all;
  for (const std::string& s : shards) {
    auto r = ShardReader::open(s);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) continue;
    for (int64_t i = 0; i < (*r)->size(); ++i) all.push_back((*r)->token(i));
  }
  return all;
}

std::vector<uint32_t> ids(std::string_view text) { return *kUnicode.encode(text); }

std::vector<uint32_t> cat(std::initializer_list<std::vector<uint32_t>> parts) {
  std::vector<uint32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

TextShardingOptions options(const std::string& dir, std::vector<std::string> inputs,
                            const HfTokenizer* tokenizer) {
  TextShardingOptions o;
  o.inputs = std::move(inputs);
  o.output_dir = dir + "/out";
  o.tokenizer = tokenizer;
  o.threads = 2;
  return o;
}

absl::Status run_error(const TextShardingOptions& o) {
  auto r = write_text_shards(o);
  return r.ok() ? absl::OkStatus() : r.status();
}

TEST(TextShardsTest, EveryDocumentIsBosIdsEos) {
  const std::string dir = fresh_dir("framing");
  write_file(dir + "/a.txt", "hi");
  write_file(dir + "/b.jsonl", "{\"text\": \"a\"}\n{\"text\": \"bc\"}\n");
  auto r = write_text_shards(options(dir, {dir + "/a.txt", dir + "/b.jsonl"}, &kAscii));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->documents, 3);
  EXPECT_EQ(r->width, TokenWidth::kU16);
  EXPECT_EQ(read_tokens(r->shards),
            cat({{1}, ids("hi"), {2, 1}, ids("a"), {2, 1}, ids("bc"), {2}}));
  EXPECT_EQ(r->tokens, 11);
}

TEST(TextShardsTest, BosOnlyWhenTheTokenizerAddsIt) {
  const std::string dir = fresh_dir("no_bos");
  write_file(dir + "/a.txt", "hi");
  write_file(dir + "/b.txt", "yo");
  const FakeTokenizer no_bos(131, 1, 2, /*adds_bos=*/false);
  auto r = write_text_shards(options(dir, {dir + "/a.txt", dir + "/b.txt"}, &no_bos));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(read_tokens(r->shards), cat({ids("hi"), {2}, ids("yo"), {2}}));
  EXPECT_FALSE(r->bos_id.has_value());
}

// Without an EOS, BOS alone separates documents; with neither, the run is refused unless --eos_id
// names a separator.
TEST(TextShardsTest, TokenizerWithoutEos) {
  const std::string dir = fresh_dir("no_eos");
  write_file(dir + "/a.txt", "hi");
  write_file(dir + "/b.txt", "yo");
  const std::vector<std::string> in = {dir + "/a.txt", dir + "/b.txt"};
  const FakeTokenizer bos_only(131, 1, std::nullopt, /*adds_bos=*/true);
  auto r = write_text_shards(options(dir, in, &bos_only));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(read_tokens(r->shards), cat({{1}, ids("hi"), {1}, ids("yo")}));

  const FakeTokenizer neither(131, std::nullopt, std::nullopt, /*adds_bos=*/false);
  TextShardingOptions o = options(dir, in, &neither);
  o.overwrite = true;
  absl::Status s = run_error(o);
  EXPECT_THAT(std::string(s.message()), HasSubstr("defines no EOS token and adds no BOS"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("--eos_id"));
  o.eos_id = 0;
  r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(read_tokens(r->shards), cat({ids("hi"), {0}, ids("yo"), {0}}));
  o.eos_id = 131;
  EXPECT_THAT(std::string(run_error(o).message()),
              HasSubstr("invalid --eos_id: EOS id 131 is >= the tokenizer's vocab_size 131"));
}

// Past 65536 ids the shards are uint32, and msa-train's reader and sampler return the ids intact.
TEST(TextShardsTest, LargeVocabularyWritesUint32ThatTheSamplerReads) {
  const std::string dir = fresh_dir("uint32");
  const std::string text = "smile \xF0\x9F\x98\x80 and \xE2\x82\xAC";  // U+1F600, U+20AC
  write_file(dir + "/a.txt", text);
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, &kUnicode);
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->width, TokenWidth::kU32);
  const std::vector<uint32_t> expected = cat({{1}, ids(text), {2}});
  ASSERT_EQ(read_tokens(r->shards), expected);
  EXPECT_EQ(expected[7], 0x1F600u + 3);
  auto reader = ShardReader::open(r->shards[0]);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->width(), TokenWidth::kU32);

  const int64_t seq_len = 8;
  auto sampler =
      WindowSampler::open(o.output_dir + "/*.tok", seq_len, kUnicode.vocab_size(), 0.0, 1);
  ASSERT_TRUE(sampler.ok()) << sampler.status();
  std::vector<int32_t> window(seq_len + 1);
  (*sampler)->read_window(0, window.data());
  EXPECT_EQ(window, std::vector<int32_t>(expected.begin(), expected.begin() + seq_len + 1));
  // A model with a smaller vocabulary is refused by the sampler's check.
  EXPECT_FALSE(WindowSampler::open(o.output_dir + "/*.tok", seq_len, 65536, 0.0, 1).ok());
}

TEST(TextShardsTest, MetadataFileDescribesTheShards) {
  const std::string dir = fresh_dir("metadata");
  write_file(dir + "/a.jsonl", "{\"body\": \"x\"}\n");
  TextShardingOptions o = options(dir, {dir + "/a.jsonl"}, &kUnicode);
  o.text_field = "body";
  o.tokenizer_path = "/models/fake";
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->metadata, o.output_dir + "/train.json");
  const nlohmann::json j = nlohmann::json::parse(read_file(r->metadata));
  EXPECT_EQ(j["tokenizer"], "fake code points");
  EXPECT_EQ(j["tokenizer_path"], "/models/fake");
  EXPECT_EQ(j["vocab_size"], 0x110003);
  EXPECT_EQ(j["bos_id"], 1);
  EXPECT_EQ(j["eos_id"], 2);
  EXPECT_EQ(j["token_bytes"], 4);
  EXPECT_EQ(j["documents"], 1);
  EXPECT_EQ(j["tokens"], 3);
  EXPECT_EQ(j["shards"], nlohmann::json::array({"train-00000.tok"}));
  EXPECT_EQ(j["inputs"][0]["format"], "jsonl");
  EXPECT_EQ(j["inputs"][0]["text_field"], "body");
  EXPECT_EQ(j["inputs"][0]["bytes"], 14);
}

// Past 100000 shards every name gets the last index's digits: sorted names (what a glob gives
// msa-train) stay in write order, and --pack_documents still finds the metadata file.
TEST(TextShardsTest, ShardNamesPast99999KeepSortedOrderEqualToWriteOrder) {
  const std::string dir = fresh_dir("many_shards");
  write_file(dir + "/a.txt", std::string(200000, 'x'));  // + BOS + EOS: 100001 shards of 2
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, &kUnicode);
  o.shard_tokens = 2;
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->shards.size(), 100001u);
  EXPECT_EQ(r->shards.front(), o.output_dir + "/train-000000.tok");
  EXPECT_EQ(r->shards[100000], o.output_dir + "/train-100000.tok");
  auto sorted = glob_files(o.output_dir + "/*.tok");
  ASSERT_TRUE(sorted.ok()) << sorted.status();
  EXPECT_EQ(*sorted, r->shards);
  const nlohmann::json j = nlohmann::json::parse(read_file(r->metadata));
  EXPECT_EQ(j["shards"][100000], "train-100000.tok");
  EXPECT_EQ(shard_metadata_path(r->shards[100000]), r->metadata);
  EXPECT_EQ(shard_metadata_path(o.output_dir + "/train-12.tok"), std::nullopt);
  std::system(("rm -rf '" + dir + "'").c_str());  // 100001 files: not left for the next test run
}

TEST(TextShardsTest, JsonlEscapesUnicodeCrlfAndBlankLines) {
  const std::string dir = fresh_dir("jsonl_escapes");
  write_file(dir + "/a.jsonl",
             "{\"id\": 7, \"meta\": {\"text\": 1}, \"text\": \"tab\\there \\\"q\\\" \\\\ "
             "\\u00e9 \\ud83d\\ude00 \xE2\x82\xAC\\n\"}\r\n"
             "\n"
             "   \r\n"
             "{\"text\": \"\"}");  // the last line needs no line end
  auto r = write_text_shards(options(dir, {dir + "/a.jsonl"}, nullptr));  // byte-level
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->documents, 2);
  const std::string decoded = "tab\there \"q\" \\ \xC3\xA9 \xF0\x9F\x98\x80 \xE2\x82\xAC\n";
  std::vector<uint32_t> expected(decoded.begin(), decoded.end());
  for (uint32_t& t : expected) t &= 0xFF;
  expected.push_back(kByteEos);
  expected.push_back(kByteEos);  // the empty document
  EXPECT_EQ(read_tokens(r->shards), expected);
}

struct BadLine {
  std::string name, contents;
  int line;
  std::string reason;
};

TEST(TextShardsTest, JsonlErrorsNameTheFileAndLine) {
  const std::string dir = fresh_dir("jsonl_errors");
  const std::string ok = "{\"text\": \"fine\"}\n";
  const std::vector<BadLine> cases = {
      {"syntax.jsonl", ok + ok + "{\"text\": \"unterminated}\n" + ok, 3, "not valid JSON"},
      {"missing.jsonl", ok + "{\"content\": \"x\", \"id\": 2}\n", 2,
       "no field \"text\" (the object has \"content\", \"id\"; choose one with --text_field)"},
      {"number.jsonl", "{\"text\": 12}\n", 1, "field \"text\" is a JSON number, not a string"},
      {"array.jsonl", ok + "[\"text\"]\n", 2, "expected a JSON object"},
      {"utf8.jsonl", ok + "{\"text\": \"caf\xC3\"}\n" + ok, 2,
       ", column 14: invalid UTF-8 (byte 0xc3)"},
      {"surrogate.jsonl", "\n" + ok + "{\"text\": \"\\ud800\"}\n", 3, "not valid JSON"},
      {"encode.jsonl", ok + ok + ok + "{\"text\": \"FAIL here\"}\n", 4,
       "fake tokenizer cannot encode FAIL"},
  };
  for (const BadLine& c : cases) {
    const std::string path = dir + "/" + c.name;
    write_file(path, c.contents);
    TextShardingOptions o = options(dir, {dir + "/ok.txt", path}, &kAscii);
    write_file(dir + "/ok.txt", "fine");
    absl::Status s = run_error(o);
    ASSERT_FALSE(s.ok()) << c.name;
    const std::string at = "invalid --input: '" + path + "' line " + std::to_string(c.line);
    EXPECT_THAT(std::string(s.message()),
                ::testing::AnyOf(HasSubstr(at + ":"), HasSubstr(at + ", column ")))
        << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.reason)) << c.name;
    EXPECT_TRUE(snapshot(o.output_dir).empty()) << c.name << ": the failed run left files";
  }
}

TEST(TextShardsTest, InvalidUtf8TextNamesLineWithATokenizerAndIsBytesWithout) {
  const std::string dir = fresh_dir("text_utf8");
  write_file(dir + "/a.txt", "first line\nsecond \xFF line\n");
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, &kAscii);
  EXPECT_THAT(std::string(run_error(o).message()),
              HasSubstr("invalid --input: '" + dir +
                        "/a.txt' line 2, column 8: invalid UTF-8 "
                        "(byte 0xff)"));
  o.tokenizer = nullptr;
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(read_tokens(r->shards)[18], 0xFFu);
}

TEST(TextShardsTest, Utf8CheckRejectsOverlongSurrogatesAndTruncation) {
  EXPECT_TRUE(check_utf8("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80", 1, "f").ok());
  EXPECT_FALSE(check_utf8("\xC0\xAF", 1, "f").ok());          // overlong '/'
  EXPECT_FALSE(check_utf8("\xED\xA0\x80", 1, "f").ok());      // U+D800
  EXPECT_FALSE(check_utf8("\xF4\x90\x80\x80", 1, "f").ok());  // past U+10FFFF
  EXPECT_THAT(std::string(check_utf8("ab\n\n\xE2\x82", 5, "f").message()),
              HasSubstr("'f' line 7, column 1: invalid UTF-8 (byte 0xe2, truncated sequence)"));
}

TEST(TextShardsTest, FormatFlagOverridesTheExtension) {
  const std::string dir = fresh_dir("format");
  write_file(dir + "/a.txt", "{\"text\": \"x\"}\n");
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, nullptr);
  o.format = TextFormat::kJsonl;
  auto r = write_text_shards(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(read_tokens(r->shards), (std::vector<uint32_t>{'x', kByteEos}));
  EXPECT_EQ(resolve_text_format(TextFormat::kAuto, "a.jsonl"), TextFormat::kJsonl);
  EXPECT_EQ(resolve_text_format(TextFormat::kAuto, "a.ndjson"), TextFormat::kJsonl);
  EXPECT_EQ(resolve_text_format(TextFormat::kAuto, "a.json"), TextFormat::kText);
  EXPECT_EQ(resolve_text_format(TextFormat::kText, "a.jsonl"), TextFormat::kText);
  EXPECT_THAT(std::string(parse_text_format("xml").status().message()),
              HasSubstr("invalid --format: 'xml'"));
}

// A run that fails after writing shards leaves the directory exactly as it was: old shards and
// metadata kept (even with --overwrite), nothing new, no staging directory; an output directory
// it created is removed again.
TEST(TextShardsTest, FailedRunLeavesNothingAndKeepsTheOldShards) {
  const std::string dir = fresh_dir("atomic");
  std::string good;
  for (int i = 0; i < 50; ++i)
    good += "{\"text\": \"document number " + std::to_string(i) + "\"}\n";
  write_file(dir + "/good.jsonl", good);
  write_file(dir + "/bad.jsonl", good + "{\"text\": oops}\n");
  TextShardingOptions o = options(dir, {dir + "/good.jsonl"}, &kAscii);
  o.shard_tokens = 64;
  auto first = write_text_shards(o);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_GT(first->shards.size(), 10u);
  const auto before = snapshot(o.output_dir);
  EXPECT_EQ(before.size(), first->shards.size() + 1);  // + train.json
  const std::vector<uint32_t> tokens = read_tokens(first->shards);

  // Small pieces and batches: many shards are written before the bad line is reached.
  o.inputs = {dir + "/good.jsonl", dir + "/bad.jsonl"};
  o.overwrite = true;
  o.piece_bytes = 100;
  o.batch_bytes = 300;
  absl::Status s = run_error(o);
  EXPECT_THAT(std::string(s.message()), HasSubstr("'" + dir + "/bad.jsonl' line 51"));
  EXPECT_EQ(snapshot(o.output_dir), before);

  o.output_dir = dir + "/new_out";
  EXPECT_FALSE(run_error(o).ok());
  EXPECT_NE(access(o.output_dir.c_str(), F_OK), 0) << "the failed run left " << o.output_dir;

  // With --overwrite, a successful run replaces the whole old set.
  o.output_dir = dir + "/out";
  o.inputs = {dir + "/good.jsonl"};
  o.shard_tokens = 100000;
  auto second = write_text_shards(o);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->shards.size(), 1u);
  const auto after = snapshot(o.output_dir);
  EXPECT_EQ(after.size(), 2u);
  EXPECT_TRUE(after.count("train-00000.tok") && after.count("train.json"));
  EXPECT_EQ(read_tokens(second->shards), tokens);
}

// --overwrite replaces an earlier set whatever its prefix, metadata file included.
TEST(TextShardsTest, OverwriteRemovesTheOldSetWithItsMetadata) {
  const std::string dir = fresh_dir("other_prefix");
  write_file(dir + "/a.txt", "some text");
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, nullptr);
  o.prefix = "old";
  o.shard_tokens = 4;
  ASSERT_TRUE(write_text_shards(o).ok());
  EXPECT_EQ(snapshot(o.output_dir).size(), 4u);  // 3 shards + old.json
  o.prefix = "new";
  o.overwrite = true;
  ASSERT_TRUE(write_text_shards(o).ok());
  auto files = snapshot(o.output_dir);
  std::set<std::string> names;
  for (const auto& [name, bytes] : files) names.insert(name);
  EXPECT_EQ(names,
            (std::set<std::string>{"new-00000.tok", "new-00001.tok", "new-00002.tok", "new.json"}));
}

// What is not ours is never deleted or replaced: a directory named like a shard, a foreign file
// named <prefix>.json (refused without --overwrite); an interrupted run's staging directory is
// left with a warning, and removed by --overwrite.
TEST(TextShardsTest, OnlyOurOwnFilesAreReplaced) {
  const std::string dir = fresh_dir("not_ours");
  write_file(dir + "/a.txt", "some text");
  TextShardingOptions o = options(dir, {dir + "/a.txt"}, nullptr);
  std::system(("mkdir -p '" + o.output_dir + "/zz.tok' '" + o.output_dir + "/.msa-data-abc123'")
                  .c_str());
  write_file(o.output_dir + "/zz.tok/keep", "x");
  write_file(o.output_dir + "/.msa-data-abc123/train-00000.tok", "partial");
  write_file(o.output_dir + "/train.json", "{\"model_type\": \"llama\"}");
  // A foreign train.json: refused, untouched.
  absl::Status s = run_error(o);
  EXPECT_THAT(std::string(s.message()),
              AllOf(HasSubstr(o.output_dir + "/train.json"), HasSubstr("not msa-data's metadata")));
  EXPECT_EQ(read_file(o.output_dir + "/train.json"), "{\"model_type\": \"llama\"}");
  // A written_by that is not a string is not ours either (reading it as one threw).
  write_file(o.output_dir + "/train.json", "{\"written_by\": 5}");
  s = run_error(o);
  EXPECT_THAT(std::string(s.message()), HasSubstr("not msa-data's metadata"));
  EXPECT_EQ(read_file(o.output_dir + "/train.json"), "{\"written_by\": 5}");
  // Another prefix: written; the directory zz.tok and the staging leftover stay.
  o.prefix = "new";
  ASSERT_TRUE(write_text_shards(o).ok());
  EXPECT_EQ(read_file(o.output_dir + "/zz.tok/keep"), "x");
  EXPECT_EQ(access((o.output_dir + "/.msa-data-abc123").c_str(), F_OK), 0);
  // --overwrite replaces our set and removes the interrupted run's staging directory, but not a
  // directory that only looks like a shard.
  o.overwrite = true;
  ASSERT_TRUE(write_text_shards(o).ok());
  EXPECT_NE(access((o.output_dir + "/.msa-data-abc123").c_str(), F_OK), 0);
  EXPECT_EQ(read_file(o.output_dir + "/zz.tok/keep"), "x");
  EXPECT_EQ(read_tokens({o.output_dir + "/new-00000.tok"}).size(), 10u);  // 9 bytes + EOS
}

// Identical shard files for every thread count and work-unit size (byte-level text documents are
// split into pieces; JSONL pieces hold whole lines).
TEST(TextShardsTest, ShardsDoNotDependOnThreadsOrPieces) {
  const std::string dir = fresh_dir("threads");
  std::vector<std::string> inputs;
  for (int f = 0; f < 3; ++f) {
    std::string jsonl, text;
    for (int i = 0; i < 150; ++i) {
      jsonl += "{\"text\": \"file " + std::to_string(f) + " doc " + std::to_string(i) +
               std::string(i % 13, '~') + " \\u00e9\"}\n";
      text += "line " + std::to_string(i) + " of text file " + std::to_string(f) + "\n";
    }
    inputs.push_back(dir + "/j" + std::to_string(f) + ".jsonl");
    write_file(inputs.back(), jsonl);
    inputs.push_back(dir + "/t" + std::to_string(f) + ".txt");
    write_file(inputs.back(), text);
  }
  for (const HfTokenizer* tokenizer :
       {static_cast<const HfTokenizer*>(&kUnicode), static_cast<const HfTokenizer*>(nullptr)}) {
    std::map<std::string, std::string> reference;
    for (const auto& [threads, piece_bytes] :
         std::vector<std::pair<int, int64_t>>{{1, 1 << 20}, {2, 37}, {7, 300}, {4, 1}}) {
      TextShardingOptions o = options(dir, inputs, tokenizer);
      o.output_dir = dir + "/out_" + std::to_string(threads);
      o.overwrite = true;
      o.threads = threads;
      o.piece_bytes = piece_bytes;
      o.batch_bytes = 2000;
      o.shard_tokens = 1000;
      auto r = write_text_shards(o);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(r->documents, 3 * 150 + 3);
      auto files = snapshot(o.output_dir);
      ASSERT_GT(files.size(), 3u);
      if (reference.empty()) {
        reference = files;
      } else {
        EXPECT_TRUE(files == reference) << threads << " threads, pieces of " << piece_bytes;
      }
    }
  }
}

}  // namespace
}  // namespace msa
