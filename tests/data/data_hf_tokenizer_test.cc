// Hugging Face tokenizer.json encoding (data/hf_tokenizer.h) on small hand-made files under
// tests/data/tokenizers/, whose expected ids are worked out from their merges below (and agree with
// the `tokenizers` library: tests/data/tokenizer_reference_check.py checks the same encoder against
// it on large trained vocabularies). Also: errors that name the file and field, invalid UTF-8,
// concurrent encoding, and the two BPE merge strategies agreeing.
#include <algorithm>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "data/hf_tokenizer.h"
#include "data/tokenizer_bpe.h"
#include "data/tokenizer_regex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace msa {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string tokenizer_path(const std::string& name) {
  return std::string(MSA_SOURCE_DIR) + "/tests/data/tokenizers/" + name;
}

std::unique_ptr<HfTokenizer> load_or_die(const std::string& name) {
  auto t = HfTokenizer::load(tokenizer_path(name));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

std::vector<uint32_t> ids(const HfTokenizer& t, std::string_view text) {
  auto r = t.encode(text);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : std::vector<uint32_t>{};
}

std::string write_temp(const std::string& name, const std::string& content) {
  const std::string path = std::string(::testing::TempDir()) + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
  return path;
}

// tiny_bytelevel.json: GPT-2 layout. Byte b has id b (the vocab lists the byte alphabet in byte
// order: ' ' is "Ġ" = 32). Merges, rank: id
//   0 Ġ w: 256, 1 o r: 257, 2 Ġw or: 258, 3 l d: 259, 4 h e: 260, 5 l l: 261, 6 he ll: 262,
//   7 hell o: 263, 8 Ġwor ld: 264, 9 ' s: 265, 10 Ġ Ġ: 266; added <|endoftext|>: 267.
TEST(HfTokenizerTest, ByteLevelBpeMergesByRank) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  // The regex cuts "hello" and " world". hello: h e l l o -> he (4) -> ll (5) -> hell (6) ->
  // hello (7). " world": Ġw (0) -> or (1) -> Ġwor (2) -> ld (3) -> Ġworld (8).
  EXPECT_THAT(ids(*t, "hello world"), ElementsAre(263, 264));
  // No merge covers "x": bytes.
  EXPECT_THAT(ids(*t, "hex"), ElementsAre(260, 'x'));
  EXPECT_EQ(t->vocab_size(), 268);
}

TEST(HfTokenizerTest, ByteLevelRegexKeepsTheSpaceBeforeAWord) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  // \s+(?!\S) takes the first of two spaces, " ?\p{L}+" the second with "b": "a", " ", " b". The
  // two spaces are in different pieces, so the Ġ Ġ merge cannot join them.
  EXPECT_THAT(ids(*t, "a  b"), ElementsAre('a', 32, 32, 'b'));
  // Trailing spaces are one piece "   "; Ġ Ġ merges leftmost first: ĠĠ Ġ.
  EXPECT_THAT(ids(*t, "a   "), ElementsAre('a', 266, 32));
  // Contractions are their own pieces.
  EXPECT_THAT(ids(*t, "world's"), ElementsAre('w', 257, 259, 265));
}

TEST(HfTokenizerTest, SpecialTokensInTextAreOneId) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(ids(*t, "hello<|endoftext|> world's"), ElementsAre(263, 267, 264, 265));
  // A partial special token is ordinary text.
  EXPECT_THAT(ids(*t, "<|endoftext"),
              ElementsAre('<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't'));
}

// split_special_tokens: the special token's text is ordinary text, and an added token inside it
// matches no more than when the special matched (the library finds the special match, then
// leaves it as text); the special match is reported, nothing else (an unknown piece is not one).
TEST(HfTokenizerTest, SplitSpecialTokensEncodesTheirTextAsText) {
  std::ifstream in(tokenizer_path("tiny_bytelevel.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  j["added_tokens"].push_back({{"id", 268},
                               {"content", "of"},
                               {"single_word", false},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"normalized", true},
                               {"special", false}});
  auto t = HfTokenizer::load(write_temp("split_special.json", j.dump()));
  ASSERT_TRUE(t.ok()) << t.status();
  bool matched = false;
  auto r = (*t)->encode_with_options("hello<|endoftext|>", false, &matched);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(*r, ElementsAre(263, 267));
  EXPECT_TRUE(matched);
  r = (*t)->encode_with_options("hello<|endoftext|>", true, &matched);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(*r, ElementsAre(263, '<', '|', 'e', 'n', 'd', 'o', 'f', 't', 'e', 'x', 't', '|',
                              '>'));  // no 268 for the "of" inside
  EXPECT_FALSE(matched);
  r = (*t)->encode_with_options("a tale of", false, &matched);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->back(), 268u);  // non-special added tokens match in both modes
  EXPECT_FALSE(matched);
  r = (*t)->encode_with_options("a tale of", true, &matched);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->back(), 268u);
}

// The fingerprint says what text each id stands for: a re-saved copy (merges as pairs, defaults
// spelled out, another key order) keeps it, another vocabulary does not.
TEST(HfTokenizerTest, FingerprintIsTheVocabularyNotItsSpelling) {
  std::ifstream in(tokenizer_path("tiny_bytelevel.json"));
  const nlohmann::json j = nlohmann::json::parse(in);
  auto fingerprint = [](const nlohmann::json& file, const std::string& name) {
    auto t = HfTokenizer::load(write_temp(name, file.dump(1)));
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? (*t)->fingerprint() : std::string();
  };
  const std::string original = fingerprint(j, "fp_original.json");
  ASSERT_EQ(original.size(), 16u);
  nlohmann::json resaved = j;
  nlohmann::json pairs = nlohmann::json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string merge = m.get<std::string>();
    pairs.push_back({merge.substr(0, merge.find(' ')), merge.substr(merge.find(' ') + 1)});
  }
  resaved["model"]["merges"] = pairs;
  resaved["model"]["ignore_merges"] = false;
  resaved["model"]["dropout"] = nullptr;
  EXPECT_EQ(fingerprint(resaved, "fp_resaved.json"), original);
  nlohmann::json other = j;
  other["added_tokens"][0]["content"] = "<|end|>";
  EXPECT_NE(fingerprint(other, "fp_other.json"), original);
}

TEST(HfTokenizerTest, MultibyteCharactersAreBytes) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  // "é" is C3 A9; in the byte alphabet those are characters of their own, ids 0xC3 and 0xA9.
  EXPECT_THAT(ids(*t, "é"), ElementsAre(0xC3, 0xA9));
  EXPECT_THAT(ids(*t, ""), ElementsAre());
}

// llama3/: Split with the Llama 3 regex, then ByteLevel without regex; ignore_merges. Bytes are
// ids 0-255; merges he 256, ll 257, hell 258, hello 259, Ġt 260; "Ġhello" = 261 is in the vocab
// without a merge that makes it. Added: <|begin_of_text|> 262, <|end_of_text|> 263, <|eot_id|> 264.
TEST(HfTokenizerTest, IgnoreMergesTakesWholeWordsFromTheVocabulary) {
  auto t = load_or_die("llama3");
  ASSERT_NE(t, nullptr);
  // "hello" by merges (259); " hello" is in the vocabulary as it is (261), no merge reaches it.
  EXPECT_THAT(ids(*t, "hello hello"), ElementsAre(259, 261));
}

TEST(HfTokenizerTest, Llama3RegexSplitsDigitsInThreesAndContractionsCaseInsensitively) {
  auto t = load_or_die("llama3");
  ASSERT_NE(t, nullptr);
  // Pieces: "IT", "'S" ((?i:'s)), " " ... "123", "45": no merges apply, so bytes.
  EXPECT_THAT(ids(*t, "IT'S 12345"),
              ElementsAre('I', 'T', '\'', 'S', ' ', '1', '2', '3', '4', '5'));
  // \s*[\r\n]+ keeps "\r\n\n" together; "  x": "\s+(?!\S)" gives " ", then " x" is not one piece
  // (the letter branch takes [^\r\n\p{L}\p{N}]?\p{L}+ = " x").
  EXPECT_THAT(ids(*t, " hello\r\n\n  x"), ElementsAre(261, '\r', '\n', '\n', ' ', ' ', 'x'));
}

TEST(HfTokenizerTest, Llama3SpecialTokensAndDelimiters) {
  auto t = load_or_die("llama3");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(ids(*t, "<|begin_of_text|>hi<|eot_id|>"), ElementsAre(262, 'h', 'i', 264));
  EXPECT_EQ(t->vocab_size(), 265);
  // The template puts <|begin_of_text|> first; tokenizer_config.json names <|eot_id|> as EOS.
  EXPECT_EQ(t->bos_id(), 262u);
  EXPECT_TRUE(t->adds_bos());
  EXPECT_EQ(t->eos_id(), 264u);
  EXPECT_FALSE(t->adds_eos());
  EXPECT_THAT(t->describe(), HasSubstr("byte-level"));
}

// tiny_sentencepiece.json: Llama 2 layout. Normalizer Prepend("▁") + Replace(" ", "▁"), no
// pre-tokenizer, byte_fallback with <0x00>..<0xEF> (ids 3 + byte), <unk> 0 fused. Vocab ▁ 243,
// h 244, i 245, t 246, e 247, r 248; merges ▁ h: 249, ▁h i: 250, ▁ t: 251, h e: 252, ▁t he: 253.
TEST(HfTokenizerTest, SentencePieceBpeWithPrependAndReplace) {
  auto t = load_or_die("tiny_sentencepiece.json");
  ASSERT_NE(t, nullptr);
  // "▁hi▁there": ▁h (0) -> ▁hi (1) -> ▁t (2) -> he (3) -> ▁the (4); "r", "e" stay.
  EXPECT_THAT(ids(*t, "hi there"), ElementsAre(250, 253, 248, 247));
  // "é" is not in the vocabulary: its bytes C3 A9 fall back to <0xC3> <0xA9>.
  EXPECT_THAT(ids(*t, "hi é"), ElementsAre(250, 243, 3 + 0xC3, 3 + 0xA9));
  // Emoji start with F0, which has no byte token: <unk>, and two in a row fuse into one.
  EXPECT_THAT(ids(*t, "😀😀"), ElementsAre(243, 0));
  // Special tokens are cut out before normalizing, so each remaining piece gets its own "▁".
  EXPECT_THAT(ids(*t, "<s>hi"), ElementsAre(1, 250));
  EXPECT_THAT(ids(*t, "hi<s> there</s>"), ElementsAre(250, 1, 243, 253, 248, 247, 2));
  EXPECT_EQ(t->bos_id(), 1u);
  EXPECT_TRUE(t->adds_bos());
  EXPECT_FALSE(t->eos_id().has_value());
}

// tiny_metaspace.json: the same model with Metaspace(prepend_scheme "first", split false) instead
// of the normalizers: only a piece at the very start of the text gets "▁".
TEST(HfTokenizerTest, MetaspacePrependsOnlyAtTheStartOfTheText) {
  auto t = load_or_die("tiny_metaspace.json");
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(ids(*t, "hi there"), ElementsAre(250, 253, 248, 247));
  EXPECT_THAT(ids(*t, "<s>hi"), ElementsAre(1, 244, 245));
  EXPECT_THAT(ids(*t, "hi<s> there</s>"), ElementsAre(250, 1, 253, 248, 247, 2));
}

TEST(HfTokenizerTest, MergesAsStringsAndAsPairsGiveTheSameIds) {
  // llama3/tokenizer.json writes merges as ["a", "b"] pairs, tiny_bytelevel.json as "a b".
  auto pairs = load_or_die("llama3");
  auto strings = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(pairs, nullptr);
  ASSERT_NE(strings, nullptr);
  EXPECT_THAT(ids(*pairs, "hello"), ElementsAre(259));
  EXPECT_THAT(ids(*strings, "hello"), ElementsAre(263));
}

TEST(HfTokenizerTest, InvalidUtf8IsAnErrorWithItsByteOffset) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  for (const std::string& bad :
       {std::string("ab\xff"
                    "cd"),
        std::string("ab\xc3"), std::string("ab\xed\xa0\x80"), std::string("ab\xc0\xaf")}) {
    auto r = t->encode(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("invalid UTF-8 at byte offset 2"));
  }
}

TEST(HfTokenizerTest, UnknownModelTypeIsRefusedNamingFileAndField) {
  const std::string path = write_temp(
      "unigram.json", R"({"model": {"type": "Unigram", "unk_id": 0, "vocab": [["a", 0.0]]}})");
  auto t = HfTokenizer::load(path);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(path));
  EXPECT_THAT(t.status().message(), HasSubstr("model.type"));
  EXPECT_THAT(t.status().message(), HasSubstr("Unigram"));
}

TEST(HfTokenizerTest, BadFilesAreRefusedNamingTheField) {
  struct Case {
    const char* json;
    const char* field;
  };
  const Case cases[] = {
      {R"({"model": {"type": "BPE", "merges": []}})", "model.vocab"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}}})", "model.merges"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})", "model.merges[0]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a a a"]}})", "model.merges[0]"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})",
       "model.unk_token"},
      {R"({"pre_tokenizer": {"type": "Whitespace"},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "pre_tokenizer.type"},
      {R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"},
           {"type": "Digits"}]}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "pre_tokenizer.pretokenizers[1]"},
      {R"({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "normalizer.normalizers[0].type"},
      {R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "^a"}, "behavior": "Isolated",
           "invert": false}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "pre_tokenizer.pattern.Regex"},
      {R"({"model": {"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []}})",
       "model.dropout"},
      {R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})", "model.vocab"},
      {R"({"model": 3})", "model"},
      {R"(not json)", "not valid JSON"},
      // Flags of the wrong type are named (they were "unexpected JSON value: type must be
      // boolean").
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "fuse_unk": "yes"}})",
       "model.fuse_unk: expected true or false, not \"yes\""},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
           "added_tokens": [{"content": "<s>", "special": "yes"}]})",
       "added_tokens[0].special: expected true or false"},
      {R"({"normalizer": {"type": "Strip", "strip_left": 1},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "normalizer.strip_left: expected true or false, not 1"},
  };
  int k = 0;
  for (const Case& c : cases) {
    const std::string path = write_temp("bad" + std::to_string(k++) + ".json", c.json);
    auto t = HfTokenizer::load(path);
    ASSERT_FALSE(t.ok()) << c.json;
    EXPECT_THAT(t.status().message(), HasSubstr(path)) << c.json;
    EXPECT_THAT(t.status().message(), HasSubstr(c.field)) << c.json;
  }
  EXPECT_FALSE(HfTokenizer::load(tokenizer_path("no_such_file.json")).ok());
}

// Metaspace's prepend_scheme "first" asks whether a piece starts at the original text's start: a
// normalizer that removed the leading characters (Strip, Replace by "") moved it, and the
// tokenizers library (0.23.2) then adds no "▁"; we added one. The ids are the library's.
TEST(HfTokenizerTest, MetaspaceFirstAfterANormalizerDroppedTheStart) {
  std::ifstream in(tokenizer_path("tiny_metaspace.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  j["normalizer"] = {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}};
  auto strip = HfTokenizer::load(write_temp("strip_metaspace.json", j.dump()));
  ASSERT_TRUE(strip.ok()) << strip.status();
  auto ids = [](const std::unique_ptr<HfTokenizer>& t, const std::string& text) {
    auto r = t->encode(text);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : std::vector<uint32_t>{};
  };
  using Ids = std::vector<uint32_t>;
  EXPECT_EQ(ids(*strip, "  hello"), (Ids{252, 111, 111, 114}));
  EXPECT_EQ(ids(*strip, "hello"), (Ids{249, 247, 111, 111, 114}));
  j["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers", {{{"type", "Replace"}, {"pattern", {{"String", "-"}}}, {"content", ""}}}}};
  auto replace = HfTokenizer::load(write_temp("replace_metaspace.json", j.dump()));
  ASSERT_TRUE(replace.ok()) << replace.status();
  EXPECT_EQ(ids(*replace, "--hello"), (Ids{252, 111, 111, 114}));
  EXPECT_EQ(ids(*replace, "h-ello"), (Ids{249, 247, 111, 111, 114}));
}

// Two added tokens whose texts normalize alike (NFC: "\u00e9" and "e\u0301"): the first keeps the
// match, the tokenizers library's rule through 0.22 (0.23.2 gave the same here: id 233 for both
// spellings, the vocabulary's "\u00e9", which the first token takes); the last one won.
TEST(HfTokenizerTest, TheFirstOfTwoAddedTokensWithTheSameNormalizedTextWins) {
  std::ifstream in(tokenizer_path("tiny_bytelevel.json"));
  nlohmann::json j = nlohmann::json::parse(in);
  j["normalizer"] = {{"type", "NFC"}};
  auto token = [](int id, const std::string& content) {
    return nlohmann::json{{"id", id},        {"content", content}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false},    {"normalized", true},
                          {"special", false}};
  };
  j["added_tokens"] = {token(268, "\u00e9"), token(269, "e\u0301")};
  auto t = HfTokenizer::load(write_temp("dup_normalized.json", j.dump()));
  ASSERT_TRUE(t.ok()) << t.status();
  for (const std::string text : {"\u00e9", "e\u0301"}) {
    auto ids = (*t)->encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, (std::vector<uint32_t>{233})) << text;
  }
}

// Nested Sequences past any real file's depth are refused at once: each level built its own
// field path, so 20,000 levels (724 KB) took gigabytes and aborted with bad_alloc. 60 levels (a
// JSON depth of ~120) still load.
TEST(HfTokenizerTest, NestingPastTheLimitIsRefused) {
  auto nested = [](int levels) {
    std::string n = R"({"type": "NFC"})";
    for (int i = 0; i < levels; ++i) n = R"({"type": "Sequence", "normalizers": [)" + n + "]}";
    return R"({"normalizer": )" + n +
           R"(, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})";
  };
  const std::string deep = write_temp("deep.json", nested(20000));
  auto t = HfTokenizer::load(deep);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr(deep + ": nested deeper than 128 levels"));
  auto ok = HfTokenizer::load(write_temp("nested60.json", nested(60)));
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto ids = (*ok)->encode("ab");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<uint32_t>{0, 1}));
}

// The tokenizers library reads the BPE and added-token flags as optional: null is the default
// (it was refused as "type must be boolean, but is null").
TEST(HfTokenizerTest, NullFlagsTakeTheirDefaults) {
  const std::string path =
      write_temp("null_flags.json",
                 R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"],
          "fuse_unk": null, "byte_fallback": null, "ignore_merges": null, "dropout": null},
          "normalizer": {"type": "Strip", "strip_left": null, "strip_right": null},
          "added_tokens": [{"content": "<s>", "id": 3, "special": null, "lstrip": null,
                            "rstrip": null, "single_word": null, "normalized": null}]})");
  auto t = HfTokenizer::load(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(ids(**t, " ab<s>b "), (std::vector<uint32_t>{2, 3, 1}));
}

TEST(HfTokenizerTest, ConcurrentEncodesAgreeWithOneThread) {
  auto t = load_or_die("llama3");
  ASSERT_NE(t, nullptr);
  std::mt19937 rng(7);
  const std::vector<std::string> words = {"hello", " hello",     "IT'S",   " 12345", "\n\n", "  ",
                                          "é",     "<|eot_id|>", "日本語", " x",     "!!",   "\t"};
  std::string text;
  for (int i = 0; i < 20000; ++i) text += words[rng() % words.size()];
  const std::vector<uint32_t> expected = ids(*t, text);
  ASSERT_GT(expected.size(), 10000u);
  std::vector<std::vector<uint32_t>> got(4);
  std::vector<std::thread> threads;
  for (int w = 0; w < 4; ++w)
    threads.emplace_back([&, w] {
      for (int rep = 0; rep < 3; ++rep) {
        auto r = t->encode(text);
        if (r.ok()) got[w] = *r;
      }
    });
  for (auto& th : threads) th.join();
  for (const auto& g : got) EXPECT_EQ(g, expected);
}

TEST(HfTokenizerTest, LongWhitespaceRunsDoNotExhaustTheRegexStack) {
  auto t = load_or_die("tiny_bytelevel.json");
  ASSERT_NE(t, nullptr);
  // One piece of 300000 spaces before "x": \s+(?!\S) backtracks over all of them.
  const std::string text = std::string(300000, ' ') + "x";
  auto r = t->encode(text);
  ASSERT_TRUE(r.ok()) << r.status();
  // 299999 spaces merge pairwise into ĠĠ (266), leaving one Ġ; then " x" is Ġ x.
  ASSERT_EQ(r->size(), 149999u + 1 + 2);
  EXPECT_EQ((*r)[0], 266u);
  EXPECT_EQ(r->back(), uint32_t{'x'});
}

TEST(BpeMergeTest, LinearScanAndPriorityQueueAgree) {
  // A random vocabulary over "abcd" whose merges join random earlier tokens.
  std::mt19937 rng(3);
  std::vector<std::string> tokens = {"a", "b", "c", "d"};
  std::vector<std::pair<std::string, std::string>> merges;
  while (merges.size() < 60) {
    const std::string& x = tokens[rng() % tokens.size()];
    const std::string& y = tokens[rng() % tokens.size()];
    if (std::find(tokens.begin(), tokens.end(), x + y) != tokens.end()) continue;
    merges.emplace_back(x, y);
    tokens.push_back(x + y);
  }
  std::vector<std::pair<std::string, uint32_t>> vocab;
  for (size_t i = 0; i < tokens.size(); ++i)
    vocab.emplace_back(tokens[i], static_cast<uint32_t>(i));
  auto model = tok::BpeModel::create(vocab, merges, tok::BpeConfig{});
  ASSERT_TRUE(model.ok()) << model.status();
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint32_t> symbols(2 + rng() % 120);
    for (uint32_t& s : symbols) s = rng() % 4;
    std::vector<uint32_t> linear = symbols, heap = symbols;
    tok::bpe_merge_linear(**model, linear);
    tok::bpe_merge_heap(**model, heap);
    ASSERT_EQ(linear, heap) << "trial " << trial;
  }
}

TEST(RegexTest, WhitespaceIsUnicodeWhiteSpaceAsInOniguruma) {
  auto re = tok::Regex::from_onig(R"(\s+)");
  ASSERT_TRUE(re.ok()) << re.status();
  std::vector<tok::ByteRange> m;
  // U+3000 (ideographic space) is White_Space; U+180E (Mongolian vowel separator) no longer is,
  // though PCRE2's own \s still counts it.
  ASSERT_TRUE((*re)->find_all("a\u3000b\u180Ec", m).ok());
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].begin, 1u);
  EXPECT_EQ(m[0].end, 4u);
}

TEST(RegexTest, EmptyMatchesAreSkippedWhereTheLastMatchEnded) {
  auto re = tok::Regex::from_onig("a*");
  ASSERT_TRUE(re.ok()) << re.status();
  std::vector<tok::ByteRange> m;
  ASSERT_TRUE((*re)->find_all("baa", m).ok());
  // Oniguruma's iterator: "" at 0, "aa" at 1..3; the "" at 3 right after it is skipped.
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].begin, 0u);
  EXPECT_EQ(m[0].end, 0u);
  EXPECT_EQ(m[1].begin, 1u);
  EXPECT_EQ(m[1].end, 3u);
}

// Oniguruma's meaning where PCRE2's differs: \v is the vertical tab only, {,n} is {0,n}, \w
// holds every number, (?m) is dot-all, and
// \p{^L} is a negated property (it was refused as an anchor); \C (one byte, cutting UTF-8
// sequences) is refused like the tokenizers library does.
TEST(RegexTest, OnigurumaSyntaxKeepsItsMeaning) {
  auto spans = [](const char* pattern, const std::string& text) {
    auto re = tok::Regex::from_onig(pattern);
    EXPECT_TRUE(re.ok()) << pattern << ": " << re.status();
    std::vector<std::pair<uint32_t, uint32_t>> out;
    if (!re.ok()) return out;
    std::vector<tok::ByteRange> m;
    EXPECT_TRUE((*re)->find_all(text, m).ok());
    for (const tok::ByteRange& r : m)
      if (r.end > r.begin) out.emplace_back(r.begin, r.end);
    return out;
  };
  using Spans = std::vector<std::pair<uint32_t, uint32_t>>;
  EXPECT_EQ(spans(R"(\v)", "a\vb\nc"), (Spans{{1, 2}}));  // not the newline
  EXPECT_EQ(spans(R"(a{,2})", "xaaay"), (Spans{{1, 3}, {3, 4}}));
  EXPECT_EQ(spans(R"(\p{^L}+)", "ab12 cd"), (Spans{{2, 5}}));
  EXPECT_EQ(spans(R"([\p{^L}]+)", "ab12 cd"), (Spans{{2, 5}}));
  EXPECT_FALSE(tok::Regex::from_onig(R"(\C)").ok());
  // \w holds every number (² and Ⅻ: No, Nl), and (?m) is dot-all.
  EXPECT_EQ(spans(R"(\w+)", "x\u00B2 \u216B"), (Spans{{0, 3}, {4, 7}}));
  EXPECT_EQ(spans(R"((?m)a.b)", "a\nb"), (Spans{{0, 3}}));
  EXPECT_EQ(spans(R"((?m:a.b))", "a\nb"), (Spans{{0, 3}}));
  EXPECT_EQ(spans(R"((?i)A)", "a"), (Spans{{0, 1}}));
}

}  // namespace
}  // namespace msa
